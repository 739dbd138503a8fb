"""Shared test set-up.

Without a CUDA GPU the Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
@triton.jit function is defined, so it is set here, before the test modules import ntm_fast.kernels.
With a GPU it is left alone so the real kernels run.

Hypothesis profiles (tests/test_properties.py): "ntm_fast", loaded by default, keeps that file to about a
minute on one CPU core; `pytest --hypothesis-profile=long` runs many more examples. Both are derandomized,
so a run is reproducible and CI never meets a new example by chance.
"""
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # for `import cases`

# The kernels run under the interpreter here, so an example takes a good fraction of a second: no deadline,
# and the health check that flags slow data generation would only measure that.
_common = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ntm_fast", max_examples=12, **_common)
settings.register_profile("long", max_examples=400, **_common)
settings.load_profile("ntm_fast")  # --hypothesis-profile=NAME, applied after this file, overrides it


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def launches(monkeypatch):
    """Names of the Triton kernels (any of ntm_fast's: one JITFunction class runs them all) launched while the
    test runs."""
    import importlib

    counter = []
    kernel_type = type(importlib.import_module("ntm_fast.kernels.memory_step")._memory_step_fwd_kernel)
    run = kernel_type.run

    def counting_run(self, *args, **kwargs):
        counter.append(self.fn.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(kernel_type, "run", counting_run)
    return counter
