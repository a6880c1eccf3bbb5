"""The generic EM route's M-step: ``Q`` evaluated by the interpreter (``fast_path=True``) against a Pyro trace per
evaluation (``fast_path=False``), through ``lvm.infer(..., method="em")``.

Three models no closed form covers: a Student-t mixture, a mixture of Poisson regressions with a ridge prior written
by ``pyro.factor``, a two-state chain with Student-t emissions written step by step with ``lvm.markov``. One thread
(every pool limited after every import, printed), float64, the same random start on both sides (``init_params=
"random"``), fixed iterations (``tol=None``); the two sides run interleaved ``--repeats`` times. Per iteration: the
wall time between successive iterations (the callbacks' timestamps), so the set-up and the first iteration (which
holds each fit's check of the interpreted ``Q`` against the traced one) are left out; end to end: the whole
``lvm.infer`` call. Medians (minima) of the repeats; the log-likelihoods of the two sides must agree.

Usage::

    PYTHONPATH=. python bench/bench_em_generic.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import pyro
import torch
from _timing import interleaved, limit_threads, load

import ppl_lvm as lvm
from ppl_lvm import constraints, dist


@lvm.model
def t_mixture(x, K=3):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.StudentT(4.0, locs[z], scales[z]), x)


@lvm.model
def poisson_regressions(X, y, K=2):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.linspace(-0.5, 0.5, K * X.shape[1]).reshape(K, X.shape[1]))
    pyro.factor("ridge", -0.5 * (beta**2).sum())
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Poisson((X * beta[z]).sum(-1).exp()), y)


@lvm.model
def t_chain(x, K=2):
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(0.6 * torch.eye(K) + 0.4 / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    z = None
    for t in lvm.markov(range(len(x))):
        z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
        lvm.observe(dist.StudentT(4.0, locs[z], scales[z]), x[t])


def cases(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 300 if quick else 1000
    x = np.concatenate([rng.normal(-3, 1, n // 2), rng.normal(0, 0.5, n // 4), rng.normal(3, 1.5, n - n // 2 - n // 4)])
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    beta = np.array([[0.5, 1.0, -0.5], [2.0, -0.3, 0.4]])
    y = rng.poisson(np.exp((X * beta[rng.integers(0, 2, n)]).sum(1)))
    steps = 20 if quick else 50
    chain = np.where((np.arange(steps) // 10) % 2 == 1, 2.0, -1.0) + 0.5 * rng.normal(size=steps)
    return {f"Student-t mixture, N={n}, K=3": (t_mixture, {"x": torch.tensor(x)}),
            f"Poisson regressions + pyro.factor prior, N={n}, K=2, 3 coefs": (
                poisson_regressions, {"X": torch.tensor(X), "y": torch.tensor(y, dtype=torch.float64)}),
            f"Student-t chain (lvm.markov), T={steps}, K=2": (t_chain, {"x": torch.tensor(chain)})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="smaller data")
    args = parser.parse_args()
    limit_threads()
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {load()}; {args.iters} iterations; "
          f"seconds: median (min) of {args.repeats} interleaved repeats")
    print("| model | per iteration, traced | per iteration, interpreted | ratio | end to end, traced | "
          "end to end, interpreted | ratio | rel. diff of log-likelihood | fast_path |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_cases = cases(args.quick)
    model, data = next(iter(all_cases.values()))  # warm-up: the first torch optimiser of a process imports torch._dynamo
    lvm.infer(model, data, method="em", max_iter=2, tol=None, progress=False)
    for name, (model, data) in all_cases.items():
        per_iter: dict[str, list[float]] = {"traced": [], "interpreted": []}

        def fit(side: str, model=model, data=data, per_iter=per_iter):
            stamps: list[float] = []
            result = lvm.infer(model, data, method="em", init_params="random", seed=0, max_iter=args.iters, tol=None,
                               fast_path=side == "interpreted", progress=False,
                               callbacks=[lambda i, ll: stamps.append(time.perf_counter())])
            per_iter[side].append(statistics.median(np.diff(stamps)))
            return result

        t, out = interleaved({side: (lambda s=side: fit(s)) for side in per_iter}, args.repeats)
        a, b = out["traced"], out["interpreted"]
        rel = abs(a.log_likelihood - b.log_likelihood) / abs(a.log_likelihood)
        it = {s: (statistics.median(v), min(v)) for s, v in per_iter.items()}
        print(f"| {name} | {it['traced'][0]:.4f} ({it['traced'][1]:.4f}) | {it['interpreted'][0]:.4f} "
              f"({it['interpreted'][1]:.4f}) | {it['interpreted'][0] / it['traced'][0]:.2f} | "
              f"{t['traced']['median']:.3f} ({t['traced']['min']:.3f}) | {t['interpreted']['median']:.3f} "
              f"({t['interpreted']['min']:.3f}) | {t['interpreted']['median'] / t['traced']['median']:.2f} | "
              f"{rel:.1e} | {b.options['fast_path']} |", flush=True)
    print(load())


if __name__ == "__main__":
    main()
