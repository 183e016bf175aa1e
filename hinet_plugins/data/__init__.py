"""Datasets registered into basicsr (SIDD, Restormer's dual-pixel, Gaussian denoising, ...) and the data
preparation behind scripts/prepare_data.py."""
