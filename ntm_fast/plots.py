"""PNG figures: the learning curve of a run and the paper's Fig. 6 view of one sequence (inputs, outputs,
and the read/write weightings over time)."""
from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def learning_curve(metrics_csv: str, path: str):
    """Loss and bit errors per sequence against sequences seen (raw and a moving average)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    seqs = [int(r["sequences"]) for r in rows]
    window = max(1, len(rows) // 50)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss (mean BCE)"), (axes[1], "bit_errors", "bit errors / sequence")):
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


@torch.no_grad()
def weightings(model, task, path: str, length: int = 20, seed: int = 7, device="cpu"):
    """Inputs, targets, outputs and the write/read weightings over time for one sequence (Fig. 6 view)."""
    model.eval()
    batch = task.sample(1, length, torch.Generator().manual_seed(seed)).to(device)
    logits, trace = model(batch.inputs, return_trace=True)
    panels = [
        ("inputs", batch.inputs[:, 0].T),
        ("targets", (batch.targets[:, 0] * batch.mask[:, 0, None]).T),
        ("outputs", (torch.sigmoid(logits[:, 0]) * batch.mask[:, 0, None]).T),
        ("write weightings", trace["write_weights"][:, 0].sum(1).T),
        ("read weightings", trace["read_weights"][:, 0].sum(1).T),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 10),
                             gridspec_kw={"height_ratios": [1, 1, 1, 2.5, 2.5]})
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image.float().cpu().numpy(), aspect="auto", cmap="gray_r", interpolation="nearest",
                  vmin=0, vmax=1 if "weight" not in title else None)
        ax.set_title(title, fontsize=9)
        ax.set_yticks([])
    axes[-1].set_xlabel("time step")
    axes[-2].set_ylabel("memory slot")
    axes[-1].set_ylabel("memory slot")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
