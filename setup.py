"""Packaging. The top-level `kernels/` folder installs as `ntm_fast.kernels`; `csrc/` ships as package data
(`ntm_fast/csrc`) so the optional C++/CUDA extension can be built on first use (see ntm_fast/extension.py).

`pip install .` never compiles anything. To build the extension `ntm_fast._C` ahead of time (for the machine
that builds it, with CUDA kernels too where torch is a CUDA build and a CUDA toolkit is found):

    NTM_FAST_BUILD_EXT=1 pip install --no-build-isolation .

(--no-build-isolation: the build needs the torch it will run with.)
"""
import os
import sys

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("NTM_FAST_BUILD_EXT") == "1":
    import torch
    from torch.utils import cpp_extension

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ntm_fast.ops import extension  # the source list and flags of the on-demand build

    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    make = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext_modules = [make("ntm_fast._C", [os.path.relpath(p) for p in extension.sources(with_cuda)],
                        extra_compile_args={"cxx": extension.cxx_flags(with_cuda), "nvcc": extension.NVCC_FLAGS},
                        extra_link_args=["-fopenmp"])]
    cmdclass = {"build_ext": cpp_extension.BuildExtension}

setup(
    packages=["ntm_fast", "ntm_fast.ops", "ntm_fast.model", "ntm_fast.tools", "ntm_fast.tools.tasks", "ntm_fast.kernels",
              "ntm_fast.csrc"],
    package_dir={"ntm_fast": "ntm_fast", "ntm_fast.kernels": "kernels", "ntm_fast.csrc": "csrc"},
    package_data={"ntm_fast.csrc": ["*.h", "*.cpp", "*.cu"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
