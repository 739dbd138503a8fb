"""Run folders: one run at a time (a lock naming its holder, taken over once the holder is dead), another
run's files moved aside rather than overwritten, metrics.csv/eval.json replaced atomically with the history
before a resume kept, and the temporary files of killed writes removed."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ntm_fast.tools import runfolder
from ntm_fast.tools.runfolder import UsageError
from ntm_fast.tools.train import Trainer, TrainConfig, load_checkpoint, read_metrics

TINY = dict(controller_size=12, memory_slots=8, memory_width=5)


def config(out, **over):
    base = dict(steps=10, batch_size=4, max_length=3, eval_every=1000, checkpoint_every=5, out_dir=str(out),
                backend="reference", final_eval=False, plots=False, progress=False, model=dict(TINY))
    base.update(over)
    return TrainConfig(**base)


def steps_of(out):
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def evaluations(out):
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)["evaluations"]


# --- the lock -----------------------------------------------------------------------------------------------
def test_a_second_lock_is_refused_naming_the_holder_and_released_locks_are_removed(tmp_path):
    held = runfolder.lock(str(tmp_path))
    with pytest.raises(UsageError, match=rf"is in use by another run: pid {os.getpid()} on host .*, started .* UTC "
                                         r"\(lock file .*run.lock\)") as err:
        runfolder.lock(str(tmp_path))
    assert err.value.field == "out_dir"
    held.release()
    assert not (tmp_path / "run.lock").exists()
    with runfolder.lock(str(tmp_path)):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


HOLDER = textwrap.dedent("""
    import sys, time
    from ntm_fast.tools import runfolder
    held = runfolder.lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
""")


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"in use by another run: pid {holder.pid} on host"):
            runfolder.lock(str(tmp_path))
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays behind, naming the dead run
        holder.wait()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
        with caplog.at_level(logging.WARNING, logger="ntm_fast.tools.train"):
            with runfolder.lock(str(tmp_path)):
                pass
        assert f"taking over the lock of a run that is gone (pid {holder.pid} on host" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_run_on_a_locked_folder_is_refused_and_touches_nothing(tmp_path):
    Trainer(config(tmp_path)).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with runfolder.lock(str(tmp_path)):
        again = Trainer(config(tmp_path, steps=12))
        again.resume()
        with pytest.raises(UsageError, match="is in use by another run"):
            again.fit()
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "run.lock"} == before


# --- moving another run aside --------------------------------------------------------------------------------
def test_move_aside_numbers_the_folders_and_keeps_foreign_files(tmp_path):
    assert not runfolder.holds_run(str(tmp_path))
    for name in ("checkpoint.pt", "level-3.pt", "metrics.csv", "notes.txt"):
        (tmp_path / name).write_text(name)
    assert runfolder.holds_run(str(tmp_path))
    assert runfolder.move_aside(str(tmp_path)) == str(tmp_path / "previous-1")
    assert sorted(os.listdir(tmp_path / "previous-1")) == ["checkpoint.pt", "level-3.pt", "metrics.csv"]
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "previous-1"]  # not a run file: left where it is
    (tmp_path / "eval.json").write_text("{}")
    assert runfolder.move_aside(str(tmp_path)) == str(tmp_path / "previous-2")


# --- metrics.csv and eval.json ---------------------------------------------------------------------------------
def test_a_kill_during_a_metrics_rewrite_leaves_the_old_file(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path))
    trainer.fit()
    before = (tmp_path / "metrics.csv").read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the new file and renaming it

    monkeypatch.setattr(runfolder.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer._truncate_metrics(5)
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    trainer._truncate_metrics(5)
    assert steps_of(tmp_path) == [1, 2, 3, 4, 5]


def test_rows_a_kill_cut_short_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,sequences,length,loss,bit_errors,lr,seconds\n1,4,2,0.69,3,0.0001,0.1\n"
                    "2,8,3,0.68,2,0.0001,0.2\n3,12,2,0.6")  # the last row was being appended
    assert [r["step"] for r in read_metrics(str(path), up_to=10)] == ["1", "2"]
    path.write_text("step,sequences,length,loss,bit_errors,lr,seconds\n1,4,2,0.69,3,0.0001,0.1\n1")  # "1" of "12"
    assert [r["step"] for r in read_metrics(str(path), up_to=10)] == ["1"]


def test_eval_json_keeps_the_evaluations_from_before_a_resume(tmp_path):
    every = dict(steps=20, eval_every=4, checkpoint_every=8)
    Trainer(config(tmp_path / "straight", **every)).fit()

    killed = Trainer(config(tmp_path / "killed", **every))
    calls = {"n": 0}

    def kill_at_step_14(grad):
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt  # after the step-8 checkpoint and the step-12 evaluation
        return grad

    killed.model.cell.output.bias.register_hook(kill_at_step_14)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert [e["step"] for e in evaluations(tmp_path / "killed")] == [4, 8]  # written with the checkpoint
    (tmp_path / "killed" / ".tmp-abc.pt").write_bytes(b"half a checkpoint")  # as a kill mid-save leaves
    resumed = Trainer(config(tmp_path / "killed", **every))
    resumed.resume()
    summary = resumed.fit()
    assert [e["step"] for e in summary["evaluations"]] == [4, 8, 12, 16, 20]
    assert evaluations(tmp_path / "killed") == evaluations(tmp_path / "straight")  # values too
    assert steps_of(tmp_path / "killed") == list(range(1, 21))
    assert not [n for n in os.listdir(tmp_path / "killed") if n.startswith(".tmp-")]


def test_resuming_into_another_folder_carries_the_history_up_to_the_checkpoint(tmp_path):
    Trainer(config(tmp_path / "a", steps=10, eval_every=5)).fit()
    occupied = tmp_path / "b"
    Trainer(config(occupied, steps=5)).fit()
    moved = Trainer(config(occupied, steps=15, eval_every=5))
    moved.resume(str(tmp_path / "a" / "checkpoint.pt"))
    with pytest.raises(UsageError, match="holds another run"):
        moved.fit()
    fresh = Trainer(config(tmp_path / "c", steps=15, eval_every=5))
    fresh.resume(str(tmp_path / "a" / "checkpoint.pt"))
    fresh.fit()
    assert steps_of(tmp_path / "c") == list(range(1, 16))
    assert [e["step"] for e in evaluations(tmp_path / "c")] == [5, 10, 15]
    assert load_checkpoint(str(tmp_path / "c" / "checkpoint.pt"))["step"] == 15
    assert steps_of(tmp_path / "a") == list(range(1, 11))  # the source is left alone


def test_a_process_that_is_not_the_writer_writes_nothing(tmp_path):
    out = tmp_path / "run"
    summary = Trainer(config(out, steps=3), is_writer=False).fit()
    assert summary["steps"] == 3 and not out.exists()


def test_resume_applies_or_refuses_every_setting(tmp_path):
    Trainer(config(tmp_path, steps=5, optimizer="adam", lr=1e-3)).fit()
    for change, message in [(dict(optimizer="rmsprop", lr=None), "'optimizer' is 'rmsprop', but the checkpoint's run "
                                                                  "has 'adam': it cannot change when resuming"),
                            (dict(seed=4), "'seed' is 4, but the checkpoint's run has 0"),
                            (dict(task="repeat-copy", max_length=2), "'task' is 'repeat-copy'"),
                            (dict(steps=4), "'steps' is 4, but the checkpoint is at step 5 already")]:
        with pytest.raises(UsageError, match=message):
            Trainer(config(tmp_path, **{**dict(optimizer="adam", lr=1e-3), **change})).resume()
    # A learning rate set in the config replaces the checkpoint's; the other settings apply as they are.
    again = Trainer(config(tmp_path, steps=7, optimizer="adam", lr=5e-4, clip=1.0))
    again.resume()
    assert again.lr == 5e-4
    again.fit()
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["train_config"]["clip"] == 1.0
    # RMSprop's momentum lives in the optimiser state.
    Trainer(config(tmp_path / "rms", steps=5)).fit()
    with pytest.raises(UsageError, match="'momentum' is 0.5, but the checkpoint's run has 0.9"):
        Trainer(config(tmp_path / "rms", momentum=0.5)).resume()


def test_bad_out_folders_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="'out_dir' must be a folder, but .* is a file"):
        Trainer(config(tmp_path / "file"))
    trainer = Trainer(config(tmp_path / "file" / "sub"))
    with pytest.raises(UsageError, match="'out_dir' must be a folder that can be made: .*Not a directory"):
        trainer.fit()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_out_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(UsageError, match="'out_dir' must be a folder this user can write to"):
        Trainer(config(tmp_path / "ro")).fit()

