"""pytest-benchmark suite: per-op timings of every available backend, to track regressions between commits.

Not part of the default test run (pyproject's testpaths is tests/). Run it from the repository root:

    python -m pytest benchmarks/ --benchmark-autosave              # store a baseline (.benchmarks/)
    python -m pytest benchmarks/ --benchmark-compare               # compare with the last stored run
    python -m pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%

The workloads are `ntm_fast.bench`'s (same inputs, same agreement check against the reference before a
contender is timed); pytest-benchmark does the timing. `torch.compile` is left out: it would slow down every
eager test after it in this process (use `ntm-fast bench`, which isolates contenders, for it). Set
NTM_BENCH_DEVICE=cuda to time on a GPU (default: cuda when visible, else cpu).
"""
import os

import pytest
import torch

from ntm_fast.tools.bench import MODES, OPS, Case, Disagreement, Settings, default_contenders, prepare, synchronized

DEVICE = os.environ.get("NTM_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
SETTINGS = Settings(device=DEVICE)
BATCH_SIZES = (1, 32, 256)
SLOTS = 128


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", default_contenders(DEVICE))
def test_op(benchmark, backend, op, mode, batch):
    try:
        timed, _, _ = prepare(backend, Case(op, mode, batch, SLOTS), SETTINGS)
    except Disagreement as err:
        pytest.fail(f"{backend} disagrees with the reference: {err}")
    benchmark.group = f"{op} {mode} B={batch} N={SLOTS}"
    benchmark(synchronized(timed, DEVICE))
