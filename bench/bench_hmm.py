"""Hidden Markov models through ``lvm.infer(..., method="em")`` against hmmlearn, from the same initialisation.

Three cases:

* ``markov``: ``ppl_lvm.models.hmm.gaussian_hmm`` (a site per step, ``lvm.markov``), 10 sequences x 1000 steps,
  5 states, D=3, 20 iterations, end to end (data conversion, the prototype run, recognition, the fit, the result)
  against hmmlearn's ``GaussianHMM.fit``;
* ``long``: the same model on one sequence of 10^5 steps: the set-up (everything before the first iteration) and the
  peak memory of the process, in a fresh process that imports ppl_lvm and not hmmlearn (``--long-child``);
* ``vectorised``: ``gaussian_hmm_vectorized`` (the chain as one ``DiscreteHMM`` site) on the shape of the
  HiddenMarkovModels.jl benchmark, 50 sequences x 100 steps, D=1, K = 2, 4, 10, 5 iterations: the time per
  iteration, ``(t(6 iterations) - t(1 iteration)) / 5`` for both sides, so that the set-up of neither counts.

Every thread pool is limited to one thread after every import (printed), the two sides run interleaved
``--repeats`` times, medians (and minima) are printed with the machine's load, and the log-likelihoods of the two
sides are compared (relative difference).

Usage::

    PYTHONPATH=. python bench/bench_hmm.py [--repeats 7] [--only markov,long,vectorised]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import warnings
from functools import partial

import numpy as np
import torch
from _timing import interleaved, limit_threads, load

if "--long-child" not in sys.argv:  # the process that measures a long chain's memory holds ppl_lvm alone
    from hmmlearn.hmm import GaussianHMM

import ppl_lvm as lvm
from ppl_lvm.models.hmm import gaussian_hmm, gaussian_hmm_vectorized, pad_sequences


def _data(n_seq: int, length: int, d: int, k: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(length, d)) + np.repeat(rng.normal(scale=3, size=(length // 20 + 1, d)), 20, 0)[:length]
            for _ in range(n_seq)]
    x = np.concatenate(seqs)
    return seqs, x, x[rng.choice(len(x), k, replace=False)]


def _hmmlearn(x, lengths, means, k: int, iters: int):
    h = GaussianHMM(k, covariance_type="diag", n_iter=iters, tol=-np.inf, init_params="", params="stmc",
                    covars_prior=0, min_covar=0)
    h.startprob_, h.transmat_ = np.ones(k) / k, np.ones((k, k)) / k
    h.means_, h.covars_ = means, np.ones((k, x.shape[1]))
    return h.fit(x, lengths)


def _ours(model, data: dict, means, k: int, d: int, iters: int, callbacks=()):
    return lvm.infer(model, data, method="em", init_params={"locs": means, "scales": np.ones((k, d))},
                     max_iter=iters, tol=None, reg_covar=0.0, callbacks=callbacks)


def _cell(t: dict) -> str:
    return f"{t['median']:.3f} ({t['min']:.3f})"


def markov(repeats: int) -> None:
    k, d, iters = 5, 3, 20
    seqs, x, means = _data(10, 1000, d, k)
    lengths = [len(s) for s in seqs]
    padded, lens = pad_sequences([torch.tensor(s) for s in seqs])
    data = {"x": padded, "lengths": lens, "K": k}
    t, out = interleaved({"peer": lambda: _hmmlearn(x, lengths, means, k, iters),
                          "ours": lambda: _ours(gaussian_hmm, data, means, k, d, iters)}, repeats)
    h, fit = out["peer"], out["ours"]
    rel = abs(fit.log_likelihood - h.score(x, lengths)) / abs(fit.log_likelihood)
    print(f"| lvm.markov chain (gaussian_hmm), 10 x 1000, K=5, D=3, {iters} it., end to end | {_cell(t['peer'])} | "
          f"{_cell(t['ours'])} | {t['ours']['median'] / t['peer']['median']:.2f} | {rel:.1e} |")


def _peak_mb() -> float:
    """The process's peak resident memory (VmHWM: unlike ru_maxrss it does not start from the parent's)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def long_child(length: int) -> None:
    """One fit of two iterations in this (fresh) process: set-up = time to the first iteration's end minus one
    iteration (the time between the two iterations' ends); the peak memory of the process at the fit's end
    (imports included)."""
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")
    k, d = 5, 3
    seqs, x, means = _data(1, length, d, k)
    padded = torch.tensor(seqs[0]).unsqueeze(0)
    before = _peak_mb()
    stamps = []
    t0 = time.perf_counter()
    fit = _ours(gaussian_hmm, {"x": padded, "K": k}, means, k, d, 2,
                callbacks=[lambda i, ll: stamps.append(time.perf_counter()) and False])
    total = time.perf_counter() - t0
    peak = _peak_mb()
    print(json.dumps({"setup_s": (stamps[0] - t0) - (stamps[1] - stamps[0]), "iteration_s": stamps[1] - stamps[0],
                      "total_s": total, "rss_after_imports_mb": before, "peak_rss_mb": peak,
                      "log_likelihood": fit.log_likelihood}))


def long(repeats: int, length: int) -> None:
    rows = []
    for _ in range(max(1, min(repeats, 3))):
        done = subprocess.run([sys.executable, __file__, "--long-child", str(length)], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    k, d = 5, 3
    _, x, means = _data(1, length, d, k)
    reference = _hmmlearn(x, None, means, k, 2).score(x)
    rel = max(abs(r["log_likelihood"] - reference) / abs(reference) for r in rows)
    setup = sorted(r["setup_s"] for r in rows)
    peak = max(r["peak_rss_mb"] for r in rows)
    print(f"| lvm.markov chain, one sequence of {length:,} steps, K=5, D=3: set-up s, median (min) of {len(rows)} "
          f"processes | {setup[len(setup) // 2]:.2f} ({setup[0]:.2f}) | peak RSS {peak:.0f} MB (after imports "
          f"{rows[0]['rss_after_imports_mb']:.0f} MB) | one iteration {rows[0]['iteration_s']:.3f} s | "
          f"rel. diff of log-likelihood vs hmmlearn {rel:.1e} |")


def vectorised(repeats: int, d: int) -> None:
    for k in (2, 4, 10):
        seqs, x, means = _data(50, 100, d, k)
        lengths = [len(s) for s in seqs]
        data = {"x": torch.tensor(np.stack(seqs)), "K": k}
        fns = {"peer_6": partial(_hmmlearn, x, lengths, means, k, 6), "peer_1": partial(_hmmlearn, x, lengths, means, k, 1),
               "ours_6": partial(_ours, gaussian_hmm_vectorized, data, means, k, d, 6),
               "ours_1": partial(_ours, gaussian_hmm_vectorized, data, means, k, d, 1)}
        t, out = interleaved(fns, repeats)
        peer = {s: (t["peer_6"][s] - t["peer_1"][s]) / 5 for s in ("median", "min")}
        ours = {s: (t["ours_6"][s] - t["ours_1"][s]) / 5 for s in ("median", "min")}
        h, fit = out["peer_6"], out["ours_6"]
        rel = abs(fit.log_likelihood - h.score(x, lengths)) / abs(fit.log_likelihood)
        print(f"| DiscreteHMM site (gaussian_hmm_vectorized), 50 x 100, D={d}, K={k}, ms per iteration | "
              f"{1e3 * peer['median']:.3f} ({1e3 * peer['min']:.3f}) | {1e3 * ours['median']:.3f} "
              f"({1e3 * ours['min']:.3f}) | {ours['median'] / peer['median']:.2f} | {rel:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="markov,long,vectorised")
    parser.add_argument("--length", type=int, default=100_000, help="steps of the long sequence")
    parser.add_argument("--dim", type=int, default=1, help="D of the vectorised case")
    parser.add_argument("--long-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    if args.long_child is not None:
        long_child(args.long_child)
        return
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {load()}; seconds: median (min) of {args.repeats} interleaved repeats")
    print("| case | hmmlearn | lvm.infer | ratio of medians | rel. diff of log-likelihood |")
    print("|---|---|---|---|---|")
    cases = args.only.split(",")
    if "markov" in cases:
        markov(args.repeats)
    if "long" in cases:
        long(args.repeats, args.length)
    if "vectorised" in cases:
        vectorised(args.repeats, args.dim)
    print(load())


if __name__ == "__main__":
    main()
