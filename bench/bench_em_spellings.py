"""Gaussian mixtures written in other spellings run the closed-form kernels at the speed of the ready-made ones.

``MultivariateNormal(loc[z], covariance_matrix=S[z])`` and ``precision_matrix=P[z]`` against the ready-made
``scale_tril`` mixture (full covariance); location and scale built per dimension against the ``.to_event(1)``
mixture (diagonal). ``lvm.infer`` end to end, the same start, tol disabled; per iteration
``(T(21 it.) - T(1 it.)) / 20``. One thread (every pool limited after every import, printed), interleaved
repeats, medians, the machine's load.

Usage::

    PYTHONPATH=. python bench/bench_em_spellings.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from _timing import interleaved, limit_threads, load

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.mixtures import gaussian_mixture


@lvm.model
def matrix_gmm(x, K=5, spelling="covariance_matrix"):
    d = x.shape[1]
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(x[:K].clone())
    matrix = lvm.param(torch.eye(d).expand(K, d, d).clone(), constraint=constraints.positive_definite)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.MultivariateNormal(locs[z], **{spelling: matrix[z]}), x)


@lvm.model
def per_dimension_gmm(x, K=5):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    mus = [lvm.param(x[:K, d].clone(), name=f"mu{d}") for d in range(x.shape[1])]
    sds = [lvm.param(torch.ones(K), constraint=constraints.positive, name=f"sd{d}") for d in range(x.shape[1])]
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        loc = torch.stack([mu[z] for mu in mus], -1)
        lvm.observe(dist.Normal(loc, torch.stack([sd[z] for sd in sds], -1)).to_event(1), x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")  # ConvergenceWarning for the fixed iteration budget
    rng = np.random.default_rng(0)
    n, k, d = 10_000, 5, 5
    x = torch.tensor(np.concatenate([rng.normal(size=(n // k, d)) + c for c in rng.normal(size=(k, d)) * 3]))
    means = x[torch.as_tensor(rng.choice(n, k, replace=False))]
    cases = {
        "scale_tril (ready-made, full)": (gaussian_mixture, {"x": x, "K": k, "covariance_type": "full"},
                                          {"locs": means}),
        "covariance_matrix=S[z]": (matrix_gmm, {"x": x, "K": k}, {"locs": means}),
        "precision_matrix=P[z]": (matrix_gmm, {"x": x, "K": k, "spelling": "precision_matrix"}, {"locs": means}),
        ".to_event(1) (ready-made, diag)": (gaussian_mixture, {"x": x, "K": k, "covariance_type": "diag"},
                                            {"locs": means}),
        "per-dimension parameters": (per_dimension_gmm, {"x": x, "K": k}, {f"mu{j}": means[:, j] for j in range(d)}),
    }
    fns = {}
    for name, (model, data, init) in cases.items():
        for iters in (1, 21):
            fns[(name, iters)] = (lambda m=model, a=data, i=init, it=iters:
                                  lvm.infer(m, a, method="em", init_params=i, max_iter=it, tol=0.0))
    t, out = interleaved(fns, args.repeats)
    print(f"torch {torch.__version__}, {load()}; N={n}, D={d}, K={k}; median of {args.repeats} interleaved repeats")
    print("| spelling | closed form | ms per iteration | s end to end, 21 it. |")
    print("|---|---|---|---|")
    for name in cases:
        per = (t[(name, 21)]["median"] - t[(name, 1)]["median"]) / 20
        print(f"| {name} | {out[(name, 21)].closed_form} | {1e3 * per:.2f} | {t[(name, 21)]['median']:.3f} |")


if __name__ == "__main__":
    main()
