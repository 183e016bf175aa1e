"""``python -m hinet_plugins.test -opt OPTIONS.yml`` (results/ under the working directory)."""
import os

from hinet_plugins.basicsr_ext.launch import run

if __name__ == '__main__':
    run('test', os.getcwd())
