"""The command-line options that several subcommands share, defined once: the model's options (the NTM's
constructor arguments) and the device/backend pair."""
from __future__ import annotations

import argparse

MODEL_OPTIONS = (
    # (flag, NTM keyword, type, the NTM's default, help)
    ("--controller", "controller", str, "lstm", "controller network: lstm or feedforward"),
    ("--controller-size", "controller_size", int, 100, "controller hidden units"),
    ("--memory-slots", "memory_slots", int, 128, "memory slots N"),
    ("--memory-width", "memory_width", int, 20, "slot width M"),
    ("--read-heads", "read_heads", int, 1, "read heads R"),
    ("--write-heads", "write_heads", int, 1, "write heads W"),
    ("--shift-range", "shift_range", int, 1, "shifts -S..S allowed per step"),
    ("--memory-init", "memory_init", str, "constant", "initial memory: constant (1e-6), learned or random"),
)


# The smallest value of each integer model option, where it is not 1.
MODEL_MINIMUM = {"shift_range": 0}


def integer_at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def add_model_options(parser, keywords=None, *, with_defaults=False, checked=False):
    """Add the model options (those named in `keywords`, default all) to `parser`. Without defaults an
    option left out is None (or absent, under argparse.SUPPRESS), so that another source can fill it.
    checked: argparse itself refuses out-of-range integers and unknown choices (one line naming the flag)."""
    from ..model.ntm import CONTROLLERS, MEMORY_INITS

    choices = {"controller": CONTROLLERS, "memory_init": MEMORY_INITS} if checked else {}
    for flag, keyword, typ, default, help_ in MODEL_OPTIONS:
        if keywords is None or keyword in keywords:
            if checked and typ is int:
                typ = integer_at_least(MODEL_MINIMUM.get(keyword, 1))
            kwargs = dict(default=default) if with_defaults else {}
            parser.add_argument(flag, type=typ, choices=choices.get(keyword), help=f"{help_} (default {default})",
                                **kwargs)


def model_options_given(args) -> dict:
    """The model options present in `args` (and not None), as NTM keyword arguments."""
    options = vars(args)
    return {keyword: options[keyword] for _, keyword, _, _, _ in MODEL_OPTIONS
            if options.get(keyword) is not None}


def add_device_backend(parser, backend_help=None):
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--backend", default="auto", help=backend_help or (
        "ops backend: auto, reference, triton, cpp or cuda (default auto: the fastest that runs on the device; "
        "see `python -c 'import ntm_fast; print(ntm_fast.available_backends())'`)"))
