"""`ntm-fast bench`: the refusal to time a contender that disagrees with the reference, the contender list,
CLI argument errors, and one tiny end-to-end run writing its files. No timing assertions."""
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

from cases import backend_or_skip
from ntm_fast.ops import dispatch, reference
from ntm_fast.ops.dispatch import BACKENDS, Backend
from ntm_fast.tools.bench import (TOLERANCE, Case, Settings, _max_error, as_exact_as_reference, check_contenders,
                                  default_contenders, has_sequence_node, merge_rounds, per_step_contenders,
                                  run_contender, split_contender)
from ntm_fast.tools.cli import main

TINY = Settings(width=4, controller_size=6, length=2, warmup=0, reps=3, budget_s=0.01)


def _doubled_add_gradient(memory, w, erase, add):
    """The reference write with the right output but twice the gradient with respect to `add`."""
    return reference.write(memory, w, erase, add.detach() + 2 * (add - add.detach()))


WRONG = types.SimpleNamespace(address=reference.address, read=lambda memory, w: 1.01 * reference.read(memory, w),
                              write=_doubled_add_gradient, memory_step=reference.memory_step)


@pytest.fixture
def backend_cache():
    """Backend loads are cached per process: forget them around a test that swaps backends."""
    dispatch.forget()
    yield
    dispatch.forget()


@pytest.fixture
def wrong_backend(monkeypatch, backend_cache):
    monkeypatch.setitem(BACKENDS, "wrong", Backend("wrong", "deliberately wrong", lambda: ("cpu",), lambda: WRONG))
    return "wrong"


def test_a_disagreeing_contender_is_refused_not_timed(wrong_backend):
    cases = [Case("read", "fwd", 2, 5), Case("write", "fwd", 2, 5), Case("write", "fwd+bwd", 2, 5),
             Case("address", "fwd+bwd", 2, 5)]
    rows = {(r["op"], r["mode"]): r for r in run_contender(wrong_backend, cases, TINY)}
    assert rows["read", "fwd"]["status"].startswith("refused: outputs differ from the reference")
    assert rows["write", "fwd+bwd"]["status"].startswith("refused: outputs or gradients differ")
    for refused in (rows["read", "fwd"], rows["write", "fwd+bwd"]):
        assert "median_ms" not in refused
    for agreeing in (rows["write", "fwd"], rows["address", "fwd+bwd"]):  # right outputs and gradients
        assert agreeing["status"] == "ok" and agreeing["median_ms"] > 0 and agreeing["max_error"] == 0


def test_a_contender_as_exact_as_the_float32_reference_agrees():
    """Off the float32 reference by more than the fixed tolerance, but no further from the float64 one than
    4× the float32 reference's own error: agrees. Further, NaN, or another shape: does not."""
    oracle = torch.zeros(2, 8, dtype=torch.float64)
    want = torch.zeros(2, 8)
    want[0, 1] = 3e-5  # the float32 reference's own error
    got = torch.zeros(2, 8)
    got[1, 5] = 1e-4
    assert not _max_error([got], [want], **TOLERANCE["op"])[1]
    assert as_exact_as_reference([got], [want], [oracle], **TOLERANCE["op"])
    for bad in (torch.full((2, 8), 2e-4), torch.full((2, 8), float("nan")), torch.zeros(8, 2)):
        assert not as_exact_as_reference([bad], [want], [oracle], **TOLERANCE["op"])
    assert not as_exact_as_reference([got, got], [want], [oracle], **TOLERANCE["op"])


def test_the_triton_interpreter_is_never_a_cpu_contender(monkeypatch, backend_cache):
    interpreted = Backend("triton", "stands in for the interpreter", lambda: ("cuda", "cpu"), lambda: reference)
    monkeypatch.setattr(dispatch, "BACKENDS", {"reference": BACKENDS["reference"], "triton": interpreted})
    assert dispatch.available_backends("cpu") == ["reference", "triton"]
    assert "triton" not in default_contenders("cpu") and "reference" in default_contenders("cpu")
    with pytest.raises(ValueError, match="only under the Triton interpreter"):
        check_contenders(["triton"], "cpu")
    assert check_contenders([], "cpu") == ["reference"]  # ratios always need the reference


@pytest.mark.parametrize("argv,message", [
    (["--backends", "nope"], "unknown backend 'nope'"),
    (["--backends", "cuda"], "backend 'cuda' is unavailable for cpu tensors"),
    (["--backends", "reference-per-step"], "contender 'reference-per-step': backend 'reference' has no "
                                           "whole-sequence node for cpu tensors"),
    (["--backends", "nope-per-step"], "unknown backend 'nope'"),
    (["--batch-sizes", "4", "0"], "--batch-sizes must be >= 1, got 0"),
    (["--slots", "-3"], "--slots must be >= 1, got -3"),
    (["--reps", "0"], "--reps must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--budget", "0"], "--budget must be positive"),
])
def test_bench_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    main(["bench", "--backends", "--compile", "off", "--ops", "read", "step", "--batch-sizes", "1", "2",
          "--slots", "8", "--memory-width", "4", "--controller-size", "6", "--length", "2", "--warmup", "0",
          "--reps", "3", "--budget", "0.01", "--threads", "1", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert "1 thread(s)" in text and "step        fwd+bwd     2     8  reference" in text
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["threads"] == [1] and len(data["results"]) == 8  # 2 ops x 2 modes x 2 batch sizes
    assert all(r["status"] == "ok" and r["speedup"] == 1.0 for r in data["results"])
    assert all(r["seq_per_s"] > 0 for r in data["results"] if r["op"] == "step")
    assert (out / "bench.csv").read_text().count("\n") == 9 and (out / "bench.png").stat().st_size > 0



def test_per_step_contender_names(monkeypatch, backend_cache):
    # A stand-in backend whose launchers list a whole-sequence node on the CPU, as the C++ extension's do.
    ops = types.SimpleNamespace(**{op: getattr(reference, op) for op in ("address", "read", "write", "memory_step")},
                                kernels=types.SimpleNamespace(FUSED_SEQUENCE_DEVICES=("cpu",)))
    monkeypatch.setitem(BACKENDS, "seq", Backend("seq", "a sequence node on cpu", lambda: ("cpu",), lambda: ops))
    assert split_contender("seq-per-step") == ("seq", True) and split_contender("seq") == ("seq", False)
    assert has_sequence_node("seq", "cpu") and not has_sequence_node("reference", "cpu")
    assert per_step_contenders(["reference", "seq"], "cpu") == ["seq-per-step"]
    assert check_contenders(["seq", "seq-per-step"], "cpu") == ["reference", "seq", "seq-per-step"]
    assert not any(name.endswith("-per-step") for name in default_contenders("cpu"))  # opt-in on the CPU
    # A per-step contender times the whole step only.
    (row,) = run_contender("seq-per-step", [Case("read", "fwd", 2, 5)], TINY)
    assert row["status"].startswith("error: ValueError: contender 'seq-per-step' times the whole step only")


def test_bench_per_step_contender_end_to_end(tmp_path, capsys):
    backend_or_skip("cpp", "cpu")
    out = tmp_path / "bench"
    main(["bench", "--backends", "cpp", "cpp-per-step", "--compile", "off", "--ops", "read", "step", "--modes",
          "fwd+bwd", "--batch-sizes", "2", "--slots", "8", "--memory-width", "4", "--controller-size", "6",
          "--length", "2", "--warmup", "0", "--reps", "3", "--budget", "0.01", "--threads", "1", "--out", str(out),
          "--no-progress", "--no-plot"])
    text = capsys.readouterr().out
    assert "vs per-step" in text and "<backend>-per-step: the backend's model with fuse_sequence = False" in text
    rows = {(r["op"], r["contender"]): r for r in json.loads((out / "bench.json").read_text())["results"]}
    assert ("read", "cpp-per-step") not in rows  # the whole step only
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["step", "cpp"]["runs_as"] == "sequence node"
    assert rows["step", "cpp-per-step"]["runs_as"] == "step nodes"  # one fused node per time step
    assert rows["step", "reference"]["runs_as"] == "per-op"
    node, per_step = rows["step", "cpp"], rows["step", "cpp-per-step"]
    assert node["vs_per_step"] == pytest.approx(per_step["median_ms"] / node["median_ms"])


def test_gpu_suite_dry_run_writes_every_table(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_suite.py")
    result = subprocess.run([sys.executable, script, str(tmp_path), "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "results.md").read_text()
    assert "state: complete" in text and "commit: " in text
    for title in ("## Whole training step", "vs triton-per-step", "vs triton-rows8", "## Tests", "### memory_step, fwd+bwd",
                  "### write, fwd", "## Launches per call", "## memory_step bandwidth"):
        assert title in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["commit"] and data["meta"]["dry_run"] is True
    step = {r["contender"]: r for r in data["results"] if r["op"] == "step"}
    assert step["triton"]["runs_as"] == "sequence node" and step["triton-per-step"]["runs_as"] == "per-op"
    assert step["triton-ieee"]["runs_as"] == step["triton-tf32"]["runs_as"] == step["triton-rows8"]["runs_as"] \
        == "sequence node"
    assert {"reference", "compile"} <= set(step) and all(r["status"] == "ok" for r in step.values())
    assert "vs_per_step" in step["triton"]
    assert (tmp_path / "results.csv").read_text().count("\n") == len(data["results"]) + 1


def test_sequence_sweep_dry_run_checks_then_times_each_setting(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "sequence_sweep.py")
    result = subprocess.run([sys.executable, script, str(tmp_path), "--dry-run", "--batch-sizes", "2",
                             "--forward", "depth=16,precision=tf32x3,gates=4,rows=8", "memory=1000", "--backward",
                             "warps=16,rows=1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "sweep.json").read_text())
    rows = {(r["kernel"], r["setting"]): r for r in data["rows"]}
    assert set(rows) == {("forward", ""), ("forward", "depth=16,precision=tf32x3,gates=4,rows=8"),
                         ("forward", "memory=1000"), ("backward", ""), ("backward", "warps=16,rows=1")}
    assert rows["forward", "memory=1000"]["status"].startswith("failed: ValueError")  # named, not timed
    timed = [r for key, r in rows.items() if key != ("forward", "memory=1000")]
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["diff"] <= 1e-6 for r in timed)
    assert any("default against the eager reference" in note for note in data["notes"])
    assert "| backward | warps=16,rows=1 | 2 |" in (tmp_path / "sweep.md").read_text()
    for flag, value, message in (("--jobs", "0", "--jobs must be at least 1, got 0"),
                                 ("--batch-sizes", "0", "--batch-sizes must be positive, got [0]")):
        bad = subprocess.run([sys.executable, script, str(tmp_path), "--dry-run", flag, value], capture_output=True,
                             text=True)
        assert bad.returncode == 2 and message in bad.stderr


def test_gpu_suite_skips_what_its_time_limit_cannot_reach(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_suite.py")
    result = subprocess.run([sys.executable, script, str(tmp_path), "--dry-run", "--limit", "20"], capture_output=True,
                            text=True)
    assert result.returncode in (0, 3), result.stderr[-3000:]  # 3: the watchdog ended it at the limit
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"] and all(r["status"] == "skipped (time budget)" for r in data["results"])
    assert "skipped (time budget)" in (tmp_path / "results.md").read_text()
    bad = subprocess.run([sys.executable, script, str(tmp_path), "--dry-run", "--limit", "5"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--limit must be at least 20 seconds, got 5" in bad.stderr


def _row(contender, ms, status="ok", **extra):
    row = {"op": "step", "mode": "fwd+bwd", "batch": 4, "slots": 8, "contender": contender, "status": status,
           **extra}
    return row if status != "ok" else {**row, "median_ms": ms, "max_error": 0.0, "seq_per_s": 4 / (ms / 1e3)}


def test_merge_rounds_takes_the_median_over_rounds():
    rounds = [[_row("reference", 10.0), _row("cpp", 2.0)], [_row("reference", 30.0), _row("cpp", 1.0)],
              [_row("reference", 20.0), _row("cpp", 9.0)]]
    merged = {r["contender"]: r for r in merge_rounds(rounds)}
    assert merged["reference"]["median_ms"] == 20.0 and merged["reference"]["round_ms"] == [10.0, 30.0, 20.0]
    assert merged["cpp"]["median_ms"] == 2.0 and merged["cpp"]["seq_per_s"] == 2000.0
    assert merged["cpp"]["rounds"] == 3


def test_merge_rounds_reports_a_failed_round():
    rounds = [[_row("cpp", 2.0)], [_row("cpp", None, status="error: worker failed: boom")]]  # as run_isolated
    (row,) = merge_rounds(rounds)
    assert row["status"] == "error: worker failed: boom" and row["rounds"] == 2


def test_bench_rounds_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    main(["bench", "--backends", "--compile", "off", "--ops", "read", "--modes", "fwd", "--batch-sizes", "2",
          "--slots", "8", "--memory-width", "4", "--warmup", "0", "--reps", "3", "--budget", "0.01",
          "--threads", "1", "--rounds", "2", "--out", str(out), "--no-progress", "--no-plot"])
    assert "median of 2 alternating rounds" in capsys.readouterr().out
    data = json.loads((out / "bench.json").read_text())
    (row,) = data["results"]
    assert data["meta"]["rounds"] == 2 and row["rounds"] == 2 and len(row["round_ms"]) == 2
    assert row["median_ms"] == pytest.approx(sum(row["round_ms"]) / 2)

def _cpu_kernels_script(*args):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cpu_kernels.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)


def test_cpu_kernels_script_times_both_passes():
    backend_or_skip("cpp", "cpu")
    result = _cpu_kernels_script("--batch", "3", "--memories", "2", "--reps", "2", "--rounds", "2")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    times = [float(x) for x in re.findall(r"(?:median|min) ([0-9.]+)", line)]
    assert "forward median" in line and "backward median" in line and len(times) == 4
    assert all(t > 0 for t in times)


@pytest.mark.parametrize("argv, message", [(["--batch", "0"], "--batch must be at least 1, got 0"),
                                           (["--csrc", "/nonexistent"], "has no ntm_cpu.cpp")])
def test_cpu_kernels_script_argument_errors(argv, message):
    result = _cpu_kernels_script(*argv)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_cpu_gemm_orientation_script():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "cpu_gemm_orientation.py")
    result = subprocess.run([sys.executable, script, "--batch", "4", "--threads", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "as written" in line]
    times = [float(x) for r in rows for x in re.findall(r"(?:written|transposed)\s+([0-9.]+)", r)]
    assert len(rows) == 8 and len(times) == 16 and all(t > 0 for t in times)
    bad = subprocess.run([sys.executable, script, "--batch", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--batch and --threads must be at least 1" in bad.stderr


def test_cpu_sequence_script():
    backend_or_skip("cpp", "cpu")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cpu_sequence.py")
    result = subprocess.run([sys.executable, script, "--batch-sizes", "3", "--reps", "2", "--length", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("B=3")]
    times = [float(x) for x in re.findall(r"([0-9.]+) /\s+([0-9.]+)", row) for x in x]
    assert len(times) == 4 and all(t > 0 for t in times) and "per-step / sequence" in row
    bad = subprocess.run([sys.executable, script, "--reps", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr and "Traceback" not in bad.stderr
