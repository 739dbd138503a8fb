"""Train the copy task for several seeds with the same `ntm-fast train` flags, then score each run's model on
copy sequences drawn from a generator that training never uses, and print a markdown table.

    python benchmarks/copy_seeds.py --seeds 0 1 2 3 4 --out runs/copy-seeds -- --optimizer adam --threads 1

Everything after `--` goes to `python -m ntm_fast train` unchanged (with `--seed N --out OUT/seed-N
--no-plots --no-progress` added); the model scored is the one the run kept (OUT/seed-N/best.pt). The score of a model is its bit errors per sequence at each of `--lengths`
over `--sequences` sequences per length; the target is the issue's: <= 0.1 at length 20 and <= 1 at 120.

With `--segment K` a run is trained K steps at a time (`--resume`, which reproduces an uninterrupted run
exactly) up to `--steps`; after each segment the model is scored on a smaller selection set (another
independent generator, lengths 20 and 120) and the best one so far is kept (OUT/seed-N/best.pt). The run
stops once that selection score meets the target (`--until-solved`). `--lr-at STEP=LR` changes the learning
rate from the segment starting at STEP on (a step schedule); `--lr-when-learned LR` changes it once the
selection error at length 20 is at most `--learned` (and --until-solved then waits `--polish` steps). This stands in for a trainer that keeps its best model,
lowers its rate once the task is learnt and stops when solved.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ntm_fast.tools.tasks import make_task  # noqa: E402
from ntm_fast.tools.train import evaluate, load_checkpoint, model_from_checkpoint  # noqa: E402

# Generator seeds of the scoring and selection sets (each adds the length, as `evaluate` does). Training draws
# its data from a generator seeded with the run's seed (0, 1, ...) and evaluates on 12345 + length: these
# streams are far from both.
SCORE_SEED = 1_000_000_007
SELECT_SEED = 2_000_000_011
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


def train(flags, seed, out, steps=None, resume=False) -> float:
    """One `ntm-fast train` call; returns its training seconds (eval.json)."""
    cmd = [sys.executable, "-m", "ntm_fast", "train", *flags, "--seed", str(seed), "--out", out, "--no-plots",
           "--no-progress"]
    if steps is not None:
        cmd += ["--steps", str(steps), "--no-final-eval"] + (["--resume"] if resume else [])
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)["train_seconds"]


def without_lr(flags):
    """`flags` less any `--lr X`."""
    out = list(flags)
    while "--lr" in out:
        i = out.index("--lr")
        del out[i:i + 2]
    return out


def run_seed(args, flags, seed) -> dict:
    out = os.path.join(args.out, f"seed-{seed}")
    if args.segment is None:
        seconds = train(flags, seed, out)
        # The model the run kept (best.pt, unless --no-keep-best), and how far the run went.
        ckpt = os.path.join(out, "best.pt")
        ckpt = ckpt if os.path.exists(ckpt) else os.path.join(out, "checkpoint.pt")
        return dict(seconds=seconds, steps=load_checkpoint(ckpt)["step"],
                    trained=load_checkpoint(os.path.join(out, "checkpoint.pt"))["step"], model=ckpt)
    shutil.rmtree(out, ignore_errors=True)
    best, best_key, seconds, step, history, learned = None, None, 0.0, 0, [], None
    while step < args.steps:
        changes = sorted(args.lr_at + ([(learned, args.lr_when_learned)] if learned else []))
        lr = [lr for at, lr in changes if at <= step]
        if step == 0:
            seg_flags = flags + (["--lr", str(lr[-1])] if lr else [])
        else:  # --lr on a resume replaces the checkpoint's rate: give it only where the schedule changes it, so
            # that a rate the trainer lowered after a divergence stays lowered
            seg_flags = without_lr(flags) + (["--lr", str(lr[-1])] if any(at == step for at, _ in changes) else [])
        step = min(step + args.segment, args.steps)
        seconds += train(seg_flags, seed, out, steps=step, resume=step > args.segment)
        errors = score(os.path.join(out, "checkpoint.pt"), sorted(TARGET), args.select_sequences, SELECT_SEED)
        history.append((step, errors))
        print(f"  seed {seed} step {step}: selection " + " ".join(f"{L}:{e:.3f}" for L, e in errors.items()),
              flush=True)
        if learned is None and args.lr_when_learned and errors[20] <= args.learned:
            learned = step
        key = (not solved(errors), sum(errors.values()))
        if best_key is None or key < best_key:
            best, best_key = step, key
            shutil.copyfile(os.path.join(out, "checkpoint.pt"), os.path.join(out, "best.pt"))
        if args.until_solved and solved(errors) and (not args.lr_when_learned or
                                                     (learned is not None and step - learned >= args.polish)):
            break
    return dict(seconds=seconds, steps=best, trained=step, learned=learned, model=os.path.join(out, "best.pt"),
                history=history)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (default 0-4)")
    parser.add_argument("--out", default="runs/copy-seeds", help="folder of the runs and of results.md/json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 40, 80, 120], help="scored lengths")
    parser.add_argument("--sequences", type=int, default=500, help="scored sequences per length (default 500)")
    parser.add_argument("--segment", type=int, default=None, help="train K steps at a time, keep the best model")
    parser.add_argument("--steps", type=int, default=6000, help="with --segment: the most steps per run")
    parser.add_argument("--select-sequences", type=int, default=100, help="with --segment: selection sequences")
    parser.add_argument("--until-solved", action="store_true", help="with --segment: stop once the selection "
                        "set meets the target")
    parser.add_argument("--lr-at", nargs="+", default=[], type=lambda s: (int(s.split("=")[0]), float(s.split("=")[1])),
                        metavar="STEP=LR", help="with --segment: learning rate from STEP on")
    parser.add_argument("--lr-when-learned", type=float, default=None, metavar="LR",
                        help="with --segment: learning rate once the selection error at 20 is <= --learned")
    parser.add_argument("--learned", type=float, default=0.1, help="see --lr-when-learned (default 0.1)")
    parser.add_argument("--polish", type=int, default=500, help="with --lr-when-learned and --until-solved: "
                        "steps at the lowered rate before a run may stop (default 500)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the flags of `ntm-fast train`")
    args = parser.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    for bad in ("--seed", "--out", "--steps") if args.segment else ("--seed", "--out"):
        if bad in flags:
            parser.error(f"the train flag {bad} is set by this script; got it after --")
    if "--threads" in flags:
        torch.set_num_threads(int(flags[flags.index("--threads") + 1]))

    command = "python benchmarks/copy_seeds.py " + " ".join(sys.argv[1:])
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        run = run_seed(args, flags, seed)
        errors = score(run["model"], args.lengths, args.sequences, SCORE_SEED)
        rows.append(dict(seed=seed, **run, wall=time.perf_counter() - start, errors=errors, solved=solved(errors)))
        print(f"seed {seed}: steps {run['steps']}, " + " ".join(f"{L}:{e:.3f}" for L, e in errors.items()), flush=True)

    lines = [f"`{command}`", "", f"Bit errors per sequence over {args.sequences} independent sequences per length.",
             "", "| seed | train s | steps (best) | trained | " + " | ".join(f"L={L}" for L in args.lengths)
             + " | solved |", "| --- " * (5 + len(args.lengths)) + "|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['seconds']:.0f} | {r['steps']} | {r['trained'] or r['steps']} | "
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
