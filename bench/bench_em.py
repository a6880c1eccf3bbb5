"""Benchmark the exact-enumeration EM kernels against scikit-learn and hmmlearn.

Everything runs on one thread (torch and every BLAS pool, limited after scikit-learn, scipy and hmmlearn are
imported; the pools are printed), from identical initial parameters, for a fixed number of iterations (tol
disabled). The two sides run interleaved ``--repeats`` times; the ratio is of the medians, the minima are printed
too, with the machine's load.

Usage::

    PYTHONPATH=. python bench/bench_em.py            # everything
    PYTHONPATH=. python bench/bench_em.py --only gmm --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import torch
from _timing import interleaved, limit_threads, load
from hmmlearn.hmm import GaussianHMM
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from ppl_lvm.em.families import Gaussian
from ppl_lvm.em.hmm import fit_hmm
from ppl_lvm.em.mixture import fit_mixture


def make_gmm_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """k correlated Gaussian clusters (same generator as tests/demo_data.py: correlated_clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    parts = [rng.normal(size=(n // k, d)) @ rng.normal(size=(d, d)) * 0.5 + c for c in centers]
    return np.concatenate(parts)


def gmm_init(X: np.ndarray, k: int, ct: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g0 = GaussianMixture(k, covariance_type=ct, max_iter=1, random_state=0, init_params="random_from_data").fit(
            X[:: max(1, len(X) // 2000)]
        )
    return {"weights": g0.weights_, "means": g0.means_, "precisions": g0.precisions_}


def run_gmm(X: np.ndarray, k: int, ct: str, iters: int, repeats: int) -> dict:
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

    t, out = interleaved({"sk": sk, "ours": ours}, repeats)
    ref, res = out["sk"], out["ours"]
    rel = float(np.max(np.abs(np.array(res.history) - ref.lower_bounds_) / np.abs(ref.lower_bounds_)))
    return {"sklearn_s": t["sk"]["median"], "ours_s": t["ours"]["median"], "sklearn_min": t["sk"]["min"],
            "ours_min": t["ours"]["min"], "ratio": t["ours"]["median"] / t["sk"]["median"], "max_rel_ll": rel}


def run_hmm(n_states: int, n_seq: int, length: int, d: int, ct: str, iters: int, repeats: int) -> dict:
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

    t, out = interleaved({"ref": ref_fit, "ours": ours}, repeats)
    t_ref, t_us, ref, res = t["ref"]["median"], t["ours"]["median"], out["ref"], out["ours"]
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
        timing, _ = interleaved(
            {"ours": lambda Xt=Xt, fam=fam, init=init: fit_mixture(Xt, fam, init, max_iter=iters, tol=0.0)}, repeats)
        t = timing["ours"]["median"]
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

    limit_threads()
    print(f"torch {torch.__version__}, float64, {load()}")
    if args.only in ("all", "gmm"):
        X = make_gmm_data(args.n, args.d, args.k)
        print(f"\nGMM N={args.n} D={args.d} K={args.k}, {args.iters} iterations (median and min of "
              f"{args.repeats} interleaved)")
        print(f"{'cov':<10}{'sklearn s':>11}{'(min)':>8}{'ours s':>9}{'(min)':>8}{'ratio':>8}{'max rel LL diff':>18}")
        for ct in ("full", "diag", "tied", "spherical"):
            r = run_gmm(X, args.k, ct, args.iters, args.repeats)
            print(f"{ct:<10}{r['sklearn_s']:>11.3f}{r['sklearn_min']:>8.3f}{r['ours_s']:>9.3f}{r['ours_min']:>8.3f}"
                  f"{r['ratio']:>8.3f}{r['max_rel_ll']:>18.2e}")
    if args.only in ("all", "hmm"):
        print(
            f"\nHMM {args.hmm_states} states, {args.hmm_seqs} x {args.hmm_len}, "
            f"D={args.hmm_dim}, {args.hmm_iters} iterations (median of {args.repeats} interleaved)"
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
            f"iterations, median of {args.repeats})"
        )
        print(f"{'N':>10}{'s/iter':>10}{'ns/(point*iter)':>17}")
        for r in run_scaling(ns, args.d, args.k, args.scaling_iters, args.repeats):
            print(f"{r['n']:>10}{r['s_per_iter']:>10.4f}{r['ns_per_point_iter']:>17.1f}")


if __name__ == "__main__":
    main()
