"""End-to-end EM through the DSL: ``lvm.infer(model, data, method="em")`` against scikit-learn and hmmlearn.

Unlike ``bench_em.py`` (the kernels alone) this times what a user runs: data conversion, the model's prototype
run, recognition of the closed-form structure, the fit and the result. One thread (torch and every BLAS pool,
limited after scikit-learn, scipy and hmmlearn are imported; the pools are printed), identical initial parameters,
fixed iterations (tol disabled); the two sides (and, for the mixtures, the closed-form kernel alone on a tensor) run
interleaved ``--repeats`` times, the ratio is of the medians and
the minima are printed too, with the machine's load.

Usage::

    PYTHONPATH=. python bench/bench_em_dsl.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from _timing import interleaved, limit_threads, load
from hmmlearn.hmm import GaussianHMM
from sklearn.mixture import GaussianMixture

import ppl_lvm as lvm
from ppl_lvm.em.families import Gaussian
from ppl_lvm.em.mixture import fit_mixture
from ppl_lvm.models.hmm import gaussian_hmm, gaussian_hmm_vectorized, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture


def gmm(n: int, ct: str, iters: int, repeats: int) -> tuple[dict, dict, float, dict]:
    rng = np.random.default_rng(0)
    k, d = 5, 5
    x = np.concatenate([rng.normal(size=(n // k, d)) @ rng.normal(size=(d, d)) * 0.5 + c
                        for c in rng.normal(size=(k, d)) * 3])
    means = x[rng.choice(len(x), k, replace=False)]
    precisions = {"full": np.stack([np.eye(d)] * k), "diag": np.ones((k, d))}[ct]

    def sk():
        return GaussianMixture(k, covariance_type=ct, max_iter=iters, tol=0.0, weights_init=np.ones(k) / k,
                               means_init=means, precisions_init=precisions).fit(x)

    def ours():
        return lvm.infer(gaussian_mixture, {"x": x, "K": k, "covariance_type": ct}, method="em",
                         init_params={"locs": means}, max_iter=iters, tol=0.0)

    def kernel():  # the closed-form kernel alone, on a tensor, from the same start
        start = {"weights": np.ones(k) / k, "means": means, "precisions": precisions}
        return fit_mixture(torch.as_tensor(x), Gaussian(ct), start, max_iter=iters, tol=0.0)

    t, out = interleaved({"peer": sk, "ours": ours, "kernel": kernel}, repeats)
    ref, fit = out["peer"], out["ours"]
    rel = abs(fit.log_likelihood - ref.score(x) * len(x)) / abs(fit.log_likelihood)
    return t["peer"], t["ours"], rel, t["kernel"]


def hmm(iters: int, repeats: int, vectorized: bool) -> tuple[dict, dict, float]:
    rng = np.random.default_rng(1)
    k, d, lengths = 5, 3, [1000] * 10
    seqs = [rng.normal(size=(n, d)) + np.repeat(rng.normal(scale=3, size=(n // 20 + 1, d)), 20, 0)[:n] for n in lengths]
    x = np.concatenate(seqs)
    means = x[rng.choice(len(x), k, replace=False)]

    def ref():
        h = GaussianHMM(k, covariance_type="diag", n_iter=iters, tol=-np.inf, init_params="", params="stmc",
                        covars_prior=0, min_covar=0)
        h.startprob_, h.transmat_, h.means_, h.covars_ = np.ones(k) / k, np.ones((k, k)) / k, means, np.ones((k, d))
        return h.fit(x, lengths)

    padded, lens = pad_sequences([torch.tensor(s) for s in seqs])
    if vectorized:  # one DiscreteHMM site per sequence
        model, data = gaussian_hmm_vectorized, {"x": padded, "K": k}
    else:  # one site per time step (lvm.markov)
        model, data = gaussian_hmm, {"x": padded, "lengths": lens, "K": k}

    def ours():
        return lvm.infer(model, data, method="em", init_params={"locs": means, "scales": np.ones((k, d))},
                         max_iter=iters, tol=0.0, reg_covar=0.0)

    t, out = interleaved({"peer": ref, "ours": ours}, repeats)
    h, fit = out["peer"], out["ours"]
    rel = abs(fit.log_likelihood - h.score(x, lengths)) / abs(fit.log_likelihood)
    return t["peer"], t["ours"], rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N=10k and fewer iterations")
    args = parser.parse_args()
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")
    n, iters = (10_000, 10) if args.quick else (100_000, 50)
    print(f"torch {torch.__version__}, {load()}; seconds: median (min) of {args.repeats} interleaved repeats")
    print("| case | peer s | lvm.infer s | ratio of medians | rel. diff of log-likelihood | kernel alone s (ratio) |")
    print("|---|---|---|---|---|---|")

    def cell(t: dict) -> str:
        return f"{t['median']:.3f} ({t['min']:.3f})"

    for ct in ("full", "diag"):
        t_sk, t_ours, rel, t_kernel = gmm(n, ct, iters, args.repeats)
        print(f"| GMM {ct}, N={n:,}, D=5, K=5, {iters} it. vs sklearn | {cell(t_sk)} | {cell(t_ours)} | "
              f"{t_ours['median'] / t_sk['median']:.2f} | {rel:.1e} | {cell(t_kernel)} "
              f"({t_kernel['median'] / t_sk['median']:.2f}) |")
    hmm_iters = 5 if args.quick else 20
    for vectorized, how in ((True, "one DiscreteHMM site"), (False, "lvm.markov, a site per step")):
        t_ref, t_ours, rel = hmm(hmm_iters, args.repeats, vectorized)
        print(f"| Gaussian HMM diag ({how}), 5 states, 10 x 1000, {hmm_iters} it. vs hmmlearn | {cell(t_ref)} | "
              f"{cell(t_ours)} | {t_ours['median'] / t_ref['median']:.2f} | {rel:.1e} | |")
    print(load())

if __name__ == "__main__":
    main()
