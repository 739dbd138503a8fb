"""Train the copy task for several seeds with the same `ntm-fast train` flags, then score each run's model on
copy sequences drawn from a generator that training never uses, and print a markdown table.

    python benchmarks/copy_seeds.py --seeds 0 1 2 3 4 --out runs/copy-seeds -- --optimizer adam --threads 1

Everything after `--` goes to `python -m ntm_fast train` unchanged (with `--seed N --out OUT/seed-N
--no-plots --no-progress` added); the model scored is the one the run kept (OUT/seed-N/best.pt). The score of a model is its bit errors per sequence at each of `--lengths`
over `--sequences` sequences per length; the target is the issue's: <= 0.1 at length 20 and <= 1 at 120.

With `--jobs 2` two seeds train side by side (give each `--threads 1`); the table is the same.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ntm_fast.tools.tasks import make_task  # noqa: E402
from ntm_fast.tools.train import evaluate, load_checkpoint, model_from_checkpoint  # noqa: E402

# Generator seed of the scoring sets (each adds the length, as `evaluate` does): far from the training data
# (the run's seed), the periodic evaluation (12345 + length) and the trainer's selection sets (train.SELECT_SEED).
SCORE_SEED = 1_000_000_007
TARGET = {20: 0.1, 120: 1.0}


def score(path, lengths, sequences, seed, batch_size=100) -> dict:
    """Bit errors per sequence of the checkpoint at `path` at each length, over `sequences` sequences
    (rounded up to whole batches of `batch_size`) from the generator `seed` + length."""
    task = make_task("copy")
    model = model_from_checkpoint(load_checkpoint(path))
    batches = -(-sequences // batch_size)
    return {L: evaluate(model, task, L, batches, batch_size, "cpu", seed=seed) for L in lengths}


def solved(errors: dict) -> bool:
    return all(errors[L] <= limit for L, limit in TARGET.items() if L in errors)


def train(flags, seed, out) -> dict:
    """One `ntm-fast train` run; returns its eval.json summary and the model it kept (best.pt, unless
    --no-keep-best: then checkpoint.pt) with that model's step."""
    cmd = [sys.executable, "-m", "ntm_fast", "train", *flags, "--seed", str(seed), "--out", out, "--no-plots",
           "--no-progress"]
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "eval.json")) as f:
        summary = json.load(f)
    model = os.path.join(out, "best.pt")
    model = model if os.path.exists(model) else os.path.join(out, "checkpoint.pt")
    return dict(seconds=summary["train_seconds"], trained=summary["steps"], rollbacks=summary["rollbacks"],
                steps=load_checkpoint(model)["step"], model=model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (default 0-4)")
    parser.add_argument("--out", default="runs/copy-seeds", help="folder of the runs and of results.md/json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 40, 80, 120], help="scored lengths")
    parser.add_argument("--sequences", type=int, default=500, help="scored sequences per length (default 500)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (default 1)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the flags of `ntm-fast train`")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    for bad in ("--seed", "--out"):
        if bad in flags:
            parser.error(f"the train flag {bad} is set by this script; got it after --")
    if "--threads" in flags:
        torch.set_num_threads(int(flags[flags.index("--threads") + 1]))

    command = "python benchmarks/copy_seeds.py " + " ".join(sys.argv[1:])
    with ThreadPoolExecutor(args.jobs) as pool:  # the runs are subprocesses: threads only wait on them
        runs = pool.map(lambda seed: train(flags, seed, os.path.join(args.out, f"seed-{seed}")), args.seeds)
        rows = []
        for seed, run in zip(args.seeds, runs):
            errors = score(run["model"], args.lengths, args.sequences, SCORE_SEED)
            rows.append(dict(seed=seed, **run, errors=errors, solved=solved(errors)))
            print(f"seed {seed}: model of step {run['steps']}, " + " ".join(f"{L}:{e:.3f}" for L, e in errors.items()),
                  flush=True)

    lines = [f"`{command}`", "", f"Bit errors per sequence over {args.sequences} independent sequences per length.",
             "", "| seed | train s | steps run | model of step | rollbacks | " + " | ".join(f"L={L}" for L in args.lengths)
             + " | solved |", "| --- " * (6 + len(args.lengths)) + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['seconds']:.0f} | {r['trained']:,} | {r['steps']:,} | {r['rollbacks']} | "
                     + " | ".join(f"{r['errors'][L]:.3f}" for L in args.lengths) + f" | {'yes' if r['solved'] else 'no'} |")
    lines.append(f"\n{sum(r['solved'] for r in rows)} of {len(rows)} seeds solved (<= 0.1 at 20, <= 1 at 120).")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(command=command, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
