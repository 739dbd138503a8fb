"""Data-parallel training under torchrun: two gloo processes on the CPU with a tiny model (a few steps each).

Each run is a real `python -m torch.distributed.run --standalone --nproc_per_node=2` launch of
`ntm_fast train`; the rollback test launches a small wrapper that poisons one rank's loss once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from ntm_fast.tools.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--max-length", "3", "--controller-size", "8", "--memory-slots", "8", "--memory-width", "4",
        "--backend", "reference", "--threads", "1", "--no-plots", "--no-final-eval", "--no-progress",
        "--batch-size", "4", "--eval-every", "100", "--checkpoint-every", "2"]

# Loss of rank 1 at its 3rd step becomes NaN (gradients stay finite): only an all-reduced verdict rolls
# rank 0 back too.
POISON = textwrap.dedent("""
    import os, sys
    from ntm_fast.tools import train
    from ntm_fast.tools.cli import main

    real, calls = train.make_task, [0]

    def make_task(name):
        task = real(name)
        loss = task.loss

        def poisoned(logits, batch):
            calls[0] += 1
            value = loss(logits, batch)
            return value + float("nan") if os.environ["RANK"] == "1" and calls[0] == 3 else value

        task.loss = poisoned
        return task

    train.make_task = make_task
    sys.exit(main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, processes=2, script=None, status=0):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    target = [script] if script else ["-m", "ntm_fast"]
    if processes == 1:
        command = [sys.executable, *target, "train", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", *target, "train", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode == status, done.stdout + done.stderr
    return done.stdout + done.stderr


def _weights(folder):
    return load_checkpoint(os.path.join(folder, "checkpoint.pt"))


def _rows(folder):
    with open(os.path.join(folder, "metrics.csv")) as f:
        return f.read().splitlines()[1:]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A 2-process run of 4 steps (checkpoints at 2 and 4)."""
    out = str(tmp_path_factory.mktemp("two") / "run")
    return out, _run(["--steps", "4", "--out", out, *TINY])


def test_two_processes_train_with_one_writer(two):
    out, output = two
    lines = [line for line in output.splitlines() if line.startswith("training")]
    assert lines[0] == ("training on 2 processes (gloo, world size 2): --batch-size 4 is the global batch, "
                        "2 sequences per process")
    assert len(lines) == 2 and output.count("done: 4 steps, 16 sequences") == 1  # rank 0 alone prints
    # One writer: a second one would have found the folder locked; each step has one row.
    assert [row.split(",")[0] for row in _rows(out)] == ["1", "2", "3", "4"]
    ckpt = _weights(out)
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint-prev.pt", "checkpoint.pt", "eval.json", "metrics.csv"]


def test_one_process_gives_the_same_parameters(two, tmp_path):
    out, _ = two
    single = str(tmp_path / "one")
    _run(["--steps", "4", "--out", single, *TINY], processes=1)
    one, both = _weights(single), _weights(out)
    assert one["world_size"] == 1 and one["rank_rng"] is None
    for name, weight in one["model"].items():
        torch.testing.assert_close(both["model"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    # The logged loss is the mean over the ranks: the whole batch's, as in one process.
    for a, b in zip(_rows(single), _rows(out)):
        assert a.split(",")[:4] == b.split(",")[:4] or abs(float(a.split(",")[3]) - float(b.split(",")[3])) < 1e-5


def test_resume_on_two_processes_is_exact(two, tmp_path):
    out, _ = two
    half = str(tmp_path / "half")
    _run(["--steps", "2", "--out", half, *TINY])
    output = _run(["--steps", "4", "--out", half, "--resume", *TINY])
    assert "resumed from" in output and "written by" not in output
    resumed, straight = _weights(half), _weights(out)
    for name, weight in straight["model"].items():
        assert torch.equal(resumed["model"][name], weight), name
    assert torch.equal(resumed["data_rng"], straight["data_rng"])
    assert [row.split(",")[:5] for row in _rows(half)] == [row.split(",")[:5] for row in _rows(out)]


def test_resume_on_another_world_size_continues_the_same_batches(two, tmp_path):
    out, _ = two
    half = tmp_path / "half"
    _run(["--steps", "2", "--out", str(half), *TINY])
    # One process continues the 2-process run from step 2: same global batches, float32 summation order aside.
    output = _run(["--steps", "4", "--out", str(tmp_path / "one"), "--resume", str(half / "checkpoint.pt"), *TINY],
                  processes=1)
    assert "written by 2 processes and continues on 1" in output
    one, both = _weights(str(tmp_path / "one")), _weights(out)
    assert one["world_size"] == 1 and torch.equal(one["data_rng"], both["data_rng"])
    for name, weight in both["model"].items():
        torch.testing.assert_close(one["model"][name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_a_batch_that_does_not_divide_is_refused(tmp_path):
    output = _run(["--steps", "2", "--out", str(tmp_path / "run"), *TINY, "--batch-size", "3"], status=1)
    assert "--batch-size (the global batch) must divide among the 2 processes, got 3" in output


def test_nan_on_one_rank_rolls_every_rank_back(tmp_path):
    script = tmp_path / "poison.py"
    script.write_text(POISON)
    out = str(tmp_path / "nan")
    output = _run(["--steps", "4", "--out", out, *TINY], script=str(script))
    assert output.count("divergence at step 3 (non-finite loss or gradient): rolled back to step 2") == 1
    ckpt = _weights(out)
    assert ckpt["step"] == 4 and ckpt["rollbacks"] == 1
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-5)
    assert [row.split(",")[0] for row in _rows(out)] == ["1", "2", "3", "4"]
