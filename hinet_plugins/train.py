"""``python -m hinet_plugins.train -opt OPTIONS.yml [basicsr flags]`` (experiments/ under the working directory)."""
import os

from hinet_plugins.basicsr_ext.launch import run

if __name__ == '__main__':
    run('train', os.getcwd())
