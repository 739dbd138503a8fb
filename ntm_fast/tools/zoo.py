"""Model zoo: training configurations (not weights) for the paper's five tasks.

`ntm-fast train --config NAME` starts from `ZOO[NAME]["config"]` (TrainConfig fields); any flag given on the
command line overrides it. Each entry says what it is known to reach: `docs/tasks.md` has the measured runs
behind the "measured" notes. Every entry trains the task's paper model (Table 2, LSTM controller) with Adam:
on the copy task it solved length 20 in about 1,100 steps here, the paper's RMSprop at 1e-4 (the default of
`ntm-fast train`) in about 3,000 (benchmarks/RESULTS.md).
"""
from __future__ import annotations

ZOO = {
    "copy": {
        "about": "Copy, lengths 1..20, with the paper's RMSprop (lr 1e-4), until solved (<= 0.1 bit errors per "
                 "sequence at length 20 and <= 1 at 120) within 10,000 steps: the default settings. Measured "
                 "(seeds 0-9, --threads 1): solved in 2,200-5,200 steps, 43-123 s.",
        "config": dict(task="copy", optimizer="rmsprop", batch_size=32, steps=10_000, eval_every=200),
    },
    "repeat-copy": {
        "about": "Repeat copy, lengths 1..10, the paper's RMSprop (lr 1e-4), a curriculum that raises the largest "
                 "repeat count from 1 to 10 (the rate back at 1e-4 from 10 on, should rollbacks have lowered it), "
                 "until solved (<= 0.1 bit errors per sequence at 10 x 10) within 40,000 steps, starting afresh "
                 "when the score at 10 x 10 has not improved for 8,000 steps. Measured: docs/tasks.md.",
        "config": dict(task="repeat-copy", optimizer="rmsprop", lr=1e-4, batch_size=32, steps=40000, eval_every=250,
                       stop_when_solved=True, restart_patience=8000, curriculum=True, curriculum_start=1,
                       curriculum_step=1, curriculum_threshold=1.0, curriculum_lr={10: 1e-4}),
    },
    "associative-recall": {
        "about": "Associative recall, 2..6 items. Measured (seed 0): ≤ 0.1 bit errors at 6 items from step 4,250 "
                 "(84 s with --backend cpp --threads 1), ≤ 0.04 at 8 to 15 items after 6,000 steps. (An item-count "
                 "curriculum from 2 items did worse: still at 3 items after 3,000 steps.)",
        "config": dict(task="associative-recall", optimizer="adam", lr=1e-3, batch_size=32, steps=6000,
                       eval_every=250),
    },
    "ngram": {
        "about": "Dynamic 6-grams, 200 bits, scored against the optimal Bayesian estimator. Trained 1,500 steps "
                 "here only: 180.5 bits per sequence against the estimator's 133.0.",
        "config": dict(task="ngram", optimizer="adam", lr=3e-4, batch_size=32, steps=20000, eval_every=200),
    },
    "priority-sort": {
        "about": "Priority sort, 20 inputs, 16 outputs, 5 read and 5 write heads. Trained 3,500 steps here only: "
                 "51.7 bit errors per sequence of 128.",
        "config": dict(task="priority-sort", optimizer="adam", lr=3e-4, batch_size=32, steps=20000, eval_every=200),
    },
}


def zoo_config(name: str) -> dict:
    """The TrainConfig fields of zoo entry `name` (a copy: safe to change)."""
    if name not in ZOO:
        raise ValueError(f"unknown config {name!r}; the zoo has: {', '.join(ZOO)}")
    return dict(ZOO[name]["config"])
