"""The `ntm-fast` command (also `python -m ntm_fast`).

    ntm-fast train [options]          train an NTM on a task (copy by default), on the CPU by default;
                                      --config NAME starts from a model-zoo entry (ntm_fast/tools/zoo.py)
    ntm-fast eval CHECKPOINT          errors per sequence at the task's generalisation points
    ntm-fast viz CHECKPOINT           PNG of one sequence's weightings, or of outputs at several lengths
    ntm-fast bench                    time every backend (and torch.compile) against the reference
    ntm-fast profile                  split a training step's time and memory traffic into parts

Each subcommand's `--help` explains its options. Bad arguments end with a one-line error, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .bench import add_bench_parser
from .options import add_device_backend, add_model_options, model_options_given
from .profiling import add_profile_parser

def add_train_parser(sub):
    from .tasks import TASKS
    from .train import TrainConfig
    from .zoo import ZOO

    # Options left out keep the --config entry's value, else TrainConfig's default (argument_default).
    p = sub.add_parser("train", help="train an NTM", argument_default=argparse.SUPPRESS,
                       description="Train an NTM on one of the paper's tasks. Model and learning-rate "
                       "defaults are the paper's for the task (Tables 1-3); --config starts from a model-zoo "
                       "entry instead, and any option given overrides it. Writes checkpoint.pt, metrics.csv, "
                       "eval.json, learning_curve.png, weightings.png and generalization.png into --out.")
    d = TrainConfig()
    p.add_argument("--config", choices=sorted(ZOO), help="start from this model-zoo entry (ntm_fast/tools/zoo.py says "
                   "what each one reaches)")
    p.add_argument("--task", choices=sorted(TASKS), help=f"task to learn (default {d.task})")
    p.add_argument("--steps", type=int, help=f"optimiser steps (batches) to train for (default {d.steps})")
    p.add_argument("--batch-size", type=int, help=f"sequences per batch (default {d.batch_size})")
    p.add_argument("--optimizer", choices=("rmsprop", "adam"),
                   help=f"rmsprop (the paper's, momentum 0.9) or adam (default {d.optimizer})")
    p.add_argument("--lr", type=float, help="learning rate (default: the paper's for the task with rmsprop, "
                   "1e-3 with adam)")
    p.add_argument("--momentum", type=float, help=f"RMSprop momentum (default {d.momentum})")
    p.add_argument("--clip", type=float, help=f"elementwise gradient clip (default {d.clip:g})")
    p.add_argument("--max-length", type=int, help="cap on training sequence length (default: the task's, 20 "
                   "for copy)")
    p.add_argument("--curriculum", action=argparse.BooleanOptionalAction,
                   help="start at a short maximum length and lengthen it whenever the evaluation at the current "
                   "maximum reaches --curriculum-threshold (default off)")
    p.add_argument("--curriculum-start", type=int, help="first maximum length (default: the task's shortest)")
    p.add_argument("--curriculum-step", type=int, help=f"length added per stage (default {d.curriculum_step})")
    p.add_argument("--curriculum-threshold", type=float, help="errors per sequence at which the length grows "
                   f"(default {d.curriculum_threshold:g})")
    p.add_argument("--curriculum-lr", nargs="+", type=_level_lr, metavar="LEVEL=LR",
                   help="learning rate to switch to when the curriculum reaches LEVEL, e.g. 10=1e-4")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--eval-every", type=int, help=f"evaluate every N steps (default {d.eval_every})")
    p.add_argument("--checkpoint-every", type=int, help=f"checkpoint every N steps (default {d.checkpoint_every})")
    p.add_argument("--out", help="output folder (default runs/CONFIG or runs/TASK)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from OUT/checkpoint.pt, or from CHECKPOINT (e.g. OUT/level-9.pt, saved when "
                   "curriculum level 9 was passed); --lr given with it replaces the checkpoint's learning rate")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true", default=False, help="skip the PNG figures at the end")
    p.add_argument("--no-final-eval", action="store_true", default=False,
                   help="skip the generalisation evaluation at the end (copy: lengths 20/40/80/120)")
    p.add_argument("--no-progress", action="store_true", default=False, help="no progress bar")
    add_device_backend(p)
    add_model_options(p)
    p.set_defaults(func=cmd_train)


def _level_lr(text: str) -> tuple:
    level, sep, lr = text.partition("=")
    try:
        return int(level), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEVEL=LR such as 10=1e-4, got {text!r}") from None


def cmd_train(args):
    import dataclasses

    from .train import TrainConfig, Trainer, describe
    from .zoo import ZOO, zoo_config

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = vars(args)  # holds only the options given (argument_default=SUPPRESS) and the on/off flags
    zoo_name = options.get("config")
    settings = zoo_config(zoo_name) if zoo_name else {}
    model = {**settings.pop("model", {}), **model_options_given(args)}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings.update((name, value) for name, value in options.items() if name in fields)
    if "curriculum_lr" in options:
        settings["curriculum_lr"] = dict(options["curriculum_lr"])
    out_dir = options.get("out") or os.path.join("runs", zoo_name or settings.get("task", TrainConfig.task))
    config = TrainConfig(**settings, model=model, out_dir=out_dir, final_eval=not args.no_final_eval,
                         plots=not args.no_plots, progress=not args.no_progress)
    if zoo_name:
        print(f"config {zoo_name}: {ZOO[zoo_name]['about']}")
    trainer = Trainer(config)
    if args.resume:
        trainer.resume(None if args.resume is True else args.resume, lr=options.get("lr"))
    print(f"training {config.task} on {config.device} with backend {_backend_name(config.backend, trainer.device)}; "
          f"output in {config.out_dir}/")
    summary = trainer.fit()
    print(f"done: {summary['steps']} steps, {summary['sequences']} sequences in {summary['train_seconds']:.0f} s "
          f"({summary['rollbacks']} rollbacks)")
    if "final_eval" in summary:
        for line in describe(trainer.task, summary["final_eval"], summary.get("optimal", {})):
            print(f"  {line}")
    print(f"files: {config.out_dir}/checkpoint.pt metrics.csv eval.json"
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
    p.add_argument("checkpoint", help="path to a checkpoint.pt written by `ntm-fast train`")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths (default: the task's generalisation points, e.g. 20 40 80 120 for copy)")
    _add_repeats(p)
    p.add_argument("--batches", type=int, default=4, help="batches per length (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default 32)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--png", default=None, help="also plot errors against length (and repeats) to this PNG file")
    add_device_backend(p)
    p.set_defaults(func=cmd_eval)


def _add_repeats(p):
    p.add_argument("--repeats", type=int, default=None,
                   help="repeat count, repeat-copy only (default: drawn from 1..10 per batch)")


def _load(args):
    """(model, task, checkpoint) of args.checkpoint; args.repeats checked against the task."""
    import torch

    from .tasks import make_task
    from .train import load_checkpoint, model_from_checkpoint

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible")
    ckpt = load_checkpoint(args.checkpoint, map_location=args.device)
    model = model_from_checkpoint(ckpt, device=args.device, backend=getattr(args, "backend", "auto"))
    task = make_task(ckpt["train_config"]["task"])
    if args.repeats is not None and task.name != "repeat-copy":
        raise ValueError(f"--repeats applies to the repeat-copy task, not {task.name}")
    return model, task, ckpt


def _sample_kwargs(args) -> dict:
    return {} if args.repeats is None else {"repeats": args.repeats}


def cmd_eval(args):
    import torch

    from . import plots
    from .train import describe, generalization

    model, task, ckpt = _load(args)
    curves = None
    if args.lengths or args.repeats is not None:
        curves = {"length": (args.lengths or task.eval_curves["length"][0], _sample_kwargs(args))}
    errors, optimal = generalization(model, task, args.batches, args.batch_size, torch.device(args.device),
                                     task.eval_points(curves))
    for line in describe(task, errors, optimal):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "task": task.name, "metric": task.metric, "bit_errors": errors,
                       **({"optimal": optimal} if optimal else {})}, f, indent=2)
    if args.png:
        max_length = ckpt["train_config"]["max_length"] or task.train_lengths[1]
        plots.generalization(task, errors, args.png, optimal=optimal, curves=curves,
                             trained_to=min(max_length, task.train_lengths[1]))
        print(f"wrote {args.png}")


def add_viz_parser(sub):
    p = sub.add_parser("viz", help="plot sequences of a checkpoint", description="Writes a PNG of one of two "
                       "figures: 'weightings' (the paper's Fig. 6 view: inputs, targets, outputs and the "
                       "write/read weightings over time for one sequence) or 'outputs' (the Fig. 4 view: "
                       "targets above outputs for one sequence at each of several lengths).")
    p.add_argument("checkpoint", help="path to a checkpoint.pt written by `ntm-fast train`")
    p.add_argument("--figure", choices=("weightings", "outputs"), default="weightings",
                   help="which figure (default weightings)")
    p.add_argument("--length", type=int, default=None,
                   help="sequence length of the weightings figure (default: the task's longest training length)")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths of the outputs figure (default: the task's generalisation lengths)")
    _add_repeats(p)
    p.add_argument("--seed", type=int, default=7, help="seed of the sequence (default 7)")
    p.add_argument("--out", default=None, help="PNG path (default: weightings-L<length>.png or outputs.png beside "
                   "the checkpoint)")
    add_device_backend(p)
    p.set_defaults(func=cmd_viz)


def cmd_viz(args):
    from . import plots

    model, task, _ = _load(args)
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    if args.figure == "weightings":
        length = task.train_lengths[1] if args.length is None else args.length
        out = args.out or os.path.join(folder, f"weightings-L{length}.png")
        plots.weightings(model, task, out, length=length, seed=args.seed, device=args.device, **_sample_kwargs(args))
    else:
        lengths = args.lengths or task.eval_curves["length"][0]
        out = args.out or os.path.join(folder, "outputs.png")
        plots.outputs(model, task, out, lengths=lengths, seed=args.seed, device=args.device, **_sample_kwargs(args))
    print(f"wrote {out}")


SUBCOMMANDS = [add_train_parser, add_eval_parser, add_viz_parser, add_bench_parser, add_profile_parser]


def build_parser():
    parser = argparse.ArgumentParser(prog="ntm-fast", description="Neural Turing Machines with fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"ntm-fast {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted; the last checkpoint is intact\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
