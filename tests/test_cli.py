"""The ntm-fast command: train → eval → viz end to end on a tiny run, --help, and argument errors."""
import json
import subprocess
import sys

import pytest
import torch

from ntm_fast.tools.cli import main

TINY = ["--controller-size", "12", "--memory-slots", "10", "--memory-width", "5"]


def test_train_eval_viz(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--steps", "6", "--batch-size", "4", "--max-length", "3", "--eval-every", "3",
          "--checkpoint-every", "3", "--out", str(out), "--no-progress", "--backend", "reference", *TINY])
    text = capsys.readouterr().out
    assert "training copy on cpu with backend reference" in text and "length  120:" in text
    for name in ("checkpoint.pt", "metrics.csv", "eval.json", "learning_curve.png", "weightings.png"):
        assert (out / name).exists(), name
    main(["eval", str(out / "checkpoint.pt"), "--lengths", "2", "5", "--batches", "1", "--batch-size", "2",
          "--json", str(tmp_path / "e.json")])
    assert "length    5:" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "e.json").read_text())["bit_errors"]) == {"2", "5"}
    main(["viz", str(out / "checkpoint.pt"), "--length", "4", "--out", str(tmp_path / "v.png")])
    assert (tmp_path / "v.png").stat().st_size > 0


def test_resume_continues(tmp_path, capsys):
    args = ["train", "--batch-size", "2", "--max-length", "2", "--checkpoint-every", "2", "--out",
            str(tmp_path), "--no-progress", "--no-plots", "--no-final-eval", "--backend", "reference", *TINY]
    main(args + ["--steps", "2"])
    main(args + ["--steps", "4", "--resume"])
    assert "done: 4 steps" in capsys.readouterr().out
    # From a named checkpoint, with a new learning rate.
    main(args + ["--steps", "6", "--resume", str(tmp_path / "checkpoint.pt"), "--lr", "5e-5"])
    assert "done: 6 steps" in capsys.readouterr().out
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"][0]["lr"] == 5e-5


@pytest.mark.parametrize("argv,message", [
    (["eval", "/nonexistent/checkpoint.pt"], "checkpoint '/nonexistent/checkpoint.pt' does not exist"),
    (["train", "--steps", "0", "--no-progress"], "'steps' must be an integer >= 1, got 0"),
    (["train", "--backend", "nope", "--steps", "1", "--no-progress"], "unknown backend 'nope'"),
    (["train", "--memory-init", "zeros", "--steps", "1"], "'memory_init' must be one of"),
])
def test_errors_are_one_line_without_traceback(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + (["--out", str(tmp_path)] if argv[0] == "train" else []))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "ntm_fast", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--backend" in result.stdout and "--resume" in result.stdout


def test_train_from_a_zoo_config_with_overrides_then_eval_and_both_figures(tmp_path, capsys):
    out = tmp_path / "rc"
    main(["train", "--config", "repeat-copy", "--steps", "2", "--batch-size", "2", "--max-length", "2",
          "--no-curriculum", "--no-final-eval", "--out", str(out), "--no-progress", "--backend", "reference", *TINY])
    text = capsys.readouterr().out
    assert "config repeat-copy:" in text and "training repeat-copy" in text
    assert json.loads((out / "eval.json").read_text())["steps"] == 2
    main(["eval", str(out / "checkpoint.pt"), "--lengths", "1", "3", "--repeats", "4", "--batches", "1",
          "--batch-size", "2", "--png", str(tmp_path / "g.png"), "--backend", "reference"])
    assert "length 3 repeats=4: " in capsys.readouterr().out and (tmp_path / "g.png").stat().st_size > 0
    main(["viz", str(out / "checkpoint.pt"), "--figure", "outputs", "--lengths", "2", "3", "--repeats", "2",
          "--out", str(tmp_path / "o.png"), "--backend", "reference"])
    assert (tmp_path / "o.png").stat().st_size > 0


def test_repeats_on_another_task_is_a_one_line_error(tmp_path, capsys):
    main(["train", "--steps", "1", "--batch-size", "2", "--max-length", "2", "--out", str(tmp_path), "--no-progress",
          "--no-plots", "--no-final-eval", "--backend", "reference", *TINY])
    with pytest.raises(SystemExit):
        main(["viz", str(tmp_path / "checkpoint.pt"), "--repeats", "3"])
    assert "--repeats applies to the repeat-copy task, not copy" in capsys.readouterr().err
