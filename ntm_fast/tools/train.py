"""Training: batched, clipped, checkpointed, resumable, and able to recover from divergence.

* Optimiser: RMSprop (lr 1e-4, momentum 0.9, as in the paper §4) or Adam; gradients clipped elementwise
  to ±`clip` (10 by default).
* Checkpoints every `checkpoint_every` steps to `<out_dir>/checkpoint.pt`, written atomically (temporary
  file, fsync, rename): a kill mid-write leaves the previous checkpoint intact. A checkpoint holds the
  model, optimiser, every random-number-generator state (uint8 tensors) and the divergence detector, so a
  resumed run reproduces the uninterrupted run's losses exactly; configurations are plain dicts.
* Checkpoint files hold tensors and plain values only and are read with `torch.load(weights_only=True)`, so
  loading one cannot run code: a file that needs anything else is refused. The state is stored as the bytes
  torch.save makes of it beside their SHA-256; a file whose bytes changed after it was written is reported
  as corrupt, never loaded. Every entry is checked (`load_checkpoint` names a missing or bad one). Files of
  the earlier format (the state dict itself, no checksum) are read the same safe way and checked against
  their zip CRCs instead, with a warning; they are re-saved in the current format at the next checkpoint.
* Run folder (`runfolder.py`): a run locks `out_dir`; a new run refuses a folder holding another run unless
  `overwrite` moves that run's files into `previous-<n>/`; metrics.csv and eval.json are rewritten atomically
  when rows are dropped, and the evaluations before a resume are kept.
* Divergence recovery: a non-finite loss or gradient, or a loss above `blowup_factor` × its running
  average for `blowup_patience` steps in a row, rolls back to the last checkpoint, multiplies the learning
  rate by `lr_decay` and says so in the log. A checkpoint falling due while the loss is above that bound
  waits until it is back below: a collapse that began before a checkpoint would otherwise be saved in it,
  and every rollback would land in the collapse. The checkpoint a new one replaces stays as
  `checkpoint-prev.pt`: a run that diverges again from the checkpoint it just rolled back to goes back to
  that one instead. After `max_rollbacks` rollbacks training stops with an error.
* Curriculum (optional): a level that starts at `curriculum_start` and grows by `curriculum_step` whenever
  the periodic evaluation at the current level reaches `curriculum_threshold` errors per sequence or fewer.
  The level caps the training length (the repeat count for repeat copy: `Task.training_batch`) and is part
  of the checkpoint; `<out_dir>/level-N.pt` keeps the state at which level N was passed, and
  `curriculum_lr` switches the learning rate when given levels are reached (repeat copy needs a lower rate
  for its longest sequences).
* Several processes (torchrun; `distributed.py`): the model is wrapped in DistributedDataParallel, every
  rank trains on its slice of the global batch (`batch_size` sequences in all), the logged loss and errors
  are means over the ranks, and the divergence decision is taken on all-reduced values so that every rank
  rolls back together, to rank 0's checkpoint. Only the writer (rank 0) writes; checkpoints hold every
  rank's torch RNG states (`rank_rng`) and the world size.
* Best model: at every periodic evaluation the model is also scored on sequences of its own (a generator
  that neither training nor the periodic evaluation uses; `select_sequences` per point) at the task's
  `solved_at` points (copy: lengths 20 and 120), and the best so far is saved to `<out_dir>/best.pt` (a full
  checkpoint). Best: the lowest worst ratio of errors to the point's target (the errors themselves for a task
  without targets). The final evaluation and figures are of the best model. `stop_when_solved` ends the run
  at the first evaluation that meets every target, on the selection's sequences and on `confirm_sequences`
  more per point (whole-sequence failures are rare enough to slip through one small set); a model so
  confirmed ranks first as the best.
* Restarts (`restart_patience`): an unsolved attempt whose selection score has not improved for that many
  steps starts again from a fresh model (seed + 1000 per attempt) and optimiser; the step count, data stream
  and best model carry on, and the attempt is part of the checkpoint.
* Metrics: one CSV row per step in `<out_dir>/metrics.csv` (the `bit_errors` column holds the task's
  metric: bit errors per sequence, or the cost in bits for the n-gram task); evaluations, the final
  generalisation evaluation over the task's `eval_points` among them, in `<out_dir>/eval.json`.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import math
import os
import pickle
import time
import warnings
import zipfile
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..model import NTM
from . import distributed, runfolder
from .runfolder import UsageError
from .tasks import make_task

log = logging.getLogger(__name__)

# Seed of the best-model selection's sequences (each point adds its length, as `evaluate` does): far from the
# training seeds (0, 1, ...) and the periodic evaluation's 12345.
SELECT_SEED = 54_321_000
CONFIRM_SEED = 65_432_000  # the confirmation's sequences (stop_when_solved, restart_patience): another stream
SELECT_BATCH = 128
METRIC_FIELDS = ("step", "sequences", "length", "loss", "bit_errors", "lr", "seconds")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    task: str = "copy"
    steps: int = 3000
    batch_size: int = 32
    optimizer: str = "rmsprop"
    lr: float | None = None  # None: the task's rate for this optimizer (paper Tables 1-3), else DEFAULT_LR
    momentum: float = 0.9  # RMSprop's; Adam has none
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
    keep_best: bool = True  # score each periodic evaluation's model at the task's solved_at points, keep the best
    select_sequences: int = 512  # sequences per selection point (256 picked models that 500 others judged worse)
    stop_when_solved: bool = False  # end the run once the selection meets every target of the task
    confirm_sequences: int = 2048  # a selection that meets every target is solved only if this many more do too
    restart_patience: int | None = None  # an attempt whose score has not improved in this many steps starts over
    final_eval: bool = True
    plots: bool = True
    progress: bool = True
    model: dict = field(default_factory=dict)  # NTM keyword arguments (controller_size, memory_slots, ...)

    def validate(self, check_machine: bool = True):
        """Raise UsageError naming the first bad field. `check_machine`: also check that `device` and
        `backend` work here and that `out_dir` is no file (not for a checkpoint's record of another run)."""
        def bad(name, expected):
            raise UsageError(f"'{name}' must be {expected}, got {getattr(self, name)!r}", field=name)

        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "eval_batches", "blowup_patience",
                     "curriculum_step", "select_sequences", "confirm_sequences"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if not _is_int(self.max_rollbacks) or self.max_rollbacks < 0:
            bad("max_rollbacks", "an integer >= 0")
        if not _is_int(self.seed) or not -2 ** 63 <= self.seed < 2 ** 64:
            bad("seed", "an integer in [-2**63, 2**64)")
        if self.optimizer not in DEFAULT_LR:
            bad("optimizer", "'rmsprop' or 'adam'")
        if self.lr is not None and not (_is_number(self.lr) and self.lr > 0):
            bad("lr", "a positive number")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            bad("momentum", "a number in [0, 1)")
        if self.optimizer != "rmsprop" and self.momentum != TrainConfig.momentum:
            bad("momentum", f"left at its default with optimizer {self.optimizer!r}, which has no momentum setting")
        if not (_is_number(self.clip) and self.clip > 0):
            bad("clip", "a positive number")
        if not (_is_number(self.lr_decay) and 0 < self.lr_decay < 1):
            bad("lr_decay", "a number in (0, 1)")
        if not (_is_number(self.blowup_factor) and self.blowup_factor > 1):
            bad("blowup_factor", "a number > 1")
        for name in ("curriculum", "final_eval", "plots", "progress", "keep_best", "stop_when_solved"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        if not isinstance(self.model, dict):
            bad("model", "a dict of NTM keyword arguments")
        if not isinstance(self.task, str):
            bad("task", "a task name")
        try:
            task = make_task(self.task)
        except ValueError as err:
            raise UsageError(str(err), field="task") from None
        if self.stop_when_solved and not task.solved_at:
            bad("stop_when_solved", f"off for task {self.task!r}, which sets no targets (Task.solved_at)")
        if self.restart_patience is not None:
            if not _is_int(self.restart_patience) or self.restart_patience < 1:
                bad("restart_patience", "None or an integer >= 1")
            if not task.solved_at:
                bad("restart_patience", f"None for task {self.task!r}, which sets no targets (Task.solved_at)")
            if not self.keep_best:
                bad("restart_patience", "None without keep_best (a restart would lose the attempt's best model)")
        lo, hi = task.train_lengths
        if self.max_length is not None and not (_is_int(self.max_length) and lo <= self.max_length <= hi):
            bad("max_length", f"an integer within {lo}..{hi}, the training lengths of task {self.task!r}")
        if not (_is_number(self.curriculum_threshold) and self.curriculum_threshold >= 0):
            bad("curriculum_threshold", "a number >= 0")
        if not isinstance(self.curriculum_lr, dict):
            bad("curriculum_lr", "a dict {level: learning rate}")
        if self.curriculum:
            lo, hi = task.curriculum_range()
            if lo == hi:
                bad("curriculum", f"off for task {self.task!r}, which trains at the one length {lo}")
            if self.curriculum_start is not None and not (_is_int(self.curriculum_start)
                                                          and lo <= self.curriculum_start <= hi):
                bad("curriculum_start", f"within the task's curriculum levels {lo}..{hi}")
            for level, lr in self.curriculum_lr.items():
                if not (_is_int(level) and lo <= level <= hi and _is_number(lr) and lr > 0):
                    bad("curriculum_lr", f"a mapping of curriculum levels {lo}..{hi} to positive learning rates")
        if not isinstance(self.out_dir, str) or not self.out_dir:
            bad("out_dir", "a folder path")
        if check_machine:
            if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
                raise UsageError(f"'out_dir' must be a folder, but {self.out_dir!r} is a file", field="out_dir")
            check_device_backend(self.device, self.backend)


DEFAULT_LR = {"rmsprop": 1e-4, "adam": 1e-3}


class MissingCheckpoint(UsageError, FileNotFoundError):
    """A checkpoint path that names no file: a usage error, and a FileNotFoundError as callers expect."""


def check_device_backend(device, backend: str) -> torch.device:
    """`device` as a torch.device, once it and `backend` are known to work here; else UsageError naming
    'device' or 'backend'."""
    from ..ops.dispatch import resolve

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"'device' must be cpu, cuda or cuda:N, got {device!r} ({err})", field="device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"'device' must be 'cpu' on this machine (no CUDA GPU is visible), got {device!r}",
                         field="device")
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"'device' must be cpu, cuda or cuda:N, got {device!r}", field="device")
    if backend != "auto":  # `auto` always finds one; a named backend must load and serve the device
        try:
            resolve(backend, parsed.type)
        except ValueError as err:
            raise UsageError(str(err), field="backend") from None
    return parsed


class TrainingDiverged(RuntimeError):
    pass


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    runfolder.write_atomically(path, lambda f: torch.save(obj, f), suffix=".pt")


# --- checkpoint files ---------------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "ntm_fast checkpoint"
CHECKPOINT_VERSION = 2  # 1: the state dict itself, without a checksum


def write_checkpoint(state: dict, path: str):
    """Write `state` (tensors and plain values only) to `path` atomically, as the bytes torch.save makes of
    it beside their SHA-256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                 "sha256": hashlib.sha256(payload).hexdigest(),
                 "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, path)


def _safe_load(source, path: str, what: str):
    """torch.load(weights_only=True) of `source` (part `what` of checkpoint `path`) on the CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the errors below say enough
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if needs:
            raise UsageError(f"checkpoint {path!r} refused: {what} holds objects other than tensors and plain values, "
                             f"and loading it could run code ({needs[0]}); ntm_fast writes no such files, so it "
                             "was altered or comes from elsewhere. Nothing was loaded") from None
        raise UsageError(f"checkpoint {path!r} is corrupt or not a checkpoint: {what} cannot be read") from None
    except Exception as err:  # not a zip file, truncated, a bad record: torch's errors vary with the damage
        raise UsageError(f"checkpoint {path!r} is corrupt or not a checkpoint: {what} cannot be read "
                         f"({type(err).__name__}: {err})") from None


def load_checkpoint(path: str) -> dict:
    """The state a checkpoint file holds, once it is known to be intact and complete; UsageError otherwise.
    Tensors stay on the CPU: the model's and optimiser's `load_state_dict` move them to the parameters'
    device, and RNG states must be CPU tensors."""
    if not os.path.exists(path):
        raise MissingCheckpoint(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        hint = os.path.join(path, "checkpoint.pt")
        raise UsageError(f"checkpoint {path!r} is a folder, not a file"
                         + (f"; did you mean {hint!r}?" if os.path.isfile(hint) else ""))
    outer = _safe_load(path, path, "the file")
    if isinstance(outer, dict) and outer.get("format") == CHECKPOINT_FORMAT:
        if outer.get("version") != CHECKPOINT_VERSION:
            raise UsageError(f"checkpoint {path!r} has format version {outer.get('version')!r}; this ntm_fast "
                             f"reads version {CHECKPOINT_VERSION}")
        payload, digest = outer.get("payload"), outer.get("sha256")
        if not (torch.is_tensor(payload) and payload.dtype == torch.uint8 and payload.dim() == 1
                and isinstance(digest, str)):
            raise UsageError(f"checkpoint {path!r} is corrupt: its payload or checksum entry is damaged")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise UsageError(f"checkpoint {path!r} is corrupt: its contents do not match the checksum written with "
                             "them (bytes changed after it was saved). Nothing was loaded")
        state = _safe_load(io.BytesIO(data), path, "the state")
    elif isinstance(outer, dict) and "model" in outer and "model_config" in outer:
        state = _upgrade_format_1(outer, path)
    else:
        raise UsageError(f"{path!r} is not an ntm_fast checkpoint (no format or model entries)")
    if isinstance(state, dict):
        state = {**state, **{name: value for name, value in LATER_ENTRIES.items() if name not in state}}
        if isinstance(state.get("train_config"), dict):
            defaults = dataclasses.asdict(TrainConfig())
            state["train_config"] = {**state["train_config"], **{
                name: defaults[name] for name in LATER_TRAIN_FIELDS if name not in state["train_config"]}}
    check_checkpoint(state, path)
    return state


def _upgrade_format_1(state: dict, path: str) -> dict:
    """A checkpoint written before the checksum: accepted once its zip CRCs check out; fields added since
    get their defaults."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise UsageError(f"checkpoint {path!r} is corrupt: {err}") from None
    if damaged is not None:
        raise UsageError(f"checkpoint {path!r} is corrupt: record {damaged!r} fails its CRC check. Nothing was "
                         "loaded")
    log.warning("checkpoint %s was written by an earlier ntm_fast (no checksum): checked against its zip CRCs "
                "instead; the next checkpoint is saved in the current format", path)
    state = dict(state)
    if isinstance(state.get("train_config"), dict):
        state["train_config"] = {**dataclasses.asdict(TrainConfig()), **state["train_config"]}
    return state


def _is_byte_tensor(value) -> bool:
    return torch.is_tensor(value) and value.dtype == torch.uint8 and value.dim() == 1


# What each entry of a checkpoint's state must be: (test, description for the error).
CHECKPOINT_ENTRIES = {
    "model": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and torch.is_tensor(t) for k, t in v.items()),
              "a mapping of parameter names to tensors"),
    "model_config": (lambda v: isinstance(v, dict), "a dict of NTM arguments"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), "an optimiser state dict (state, param_groups)"),
    "train_config": (lambda v: isinstance(v, dict), "a dict of TrainConfig fields"),
    "step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "curriculum_level": (lambda v: v is None or _is_int(v) and v >= 1, "None or an integer >= 1"),
    "rollbacks": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "loss_avg": (lambda v: v is None or _is_number(v), "None or a finite number"),
    "blowup_run": (_is_int, "an integer"),
    "data_rng": (_is_byte_tensor, "a generator state (a 1-D uint8 tensor)"),
    "torch_rng": (_is_byte_tensor, "a generator state (a 1-D uint8 tensor)"),
    "cuda_rng": (lambda v: v is None or isinstance(v, list) and all(map(_is_byte_tensor, v)),
                 "None or a list of generator states"),
    "world_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "rank_rng": (lambda v: v is None or isinstance(v, list) and all(
        isinstance(r, dict) and _is_byte_tensor(r.get("torch_rng")) and CHECKPOINT_ENTRIES["cuda_rng"][0](r.get("cuda_rng"))
        for r in v), "None or a list of {'torch_rng', 'cuda_rng'} per rank"),
    "best": (lambda v: v is None or isinstance(v, dict) and _is_int(v.get("step")) and _is_number(v.get("score"))
             and isinstance(v.get("errors"), dict), "None or {'step', 'score', 'errors', 'solved'}"),
    "attempt": (lambda v: isinstance(v, dict) and _is_int(v.get("number")) and v["number"] >= 1
                and _is_int(v.get("started")) and _is_int(v.get("best_step"))
                and (v.get("best_score") is None or _is_number(v["best_score"])),
                "{'number' >= 1, 'started', 'best_score', 'best_step'}"),
}
# Entries added since a format was first written, with the value that means what older files meant.
LATER_ENTRIES = {"curriculum_level": None, "world_size": 1, "rank_rng": None, "best": None,
                 "attempt": {"number": 1, "started": 0, "best_score": None, "best_step": 0}}
# TrainConfig fields added since a format was first written: a file without them gets these defaults.
LATER_TRAIN_FIELDS = ("keep_best", "select_sequences", "stop_when_solved", "confirm_sequences", "restart_patience")
MODEL_FIELDS = tuple(name for name in inspect.signature(NTM.__init__).parameters if name not in ("self", "backend"))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _short(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _check_fields(given: dict, expected: tuple, where: str, path: str):
    missing = [name for name in expected if name not in given]
    unknown = [name for name in given if name not in expected]
    if missing:
        raise UsageError(f"checkpoint {path!r}: {where} lacks the field {missing[0]!r}")
    if unknown:
        raise UsageError(f"checkpoint {path!r}: {where} has an unknown field {unknown[0]!r}")


def check_checkpoint(state, path: str):
    """UsageError naming the first missing or bad entry or field of a checkpoint's state."""
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {path!r} holds {_short(state)}, not a dict of entries")
    for name, (test, expected) in CHECKPOINT_ENTRIES.items():
        if name not in state:
            raise UsageError(f"checkpoint {path!r} lacks the entry {name!r}")
        if not test(state[name]):
            raise UsageError(f"checkpoint {path!r}: entry {name!r} must be {expected}, got {_short(state[name])}")
    train_config, model_config = state["train_config"], state["model_config"]
    _check_fields(train_config, TRAIN_FIELDS, "train_config", path)
    try:
        TrainConfig(**train_config).validate(check_machine=False)
    except UsageError as err:
        raise UsageError(f"checkpoint {path!r}: train_config: {err}") from None
    _check_fields(model_config, MODEL_FIELDS, "model_config", path)
    try:
        with torch.device("meta"):  # checks the arguments and gives the weights' shapes without allocating
            shapes = {k: tuple(t.shape) for k, t in NTM(**model_config).state_dict().items()}
    except (ValueError, TypeError) as err:
        raise UsageError(f"checkpoint {path!r}: model_config: {err}") from None
    task = make_task(train_config["task"])
    for name in ("input_size", "output_size"):
        if model_config[name] != getattr(task, name):
            raise UsageError(f"checkpoint {path!r}: model_config {name!r} is {model_config[name]!r}, but task "
                             f"{task.name!r} has {getattr(task, name)}")
    weights = {k: tuple(t.shape) for k, t in state["model"].items()}
    for name in sorted(set(shapes) | set(weights)):
        if shapes.get(name) != weights.get(name):
            raise UsageError(f"checkpoint {path!r}: weight {name!r} has shape {weights.get(name)}, but its "
                             f"model_config gives {shapes.get(name)}")


def model_from_checkpoint(ckpt: dict, device="cpu", backend="auto") -> NTM:
    """The model of a checkpoint that `load_checkpoint` returned."""
    model = NTM(**ckpt["model_config"], backend=backend)
    model.load_state_dict(ckpt["model"])
    return model.to(device)


# --- metrics files ----------------------------------------------------------------------------------------
def read_metrics(path: str, up_to: int) -> list:
    """The complete rows of metrics file `path` with step <= `up_to` (a row a kill cut short is dropped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if None in row or any(row.get(name) in (None, "") for name in METRIC_FIELDS):
                continue
            try:
                step = int(row["step"])
            except ValueError:
                continue
            if step <= up_to:
                rows.append(row)
    return rows


def read_evaluations(path: str, up_to: int) -> list:
    """The evaluations of `path` (an eval.json) at steps <= `up_to`."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s): the evaluations before step %d are not carried over", path, err, up_to)
        return []
    evaluations = summary.get("evaluations") if isinstance(summary, dict) else None
    return [e for e in evaluations or [] if isinstance(e, dict) and _is_int(e.get("step")) and e["step"] <= up_to]


class Trainer:
    """Owns the model, optimiser, data generators and divergence detector of one training run.

    `overwrite`: a new run may move the files of another run in `out_dir` into `out_dir/previous-<n>/`
    instead of refusing the folder. `is_writer`: this process locks `out_dir` and writes the run's files
    (under torchrun only rank 0 is the writer; the others train without touching the folder).

    Data-parallel when torch.distributed is initialised with more than one process (`distributed.init`):
    the model is wrapped in DDP (`self.net`; `self.model` stays the plain NTM) and `batch_size`, the global
    batch, must divide among the ranks. `fit`, `rollback` and `save_checkpoint` are then collective: every
    rank calls them."""

    def __init__(self, config: TrainConfig, *, overwrite: bool = False, is_writer: bool = True):
        config.validate()
        self.config = config
        self.overwrite, self.is_writer = overwrite, is_writer
        self.task = make_task(config.task)
        self.device = torch.device(config.device)
        self.model = self._new_model(config.seed)
        self.world_size = dist.get_world_size() if distributed.active() else 1
        self.rank = dist.get_rank() if distributed.active() else 0
        if config.batch_size % self.world_size:
            raise UsageError(f"'batch_size' (the global batch) must divide among the {self.world_size} processes, "
                             f"got {config.batch_size}", field="batch_size")
        self.net = self.model
        if self.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.rank_rng = None  # every rank's RNG states, gathered by `save_checkpoint` (several processes only)
        self.optimizer = self._new_optimizer()
        self.data_rng = torch.Generator().manual_seed(config.seed)
        # The curriculum's current level (None without a curriculum).
        self.level = (config.curriculum_start or self.task.curriculum_range()[0]) if config.curriculum else None
        self.step = 0
        self.rollbacks = 0
        # The attempt under way (restart_patience starts new ones): its number, first step, and its best
        # selection score with the step of it.
        self.attempt = {"number": 1, "started": 0, "best_score": None, "best_step": 0}
        self.loss_avg = None  # running average of the loss (divergence detector)
        self.blowup_run = 0
        self.resumed_from = None  # the checkpoint `resume` continued from
        self.evaluations = []  # eval.json's "evaluations", those from before a resume included
        self.best = None  # {"step", "score", "errors", "solved"} of the model in best.pt
        self.checkpoint_path = os.path.join(config.out_dir, "checkpoint.pt")
        self.metrics_path = os.path.join(config.out_dir, "metrics.csv")
        self.eval_path = os.path.join(config.out_dir, "eval.json")
        self.best_path = os.path.join(config.out_dir, "best.pt")
        self.previous_checkpoint_path = os.path.join(config.out_dir, "checkpoint-prev.pt")
        self.last_rollback_to = None  # the step the last rollback went back to

    def _new_model(self, seed: int) -> NTM:
        """A freshly initialised model (the task's model defaults, then `config.model`), from `seed`."""
        torch.manual_seed(seed)
        model_kwargs = {**self.task.defaults.get("model", {}), **self.config.model}
        try:
            return NTM(self.task.input_size, self.task.output_size, backend=self.config.backend,
                       **model_kwargs).to(self.device)
        except (ValueError, TypeError) as err:  # the NTM names the bad argument: it is a model option
            name = next((k for k in model_kwargs if f"'{k}'" in str(err)), None)
            raise UsageError(str(err), field=name) from None

    def _new_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        lr = cfg.lr or self.task.defaults.get("lr", {}).get(cfg.optimizer, DEFAULT_LR[cfg.optimizer])
        if cfg.optimizer == "rmsprop":
            # alpha 0.95 as in the NTM paper's RMSprop (Graves 2013 variant).
            return torch.optim.RMSprop(self.model.parameters(), lr=lr, momentum=cfg.momentum, alpha=0.95, eps=1e-8)
        return torch.optim.Adam(self.model.parameters(), lr=lr)

    def restart(self):
        """Start a new attempt: the model initialised afresh (seed `seed + 1000 * (attempt - 1)`), a new
        optimiser at the starting learning rate, the divergence detector, rollback count and curriculum level
        reset. The step count, the data stream and the best model (best.pt) carry on. Collective under
        torchrun (every rank draws the same initialisation)."""
        number = self.attempt["number"] + 1
        self.model.load_state_dict(self._new_model(self.config.seed + 1000 * (number - 1)).state_dict())
        self.optimizer = self._new_optimizer()
        self.attempt = {"number": number, "started": self.step, "best_score": None, "best_step": self.step}
        self.rollbacks, self.loss_avg, self.blowup_run = 0, None, 0
        self.last_rollback_to = None
        if self.config.curriculum:
            self.level = self.config.curriculum_start or self.task.curriculum_range()[0]
        # The new attempt's first state is the rollback target at once (a rollback never goes back to
        # checkpoint-prev.pt of another attempt).
        self.save_checkpoint()

    # --- state ------------------------------------------------------------------------------------------
    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """The run's state: tensors (RNG states as uint8 tensors) and plain values only."""
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
            "world_size": self.world_size,
            "rank_rng": self.rank_rng,
            "best": self.best,
            "attempt": dict(self.attempt),
        }

    def load_state_dict(self, ckpt: dict):
        """Take over a state that `load_checkpoint` returned (and `_check_resumable` accepted)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.rollbacks = ckpt["step"], ckpt["rollbacks"]
        if self.config.curriculum and ckpt["curriculum_level"] is not None:
            self.level = ckpt["curriculum_level"]
        # else the level stays this run's: None without a curriculum, its start for one turned on now
        self.loss_avg, self.blowup_run = ckpt["loss_avg"], ckpt["blowup_run"]
        self.best, self.attempt = ckpt["best"], dict(ckpt["attempt"])
        self.data_rng.set_state(ckpt["data_rng"])  # the same on every rank: the global batches' stream
        # This rank's own generators when the checkpoint comes from as many processes; else rank 0's (the
        # top-level entries), which only a model drawing random numbers (memory_init 'random') reads.
        own = ckpt["rank_rng"][self.rank] if ckpt["rank_rng"] and len(ckpt["rank_rng"]) == self.world_size else ckpt
        torch.set_rng_state(own["torch_rng"])
        if own["cuda_rng"] is not None and torch.cuda.is_available():
            for index, rng_state in enumerate(own["cuda_rng"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng_state, index)

    def save_checkpoint(self, path: str | None = None, keep_previous: bool = True):
        """Write the run's state to `path` (default OUT/checkpoint.pt) if this process is the writer. With
        several processes every rank calls it: it gathers their RNG states first. `keep_previous`: the
        checkpoint.pt it replaces becomes checkpoint-prev.pt (not when it is the same step's state)."""
        if self.world_size > 1:
            self.rank_rng = distributed.gather({"torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all()
                                                if torch.cuda.is_available() else None})
        if self.is_writer:
            path = path or self.checkpoint_path
            if keep_previous and path == self.checkpoint_path and os.path.exists(path):
                # The checkpoint it replaces stays as checkpoint-prev.pt (a second name for the same file, made
                # atomically before the new one is renamed over it): the older rollback target.
                runfolder.link_atomically(path, self.previous_checkpoint_path)
            write_checkpoint(self.state_dict(), path)

    def resume(self, path: str | None = None, lr: float | None = None):
        """Continue from `path` (default OUT/checkpoint.pt): OUT/level-N.pt undoes everything after
        curriculum level N was passed. `lr` (or a `config.lr` other than the checkpoint's run's) replaces the
        checkpoint's learning rate. The run folder is not touched until `fit`."""
        if lr is not None and not (_is_number(lr) and lr > 0):
            raise UsageError(f"'lr' must be a positive number, got {lr!r}", field="lr")
        path = path or self.checkpoint_path
        ckpt = load_checkpoint(path)
        self._check_resumable(ckpt)
        self.load_state_dict(ckpt)
        if lr is None and self.config.lr is not None and self.config.lr != ckpt["train_config"]["lr"]:
            lr = self.config.lr
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.resumed_from = path
        if ckpt["world_size"] != self.world_size:
            log.warning("%s was written by %d processes and continues on %d: the same global batches follow (equal up "
                        "to float32 summation order); each rank's generators start from rank 0's", path,
                        ckpt["world_size"], self.world_size)
        log.info("resumed from %s at step %d (learning rate %.3g)", path, self.step, self.lr)

    def _check_resumable(self, ckpt: dict):
        """UsageError naming the setting of this run that cannot apply to the checkpoint's state."""
        old, new = ckpt["train_config"], self.config
        fixed = {"task": "the model was trained on it", "optimizer": "the optimiser state comes from the checkpoint",
                 "seed": "the random streams come from the checkpoint"}
        if new.optimizer == "rmsprop":
            fixed["momentum"] = "the optimiser state comes from the checkpoint"
        for name, why in fixed.items():
            if getattr(new, name) != old[name]:
                raise UsageError(f"'{name}' is {getattr(new, name)!r}, but the checkpoint's run has {old[name]!r}: it cannot "
                                 f"change when resuming ({why})", field=name)
        for name, value in self.model.config().items():
            if ckpt["model_config"][name] != value:
                raise UsageError(f"'{name}' is {value!r}, but the checkpoint's model has {ckpt['model_config'][name]!r}",
                                 field=name)
        if ckpt["step"] > new.steps:
            raise UsageError(f"'steps' is {new.steps}, but the checkpoint is at step {ckpt['step']} already",
                             field="steps")
        level = ckpt["curriculum_level"]
        if (new.curriculum and level is not None and new.curriculum_start is not None
                and new.curriculum_start != old["curriculum_start"]):
            raise UsageError(f"'curriculum_start' is {new.curriculum_start}, but the curriculum resumes at the checkpoint's level "
                             f"{level}", field="curriculum_start")

    # --- run folder and metrics ---------------------------------------------------------------------------
    def _open_run_folder(self):
        """Lock `out_dir` and make it this run's (a writer only; returns the lock, else None): the `.tmp-*`
        files of killed writes are removed; another run's files refuse a new run unless `overwrite` moves
        them aside; a resumed run keeps the metrics rows and evaluations up to its step (from the
        checkpoint's folder when that is another one)."""
        if not self.is_writer:
            return None
        folder = self.config.out_dir
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UsageError(f"'out_dir' must be a folder that can be made: {err}", field="out_dir") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"'out_dir' must be a folder this user can write to; {folder!r} is not", field="out_dir")
        held = runfolder.lock(folder)
        try:
            removed = runfolder.remove_temporaries(folder)
            if removed:
                log.info("%s: removed %d temporary files left by killed writes", folder, len(removed))
            source = None if self.resumed_from is None else os.path.dirname(os.path.abspath(self.resumed_from))
            in_place = source is not None and os.path.samefile(source, folder)
            if not in_place and runfolder.holds_run(folder):
                names = ", ".join(os.path.basename(p) for p in runfolder.run_files(folder))
                if not self.overwrite:
                    raise UsageError(f"'out_dir' {folder!r} holds another run ({names}): continue it with --resume, "
                                     "move it aside with --overwrite, or choose another folder", field="out_dir")
                log.warning("%s: moved the previous run's files into %s", folder, runfolder.move_aside(folder))
            if source is not None:
                self._rewrite_metrics(read_metrics(os.path.join(source, "metrics.csv"), self.step))
                self.evaluations = read_evaluations(os.path.join(source, "eval.json"), self.step)
        except BaseException:
            held.release()
            raise
        return held

    def _rewrite_metrics(self, rows):
        """Replace metrics.csv by `rows`, atomically (a kill leaves the old file or the new one)."""
        if not self.is_writer:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        runfolder.write_atomically(self.metrics_path, text.getvalue())

    def _truncate_metrics(self, step):
        """Drop metric rows past `step` (written by a run that was killed or rolled back)."""
        self._rewrite_metrics(read_metrics(self.metrics_path, step))

    def _write_metrics(self, rows):
        """Append `rows`: a kill mid-append cuts at most the last row short, which `read_metrics` drops."""
        if not self.is_writer or not rows:
            return
        new = not os.path.exists(self.metrics_path)
        with open(self.metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _write_eval(self, summary: dict):
        if self.is_writer:
            runfolder.write_atomically(self.eval_path, json.dumps(summary, indent=2))

    def _summary(self, start: float) -> dict:
        cfg = self.config
        return {"steps": self.step, "sequences": self.step * cfg.batch_size, "rollbacks": self.rollbacks,
                **({"attempt": self.attempt["number"], "attempt_started_at": self.attempt["started"]}
                   if cfg.restart_patience else {}),
                "train_seconds": time.perf_counter() - start, "evaluations": self.evaluations,
                **({"best": self.best} if self.best is not None else {})}

    # --- one step ---------------------------------------------------------------------------------------
    def train_step(self):
        """One optimiser step on a fresh batch. Returns (loss, errors per sequence, length) or None
        when the step diverged (non-finite loss or gradient); the parameters are then left untouched.
        With several processes: this rank's slice of the global batch; the loss and errors returned are
        the means over the ranks, and a step that diverged on any rank returns None on all."""
        cfg = self.config
        batch, length = self.task.training_batch(cfg.batch_size, self.data_rng, cfg.max_length, self.level)
        if self.world_size > 1:
            share = cfg.batch_size // self.world_size
            mine = slice(self.rank * share, (self.rank + 1) * share)  # [T, B, ...]: sequences on dim 1
            batch = dataclasses.replace(batch, inputs=batch.inputs[:, mine], targets=batch.targets[:, mine],
                                        mask=batch.mask[:, mine])
        batch = batch.to(self.device)
        self.net.train()
        logits = self.net(batch.inputs)  # DDP averages the gradients over the ranks in backward
        loss = self.task.loss(logits, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        errors = self.task.errors(logits.detach(), batch).mean().item()
        # One all-reduce: every rank sees the same means and the same verdict (no rank steps alone).
        loss_sum, errors_sum, diverged = distributed.sum_over_ranks([loss.item(), errors, float(not finite)],
                                                                    self.device)
        if diverged:
            return None
        torch.nn.utils.clip_grad_value_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        return loss_sum / self.world_size, errors_sum / self.world_size, length

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
        # Rank 0's checkpoint for every rank, sent over the group: no shared folder is needed. Where the last
        # rollback already went back to the same checkpoint and training diverged again from it, that
        # checkpoint holds the trouble (a collapse can begin before the detector is sure of it): the one before.
        ckpt = None
        if self.rank == 0:
            ckpt = load_checkpoint(self.checkpoint_path)
            if ckpt["step"] == self.last_rollback_to and os.path.exists(self.previous_checkpoint_path):
                older = load_checkpoint(self.previous_checkpoint_path)
                same_attempt = older["attempt"]["number"] == ckpt["attempt"]["number"]
                ckpt = older if older["step"] < ckpt["step"] and same_attempt else ckpt
        ckpt = distributed.from_rank0(ckpt)
        self.last_rollback_to = ckpt["step"]
        best = self.best  # best.pt may be newer than the checkpoint: it stays the best
        self.load_state_dict(ckpt)
        self.rollbacks, self.best = rollbacks, best
        new_lr = self.lr * self.config.lr_decay
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._truncate_metrics(self.step)
        self.evaluations = [e for e in self.evaluations if e["step"] <= self.step]
        # Save at once so that the lowered learning rate and the rollback count survive a crash (the same
        # step's state: checkpoint-prev.pt stays the older one).
        self.save_checkpoint(keep_previous=False)
        log.warning("divergence at step %d (%s): rolled back to step %d, learning rate lowered to %.3g",
                    failed_step, why, ckpt["step"], new_lr)

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, length: int, batches: int | None = None, seed: int = 12345, **sample_kwargs) -> float:
        """Mean errors per sequence (the task's metric) at `length` on fixed evaluation batches."""
        return evaluate(self.model, self.task, length, batches or self.config.eval_batches,
                        self.config.batch_size, self.device, seed, **sample_kwargs)

    def selection_points(self) -> list[tuple[str, int, dict, float | None]]:
        """(label, length, other `sample` arguments, target errors or None) of each point the best model is
        judged at: the task's `solved_at` points, else the periodic evaluation's (its top curriculum level)."""
        if self.task.solved_at:
            points = {label: (length, kwargs) for label, length, kwargs in self.task.eval_points()}
            return [(label, *points[label], limit) for label, limit in self.task.solved_at.items()]
        length, kwargs = self.eval_point() if self.level is None else self.task.curriculum_eval(
            self.length_cap(), self.task.curriculum_range()[1])
        return [(self.task.point_label(length, **kwargs), length, kwargs, None)]

    def _errors_at_points(self, sequences: int, seed: int) -> dict:
        """{label: errors per sequence} at every selection point, over `sequences` sequences per point from
        the generator `seed` (forward passes only: batches of up to 128 sequences whatever the training batch)."""
        size = min(sequences, SELECT_BATCH)
        batches = -(-sequences // size)
        return {label: distributed.from_rank0(evaluate(self.model, self.task, length, batches, size, self.device,
                                                       seed, **kwargs))
                for label, length, kwargs, _ in self.selection_points()}

    def select(self) -> dict:
        """The model's selection score: {"errors": {label: errors per sequence}, "score", "solved"} over
        `select_sequences` sequences per point from the selection generator (SELECT_SEED); with
        "confirmed" where a run that stops or restarts on being solved checked the targets again."""
        limits = {label: limit for label, _, _, limit in self.selection_points()}
        errors = self._errors_at_points(self.config.select_sequences, SELECT_SEED)
        ratios = [errors[label] / limit if limit else errors[label] for label, limit in limits.items()]
        score = max(ratios) if self.task.solved_at else sum(ratios)

        def meets(errors_by_label):
            return bool(self.task.solved_at) and all(errors_by_label[k] <= limit for k, limit in limits.items())

        selection = {"errors": errors, "score": score, "solved": meets(errors)}
        if selection["solved"] and (self.config.stop_when_solved or self.config.restart_patience):
            # Errors at long lengths come in rare whole sequences (read back a slot off: hundreds of bits), so
            # one set of a few hundred sequences can miss them: a run stops (or keeps its attempt) on a
            # model that a larger set of other sequences confirms.
            selection["confirmed"] = self._errors_at_points(self.config.confirm_sequences, CONFIRM_SEED)
            selection["solved"] = meets(selection["confirmed"])
        return selection

    def _attempt_stalled(self, selection: dict) -> bool:
        """Record the selection in the attempt's best; whether the attempt has stalled: no better score for
        `restart_patience` steps, the run unsolved and steps left."""
        if self.attempt["best_score"] is None or selection["score"] < self.attempt["best_score"]:
            self.attempt.update(best_score=selection["score"], best_step=self.step)
        return (self.step - self.attempt["best_step"] >= self.config.restart_patience
                and not (self.best or {}).get("solved") and self.step < self.config.steps)

    def _keep_if_best(self, selection: dict) -> bool:
        """Save the model to best.pt if it beats the best so far (a solved model, its targets confirmed, beats
        any unsolved one; then the lower score wins); whether it did."""
        def rank(entry):
            return not entry.get("solved", False), entry["score"]

        if self.best is not None and not rank(selection) < rank(self.best):
            return False
        self.best = {"step": self.step, **selection}
        self.save_checkpoint(self.best_path)
        return True

    def best_model(self) -> NTM:
        """The model the run leaves for use: best.pt's where the run keeps a best model (and this process can
        read it), else the current one."""
        if self.best is None or not self.config.keep_best or not os.path.exists(self.best_path):
            return self.model
        return model_from_checkpoint(load_checkpoint(self.best_path), self.device, self.model.backend)

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
        """Train to `config.steps`; returns the summary also written to eval.json. Holds the run folder's
        lock throughout (see `_open_run_folder`)."""
        held = self._open_run_folder()
        try:
            # The first rollback target: this run's state, not a later one left in the folder.
            self.save_checkpoint()
            return self._fit()
        finally:
            if held is not None:
                held.release()

    def _fit(self) -> dict:
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0, unit="step", dynamic_ncols=True)
        rows, start, solved_at, checkpoint_due = [], time.perf_counter(), None, False
        say = bar.write if self.rank == 0 else (lambda text: None)
        while self.step < cfg.steps and solved_at is None:
            result = self.train_step()
            why = "non-finite loss or gradient" if result is None else (
                "sustained loss blow-up" if self._blew_up(result[0]) else None)
            if why is not None:
                self._write_metrics(rows)
                rows, checkpoint_due = [], False
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
                eval_errors = distributed.from_rank0(self.evaluate(length, **kwargs))  # one curriculum for all
                label = self.task.point_label(length, **kwargs)
                self.evaluations.append({"step": self.step, "length": length, **kwargs, "bit_errors": eval_errors})
                say(f"step {self.step}: eval {self.task.metric} at length {label}: {eval_errors:.3f}")
                if cfg.keep_best or cfg.stop_when_solved:
                    selection = self.select()
                    self.evaluations[-1]["selection"] = selection["errors"]
                    kept = cfg.keep_best and self._keep_if_best(selection)
                    say(f"  selection ({cfg.select_sequences} sequences per length): " + ", ".join(
                        f"{k}: {v:.3f}" for k, v in selection["errors"].items())
                        + (f" -> best so far, saved {self.best_path}" if kept else ""))
                    if "confirmed" in selection:
                        self.evaluations[-1]["confirmed"] = selection["confirmed"]
                        say(f"  confirmation ({cfg.confirm_sequences} other sequences per length): " + ", ".join(
                            f"{k}: {v:.3f}" for k, v in selection["confirmed"].items())
                            + (" -> solved" if selection["solved"] else " -> not solved"))
                    if cfg.stop_when_solved and selection["solved"]:
                        solved_at = self.step
                    elif cfg.restart_patience and self._attempt_stalled(selection):
                        self._write_metrics(rows)
                        rows, checkpoint_due = [], False
                        self.evaluations[-1]["restart"] = self.attempt["number"] + 1
                        stalled = self.attempt
                        self.restart()
                        say(f"attempt {stalled['number']} (from step {stalled['started']}) has not improved on its best "
                            f"score {stalled['best_score']:.3g} (step {stalled['best_step']}) in {cfg.restart_patience} "
                            f"steps: attempt {self.attempt['number']} starts from a fresh model (seed "
                            f"{cfg.seed + 1000 * (self.attempt['number'] - 1)})")
                        continue
                passed, grown = self.level, self._grow_curriculum(eval_errors)
                if grown:
                    self.evaluations[-1]["curriculum"] = self.level
                    # Kept so that a later break-down can be undone: `--resume OUT/level-N.pt`.
                    self.save_checkpoint(os.path.join(cfg.out_dir, f"level-{passed}.pt"))
                    say(f"{grown} (saved {cfg.out_dir}/level-{passed}.pt)")
            checkpoint_due = checkpoint_due or self.step % cfg.checkpoint_every == 0
            # A checkpoint is the rollback target: none while the loss runs above its blow-up bound (a collapse
            # under way would be saved, and every rollback would land in it); it follows once the loss is back.
            if checkpoint_due and self.blowup_run <= 0 or self.step == cfg.steps or solved_at is not None:
                checkpoint_due = False
                # Rows and evaluations first, then the checkpoint: after a kill, a resume drops whatever
                # lies past the checkpoint's step.
                self._write_metrics(rows)
                rows = []
                self._write_eval(self._summary(start))
                self.save_checkpoint()
        bar.close()
        self._write_metrics(rows)
        if solved_at is not None:
            say(f"solved at step {solved_at}: every target of the task met (stop_when_solved)")
        summary = self._summary(start)
        if solved_at is not None:
            summary["solved_at_step"] = solved_at
        model = self.best_model()
        if model is not self.model:
            log.info("the run's model: %s (step %d)", self.best_path, self.best["step"])
        if cfg.final_eval and self.rank == 0:
            errors, optimal = generalization(model, self.task, cfg.eval_batches, cfg.batch_size, self.device)
            summary.update(metric=self.task.metric, final_eval=errors, **({"optimal": optimal} if optimal else {}))
            for line in describe(self.task, errors, optimal):
                log.debug("final evaluation: %s", line)  # the CLI prints them after its summary
        self._write_eval(summary)
        if cfg.plots and self.is_writer:
            from . import plots

            plots.learning_curve(self.metrics_path, os.path.join(cfg.out_dir, "learning_curve.png"),
                                 metric=self.task.metric)
            plots.weightings(model, self.task, os.path.join(cfg.out_dir, "weightings.png"),
                             length=self.length_cap(), device=self.device)
            if "final_eval" in summary:
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
