"""Training: batched, clipped, checkpointed, resumable, and able to recover from divergence.

* Optimiser: RMSprop (lr 1e-4, momentum 0.9, as in the paper §4) or Adam; gradients clipped elementwise
  to ±`clip` (10 by default).
* Checkpoints every `checkpoint_every` steps to `<out_dir>/checkpoint.pt`, written atomically (temporary
  file, fsync, rename): a kill mid-write leaves the previous checkpoint intact. A checkpoint holds the
  model, optimiser, every random-number-generator state and the divergence detector, so a resumed run
  reproduces the uninterrupted run's losses exactly.
* Divergence recovery: a non-finite loss or gradient, or a loss above `blowup_factor` × its running
  average for `blowup_patience` steps in a row, rolls back to the last checkpoint, multiplies the learning
  rate by `lr_decay` and says so in the log. After `max_rollbacks` rollbacks training stops with an error.
* Curriculum (optional): a level that starts at `curriculum_start` and grows by `curriculum_step` whenever
  the periodic evaluation at the current level reaches `curriculum_threshold` errors per sequence or fewer.
  The level caps the training length (the repeat count for repeat copy: `Task.training_batch`) and is part
  of the checkpoint; `<out_dir>/level-N.pt` keeps the state at which level N was passed, and
  `curriculum_lr` switches the learning rate when given levels are reached (repeat copy needs a lower rate
  for its longest sequences).
* Metrics: one CSV row per step in `<out_dir>/metrics.csv` (the `bit_errors` column holds the task's
  metric: bit errors per sequence, or the cost in bits for the n-gram task); evaluations, the final
  generalisation evaluation over the task's `eval_points` among them, in `<out_dir>/eval.json`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..model import NTM
from .tasks import make_task

log = logging.getLogger(__name__)

METRIC_FIELDS = ("step", "sequences", "length", "loss", "bit_errors", "lr", "seconds")


@dataclass
class TrainConfig:
    task: str = "copy"
    steps: int = 3000
    batch_size: int = 32
    optimizer: str = "rmsprop"
    lr: float | None = None  # None: the task's rate for this optimizer (paper Tables 1-3), else DEFAULT_LR
    momentum: float = 0.9
    clip: float = 10.0
    max_length: int | None = None  # cap on training sequence length (quick runs)
    curriculum: bool = False  # grow the maximum training length as the error falls (see the module doc)
    curriculum_start: int | None = None  # None: the lowest level (the task's shortest training length)
    curriculum_step: int = 1
    curriculum_threshold: float = 1.0  # errors per sequence at the current level
    curriculum_lr: dict = field(default_factory=dict)  # {level: learning rate from that level on} (curriculum only)
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 4
    checkpoint_every: int = 200
    out_dir: str = "runs/copy"
    device: str = "cpu"
    backend: str = "auto"
    blowup_factor: float = 4.0
    blowup_patience: int = 50
    lr_decay: float = 0.5
    max_rollbacks: int = 5
    final_eval: bool = True
    plots: bool = True
    progress: bool = True
    model: dict = field(default_factory=dict)  # NTM keyword arguments (controller_size, memory_slots, ...)

    def validate(self):
        def bad(name, expected):
            raise ValueError(f"train: '{name}' must be {expected}, got {getattr(self, name)!r}")

        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "eval_batches", "blowup_patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.optimizer not in ("rmsprop", "adam"):
            bad("optimizer", "'rmsprop' or 'adam'")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a positive number")
        if not (math.isfinite(self.clip) and self.clip > 0):
            bad("clip", "a positive number")
        if not 0 < self.lr_decay < 1:
            bad("lr_decay", "in (0, 1)")
        if self.max_length is not None and self.max_length < 1:
            bad("max_length", "an integer >= 1")
        task = make_task(self.task)  # raises for an unknown task
        if self.curriculum:
            lo, hi = task.curriculum_range()
            if lo == hi:
                bad("curriculum", f"off for task {self.task!r}, which trains at the one length {lo}")
            if self.curriculum_start is not None and not lo <= self.curriculum_start <= hi:
                bad("curriculum_start", f"within the task's curriculum levels {lo}..{hi}")
            if self.curriculum_step < 1:
                bad("curriculum_step", "an integer >= 1")
            if not self.curriculum_threshold >= 0:
                bad("curriculum_threshold", "a number >= 0")
            for level, lr in self.curriculum_lr.items():
                if not (isinstance(level, int) and lo <= level <= hi and isinstance(lr, (int, float))
                        and math.isfinite(lr) and lr > 0):
                    bad("curriculum_lr", f"a mapping of curriculum levels {lo}..{hi} to positive learning rates")

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            bad("device", "'cpu' on this machine (no CUDA GPU is visible)")


DEFAULT_LR = {"rmsprop": 1e-4, "adam": 1e-3}


class TrainingDiverged(RuntimeError):
    pass


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path!r} could not be read: {err}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path!r} is not an ntm_fast checkpoint (no model/model_config entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu", backend="auto") -> NTM:
    model = NTM(**ckpt["model_config"], backend=backend).to(device)
    model.load_state_dict(ckpt["model"])
    return model


class Trainer:
    """Owns the model, optimiser, data generators and divergence detector of one training run."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.task = make_task(config.task)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        model_kwargs = {**self.task.defaults.get("model", {}), **config.model}
        self.model = NTM(self.task.input_size, self.task.output_size, backend=config.backend,
                         **model_kwargs).to(self.device)
        lr = config.lr or self.task.defaults.get("lr", {}).get(config.optimizer, DEFAULT_LR[config.optimizer])
        if config.optimizer == "rmsprop":
            # alpha 0.95 as in the NTM paper's RMSprop (Graves 2013 variant).
            self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=lr, momentum=config.momentum,
                                                 alpha=0.95, eps=1e-8)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.data_rng = torch.Generator().manual_seed(config.seed)
        # The curriculum's current level (None without a curriculum).
        self.level = (config.curriculum_start or self.task.curriculum_range()[0]) if config.curriculum else None
        self.step = 0
        self.rollbacks = 0
        self.loss_avg = None  # running average of the loss (divergence detector)
        self.blowup_run = 0
        self.checkpoint_path = os.path.join(config.out_dir, "checkpoint.pt")
        self.metrics_path = os.path.join(config.out_dir, "metrics.csv")

    # --- state ------------------------------------------------------------------------------------------
    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": dataclasses.asdict(self.config),
            "step": self.step,
            "curriculum_level": self.level,
            "rollbacks": self.rollbacks,
            "loss_avg": self.loss_avg,
            "blowup_run": self.blowup_run,
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, ckpt: dict):
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.rollbacks = ckpt["step"], ckpt["rollbacks"]
        self.level = ckpt.get("curriculum_level", self.level)  # checkpoints before the curriculum lack it
        self.loss_avg, self.blowup_run = ckpt["loss_avg"], ckpt["blowup_run"]
        self.data_rng.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])

    def save_checkpoint(self):
        atomic_save(self.state_dict(), self.checkpoint_path)

    def resume(self, path: str | None = None, lr: float | None = None):
        """Continue from `path` (default OUT/checkpoint.pt): OUT/level-N.pt undoes everything after
        curriculum level N was passed. `lr` replaces the checkpoint's learning rate."""
        path = path or self.checkpoint_path
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt["model_config"] != self.model.config():
            raise ValueError(f"checkpoint {path!r} holds a model {ckpt['model_config']} but this run builds "
                             f"{self.model.config()}")
        self.load_state_dict(ckpt)
        if lr is not None:
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"argument 'lr' must be a positive number, got {lr!r}")
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self._truncate_metrics(self.step)
        log.info("resumed from %s at step %d (learning rate %.3g)", path, self.step, self.lr)

    # --- metrics ----------------------------------------------------------------------------------------
    def _truncate_metrics(self, step):
        """Drop metric rows past `step` (written by a run that was killed or rolled back)."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._write_metrics(rows, mode="w")

    def _write_metrics(self, rows, mode="a"):
        os.makedirs(self.config.out_dir, exist_ok=True)
        new = mode == "w" or not os.path.exists(self.metrics_path)
        with open(self.metrics_path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    # --- one step ---------------------------------------------------------------------------------------
    def train_step(self):
        """One optimiser step on a fresh batch. Returns (loss, errors per sequence, length) or None
        when the step diverged (non-finite loss or gradient); the parameters are then left untouched."""
        cfg = self.config
        batch, length = self.task.training_batch(cfg.batch_size, self.data_rng, cfg.max_length, self.level)
        batch = batch.to(self.device)
        self.model.train()
        logits = self.model(batch.inputs)
        loss = self.task.loss(logits, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = torch.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            return None
        torch.nn.utils.clip_grad_value_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        return loss.item(), self.task.errors(logits.detach(), batch).mean().item(), length

    def _blew_up(self, loss):
        """Sustained blow-up: loss above blowup_factor × its running average for blowup_patience steps.
        A negative `blowup_run` counts warm-up steps (after a curriculum level rises), in which the average
        is set to the highest loss seen instead."""
        if self.loss_avg is None or self.blowup_run < 0:
            self.loss_avg = loss if self.loss_avg is None else max(self.loss_avg, loss)
            self.blowup_run = min(self.blowup_run + 1, 0)
            return False
        if loss > self.config.blowup_factor * self.loss_avg:
            self.blowup_run += 1
        else:
            self.blowup_run = 0
            self.loss_avg = 0.98 * self.loss_avg + 0.02 * loss
        return self.blowup_run >= self.config.blowup_patience

    def rollback(self, why: str):
        self.rollbacks += 1
        if self.rollbacks > self.config.max_rollbacks:
            raise TrainingDiverged(f"training diverged {self.rollbacks} times (last: {why}); giving up")
        rollbacks, failed_step = self.rollbacks, self.step + 1
        ckpt = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self.load_state_dict(ckpt)
        self.rollbacks = rollbacks
        new_lr = self.lr * self.config.lr_decay
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._truncate_metrics(self.step)
        # Save at once so that the lowered learning rate and the rollback count survive a crash.
        self.save_checkpoint()
        log.warning("divergence at step %d (%s): rolled back to step %d, learning rate lowered to %.3g",
                    failed_step, why, ckpt["step"], new_lr)

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, length: int, batches: int | None = None, seed: int = 12345, **sample_kwargs) -> float:
        """Mean errors per sequence (the task's metric) at `length` on fixed evaluation batches."""
        return evaluate(self.model, self.task, length, batches or self.config.eval_batches,
                        self.config.batch_size, self.device, seed, **sample_kwargs)

    def length_cap(self) -> int:
        """The longest training length: the task's, or `max_length` where that is shorter."""
        lo, hi = self.task.train_lengths
        return hi if self.config.max_length is None else max(lo, min(self.config.max_length, hi))

    def eval_point(self) -> tuple[int, dict]:
        """(length, other `sample` arguments) of the periodic evaluation: the longest training length, or
        under a curriculum its current level."""
        if self.level is None:
            return self.length_cap(), {}
        return self.task.curriculum_eval(self.length_cap(), self.level)

    def _grow_curriculum(self, eval_errors: float) -> str | None:
        """After an evaluation at the current level: raise the level if it is learnt."""
        if self.level is None or eval_errors > self.config.curriculum_threshold:
            return None
        top = self.task.curriculum_range()[1]
        if self.eval_point() == self.task.curriculum_eval(self.length_cap(), top):
            return None  # at the top already (max_length may cap the levels below the task's highest)
        before, self.level = self.level, min(top, self.level + self.config.curriculum_step)
        # A harder level raises the loss, which is no divergence: re-learn the loss level first.
        self.loss_avg, self.blowup_run = None, -self.config.blowup_patience
        message = f"curriculum: level {before} -> {self.level}"
        new_lrs = [lr for level, lr in sorted(self.config.curriculum_lr.items()) if before < level <= self.level]
        if new_lrs:
            for group in self.optimizer.param_groups:
                group["lr"] = new_lrs[-1]
            message += f", learning rate {new_lrs[-1]:.3g}"
        return message

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config
        os.makedirs(cfg.out_dir, exist_ok=True)
        if self.step == 0 or not os.path.exists(self.checkpoint_path):
            self.save_checkpoint()  # the step-0 checkpoint is the first rollback target, not another run's
        self._truncate_metrics(self.step)  # drops rows another run left in this folder
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, unit="step", dynamic_ncols=True)
        rows, start = [], time.perf_counter()
        eval_log = []
        while self.step < cfg.steps:
            result = self.train_step()
            why = "non-finite loss or gradient" if result is None else (
                "sustained loss blow-up" if self._blew_up(result[0]) else None)
            if why is not None:
                self._write_metrics(rows)
                rows = []
                self.rollback(why)
                bar.n = self.step
                bar.refresh()
                continue
            self.step += 1
            loss, errors, length = result
            rows.append(dict(step=self.step, sequences=self.step * cfg.batch_size, length=length,
                             loss=f"{loss:.6g}", bit_errors=f"{errors:.4g}", lr=f"{self.lr:.4g}",
                             seconds=f"{time.perf_counter() - start:.3f}"))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", bits=f"{errors:.2f}", lr=f"{self.lr:.2g}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                length, kwargs = self.eval_point()
                eval_errors = self.evaluate(length, **kwargs)
                label = self.task.point_label(length, **kwargs)
                eval_log.append({"step": self.step, "length": length, **kwargs, "bit_errors": eval_errors})
                bar.write(f"step {self.step}: eval {self.task.metric} at length {label}: {eval_errors:.3f}")
                passed, grown = self.level, self._grow_curriculum(eval_errors)
                if grown:
                    eval_log[-1]["curriculum"] = self.level
                    # Kept so that a later break-down can be undone: `--resume OUT/level-N.pt`.
                    atomic_save(self.state_dict(), os.path.join(cfg.out_dir, f"level-{passed}.pt"))
                    bar.write(f"{grown} (saved {cfg.out_dir}/level-{passed}.pt)")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._write_metrics(rows)
                rows = []
                self.save_checkpoint()
        bar.close()
        self._write_metrics(rows)
        summary = {"steps": self.step, "sequences": self.step * cfg.batch_size, "rollbacks": self.rollbacks,
                   "train_seconds": time.perf_counter() - start, "evaluations": eval_log}
        if cfg.final_eval:
            errors, optimal = generalization(self.model, self.task, cfg.eval_batches, cfg.batch_size, self.device)
            summary.update(metric=self.task.metric, final_eval=errors, **({"optimal": optimal} if optimal else {}))
            for line in describe(self.task, errors, optimal):
                log.info("final evaluation: %s", line)
        with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if cfg.plots:
            from . import plots

            plots.learning_curve(self.metrics_path, os.path.join(cfg.out_dir, "learning_curve.png"),
                                 metric=self.task.metric)
            plots.weightings(self.model, self.task, os.path.join(cfg.out_dir, "weightings.png"),
                             length=self.length_cap(), device=self.device)
            if cfg.final_eval:
                plots.generalization(self.task, summary["final_eval"], os.path.join(cfg.out_dir, "generalization.png"),
                                     optimal=optimal, trained_to=self.length_cap())
        return summary


def eval_batches(task, length, batches, batch_size, seed=12345, **sample_kwargs):
    """The fixed evaluation batches at `length` (own generator): the same for every model and run."""
    rng = torch.Generator().manual_seed(seed + length)
    return [task.sample(batch_size, length, rng, **sample_kwargs) for _ in range(batches)]


@torch.no_grad()
def evaluate(model, task, length, batches, batch_size, device, seed=12345, **sample_kwargs) -> float:
    """Mean errors per sequence (the task's metric) of `model` on `batches` fixed batches at `length`;
    `sample_kwargs` go to the task's `sample` (repeat copy: `repeats`)."""
    model.eval()
    total = 0.0
    # A model with random memory init draws from torch's generator: fork it so that evaluating does not
    # change the training run's random stream (resumed runs must reproduce uninterrupted ones).
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        for batch in eval_batches(task, length, batches, batch_size, seed, **sample_kwargs):
            batch = batch.to(device)
            total += task.errors(model(batch.inputs), batch).mean().item()
    return total / batches


def generalization(model, task, batches, batch_size, device, points=None) -> tuple[dict, dict]:
    """Errors per sequence at each evaluation point (default: the task's `eval_points`), keyed by label,
    and the optimal predictor's on the same batches where the task has one (n-grams; else empty)."""
    errors, optimal = {}, {}
    for label, length, kwargs in points or task.eval_points():
        errors[label] = evaluate(model, task, length, batches, batch_size, device, **kwargs)
        best = [task.optimal_errors(b) for b in eval_batches(task, length, batches, batch_size, **kwargs)]
        if best[0] is not None:
            optimal[label] = torch.cat(best).mean().item()
    return errors, optimal


def describe(task, errors: dict, optimal: dict) -> list[str]:
    """One line per evaluation point: 'length   40: 0.125 bit errors per sequence'."""
    return [f"length {label:>4}: {value:.3f} {task.metric}"
            + (f" (optimal Bayesian estimator: {optimal[label]:.3f})" if label in optimal else "")
            for label, value in errors.items()]
