"""A mixture of linear regressions by EM: ``lvm.infer(..., method="em")`` on the model written naturally against a
numpy weighted-least-squares EM, per iteration.

The model is ``y_n ~ Normal(X_n . beta[z_n], sigma[z_n])``, ``z_n ~ Categorical(w)``, written with
``(X * beta[z]).sum(-1)``; the recogniser finds that the mean is linear in ``beta`` given ``z`` and runs the
weighted-least-squares kernel. The numpy EM is the textbook one: an E-step by logsumexp, then per component
``solve(X' R_k X, X' R_k y)`` and the weighted mean squared residual. Both start from the same parameters and run a
fixed number of iterations (tol disabled); one thread (torch and every BLAS pool, limited after every import; the
pools are printed), interleaved repeats, medians and minima, the machine's load.

Per iteration: numpy's time over its iterations; ours ``(T(iters) - T(1)) / (iters - 1)`` through ``lvm.infer``
end to end (so the one-time set-up, the model's prototype run and the recognition, is left out), the set-up
``T(1)`` printed beside it.

Usage::

    PYTHONPATH=. python bench/bench_regression_em.py [--repeats 7] [--n 5000] [--iters 100]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from _timing import interleaved, limit_threads, load
from scipy.special import logsumexp

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

REG = 1e-6  # the variance floor of the closed-form M-step, in both


@lvm.model
def regression(X, y, K=3):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.zeros(K, X.shape[1]))
    sigma = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Normal((X * beta[z]).sum(-1), sigma[z]), y)


def numpy_em(X, y, w, beta, var, iters):
    history = []
    for _ in range(iters):
        log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (y[:, None] - X @ beta.T) ** 2 / var
        total = logsumexp(log_p, axis=1)
        history.append(total.mean())
        resp = np.exp(log_p - total[:, None])
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        w = nk / nk.sum()
        beta = np.stack([np.linalg.solve(X.T @ (r[:, None] * X), X.T @ (r * y)) for r in resp.T])
        var = (resp * (y[:, None] - X @ beta.T) ** 2).sum(0) / nk + REG
    return np.array(history), beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")  # ConvergenceWarning for the fixed iteration budget
    rng = np.random.default_rng(0)
    n, k, p = args.n, 3, 4
    X = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, p - 1))], axis=1)
    true = rng.normal(scale=2.0, size=(k, p))
    z = rng.integers(0, k, n)
    y = (X * true[z]).sum(-1) + rng.normal(scale=0.5, size=n)
    start = {"w": np.ones(k) / k, "beta": true + rng.normal(scale=0.5, size=(k, p)), "sigma": np.ones(k)}
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    init = {name: torch.from_numpy(v) for name, v in start.items()}

    def ours(iters: int):
        return lambda: lvm.infer(regression, {"X": Xt, "y": yt, "K": k}, method="em", init_params=init,
                                 max_iter=iters, tol=0.0)

    fns = {"numpy": lambda: numpy_em(X, y, start["w"], start["beta"], start["sigma"] ** 2, args.iters),
           "ours": ours(args.iters), "ours_1": ours(1)}
    t, out = interleaved(fns, args.repeats)
    history, _ = out["numpy"]
    fit = out["ours"]
    assert fit.closed_form
    rel = float(np.max(np.abs(np.asarray(fit.history) - history) / np.abs(history)))
    per_np = {s: t["numpy"][s] / args.iters for s in ("median", "min")}
    per_ours = {s: (t["ours"][s] - t["ours_1"][s]) / (args.iters - 1) for s in ("median", "min")}
    print(f"torch {torch.__version__}, {load()}; N={n}, K={k}, {p} columns of X, {args.iters} iterations; "
          f"median (min) of {args.repeats} interleaved repeats")
    print("| | numpy WLS EM | lvm.infer (closed form) | ratio of medians |")
    print("|---|---|---|---|")
    print(f"| ms per iteration | {1e3 * per_np['median']:.3f} ({1e3 * per_np['min']:.3f}) | "
          f"{1e3 * per_ours['median']:.3f} ({1e3 * per_ours['min']:.3f}) | {per_ours['median'] / per_np['median']:.2f} |")
    print(f"| s end to end, {args.iters} it. | {t['numpy']['median']:.3f} ({t['numpy']['min']:.3f}) | "
          f"{t['ours']['median']:.3f} ({t['ours']['min']:.3f}) | {t['ours']['median'] / t['numpy']['median']:.2f} |")
    print(f"| s set-up + 1 it. (lvm.infer) | | {t['ours_1']['median']:.3f} ({t['ours_1']['min']:.3f}) | |")
    print(f"max relative difference of the log-likelihood histories: {rel:.1e}")


if __name__ == "__main__":
    main()
