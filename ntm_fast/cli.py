"""The `ntm-fast` command (also `python -m ntm_fast`).

    ntm-fast train [options]          train an NTM on a task (copy by default), on the CPU by default
    ntm-fast eval CHECKPOINT          bit errors per sequence at several lengths
    ntm-fast viz CHECKPOINT           PNG of inputs, outputs and read/write weightings for one sequence

Each subcommand's `--help` explains its options. Bad arguments end with a one-line error, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

MODEL_OPTIONS = (
    # (flag, NTM keyword, type, help)
    ("--controller", "controller", str, "controller network: lstm or feedforward (default lstm)"),
    ("--controller-size", "controller_size", int, "controller hidden units (default 100)"),
    ("--memory-slots", "memory_slots", int, "memory slots N (default 128)"),
    ("--memory-width", "memory_width", int, "slot width M (default 20)"),
    ("--read-heads", "read_heads", int, "read heads R (default 1)"),
    ("--write-heads", "write_heads", int, "write heads W (default 1)"),
    ("--shift-range", "shift_range", int, "shifts -S..S allowed per step (default 1)"),
    ("--memory-init", "memory_init", str, "initial memory: constant (1e-6), learned or random (default constant)"),
)


def _add_device_backend(p):
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="auto",
                   help="ops backend: auto, reference, triton, cpp or cuda (default auto: the fastest that "
                        "runs on the device; see `python -c 'import ntm_fast; print(ntm_fast.available_backends())'`)")


def add_train_parser(sub):
    p = sub.add_parser("train", help="train an NTM", description="Train an NTM on one of the paper's tasks. "
                       "Writes checkpoint.pt, metrics.csv, eval.json, learning_curve.png and weightings.png "
                       "into --out.")
    from .tasks import TASKS

    p.add_argument("--task", default="copy", choices=sorted(TASKS), help="task to learn (default copy)")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (batches) to train for (default 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default 32)")
    p.add_argument("--optimizer", default="rmsprop", choices=("rmsprop", "adam"),
                   help="rmsprop (the paper's: lr 1e-4, momentum 0.9) or adam (lr 1e-3)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: per optimizer and task)")
    p.add_argument("--momentum", type=float, default=0.9, help="RMSprop momentum (default 0.9)")
    p.add_argument("--clip", type=float, default=10.0, help="elementwise gradient clip (default 10)")
    p.add_argument("--max-length", type=int, default=None,
                   help="cap on training sequence length (default: the task's, 20 for copy)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--eval-every", type=int, default=200, help="evaluate every N steps (default 200)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint every N steps (default 200)")
    p.add_argument("--out", default=None, help="output folder (default runs/TASK)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures at the end")
    p.add_argument("--no-final-eval", action="store_true", help="skip the evaluation at lengths 20/40/80/120")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_device_backend(p)
    for flag, _, typ, help_ in MODEL_OPTIONS:
        p.add_argument(flag, type=typ, default=None, help=help_)
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from .train import TrainConfig, Trainer

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = {kw: getattr(args, kw) for _, kw, _, _ in MODEL_OPTIONS if getattr(args, kw) is not None}
    config = TrainConfig(task=args.task, steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, momentum=args.momentum, clip=args.clip, max_length=args.max_length,
                         seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         out_dir=args.out or os.path.join("runs", args.task), device=args.device,
                         backend=args.backend, final_eval=not args.no_final_eval, plots=not args.no_plots,
                         progress=not args.no_progress, model=model)
    trainer = Trainer(config)
    if args.resume:
        trainer.resume()
    print(f"training {config.task} on {config.device} with backend {_backend_name(config.backend, trainer.device)}; "
          f"output in {config.out_dir}/")
    summary = trainer.fit()
    print(f"done: {summary['steps']} steps, {summary['sequences']} sequences in {summary['train_seconds']:.0f} s "
          f"({summary['rollbacks']} rollbacks)")
    for length, errors in summary.get("final_eval", {}).items():
        print(f"  length {length:>4}: {errors:.3f} bit errors per sequence")
    print(f"files: {config.out_dir}/checkpoint.pt metrics.csv eval.json"
          + (" learning_curve.png weightings.png" if config.plots else ""))


def _backend_name(name, device):
    """The backend `name` resolves to on `device` ('auto' -> the chosen one)."""
    from .backends import AUTO_ORDER, unavailable_reason

    if name != "auto":
        return name
    for candidate in AUTO_ORDER.get(device.type, ("reference",)):
        if unavailable_reason(candidate, device.type) is None:
            return f"auto -> {candidate}"
    return "auto"


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Bit errors per sequence of a "
                       "checkpoint at several sequence lengths (the task's generalisation lengths by default).")
    p.add_argument("checkpoint", help="path to a checkpoint.pt written by `ntm-fast train`")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default: the task's)")
    p.add_argument("--batches", type=int, default=4, help="batches per length (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default 32)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_device_backend(p)
    p.set_defaults(func=cmd_eval)


def _load(args):
    import torch

    from .tasks import make_task
    from .train import load_checkpoint, model_from_checkpoint

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible")
    ckpt = load_checkpoint(args.checkpoint, map_location=args.device)
    model = model_from_checkpoint(ckpt, device=args.device, backend=getattr(args, "backend", "auto"))
    return model, make_task(ckpt["train_config"]["task"])


def cmd_eval(args):
    import torch

    from .train import evaluate

    model, task = _load(args)
    lengths = args.lengths or list(task.eval_lengths)
    results = {}
    for length in lengths:
        if length < 1:
            raise ValueError(f"--lengths must be positive, got {length}")
        results[str(length)] = evaluate(model, task, length, args.batches, args.batch_size, torch.device(args.device))
        print(f"length {length:>4}: {results[str(length)]:.3f} bit errors per sequence")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "task": task.name, "bit_errors": results}, f, indent=2)


def add_viz_parser(sub):
    p = sub.add_parser("viz", help="plot one sequence of a checkpoint", description="Writes a PNG with the "
                       "inputs, targets, outputs and the write/read weightings over time (the paper's Fig. 6 "
                       "view) for one sequence.")
    p.add_argument("checkpoint", help="path to a checkpoint.pt written by `ntm-fast train`")
    p.add_argument("--length", type=int, default=20, help="sequence length (default 20)")
    p.add_argument("--seed", type=int, default=7, help="seed of the sequence (default 7)")
    p.add_argument("--out", default=None, help="PNG path (default: weightings-L<length>.png beside the checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_viz)


def cmd_viz(args):
    from . import plots

    if args.length < 1:
        raise ValueError(f"--length must be positive, got {args.length}")
    model, task = _load(args)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"weightings-L{args.length}.png")
    plots.weightings(model, task, out, length=args.length, seed=args.seed, device=args.device)
    print(f"wrote {out}")


SUBCOMMANDS = [add_train_parser, add_eval_parser, add_viz_parser]


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
