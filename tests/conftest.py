"""Shared test set-up.

Without a CUDA GPU the Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
@triton.jit function is defined, so it is set here, before the test modules import ntm_fast.kernels.
With a GPU it is left alone so the real kernels run.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # for `import cases`


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
