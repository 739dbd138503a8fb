"""Packaging. The top-level `kernels/` folder installs as `ntm_fast.kernels`; `csrc/` ships as package data
so the optional C++/CUDA extension can be built on first use (see ntm_fast/extension.py)."""
from setuptools import setup

setup(
    packages=["ntm_fast", "ntm_fast.kernels"],
    package_dir={"ntm_fast": "ntm_fast", "ntm_fast.kernels": "kernels"},
)
