"""`ntm-fast profile`: the analytic byte model against hand-computed numbers and the real model's sizes,
the fused and split reports, CLI argument errors, and one tiny end-to-end run writing its files."""
import json

import pytest

from cases import backend_or_skip
from ntm_fast.ops import dispatch, reference
from ntm_fast.ops.dispatch import BACKENDS, Backend
from ntm_fast.tools.cli import main
from ntm_fast.model import NTMCell
from ntm_fast.tools.profiling import traffic_model

SIZES = dict(B=2, N=3, M=4, R=1, W=1, S=1, C=5, X=6, Y=7)


def test_traffic_model_by_hand():
    # H = 2 heads, K = 3 shifts; 4-byte elements. Forward: inputs + outputs + parameters; backward:
    # 2 x inputs (saved, their gradients) + outputs (their gradients) + 2 x parameters.
    t = traffic_model(**SIZES, num_params=100)
    # addressing: memory 2*3*4=24, heads 2*2*(4+3+3)=40, w_prev 2*2*3=12 in; w 12 out.
    assert t["addressing"] == (4 * (24 + 40 + 12 + 12), 4 * (2 * 76 + 12))
    # read: memory 24 + w 2*1*3=6 in; reads 2*1*4=8 out.
    assert t["read"] == (4 * 38, 4 * (2 * 30 + 8))
    # write: memory 24 + w 6 + erase, add 16 in; memory 24 out.
    assert t["write"] == (4 * 70, 4 * (2 * 46 + 24))
    # fused: memory read once and written once: 24 + 40 + 16 + 12 in; reads 8 + weightings 12 + memory 24 out.
    assert t["memory interaction"] == (4 * 136, 4 * (2 * 92 + 44))
    # output/loss: h 2*5 + reads 2*4 + targets 2*7 in, logits 14 out, weights 7*9 + 7.
    assert t["output/loss"] == (4 * (32 + 14 + 70), 4 * (2 * 32 + 14 + 2 * 70))
    # controller: [x; r] 2*10 + h, c 2*2*5 in; h, c 20 + head outputs 2*28 out; LSTM 4*5*10 + 4*25 + 8*5
    # plus head layer 6*28 parameters.
    assert t["controller"] == (4 * (40 + 76 + 508), 4 * (2 * 40 + 76 + 2 * 508))
    assert t["optimizer"] == (4 * 9 * 100, 0)
    assert traffic_model(**SIZES, num_params=100, element_size=8)["read"] == (8 * 38, 8 * 68)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_traffic_model_parameters_match_the_model(controller):
    # With B = 0 only the parameters are left: they must be the real layers' parameter counts.
    s = dict(SIZES, R=2, W=3, S=2)
    cell = NTMCell(s["X"], s["Y"], controller=controller, controller_size=s["C"], memory_slots=s["N"],
                   memory_width=s["M"], read_heads=s["R"], write_heads=s["W"], shift_range=s["S"])
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    t = traffic_model(**dict(s, B=0), num_params=0, controller=controller, element_size=1)
    assert t["controller"][0] == count(cell.controller, cell.heads)
    assert t["output/loss"][0] == count(cell.output)
    assert t["memory interaction"] == (0, 0)


TINY = ["--batch-size", "2", "--length", "2", "--controller-size", "6", "--memory-slots", "8", "--memory-width",
        "4", "--warmup", "0", "--reps", "3", "--budget", "0.01", "--threads", "1"]


def test_profile_end_to_end_reference_split(tmp_path, capsys):
    main(["profile", *TINY, "--backend", "reference", "--trace", str(tmp_path / "trace.json"),
          "--json", str(tmp_path / "profile.json")])
    text = capsys.readouterr().out
    assert "backend reference on cpu, 1 thread(s)" in text and "memory interaction (sum)" in text
    assert "% of a training step" in text
    report = json.loads((tmp_path / "profile.json").read_text())
    assert set(report["parts"]) == {"controller", "addressing", "read", "write", "output/loss", "optimizer"}
    assert report["time_steps"] == 5 and 0 < report["memory_fraction"]
    # The write saves M_{t-1} (2 x 8 x 4 floats) every time step.
    assert report["memory"]["saved_bytes_per_t"] >= 2 * 8 * 4 * 4
    names = {e.get("name") for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]}
    assert {"controller", "addressing", "read", "write", "output/loss", "backward", "optimizer"} <= names


def test_profile_fused_backend_reports_one_memory_interaction(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(BACKENDS, "fused", Backend("fused", "the reference under another name",
                                                   lambda: ("cpu",), lambda: reference))
    main(["profile", *TINY, "--backend", "fused", "--json", str(tmp_path / "p.json")])
    dispatch.forget()  # forget the stand-in
    assert "memory interaction (sum)" not in capsys.readouterr().out
    report = json.loads((tmp_path / "p.json").read_text())
    assert set(report["parts"]) == {"controller", "memory interaction", "output/loss", "optimizer"}


def test_profile_shows_the_sequence_node_as_its_own_part(tmp_path, capsys):
    backend_or_skip("cpp", "cpu")  # runs the whole sequence as one node on the CPU
    main(["profile", *TINY, "--backend", "cpp", "--trace", str(tmp_path / "trace.json"),
          "--json", str(tmp_path / "p.json")])
    text = capsys.readouterr().out
    assert "the step ran as: sequence node" in text and "not what this step ran" in text
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["runs_as"] == "sequence node" and report["memory_fraction"] is None
    assert set(report["parts"]) == {"sequence node", "loss", "optimizer"}
    assert set(report["per_step_parts"]) == {"controller", "memory interaction", "output/loss"}
    assert report["parts"]["sequence node"]["fwd_bwd_s"] > 0 and report["parts"]["sequence node"]["min_bytes"] is None
    assert report["parts"]["sequence node"]["saved_bytes_per_t"] > 0  # the node's tape
    names = {e.get("name") for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]}
    assert {"sequence node", "loss", "backward", "optimizer"} <= names and "controller" not in names


def test_profile_per_step_contender(tmp_path, capsys):
    backend_or_skip("cpp", "cpu")
    main(["profile", *TINY, "--backend", "cpp-per-step", "--json", str(tmp_path / "p.json")])
    text = capsys.readouterr().out
    assert "backend cpp-per-step" in text and "the step ran as: step nodes" in text
    report = json.loads((tmp_path / "p.json").read_text())
    assert set(report["parts"]) == {"controller", "memory interaction", "output/loss", "optimizer"}
    assert report["per_step_parts"] is None and report["memory_fraction"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--backend", "reference-per-step"], "backend 'reference' has no whole-sequence node for cpu tensors"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--length", "0"], "--length must be >= 1, got 0"),
    (["--memory-slots", "0", "--backend", "reference"], "'memory_slots' must be an integer >= 1"),
])
def test_profile_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
