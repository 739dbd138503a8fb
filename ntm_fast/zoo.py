"""Model zoo: training configurations (not weights) for the paper's five tasks.

`ntm-fast train --config NAME` starts from `ZOO[NAME]["config"]` (TrainConfig fields); any flag given on the
command line overrides it. Each entry says what it is known to reach: `docs/tasks.md` has the measured runs
behind the "measured" notes. The model of every entry is the task's paper default (Table 2, LSTM controller)
unless the entry's `model` says otherwise; the optimiser is Adam where the paper's RMSprop at 1e-4 was
measured far slower on the copy task here.
"""
from __future__ import annotations

ZOO = {
    "copy": {
        "about": "Copy, lengths 1..20. Measured: solved (0 bit errors at length 20) in about 1,200 steps.",
        "config": dict(task="copy", optimizer="adam", lr=1e-3, batch_size=32, steps=2000, eval_every=100),
    },
    "repeat-copy": {
        "about": "Repeat copy, lengths 1..10, with a curriculum that raises the largest repeat count from 1 to 10.",
        "config": dict(task="repeat-copy", optimizer="adam", lr=1e-3, batch_size=32, steps=15000, eval_every=250,
                       seed=3, curriculum=True, curriculum_start=1, curriculum_step=1, curriculum_threshold=1.0),
    },
    "associative-recall": {
        "about": "Associative recall, 2..6 items, with an item-count curriculum. Not trained to the end here.",
        "config": dict(task="associative-recall", optimizer="adam", lr=1e-3, batch_size=32, steps=20000,
                       eval_every=200, curriculum=True, curriculum_step=1, curriculum_threshold=1.0),
    },
    "ngram": {
        "about": "Dynamic 6-grams, 200 bits, scored against the optimal Bayesian estimator. Not trained to the "
                 "end here.",
        "config": dict(task="ngram", optimizer="adam", lr=3e-4, batch_size=32, steps=20000, eval_every=200),
    },
    "priority-sort": {
        "about": "Priority sort, 20 inputs, 16 outputs, 5 read and 5 write heads. Not trained to the end here.",
        "config": dict(task="priority-sort", optimizer="adam", lr=3e-4, batch_size=32, steps=20000, eval_every=200),
    },
}


def zoo_config(name: str) -> dict:
    """The TrainConfig fields of zoo entry `name` (a copy: safe to change)."""
    if name not in ZOO:
        raise ValueError(f"unknown config {name!r}; the zoo has: {', '.join(ZOO)}")
    return dict(ZOO[name]["config"])
