"""The ntm-fast command: train → eval → viz end to end on a tiny run, --help, and argument errors."""
import json
import subprocess
import sys

import pytest

from ntm_fast.cli import main

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
