"""PNG figures, one function per kind:

* `learning_curve`: loss and errors against sequences seen.
* `weightings`: the paper's Fig. 6 view of one sequence (inputs, targets, outputs, write and read
  weightings over time).
* `outputs`: the paper's Fig. 4 view: targets above outputs for one sequence at each of several lengths.
* `generalization`: errors per sequence against length (and repeat count) from an evaluation.
"""
from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402


def _smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def learning_curve(metrics_csv: str, path: str, metric: str = "bit errors per sequence"):
    """Loss and errors per sequence (`metric` names them) against sequences seen (raw and a moving average)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    seqs = [int(r["sequences"]) for r in rows]
    window = max(1, len(rows) // 50)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss (mean BCE)"), (axes[1], "bit_errors", metric)):
        values = [float(r[key]) for r in rows]
        ax.plot(seqs, values, alpha=0.25, lw=0.8, color="tab:blue")
        ax.plot(seqs, _smooth(values, window), lw=1.6, color="tab:blue")
        ax.set_xlabel("sequences seen")
        ax.set_ylabel(label)
        ax.set_yscale("log" if min(values) > 0 else "symlog")
        ax.grid(alpha=0.3)
    fig.suptitle("training curve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _one_sequence(model, task, length, seed, device, **sample_kwargs):
    """Batch of one sequence at `length` from generator seed `seed`, and the model's probabilities."""
    model.eval()
    batch = task.sample(1, length, torch.Generator().manual_seed(seed), **sample_kwargs).to(device)
    logits, trace = model(batch.inputs, return_trace=True)
    return batch, torch.sigmoid(logits), trace


@torch.no_grad()
def weightings(model, task, path: str, length: int = 20, seed: int = 7, device="cpu", **sample_kwargs):
    """Inputs, targets, outputs and the write/read weightings (summed over heads) over time for one
    sequence (Fig. 6 view). `sample_kwargs` go to the task's `sample` (repeat copy: `repeats`)."""
    batch, probs, trace = _one_sequence(model, task, length, seed, device, **sample_kwargs)
    panels = [
        ("inputs", batch.inputs[:, 0].T),
        ("targets", (batch.targets[:, 0] * batch.mask[:, 0, None]).T),
        ("outputs", (probs[:, 0] * batch.mask[:, 0, None]).T),
        ("write weightings", trace["write_weights"][:, 0].sum(1).T),
        ("read weightings", trace["read_weights"][:, 0].sum(1).T),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 10),
                             gridspec_kw={"height_ratios": [1, 1, 1, 2.5, 2.5]})
    for ax, (title, image) in zip(axes, panels):
        signed = bool(image.min() < 0)  # priorities, repeat counts: negative values in blue, positive in red
        ax.imshow(image.float().cpu().numpy(), aspect="auto", cmap="bwr" if signed else "gray_r",
                  interpolation="nearest", vmin=-1 if signed else 0, vmax=1 if "weight" not in title else None)
        ax.set_title(title + (" (blue < 0 < red)" if signed else ""), fontsize=9)
        ax.set_yticks([])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("time step")
    axes[-2].set_ylabel("memory slot")
    axes[-1].set_ylabel("memory slot")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def outputs(model, task, path: str, lengths=(10, 20, 30, 50), seed: int = 7, device="cpu", **sample_kwargs):
    """Targets above the model's outputs over the scored steps of one sequence per length (Fig. 4 view)."""
    fig, axes = plt.subplots(2 * len(lengths), 1, figsize=(10, 1.6 * len(lengths) + 1.2), squeeze=False)
    for i, length in enumerate(lengths):
        batch, probs, _ = _one_sequence(model, task, length, seed, device, **sample_kwargs)
        scored = batch.mask[:, 0]
        for ax, title, image in ((axes[2 * i, 0], "targets", batch.targets[scored, 0]),
                                 (axes[2 * i + 1, 0], "outputs", probs[scored, 0])):
            ax.imshow(image.T.float().cpu().numpy(), aspect="auto", cmap="gray_r", interpolation="nearest",
                      vmin=0, vmax=1)
            ax.set_title(f"{title}, length {task.point_label(length, **sample_kwargs)}", fontsize=9)
            ax.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("output step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def generalization(task, errors: dict, path: str, optimal: dict | None = None, trained_to: int | None = None,
                   curves: dict | None = None):
    """Errors per sequence against the swept argument of each of `curves` (default: the task's
    `eval_curves`; one panel each), from `errors` (point label -> value, as `train.generalization` returns);
    the optimal predictor's where given, and the longest training length as a dotted line."""
    curves = curves or task.eval_curves
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
    for ax, (swept, (values, fixed)) in zip(axes[0], curves.items()):
        points = [(x, task.point_label(**{**fixed, swept: x})) for x in values]
        ax.plot([x for x, _ in points], [errors[label] for _, label in points], "o-", label="NTM")
        if optimal:
            ax.plot([x for x, _ in points], [optimal[label] for _, label in points], "s--",
                    label="optimal Bayesian estimator")
        if swept == "length" and trained_to is not None:
            ax.axvline(trained_to, color="gray", ls=":", label="longest training length")
        ax.legend(fontsize=8)
        held = ", ".join(f"{k}={v}" for k, v in fixed.items())
        ax.set_title(task.name + (f" ({held})" if held else ""), fontsize=10)
        ax.set_xlabel(swept)
        ax.set_ylabel(task.metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
