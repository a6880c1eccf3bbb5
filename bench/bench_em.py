"""Benchmark the exact-enumeration EM kernels against scikit-learn and hmmlearn.

Everything runs on one thread (torch and BLAS), from identical initial
parameters, for a fixed number of iterations (tol disabled), and reports the
best of ``--repeats`` wall-clock timings plus the agreement of the
log-likelihood histories.

Usage::

    PYTHONPATH=. python bench/bench_em.py            # everything
    PYTHONPATH=. python bench/bench_em.py --only gmm --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ppl_lvm.em.families import Gaussian
from ppl_lvm.em.hmm import fit_hmm
from ppl_lvm.em.mixture import fit_mixture


def make_gmm_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """k correlated Gaussian clusters (same generator as tests/em)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    parts = [rng.normal(size=(n // k, d)) @ rng.normal(size=(d, d)) * 0.5 + c for c in centers]
    return np.concatenate(parts)


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def gmm_init(X: np.ndarray, k: int, ct: str) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g0 = GaussianMixture(k, covariance_type=ct, max_iter=1, random_state=0, init_params="random_from_data").fit(
            X[:: max(1, len(X) // 2000)]
        )
    return {"weights": g0.weights_, "means": g0.means_, "precisions": g0.precisions_}


def run_gmm(X: np.ndarray, k: int, ct: str, iters: int, repeats: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    init = gmm_init(X, k, ct)

    def sk():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return GaussianMixture(
                k,
                covariance_type=ct,
                max_iter=iters,
                tol=0.0,
                weights_init=init["weights"],
                means_init=init["means"],
                precisions_init=init["precisions"],
            ).fit(X)

    Xt = torch.as_tensor(X)
    fam = Gaussian(ct)

    def ours():
        return fit_mixture(Xt, fam, init, max_iter=iters, tol=0.0)

    t_sk, ref = best_time(sk, repeats)
    t_us, res = best_time(ours, repeats)
    rel = float(np.max(np.abs(np.array(res.history) - ref.lower_bounds_) / np.abs(ref.lower_bounds_)))
    return {"sklearn_s": t_sk, "ours_s": t_us, "ratio": t_us / t_sk, "max_rel_ll": rel}


def run_hmm(n_states: int, n_seq: int, length: int, d: int, ct: str, iters: int, repeats: int) -> dict:
    from hmmlearn.hmm import GaussianHMM

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    n = n_seq * length
    states = np.zeros(n, dtype=int)
    for t in range(1, n):
        states[t] = states[t - 1] if rng.random() < 0.9 else rng.integers(n_states)
    X = rng.normal(size=(n, d)) + 2.0 * states[:, None]
    lengths = [length] * n_seq
    h0 = GaussianHMM(n_states, covariance_type=ct, n_iter=1, random_state=0).fit(X, lengths)
    covars = h0._covars_.copy()
    if ct == "spherical" and covars.ndim == 2:
        covars = covars[:, 0]
    init = {
        "startprob": h0.startprob_.copy(),
        "transmat": h0.transmat_.copy(),
        "means": h0.means_.copy(),
        "covariances": covars,
    }

    def ref_fit():
        h = GaussianHMM(
            n_states,
            covariance_type=ct,
            n_iter=iters,
            tol=-np.inf,
            init_params="",
            covars_prior=0.0,
        )
        h.startprob_, h.transmat_, h.means_ = init["startprob"], init["transmat"], init["means"]
        h.covars_ = covars
        return h.fit(X, lengths)

    Xt = torch.as_tensor(X)
    fam = Gaussian(ct)

    def ours():
        return fit_hmm(Xt, lengths, fam, init, max_iter=iters, tol=-np.inf, reg=0.0)

    t_ref, ref = best_time(ref_fit, repeats)
    t_us, res = best_time(ours, repeats)
    hist = np.array(ref.monitor_.history)
    rel = float(np.max(np.abs(np.array(res.history) - hist) / np.abs(hist)))
    return {
        "hmmlearn_ms_per_iter": 1e3 * t_ref / iters,
        "ours_ms_per_iter": 1e3 * t_us / iters,
        "ratio": t_us / t_ref,
        "max_rel_ll": rel,
    }


def run_scaling(ns: list[int], d: int, k: int, iters: int, repeats: int) -> list[dict]:
    rows = []
    for n in ns:
        X = make_gmm_data(n, d, k, seed=1)
        init = gmm_init(X, k, "diag")
        Xt = torch.as_tensor(X)
        fam = Gaussian("diag")
        t, _ = best_time(
            lambda Xt=Xt, fam=fam, init=init: fit_mixture(Xt, fam, init, max_iter=iters, tol=0.0),
            repeats,
        )
        rows.append({"n": n, "s_per_iter": t / iters, "ns_per_point_iter": 1e9 * t / iters / n})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["all", "gmm", "hmm", "scaling"], default="all")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=5)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hmm-states", type=int, default=5)
    parser.add_argument("--hmm-seqs", type=int, default=10)
    parser.add_argument("--hmm-len", type=int, default=1000)
    parser.add_argument("--hmm-dim", type=int, default=3)
    parser.add_argument("--hmm-iters", type=int, default=20)
    parser.add_argument("--scaling-ns", default="10000,100000,1000000")
    parser.add_argument("--scaling-iters", type=int, default=10)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    with threadpool_limits(1):
        print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, float64")
        if args.only in ("all", "gmm"):
            X = make_gmm_data(args.n, args.d, args.k)
            print(f"\nGMM N={args.n} D={args.d} K={args.k}, {args.iters} iterations (best of {args.repeats})")
            print(f"{'cov':<10}{'sklearn s':>11}{'ours s':>9}{'ratio':>8}{'max rel LL diff':>18}")
            for ct in ("full", "diag", "tied", "spherical"):
                r = run_gmm(X, args.k, ct, args.iters, args.repeats)
                print(f"{ct:<10}{r['sklearn_s']:>11.3f}{r['ours_s']:>9.3f}{r['ratio']:>8.3f}{r['max_rel_ll']:>18.2e}")
        if args.only in ("all", "hmm"):
            print(
                f"\nHMM {args.hmm_states} states, {args.hmm_seqs} x {args.hmm_len}, "
                f"D={args.hmm_dim}, {args.hmm_iters} iterations (best of {args.repeats})"
            )
            print(f"{'cov':<10}{'hmmlearn ms/it':>15}{'ours ms/it':>12}{'ratio':>8}{'max rel LL diff':>18}")
            for ct in ("diag", "full"):
                r = run_hmm(
                    args.hmm_states,
                    args.hmm_seqs,
                    args.hmm_len,
                    args.hmm_dim,
                    ct,
                    args.hmm_iters,
                    args.repeats,
                )
                print(
                    f"{ct:<10}{r['hmmlearn_ms_per_iter']:>15.2f}{r['ours_ms_per_iter']:>12.2f}"
                    f"{r['ratio']:>8.3f}{r['max_rel_ll']:>18.2e}"
                )
        if args.only in ("all", "scaling"):
            ns = [int(v) for v in args.scaling_ns.split(",")]
            print(
                f"\nGMM diag scaling in N (D={args.d}, K={args.k}, {args.scaling_iters} "
                f"iterations, best of {args.repeats})"
            )
            print(f"{'N':>10}{'s/iter':>10}{'ns/(point*iter)':>17}")
            for r in run_scaling(ns, args.d, args.k, args.scaling_iters, args.repeats):
                print(f"{r['n']:>10}{r['s_per_iter']:>10.4f}{r['ns_per_point_iter']:>17.1f}")


if __name__ == "__main__":
    main()
