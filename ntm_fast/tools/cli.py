"""The `ntm-fast` command (also `python -m ntm_fast`).

    ntm-fast train [options]          train an NTM on a task (copy by default), on the CPU by default;
                                      --config NAME starts from a model-zoo entry (ntm_fast/tools/zoo.py)
    ntm-fast eval CHECKPOINT          errors per sequence at the task's generalisation points
    ntm-fast viz CHECKPOINT           PNG of one sequence's weightings, or of outputs at several lengths
    ntm-fast bench                    time every backend (and torch.compile) against the reference
    ntm-fast profile                  split a training step's time and memory traffic into parts

Each subcommand's `--help` explains its options. An expected failure (a bad flag or path, a corrupt or foreign
checkpoint, a run folder in use) ends with a one-line error naming the flag (exit status 2); anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from .bench import add_bench_parser
from .options import add_device_backend, add_model_options, integer_at_least, model_options_given
from .profiling import add_profile_parser
from .runfolder import UsageError

class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`ntm-fast train: error: argument --steps: ...`), not after the
    whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_integer = integer_at_least


def _number(low: float, high: float | None = None, low_inclusive: bool = False):
    """An argparse type: a finite number above `low` (or equal to it, if `low_inclusive`) and below `high`."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above and (high is None or value < high)):
            bounds = f"{'>=' if low_inclusive else '>'} {low:g}" + ("" if high is None else f" and < {high:g}")
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text}")
        return value

    return parse


_positive = _number(0)


def _seed(text):
    """An argparse type: a seed torch accepts, an integer in [-2**63, 2**64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -2 ** 63 <= value < 2 ** 64:
        raise argparse.ArgumentTypeError(f"must be an integer in [-2**63, 2**64), got {value}")
    return value

# The flag of each setting a UsageError can name, where it is not --<field with dashes>.
FLAGS = {"out_dir": "--out", "final_eval": "--no-final-eval", "plots": "--no-plots", "progress": "--no-progress"}


def _flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _one_line(err) -> str:
    """A UsageError as the command line says it: naming the flag rather than the setting."""
    text = str(err)
    if err.field is None:
        return text
    quoted = f"'{err.field}' "
    return _flag(err.field) + " " + text[len(quoted):] if text.startswith(quoted) else f"{_flag(err.field)}: {text}"


def add_train_parser(sub):
    from .tasks import TASKS
    from .train import TrainConfig
    from .zoo import ZOO

    # Options left out keep the --config entry's value (under --resume the checkpoint's run's, then the entry's),
    # else TrainConfig's default (argument_default).
    p = sub.add_parser("train", help="train an NTM", argument_default=argparse.SUPPRESS,
                       description="Train an NTM on one of the paper's tasks. Model and learning-rate "
                       "defaults are the paper's for the task (Tables 1-3); --config starts from a model-zoo "
                       "entry instead, and any option given overrides it. Writes checkpoint.pt, metrics.csv, "
                       "eval.json, learning_curve.png, weightings.png and generalization.png into --out, which "
                       "is locked while the run lasts. A folder holding another run is refused unless --resume "
                       "continues it or --overwrite moves its files into OUT/previous-N/.")
    d = TrainConfig()
    p.add_argument("--config", choices=sorted(ZOO), help="start from this model-zoo entry (ntm_fast/tools/zoo.py says "
                   "what each one reaches)")
    p.add_argument("--task", choices=sorted(TASKS), help=f"task to learn (default {d.task})")
    p.add_argument("--steps", type=_integer(1), help=f"optimiser steps (batches) to train for, in all (default "
                   f"{_task_defaults(TASKS, 'steps', d.steps)})")
    p.add_argument("--batch-size", type=_integer(1), help=f"sequences per batch (default {d.batch_size}); under "
                   "torchrun the global batch, divided among the processes")
    p.add_argument("--optimizer", choices=("rmsprop", "adam"),
                   help=f"rmsprop (the paper's, momentum 0.9) or adam (default {d.optimizer})")
    p.add_argument("--lr", type=_positive, help="learning rate (default: the paper's for the task with rmsprop, "
                   "1e-3 with adam); with --resume it replaces the checkpoint's")
    p.add_argument("--momentum", type=_number(0, 1, low_inclusive=True),
                   help=f"RMSprop momentum, in [0, 1) (default {d.momentum}; rmsprop only)")
    p.add_argument("--clip", type=_positive, help=f"elementwise gradient clip (default {d.clip:g})")
    p.add_argument("--max-length", type=_integer(1), help="cap on training sequence length, within the task's "
                   "training lengths (default: the task's longest, 20 for copy)")
    p.add_argument("--curriculum", action=argparse.BooleanOptionalAction,
                   help="start at a short maximum length and lengthen it whenever the evaluation at the current "
                   "maximum reaches --curriculum-threshold (default off)")
    p.add_argument("--curriculum-start", type=_integer(1), help="first maximum length (default: the task's "
                   "shortest; --curriculum only)")
    p.add_argument("--curriculum-step", type=_integer(1), help=f"length added per stage (default {d.curriculum_step}"
                   "; --curriculum only)")
    p.add_argument("--curriculum-threshold", type=_number(0, low_inclusive=True), help="errors per sequence at "
                   f"which the length grows (default {d.curriculum_threshold:g}; --curriculum only)")
    p.add_argument("--curriculum-lr", nargs="+", type=_level_lr, metavar="LEVEL=LR",
                   help="learning rate to switch to when the curriculum reaches LEVEL, e.g. 10=1e-4 "
                   "(--curriculum only)")
    p.add_argument("--seed", type=_seed, help=f"random seed (default {d.seed})")
    p.add_argument("--eval-every", type=_integer(1), help=f"evaluate every N steps (default {d.eval_every})")
    p.add_argument("--checkpoint-every", type=_integer(1), help=f"checkpoint every N steps (default "
                   f"{d.checkpoint_every})")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                   help="at every evaluation also score the model on sequences of its own at the task's target "
                   "points (copy: lengths 20 and 120) and keep the best in OUT/best.pt, the model that eval, viz and "
                   "the final evaluation use (default on)")
    p.add_argument("--select-sequences", type=_integer(1), help="sequences per point of that score (default "
                   f"{d.select_sequences})")
    p.add_argument("--stop-when-solved", action=argparse.BooleanOptionalAction,
                   help="end the run at the first evaluation whose score meets every target of the task (copy: "
                   "<= 0.1 bit errors per sequence at length 20 and <= 1 at 120; default "
                   f"{_task_defaults(TASKS, 'stop_when_solved', False)})")
    p.add_argument("--confirm-sequences", type=_integer(1), help="a score that meets every target counts (for "
                   "--stop-when-solved and --restart-patience) only if this many other sequences per point meet them "
                   f"too (default {d.confirm_sequences})")
    p.add_argument("--restart-patience", type=_integer(1), metavar="STEPS", help="start again from a freshly "
                   "initialised model (seed + 1000 per attempt) when an unsolved attempt's score has not improved "
                   "for STEPS steps; the best model is kept over all attempts (default "
                   f"{_task_defaults(TASKS, 'restart_patience', None)})")
    p.add_argument("--out", help="output folder (default runs/CONFIG or runs/TASK; with --resume CHECKPOINT, the "
                   "checkpoint's folder)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from OUT/checkpoint.pt, or from CHECKPOINT (e.g. OUT/level-9.pt, saved when "
                   "curriculum level 9 was passed). The checkpoint's run settings are the defaults; options given "
                   "override them where they can change (--steps, --lr, ...) and are refused where they cannot "
                   "(--task, --optimizer, --momentum, --seed, the model options)")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="start a new run in an --out that holds another run, after moving that run's files into "
                   "OUT/previous-N/ (nothing is deleted)")
    p.add_argument("--threads", type=_integer(1), default=None, help="CPU threads for torch (default: torch's "
                   "choice)")
    p.add_argument("--no-plots", action="store_true", default=False, help="skip the PNG figures at the end")
    p.add_argument("--no-final-eval", action="store_true", default=False,
                   help="skip the generalisation evaluation at the end (copy: lengths 20/40/80/120)")
    p.add_argument("--no-progress", action="store_true", default=False, help="no progress bar")
    add_device_backend(p)
    add_model_options(p, checked=True)
    p.set_defaults(func=cmd_train)


def _task_defaults(tasks, name, default) -> str:
    """'DEFAULT' or 'DEFAULT; TASK: VALUE, ...' for a TrainConfig field that some tasks' defaults set."""
    def show(value):
        return "on" if value is True else "off" if value is False else "never" if value is None else str(value)

    special = [f"{task_name}: {show(task.defaults['train'][name])}" for task_name, task in tasks.items()
               if name in task.defaults.get("train", {})]
    return "; ".join([show(default), *special])


def _level_lr(text: str) -> tuple:
    level, sep, lr = text.partition("=")
    try:
        level, lr = int(level), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEVEL=LR such as 10=1e-4, got {text!r}") from None
    if not (level >= 1 and math.isfinite(lr) and lr > 0):
        raise argparse.ArgumentTypeError(f"expected a LEVEL >= 1 and a positive LR, got {text!r}")
    return level, lr


# Settings that describe this invocation, not the run: a resumed run does not take them from its checkpoint.
INVOCATION_FIELDS = ("out_dir", "device", "backend", "progress", "plots", "final_eval")
CURRICULUM_OPTIONS = ("curriculum_start", "curriculum_step", "curriculum_threshold", "curriculum_lr")


def _train_config(args):
    """(TrainConfig, checkpoint to resume or None) from the options given: over TrainConfig's defaults come
    the checkpoint's run settings (with --resume), then the --config entry's, then the flags'."""
    import dataclasses

    from .tasks import TASKS
    from .train import TrainConfig, load_checkpoint
    from .zoo import zoo_config

    options = vars(args)  # holds only the options given (argument_default=SUPPRESS) and the on/off flags
    zoo_name = options.get("config")
    zoo = zoo_config(zoo_name) if zoo_name else {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in options.items() if name in fields}
    if "curriculum_lr" in given:
        given["curriculum_lr"] = dict(given["curriculum_lr"])
    model_given = model_options_given(args)

    resume, checkpoint, recorded = args.resume, None, {}
    out_dir = options.get("out")
    if isinstance(resume, str):
        checkpoint = resume
        out_dir = out_dir or os.path.dirname(os.path.abspath(resume))
    out_dir = out_dir or os.path.join("runs", zoo_name or given.get("task") or zoo.get("task") or TrainConfig.task)
    if resume:
        checkpoint = checkpoint or os.path.join(out_dir, "checkpoint.pt")
        if resume is True and not os.path.exists(checkpoint):
            raise UsageError(f"found nothing to continue: {checkpoint!r} does not exist (--resume without a path "
                             "continues OUT/checkpoint.pt, OUT being --out)", field="resume")
        try:
            recorded = load_checkpoint(checkpoint)["train_config"]
        except UsageError as err:
            raise UsageError(str(err), field=err.field or "resume") from None
        recorded = {k: v for k, v in recorded.items() if k not in INVOCATION_FIELDS}
        if args.overwrite and os.path.isdir(out_dir) and os.path.samefile(os.path.dirname(os.path.abspath(checkpoint)),
                                                                          out_dir):
            raise UsageError("'overwrite' cannot apply with --resume of a checkpoint in --out: it would move aside "
                             "the run being continued", field="overwrite")
    model = {**recorded.pop("model", {}), **zoo.pop("model", {}), **model_given}
    task_name = given.get("task") or zoo.get("task") or recorded.get("task") or TrainConfig.task
    task_train = TASKS[task_name].defaults.get("train", {}) if task_name in TASKS else {}
    config = TrainConfig(**{**task_train, **recorded, **zoo, **given}, model=model, out_dir=out_dir,
                         final_eval=not args.no_final_eval, plots=not args.no_plots, progress=not args.no_progress)
    # Options given that would have no effect are refused rather than ignored.
    if "momentum" in given and config.optimizer != "rmsprop":
        raise UsageError(f"'momentum' applies to --optimizer rmsprop only; the optimizer is {config.optimizer!r}",
                         field="momentum")
    for name in CURRICULUM_OPTIONS:
        if name in given and not config.curriculum:
            raise UsageError(f"'{name}' applies with --curriculum only, and the curriculum is off", field=name)
    return config, checkpoint


def cmd_train(args):
    from . import distributed

    if not distributed.launched():
        return _train(args, None)
    world, args.device = distributed.init(args.device)
    try:
        return _train(args, world)
    finally:
        distributed.close()


def _train(args, world):
    """`ntm-fast train` in this process; `world`: its place among the processes torchrun started (None
    alone). Rank 0 alone prints, logs below errors and writes."""
    import torch

    from .train import Trainer, describe
    from .zoo import ZOO

    rank0 = world is None or world.rank == 0
    if not rank0:
        logging.getLogger().setLevel(logging.ERROR)
    say = print if rank0 else (lambda *a, **k: None)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config, checkpoint = _train_config(args)
    if world is not None:
        share = config.batch_size // world.size
        say(f"training on {world.size} processes ({world.backend}, world size {world.size}): --batch-size "
            f"{config.batch_size} is the global batch, {share} sequences per process"
            + ("" if config.batch_size % world.size == 0 else " (but it must divide among the processes)"))
    if getattr(args, "config", None):
        say(f"config {args.config}: {ZOO[args.config]['about']}")
    trainer = Trainer(config, overwrite=args.overwrite, is_writer=rank0)
    if checkpoint is not None:
        try:
            trainer.resume(checkpoint, lr=getattr(args, "lr", None))
        except UsageError as err:
            raise UsageError(str(err), field=err.field or "resume") from None
    say(f"training {config.task} on {config.device} with backend {_backend_name(config.backend, trainer.device)}; "
          f"output in {config.out_dir}/")
    summary = trainer.fit()
    if not rank0:
        return
    print(f"done: {summary['steps']} steps, {summary['sequences']} sequences in {summary['train_seconds']:.0f} s "
          f"({summary['rollbacks']} rollbacks)")
    if "final_eval" in summary:
        for line in describe(trainer.task, summary["final_eval"], summary.get("optimal", {})):
            print(f"  {line}")
    print(f"files: {config.out_dir}/checkpoint.pt" + (" best.pt" if config.keep_best else "") + " metrics.csv eval.json"
          + (" learning_curve.png weightings.png" if config.plots else "")
          + (" generalization.png" if config.plots and config.final_eval else ""))


def _backend_name(name, device):
    """The backend `name` resolves to on `device` ('auto' -> the chosen one)."""
    from ..ops.dispatch import resolve

    return f"auto -> {resolve(name, device.type)}" if name == "auto" else name


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Errors per sequence of a checkpoint "
                       "(bit errors; the cost in bits for ngram, beside the optimal estimator's) at the task's "
                       "generalisation points, or at --lengths.")
    p.add_argument("checkpoint", help="a run folder of `ntm-fast train` (its best.pt, the model the run kept, or "
                   "else its checkpoint.pt) or a checkpoint file")
    p.add_argument("--lengths", type=_integer(1), nargs="+", default=None,
                   help="sequence lengths (default: the task's generalisation points, e.g. 20 40 80 120 for copy)")
    _add_repeats(p)
    p.add_argument("--batches", type=_integer(1), default=4, help="batches per length (default 4)")
    p.add_argument("--batch-size", type=_integer(1), default=32, help="sequences per batch (default 32)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--png", default=None, help="also plot errors against length (and repeats) to this PNG file")
    add_device_backend(p)
    p.set_defaults(func=cmd_eval)


def _add_repeats(p):
    p.add_argument("--repeats", type=_integer(1), default=None,
                   help="repeat count, repeat-copy only (default: drawn from 1..10 per batch)")


def _check_output_file(path: str | None, field: str):
    """UsageError naming `field` unless a file can be written at `path` (None: not asked for)."""

    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"'{field}' must name a file, but {path!r} is a folder", field=field)
    if not os.path.isdir(folder):
        raise UsageError(f"'{field}' must name a file in an existing folder, but {folder!r} is no folder",
                         field=field)
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"'{field}' must name a file this user can write, but {path!r} is not writable",
                         field=field)


def _check_lengths(task, lengths, field: str, **sample_kwargs):
    """UsageError naming `field` unless the task can sample every one of `lengths`."""
    import torch

    for length in lengths:
        try:
            task.sample(1, length, torch.Generator().manual_seed(0), **sample_kwargs)
        except ValueError as err:
            raise UsageError(f"'{field}' cannot apply to task {task.name!r}: {err}", field=field) from None


def _load(args):
    """(model, task, checkpoint) of args.checkpoint, with args.device/backend/repeats checked."""
    from .tasks import make_task
    from .train import check_device_backend, load_checkpoint, model_from_checkpoint

    device = check_device_backend(args.device, args.backend)
    if os.path.isdir(args.checkpoint):  # a run folder: the model the run kept, else its last
        found = [os.path.join(args.checkpoint, name) for name in ("best.pt", "checkpoint.pt")
                 if os.path.isfile(os.path.join(args.checkpoint, name))]
        if not found:
            raise UsageError(f"{args.checkpoint!r} is a folder without best.pt or checkpoint.pt (give a run folder of "
                             "`ntm-fast train` or a checkpoint file)", field="checkpoint")
        args.checkpoint = found[0]
        print(f"checkpoint: {args.checkpoint}")
    ckpt = load_checkpoint(args.checkpoint)  # its errors name the checkpoint
    model = model_from_checkpoint(ckpt, device=device, backend=args.backend)
    task = make_task(ckpt["train_config"]["task"])
    if args.repeats is not None and task.name != "repeat-copy":
        raise UsageError(f"'repeats' applies to the repeat-copy task, not {task.name}", field="repeats")
    return model, task, ckpt


def _sample_kwargs(args) -> dict:
    return {} if args.repeats is None else {"repeats": args.repeats}


def _written(path: str, field: str, write):
    """Run `write()` (which writes `path`), turning an OSError into a UsageError naming `field`."""

    try:
        write()
    except OSError as err:
        raise UsageError(f"{path!r} could not be written: {err}", field=field) from None


def cmd_eval(args):
    import torch

    from . import plots
    from .train import describe, generalization

    _check_output_file(args.json, "json")
    _check_output_file(args.png, "png")
    model, task, ckpt = _load(args)
    curves = None
    if args.lengths or args.repeats is not None:
        curves = {"length": (args.lengths or task.eval_curves["length"][0], _sample_kwargs(args))}
        _check_lengths(task, curves["length"][0], "lengths", **_sample_kwargs(args))
    errors, optimal = generalization(model, task, args.batches, args.batch_size, torch.device(args.device),
                                     task.eval_points(curves))
    for line in describe(task, errors, optimal):
        print(line)
    if args.json:
        def write_json():
            with open(args.json, "w") as f:
                json.dump({"checkpoint": args.checkpoint, "task": task.name, "metric": task.metric,
                           "bit_errors": errors, **({"optimal": optimal} if optimal else {})}, f, indent=2)

        _written(args.json, "json", write_json)
    if args.png:
        max_length = ckpt["train_config"]["max_length"] or task.train_lengths[1]
        _written(args.png, "png", lambda: plots.generalization(
            task, errors, args.png, optimal=optimal, curves=curves, trained_to=min(max_length, task.train_lengths[1])))
        print(f"wrote {args.png}")


def add_viz_parser(sub):
    p = sub.add_parser("viz", help="plot sequences of a checkpoint", description="Writes a PNG of one of two "
                       "figures: 'weightings' (the paper's Fig. 6 view: inputs, targets, outputs and the "
                       "write/read weightings over time for one sequence) or 'outputs' (the Fig. 4 view: "
                       "targets above outputs for one sequence at each of several lengths).")
    p.add_argument("checkpoint", help="a run folder of `ntm-fast train` (its best.pt, the model the run kept, or "
                   "else its checkpoint.pt) or a checkpoint file")
    p.add_argument("--figure", choices=("weightings", "outputs"), default="weightings",
                   help="which figure (default weightings)")
    p.add_argument("--length", type=_integer(1), default=None,
                   help="sequence length of the weightings figure (default: the task's longest training length)")
    p.add_argument("--lengths", type=_integer(1), nargs="+", default=None,
                   help="sequence lengths of the outputs figure (default: the task's generalisation lengths)")
    _add_repeats(p)
    p.add_argument("--seed", type=_seed, default=7, help="seed of the sequence (default 7)")
    p.add_argument("--out", default=None, help="PNG path (default: weightings-L<length>.png or outputs.png beside "
                   "the checkpoint)")
    add_device_backend(p)
    p.set_defaults(func=cmd_viz)


def cmd_viz(args):
    from . import plots

    # Each figure has its own length option: the other one would be ignored.
    if args.figure == "weightings" and args.lengths is not None:
        raise UsageError("'lengths' applies to --figure outputs; the weightings figure takes --length",
                         field="lengths")
    if args.figure == "outputs" and args.length is not None:
        raise UsageError("'length' applies to --figure weightings; the outputs figure takes --lengths",
                         field="length")
    _check_output_file(args.out, "out")
    model, task, _ = _load(args)
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    if args.figure == "weightings":
        length = task.train_lengths[1] if args.length is None else args.length
        _check_lengths(task, [length], "length", **_sample_kwargs(args))
        out = args.out or os.path.join(folder, f"weightings-L{length}.png")
        _written(out, "out", lambda: plots.weightings(model, task, out, length=length, seed=args.seed,
                                                      device=args.device, **_sample_kwargs(args)))
    else:
        lengths = args.lengths or task.eval_curves["length"][0]
        _check_lengths(task, lengths, "lengths", **_sample_kwargs(args))
        out = args.out or os.path.join(folder, "outputs.png")
        _written(out, "out", lambda: plots.outputs(model, task, out, lengths=lengths, seed=args.seed,
                                                   device=args.device, **_sample_kwargs(args)))
    print(f"wrote {out}")


SUBCOMMANDS = [add_train_parser, add_eval_parser, add_viz_parser, add_bench_parser, add_profile_parser]
# Their argument checks raise ValueError or FileNotFoundError (bench.py, profiling.py): shown as one
# line too.
VALUE_ERROR_COMMANDS = ("bench", "profile")


def build_parser():
    parser = _Parser(prog="ntm-fast", description="Neural Turing Machines with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .train import TrainingDiverged

    try:
        args.func(args)
    except UsageError as err:
        parser.exit(2, f"ntm-fast {args.command}: error: {_one_line(err)}\n")
    except TrainingDiverged as err:
        parser.exit(1, f"ntm-fast {args.command}: error: {err}\n")
    except (ValueError, FileNotFoundError) as err:
        if args.command not in VALUE_ERROR_COMMANDS:
            raise  # not an expected failure: a bug, whose traceback says where
        parser.exit(2, f"ntm-fast {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted; the last checkpoint is intact\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
