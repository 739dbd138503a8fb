"""Training: the loss falls, a resumed run reproduces the uninterrupted one exactly, an injected NaN
gradient triggers a rollback, and a checkpoint write that dies leaves the previous checkpoint intact."""
import csv
import logging
import os

import pytest
import torch

from ntm_fast.tools import train as train_mod
from ntm_fast.tools.runfolder import UsageError
from ntm_fast.tools.train import Trainer, TrainConfig, load_checkpoint

TINY = dict(controller_size=16, memory_slots=12, memory_width=6)


def config(tmp_path, **over):
    base = dict(steps=30, batch_size=8, max_length=4, eval_every=1000, checkpoint_every=10, out_dir=str(tmp_path),
                backend="reference", final_eval=False, plots=False, progress=False, model=dict(TINY),
                select_sequences=8, confirm_sequences=8)
    base.update(over)
    return TrainConfig(**base)


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_loss_falls(tmp_path):
    Trainer(config(tmp_path, steps=150, optimizer="adam", lr=3e-3, max_length=3)).fit()
    values = [float(v) for _, v in losses(tmp_path)]
    first, last = sum(values[:15]) / 15, sum(values[-15:]) / 15
    assert last < 0.8 * first, (first, last)


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    Trainer(config(tmp_path / "straight")).fit()

    killed = Trainer(config(tmp_path / "killed"))
    calls = {"n": 0}

    def kill_at_step_25(grad):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt  # as if the process died mid-run, after the step-20 checkpoint
        return grad

    killed.model.cell.output.bias.register_hook(kill_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert load_checkpoint(str(tmp_path / "killed" / "checkpoint.pt"))["step"] == 20

    resumed = Trainer(config(tmp_path / "killed"))
    resumed.resume()
    assert resumed.step == 20
    resumed.fit()
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert [s for s, _ in losses(tmp_path / "killed")] == list(range(1, 31))


def test_injected_nan_gradient_rolls_back_and_training_goes_on(tmp_path, caplog):
    trainer = Trainer(config(tmp_path, steps=30, eval_every=2))
    lr0 = trainer.lr
    calls = {"n": 0}

    def nan_once_at_step_15(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 15 else grad

    trainer.model.cell.heads.weight.register_hook(nan_once_at_step_15)
    with caplog.at_level(logging.WARNING, logger="ntm_fast.tools.train"):
        summary = trainer.fit()
    assert summary["rollbacks"] == 1
    assert "divergence at step 15 (non-finite loss or gradient): rolled back to step 10" in caplog.text
    assert trainer.lr == pytest.approx(lr0 * 0.5)
    assert trainer.step == 30
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 31))  # rows of the abandoned steps are gone
    assert [e["step"] for e in summary["evaluations"]] == list(range(2, 31, 2))  # so are evaluations 12 and 14
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_repeated_divergence_gives_up_with_a_clear_error(tmp_path):
    trainer = Trainer(config(tmp_path, steps=30, max_rollbacks=2))
    trainer.model.cell.heads.weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(train_mod.TrainingDiverged, match="diverged 3 times"):
        trainer.fit()


def test_a_checkpoint_write_that_dies_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, steps=10))
    trainer.fit()
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()

    real_save = torch.save

    def dying_save(obj, f):
        if not hasattr(f, "fileno"):  # the payload, serialised in memory first
            return real_save(obj, f)
        f.write(b"partial bytes")  # the file itself: dies halfway
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert path.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # no temporary file left


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    Trainer(config(tmp_path, steps=10)).fit()
    other = Trainer(config(tmp_path, steps=10, model=dict(TINY, memory_slots=16)))
    with pytest.raises(UsageError, match="'memory_slots' is 16, but the checkpoint's model has 12"):
        other.resume()


def test_fit_writes_eval_and_plots(tmp_path):
    summary = Trainer(config(tmp_path, steps=4, final_eval=True, plots=True, checkpoint_every=2)).fit()
    assert set(summary["final_eval"]) == {"20", "40", "80", "120"}
    for name in ("eval.json", "learning_curve.png", "weightings.png", "checkpoint.pt", "metrics.csv"):
        assert (tmp_path / name).stat().st_size > 0


def lengths(out_dir):
    with open(os.path.join(out_dir, "metrics.csv"), newline="") as f:
        return [int(r["length"]) for r in csv.DictReader(f)]


def test_curriculum_grows_the_length_and_a_resumed_run_reproduces_it(tmp_path):
    grow_always = dict(steps=20, curriculum=True, curriculum_start=1, curriculum_threshold=1e9, eval_every=5,
                       checkpoint_every=5, max_length=3)
    summary = Trainer(config(tmp_path / "straight", **grow_always)).fit()
    assert [e.get("curriculum") for e in summary["evaluations"]] == [2, 3, None, None]  # capped at max_length 3
    assert set(lengths(tmp_path / "straight")[:5]) == {1} and max(lengths(tmp_path / "straight")) == 3
    assert load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))["curriculum_level"] == 3
    # One checkpoint per passed level, taken when it was passed: resuming from it undoes what came after.
    passed = load_checkpoint(str(tmp_path / "straight" / "level-1.pt"))
    assert (passed["step"], passed["curriculum_level"]) == (5, 2)
    assert load_checkpoint(str(tmp_path / "straight" / "level-2.pt"))["step"] == 10
    assert not (tmp_path / "straight" / "level-3.pt").exists()

    first = Trainer(config(tmp_path / "resumed", **dict(grow_always, steps=10)))
    first.fit()
    assert load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))["curriculum_level"] == 3
    resumed = Trainer(config(tmp_path / "resumed", **grow_always))
    resumed.resume()
    assert resumed.level == 3
    resumed.fit()
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert lengths(tmp_path / "resumed") == lengths(tmp_path / "straight")


def test_curriculum_refuses_a_fixed_length_task(tmp_path):
    with pytest.raises(ValueError, match="'curriculum' must be off for task 'ngram'"):
        Trainer(config(tmp_path, task="ngram", curriculum=True, max_length=None))


def test_raising_the_curriculum_level_resets_the_divergence_detector(tmp_path):
    trainer = Trainer(config(tmp_path, curriculum=True, curriculum_start=1))
    trainer.loss_avg, trainer.blowup_run = 0.01, 7  # a harder level's higher loss is no blow-up
    assert trainer._grow_curriculum(eval_errors=0.0) == "curriculum: level 1 -> 2"
    patience = trainer.config.blowup_patience
    # For blowup_patience steps the detector only learns the new level's loss (its highest), then it watches.
    assert not any(trainer._blew_up(loss) for loss in [0.1] + [10.0] * (patience - 1))
    assert trainer.loss_avg == 10.0 and trainer.blowup_run == 0
    assert not any(trainer._blew_up(45.0) for _ in range(patience - 1)) and trainer._blew_up(45.0)
    assert trainer._grow_curriculum(eval_errors=5.0) is None and trainer.level == 2  # above the threshold


def test_a_fresh_run_refuses_a_used_folder_unless_it_may_move_the_old_run_aside(tmp_path):
    Trainer(config(tmp_path, steps=10, seed=1)).fit()
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoint.pt", "metrics.csv", "eval.json")}
    with pytest.raises(UsageError, match="holds another run .*checkpoint.pt.*--resume.*--overwrite") as err:
        Trainer(config(tmp_path, steps=5)).fit()
    assert err.value.field == "out_dir"
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # untouched
    Trainer(config(tmp_path, steps=5), overwrite=True).fit()
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4, 5]
    assert {name: (tmp_path / "previous-1" / name).read_bytes() for name in before} == before  # moved, intact
    Trainer(config(tmp_path, steps=3), overwrite=True).fit()
    assert [s for s, _ in losses(tmp_path / "previous-2")] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "run.lock").exists()  # released at the end


def test_resume_from_a_level_checkpoint_with_a_new_learning_rate(tmp_path):
    grow_always = dict(steps=10, curriculum=True, curriculum_start=1, curriculum_threshold=1e9, eval_every=5,
                       checkpoint_every=5, max_length=3, optimizer="adam", lr=1e-3)
    Trainer(config(tmp_path, **grow_always)).fit()
    again = Trainer(config(tmp_path, **dict(grow_always, steps=12)))
    again.resume(str(tmp_path / "level-1.pt"), lr=2.5e-4)
    assert (again.step, again.level, again.lr) == (5, 2, 2.5e-4)
    again.fit()
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 13))  # rows after the level checkpoint replaced
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == [1e-3] * 5 + [2.5e-4] * 7
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["optimizer"]["param_groups"][0]["lr"] == 2.5e-4
    with pytest.raises(UsageError, match="'lr' must be a positive number, got -1.0"):
        Trainer(config(tmp_path, **grow_always)).resume(lr=-1.0)


def test_curriculum_lr_switches_the_learning_rate_at_a_level(tmp_path):
    grow_always = dict(steps=15, curriculum=True, curriculum_start=1, curriculum_threshold=1e9, eval_every=5,
                       checkpoint_every=5, max_length=4, optimizer="adam", lr=1e-3, curriculum_lr={3: 2e-4})
    Trainer(config(tmp_path, **grow_always)).fit()
    with open(tmp_path / "metrics.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == [1e-3] * 10 + [2e-4] * 5  # level 2 at step 5 (no entry), level 3 at step 10
    with pytest.raises(ValueError, match="'curriculum_lr' must be a mapping of curriculum levels 1..20"):
        Trainer(config(tmp_path, **dict(grow_always, curriculum_lr={99: 1e-4})))


# --- the best model and stopping once solved ----------------------------------------------------------------
def test_the_run_keeps_its_best_model_by_the_selection_score(tmp_path):
    trainer = Trainer(config(tmp_path, steps=60, eval_every=10, optimizer="adam", lr=3e-3))
    summary = trainer.fit()
    selections = [e for e in summary["evaluations"] if "selection" in e]
    assert [e["step"] for e in selections] == [10, 20, 30, 40, 50, 60]
    assert all(set(e["selection"]) == {"20", "120"} for e in selections)  # copy's targets: lengths 20 and 120

    def score(errors):  # the worst ratio of errors to target
        return max(errors["20"] / 0.1, errors["120"] / 1.0)

    best = min(selections, key=lambda e: (score(e["selection"]), e["step"]))
    assert summary["best"]["step"] == best["step"]
    assert summary["best"]["errors"] == best["selection"]
    saved = load_checkpoint(str(tmp_path / "best.pt"))
    assert saved["step"] == best["step"] and saved["best"]["step"] == best["step"]
    # best.pt holds that step's model: scoring it again gives the recorded errors.
    again = Trainer(config(tmp_path / "again", steps=60))
    again.model.load_state_dict(saved["model"])
    assert again.select()["errors"] == best["selection"]
    # The final evaluation is of that model, not of the last step's.
    assert trainer.best_model() is not trainer.model or best["step"] == 60


def test_a_resumed_run_keeps_the_best_of_before(tmp_path):
    Trainer(config(tmp_path, steps=20, eval_every=10)).fit()
    before = load_checkpoint(str(tmp_path / "checkpoint.pt"))["best"]
    resumed = Trainer(config(tmp_path, steps=40, eval_every=10))
    resumed.resume()
    assert resumed.best == before
    summary = resumed.fit()
    assert summary["best"]["score"] <= before["score"]


def test_keep_best_off_writes_no_best_model(tmp_path):
    summary = Trainer(config(tmp_path, steps=20, eval_every=10, keep_best=False)).fit()
    assert not (tmp_path / "best.pt").exists() and "best" not in summary
    assert all("selection" not in e for e in summary["evaluations"])


def test_stop_when_solved_ends_the_run_at_the_first_evaluation_meeting_the_targets(tmp_path, monkeypatch):
    from ntm_fast.tools.tasks.copy import CopyTask

    monkeypatch.setattr(CopyTask, "solved_at", {"20": 1e9, "120": 1e9})  # met by any model
    summary = Trainer(config(tmp_path, steps=100, eval_every=10, stop_when_solved=True)).fit()
    assert summary["solved_at_step"] == 10 and summary["steps"] == 10
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 10  # the stopped run is resumable
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 11))


def test_a_selection_meeting_the_targets_counts_only_once_other_sequences_confirm_it(tmp_path, monkeypatch):
    from ntm_fast.tools.tasks.copy import CopyTask

    monkeypatch.setattr(CopyTask, "solved_at", {"20": 1e9, "120": 1e9})  # met by any model
    real, confirmations = train_mod.evaluate, []

    def evaluate(*args, **kwargs):  # the confirmation's sets fail at the first two evaluations (two points each)
        seed = args[6] if len(args) > 6 else kwargs.get("seed")
        if seed == train_mod.CONFIRM_SEED:
            confirmations.append(args[2])
            if len(confirmations) <= 4:
                return 2e9
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    summary = Trainer(config(tmp_path, steps=100, eval_every=10, stop_when_solved=True, confirm_sequences=16)).fit()
    assert summary["solved_at_step"] == 30 and summary["steps"] == 30
    confirmed = [(e["step"], e["confirmed"]["20"]) for e in summary["evaluations"] if "confirmed" in e]
    assert [step for step, _ in confirmed] == [10, 20, 30] and confirmed[0][1] == 2e9 and confirmed[2][1] < 1e9
    assert confirmations == [20, 120] * 3
    assert summary["best"]["solved"]


def stuck_selection(trainer):
    """A selection score that never improves (as a model stuck far from its targets)."""
    return {"errors": {"20": 50.0, "120": 400.0}, "score": 500.0, "solved": False}


def test_an_attempt_whose_score_stalls_starts_again_from_a_fresh_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "select", stuck_selection)
    trainer = Trainer(config(tmp_path, steps=70, eval_every=10, restart_patience=20))
    starts, real_restart = [], trainer.restart

    def restart():
        trainer.optimizer.param_groups[0]["lr"] = 1.0  # as if rollbacks had lowered it: the new attempt resets it
        real_restart()
        starts.append(({k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer.lr))

    trainer.restart = restart
    summary = trainer.fit()
    # Each attempt's best score comes at its first evaluation; 20 steps later it has not improved.
    assert [e["step"] for e in summary["evaluations"] if "restart" in e] == [30, 60]
    assert ("attempt 1 (from step 0) has not improved on its best score 500 (step 10) in 20 steps: attempt 2 starts "
            "from a fresh model (seed 1000)") in capsys.readouterr().out
    assert summary["attempt"] == 3 and summary["attempt_started_at"] == 60 and summary["steps"] == 70
    # Attempt n starts from the model a run with seed + 1000 (n - 1) starts from, at the starting rate.
    for number, (state, lr) in enumerate(starts, start=2):
        fresh = Trainer(config(tmp_path / f"fresh-{number}", seed=1000 * (number - 1)))
        assert all(torch.equal(state[k], v) for k, v in fresh.model.state_dict().items())
        assert lr == fresh.lr
    # The best model is kept over the attempts (the first, never beaten); the checkpoint knows its attempt.
    assert summary["best"]["step"] == 10
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["attempt"] == {
        "number": 3, "started": 60, "best_score": 500.0, "best_step": 70}


def test_an_attempt_that_keeps_improving_is_not_restarted(tmp_path, monkeypatch):
    scores = iter(range(100, 0, -1))
    monkeypatch.setattr(Trainer, "select", lambda self: {**stuck_selection(self), "score": float(next(scores))})
    summary = Trainer(config(tmp_path, steps=60, eval_every=10, restart_patience=20)).fit()
    assert summary["attempt"] == 1 and not any("restart" in e for e in summary["evaluations"])


def test_a_run_resumed_after_a_restart_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "select", stuck_selection)
    Trainer(config(tmp_path / "straight", steps=40, eval_every=10, restart_patience=20)).fit()
    killed = Trainer(config(tmp_path / "killed", steps=40, eval_every=10, restart_patience=20))
    calls = {"n": 0}

    def kill_at_step_35(grad):
        calls["n"] += 1
        if calls["n"] == 35:
            raise KeyboardInterrupt  # after the restart at step 30 and its checkpoint
        return grad

    killed.model.cell.output.bias.register_hook(kill_at_step_35)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = Trainer(config(tmp_path / "killed", steps=40, eval_every=10, restart_patience=20))
    resumed.resume()
    assert resumed.step == 30 and resumed.attempt["number"] == 2
    resumed.fit()
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert (load_checkpoint(str(tmp_path / "killed" / "checkpoint.pt"))["attempt"]
            == load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))["attempt"])


@pytest.mark.parametrize("over, message", [
    (dict(task="associative-recall", max_length=None), "'restart_patience' must be None for task 'associative-recall'"),
    (dict(keep_best=False), "'restart_patience' must be None without keep_best"),
    (dict(restart_patience=0), "'restart_patience' must be None or an integer >= 1"),
])
def test_restart_patience_refuses_what_it_cannot_apply_to(tmp_path, over, message):
    with pytest.raises(UsageError, match=message):
        Trainer(config(tmp_path, **{"restart_patience": 10, **over}))


def test_stop_when_solved_needs_a_task_with_targets(tmp_path):
    with pytest.raises(UsageError, match="'stop_when_solved' must be off for task 'associative-recall'"):
        Trainer(config(tmp_path, task="associative-recall", max_length=None, stop_when_solved=True))


def test_a_collapse_that_began_before_a_checkpoint_rolls_back_past_it(tmp_path, caplog):
    # The loss jumps at step 18 and stays up: detected at step 22 (patience 5), after the checkpoint due at 20,
    # which waited for the loss to come back; the rollback lands at step 10, before the collapse.
    trainer = Trainer(config(tmp_path, steps=40, checkpoint_every=10, blowup_patience=5))
    real_step, collapsed = trainer.train_step, {"on": True}

    def step():
        loss, errors, length = real_step()
        if collapsed["on"] and trainer.step + 1 >= 18:
            return loss * 100, errors, length
        return loss, errors, length

    def rollback(why, real_rollback=trainer.rollback):
        collapsed["on"] = False
        real_rollback(why)

    trainer.train_step, trainer.rollback = step, rollback
    with caplog.at_level(logging.WARNING, logger="ntm_fast.tools.train"):
        trainer.fit()
    assert "divergence at step 22 (sustained loss blow-up): rolled back to step 10" in caplog.text
    assert trainer.step == 40 and load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 40


def test_diverging_again_from_the_same_checkpoint_goes_back_to_the_one_before(tmp_path, caplog):
    trainer = Trainer(config(tmp_path, steps=40, checkpoint_every=10))
    fails = {"left": 2}  # step 25 diverges twice: once from the step-20 checkpoint, once more after rolling back

    def nan_at_step_25(grad):
        if trainer.step + 1 == 25 and fails["left"]:
            fails["left"] -= 1
            return grad * float("nan")
        return grad

    trainer.model.cell.output.bias.register_hook(nan_at_step_25)
    with caplog.at_level(logging.WARNING, logger="ntm_fast.tools.train"):
        trainer.fit()
    rollbacks = [line for line in caplog.text.splitlines() if "rolled back" in line]
    assert len(rollbacks) == 2
    assert "divergence at step 25 (non-finite loss or gradient): rolled back to step 20" in rollbacks[0]
    assert "divergence at step 25 (non-finite loss or gradient): rolled back to step 10" in rollbacks[1]
    assert trainer.step == 40 and trainer.rollbacks == 2
    assert load_checkpoint(str(tmp_path / "checkpoint-prev.pt"))["step"] == 30


def test_a_short_run_of_the_defaults_lowers_the_loss(tmp_path):
    # The README's first command as it starts (the paper's model and RMSprop, backend auto), 300 steps.
    trainer = Trainer(TrainConfig(steps=300, out_dir=str(tmp_path), eval_every=300, checkpoint_every=300,
                                  progress=False, plots=False, final_eval=False))
    summary = trainer.fit()
    values = [float(v) for _, v in losses(tmp_path)]
    first, last = sum(values[:20]) / 20, sum(values[-20:]) / 20
    assert last < 0.97 * first, (first, last)
    assert summary["best"]["step"] == 300 and (tmp_path / "best.pt").exists()
