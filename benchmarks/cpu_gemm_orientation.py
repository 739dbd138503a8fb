"""Time each matrix product of the fused NTM step (csrc/ntm_cell.cpp) as written and transposed.

    python benchmarks/cpu_gemm_orientation.py                 # B=256, copy-task sizes, 1 and 2 threads

C = A·B can be formed as (Bᵀ·Aᵀ)ᵀ; MKL's speed differs between the two for the step's narrow shapes (the 29
inputs of the LSTM, the 8 outputs). This prints both times per product, median of 7 × 50 calls, so the
orientation chosen in ntm_cell.cpp can be rechecked on another machine or torch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def products(B: int, C: int, U: int, P: int, O: int) -> dict:
    """name -> (as written, transposed), on random [B, ...] operands of the copy-task model's shapes."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    u, h, hr = r(B, U), r(B, C), r(B, C + 20)
    W_ih, W_hh, W_out = r(4 * C, U), r(4 * C, C), r(O, C + 20)
    b4, b_out, d_pre, d_p = r(4 * C), r(O), r(B, 4 * C), r(B, P)
    return {
        "u·W_ihᵀ (gates)": (lambda: torch.addmm(b4, u, W_ih.t()), lambda: torch.addmm(b4[:, None], W_ih, u.t()).t()),
        "h·W_hhᵀ (gates)": (lambda: torch.addmm(b4, h, W_hh.t()), lambda: torch.addmm(b4[:, None], W_hh, h.t()).t()),
        "[h;r]·W_outᵀ (logits)": (lambda: torch.addmm(b_out, hr, W_out.t()),
                                  lambda: torch.addmm(b_out[:, None], W_out, hr.t()).t()),
        "d_pre·W_ih (d_u)": (lambda: d_pre.mm(W_ih), lambda: W_ih.t().mm(d_pre.t()).t()),
        "d_pre·W_hh (d_h_prev)": (lambda: d_pre.mm(W_hh), lambda: W_hh.t().mm(d_pre.t()).t()),
        "d_preᵀ·u (dW_ih)": (lambda: d_pre.t().mm(u), lambda: u.t().mm(d_pre).t()),
        "d_preᵀ·h (dW_hh)": (lambda: d_pre.t().mm(h), lambda: h.t().mm(d_pre).t()),
        "d_pᵀ·h (dW_hd)": (lambda: d_p.t().mm(h), lambda: h.t().mm(d_p).t()),
    }


def median_us(fn, calls: int = 50, repeats: int = 7) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args(argv)
    if a.batch < 1 or min(a.threads) < 1:
        p.error(f"--batch and --threads must be at least 1, got {a.batch} and {a.threads}")
    cases = products(a.batch, C=100, U=29, P=92, O=8)
    print(f"µs per product, B={a.batch}, LSTM 100, N=128 M=20 1R+1W (median of 7 × 50 calls)")
    for threads in a.threads:
        torch.set_num_threads(threads)
        for name, (written, transposed) in cases.items():
            print(f"{threads} thread(s)  {name:24s} as written {median_us(written):7.1f}   "
                  f"transposed {median_us(transposed):7.1f}")


if __name__ == "__main__":
    main()
