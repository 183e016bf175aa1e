"""hinet-plugins: HINet, MPRNet, DRCNet, FCN, their losses and TLC as plugins of upstream BasicSR."""
from setuptools import find_packages, setup

setup(
    name='hinet-plugins',
    version='0.1.0',
    description='Multi-stage image restoration networks, losses and the test-time local converter for BasicSR',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['hinet_plugins', 'hinet_plugins.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch', 'torchvision',
        'basicsr==1.4.2',  # used as installed; hinet_plugins.basicsr_ext adapts it to today's stack
        'mmengine', 'lmdb', 'opencv-python', 'numpy', 'addict', 'PyYAML', 'tqdm', 'scikit-image', 'matplotlib',
        'tensorboard', 'setuptools',  # setuptools provides distutils to basicsr on Python >= 3.12
        'onnx', 'onnxruntime',  # scripts/export.py: ONNX export and its check
        'bm3d',  # scripts/demo.py: the BM3D baseline column (hinet_plugins/demo/baselines.py)
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist'],  # scripts/run_tests.sh runs two workers
        # scripts/webui.py (Python >= 3.10); selenium drives Debian's chromium in tests/webui/test_webui.py
        'webui': ['gradio; python_version >= "3.10"', 'selenium'],
        # Python >= 3.10: hinet_plugins.integrations.spandrel (loading any checkpoint, both ways)
        'spandrel': ['spandrel', 'spandrel-extra-arches'],
        # logger.wandb (offline runs too): tests/basicsr_ext/test_several_machines.py reads an offline run back
        'wandb': ['wandb'],
    },
)
