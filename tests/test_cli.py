"""The ntm-fast command: train → eval → viz end to end on a tiny run, --help, and argument errors: every
expected failure is one line naming the flag, anything else keeps its traceback."""
import json
import os
import subprocess
import sys

import pytest

from ntm_fast.tools import runfolder, train
from ntm_fast.tools.cli import main
from ntm_fast.tools.train import load_checkpoint

TINY = ["--controller-size", "12", "--memory-slots", "10", "--memory-width", "5"]


def test_train_eval_viz(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--steps", "6", "--batch-size", "4", "--max-length", "3", "--eval-every", "3",
          "--checkpoint-every", "3", "--out", str(out), "--no-progress", "--backend", "reference", *TINY])
    text = capsys.readouterr().out
    assert "training copy on cpu with backend reference" in text and "length  120:" in text
    for name in ("checkpoint.pt", "best.pt", "metrics.csv", "eval.json", "learning_curve.png", "weightings.png"):
        assert (out / name).exists(), name
    # The run folder stands for the model the run kept (best.pt).
    main(["eval", str(out), "--lengths", "2", "5", "--batches", "1", "--batch-size", "2",
          "--json", str(tmp_path / "e.json")])
    text = capsys.readouterr().out
    assert f"checkpoint: {out / 'best.pt'}" in text and "length    5:" in text
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
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["optimizer"]["param_groups"][0]["lr"] == 5e-5


def test_resume_takes_the_runs_settings_from_the_checkpoint(tmp_path, capsys):
    main(["train", "--steps", "2", "--batch-size", "2", "--max-length", "2", "--optimizer", "adam", "--lr", "2e-3",
          "--out", str(tmp_path), "--no-progress", "--no-plots", "--no-final-eval", "--backend", "reference", *TINY])
    main(["train", "--resume", "--steps", "3", "--out", str(tmp_path), "--no-progress", "--no-plots",
          "--no-final-eval", "--backend", "reference"])  # no model, optimizer or batch options: the checkpoint's
    assert "done: 3 steps, 6 sequences" in capsys.readouterr().out
    ckpt = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert ckpt["train_config"]["optimizer"] == "adam" and "betas" in ckpt["optimizer"]["param_groups"][0]
    assert ckpt["model_config"]["memory_slots"] == 10 and ckpt["optimizer"]["param_groups"][0]["lr"] == 2e-3


QUICK = ["--batch-size", "2", "--max-length", "2", "--no-progress", "--no-plots", "--no-final-eval", "--backend",
         "reference", *TINY]


@pytest.mark.parametrize("argv,message", [
    (["eval", "/nonexistent/checkpoint.pt"], "checkpoint '/nonexistent/checkpoint.pt' does not exist"),
    (["eval", "{tmp}/new"], "checkpoint: '{tmp}/new' is a folder without best.pt or checkpoint.pt"),
    (["eval", "{tmp}/c.pt", "--batches", "0"], "argument --batches: must be an integer >= 1, got 0"),
    (["eval", "{tmp}/c.pt", "--json", "{tmp}/no/such/x.json"], "--json must name a file in an existing folder"),
    (["eval", "{tmp}/c.pt", "--png", "{tmp}"], "--png must name a file, but"),
    (["eval", "{tmp}/c.pt", "--device", "gpu"], "--device must be cpu, cuda or cuda:N, got 'gpu'"),
    (["eval", "{tmp}/c.pt", "--backend", "nope"], "--backend: unknown backend 'nope'"),
    (["viz", "{tmp}/c.pt", "--figure", "outputs", "--length", "3"], "--length applies to --figure weightings"),
    (["viz", "{tmp}/c.pt", "--lengths", "0"], "argument --lengths: must be an integer >= 1, got 0"),
    (["viz", "{tmp}/c.pt", "--seed", str(2 ** 64)], "argument --seed: must be an integer in [-2**63, 2**64)"),
    (["train", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["train", "--steps", "-1"], "argument --steps: must be an integer >= 1, got -1"),
    (["train", "--steps", "x"], "argument --steps: expected an integer, got 'x'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["train", "--lr", "0"], "argument --lr: must be a number > 0, got 0"),
    (["train", "--lr", "nan"], "argument --lr: must be a number > 0, got nan"),
    (["train", "--momentum", "1"], "argument --momentum: must be a number >= 0 and < 1, got 1"),
    (["train", "--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (["train", "--max-length", "50"], "--max-length must be an integer within 1..20, the training lengths of task"),
    (["train", "--memory-slots", "0"], "argument --memory-slots: must be an integer >= 1, got 0"),
    (["train", "--memory-init", "zeros"], "argument --memory-init: invalid choice: 'zeros'"),
    (["train", "--backend", "nope"], "--backend: unknown backend 'nope'"),
    (["train", "--device", "cuda:x"], "--device must be cpu, cuda or cuda:N, got 'cuda:x'"),
    (["train", "--curriculum-lr", "3=-1"], "argument --curriculum-lr: expected a LEVEL >= 1 and a positive LR"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer rmsprop only"),
    (["train", "--curriculum-start", "3"], "--curriculum-start applies with --curriculum only"),
    (["train", "--out", "{tmp}/c.pt"], "--out must be a folder, but '{tmp}/c.pt' is a file"),
    (["train", "--out", "{tmp}/c.pt/sub"], "--out must be a folder that can be made"),
    (["train", "--resume", "--out", "{tmp}/empty"], "--resume: found nothing to continue: '{tmp}/empty/checkpoint.pt' "
                                                    "does not exist"),
    (["train", "--resume", "{tmp}/none.pt"], "--resume: checkpoint '{tmp}/none.pt' does not exist"),
    (["train", "--resume", "{tmp}/bad.pt"], "--resume: checkpoint '{tmp}/bad.pt' is corrupt or not a checkpoint"),
    (["train", "--resume", "{tmp}/c.pt", "--momentum", "0.5"], "--momentum is 0.5, but the checkpoint's run has 0.9: "
                                                              "it cannot change when resuming"),
    (["train", "--resume", "{tmp}/c.pt", "--memory-slots", "9"], "--memory-slots is 9, but the checkpoint's model "
                                                                "has 10"),
    (["train", "--resume", "{tmp}/c.pt", "--steps", "1"], "--steps is 1, but the checkpoint is at step 2 already"),
    (["train", "--resume", "{tmp}/c.pt", "--out", "{tmp}", "--overwrite"], "--overwrite cannot apply with --resume "
                                                                            "of a checkpoint in --out"),
    (["train", "--out", "{tmp}"], "--out '{tmp}' holds another run (best.pt, checkpoint-prev.pt, eval.json, "
                                  "metrics.csv): continue it with "
                                  "--resume, move it aside with --overwrite, or choose another folder"),
])
def test_errors_are_one_line_naming_the_flag(argv, message, capsys, tmp_path_factory):
    tmp = tmp_path_factory.getbasetemp() / "errors"
    if not tmp.exists():  # one small run for the cases that need a checkpoint (c.pt at step 2)
        main(["train", "--steps", "2", "--out", str(tmp), *QUICK])
        os.rename(tmp / "checkpoint.pt", tmp / "c.pt")
        (tmp / "bad.pt").write_bytes(b"not a checkpoint")
        (tmp / "new").mkdir()
        capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    if argv[0] == "train" and "--steps" not in argv:
        argv += ["--steps", "3"]
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp / "new")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:1] + QUICK + argv[1:] if argv[0] == "train" else argv)  # argv's options win
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp)) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    with runfolder.lock(str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--steps", "2", "--out", str(tmp_path), *QUICK])
    assert exit_info.value.code == 2
    assert f"--out '{tmp_path}' is in use by another run: pid {os.getpid()} on host" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_overwrite_moves_the_old_run_aside(tmp_path, capsys):
    main(["train", "--steps", "2", "--out", str(tmp_path), *QUICK])
    main(["train", "--steps", "1", "--out", str(tmp_path), "--overwrite", *QUICK])
    assert load_checkpoint(str(tmp_path / "previous-1" / "checkpoint.pt"))["step"] == 2
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 1


def test_a_checkpoint_that_would_run_code_is_a_one_line_refusal(tmp_path, capsys):
    marker = tmp_path / "ran"

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    import torch

    torch.save({"model": RunsACommand(), "model_config": {}}, tmp_path / "hostile.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "hostile.pt")])
    assert exit_info.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert "refused" in err and "could run code" in err and "Traceback" not in err


def test_an_unexpected_failure_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(self):
        raise ValueError("a bug, not a bad argument")

    monkeypatch.setattr(train.Trainer, "fit", broken)
    with pytest.raises(ValueError, match="a bug, not a bad argument"):
        main(["train", "--steps", "1", "--out", str(tmp_path), *QUICK])


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


@pytest.mark.parametrize("argv, expected", [
    ([], dict(steps=10_000, stop_when_solved=True, restart_patience=2_000)),  # copy: until solved, restarts
    (["--steps", "50", "--no-stop-when-solved", "--restart-patience", "300"],
     dict(steps=50, stop_when_solved=False, restart_patience=300)),
    (["--task", "associative-recall"], dict(steps=3_000, stop_when_solved=False, restart_patience=None)),
    (["--config", "associative-recall"], dict(steps=6_000, stop_when_solved=False)),  # the entry's steps
])
def test_copy_trains_until_solved_by_default_and_the_flags_or_another_task_change_that(argv, expected, tmp_path):
    from ntm_fast.tools.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path), *argv])
    config, _ = _train_config(args)
    assert {name: getattr(config, name) for name in expected} == expected
