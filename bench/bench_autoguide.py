"""Time per step of ``lvm.infer`` with the default autoguide (``"normal"``), on the fast path vs Pyro's path.

Run from the repository root (about a minute on 2 shared cores at the default sizes):

    PYTHONPATH=. python bench/bench_autoguide.py [--repeats 7] [--steps 300]

Two small models fitted with no ``guide=`` (so ``method="svi"`` builds ``MeanFieldNormal``, the ``"normal"`` guide)
from the same seed, ``anneal=0``:

* **constrained**: a positive, a simplex and an interval global latent, a Beta and a Normal local latent per row,
  N=200 rows (the model of ``tests/backends/test_planned_autoguides.py``), ``svi`` with its default estimator (STL);
* **ppca**: ``ppl_lvm.models.factor.ppca`` on 500 rows of 5 dimensions, q=2 (one local latent per row), ``svi``;
* **ppca meanfield**: the same with ``method="meanfield"`` (analytic KL).

Each runs with ``fast_path=True`` (the default) and ``fast_path=False`` (Pyro's ELBO every step). Timing: every
thread pool limited to one thread after all imports (``_timing.limit_threads``, printed), the load average printed;
process CPU time after every step (a fit-loop callback), per step averaged after a warm-up of 30 steps. The two
paths run interleaved, in alternating order, ``--repeats`` times; the table shows the median and minimum over
repeats, the ratio of the medians and the median of the per-repeat (paired) ratios. The loss curves of the two
paths are compared too (max |difference|, 0 when bit-identical).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import numpy as np
import pyro
import torch
from _timing import limit_threads, load

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.models.factor import ppca

WARMUP = 30


@lvm.model
def constrained(x):
    s = lvm.latent(dist.LogNormal(0.0, 1.0))  # positive
    w = lvm.latent(dist.Dirichlet(torch.ones(3)))  # simplex
    c = lvm.latent(dist.Uniform(-1.0, 2.0))  # interval
    with lvm.plate(len(x)):
        u = lvm.latent(dist.Beta(2.0, 2.0))
        z = lvm.latent(dist.Normal(0.0, 1.0))
        lvm.observe(dist.Normal(z * u + (w * torch.arange(3.0)).sum() + c, s), x)


def _data() -> dict:
    g = torch.Generator().manual_seed(0)
    x_c = torch.randn(200, generator=g) + 1.0
    x_p = torch.randn(500, 2, generator=g) @ torch.randn(2, 5, generator=g) + 0.3 * torch.randn(500, 5, generator=g)
    return {"constrained": (constrained, x_c, "svi"), "ppca": (ppca, {"x": x_p, "q": 2}, "svi"),
            "ppca meanfield": (ppca, {"x": x_p, "q": 2}, "meanfield")}


def run(model, data, method: str, steps: int, fast_path: bool) -> tuple[float, np.ndarray, bool]:
    stamps: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        fit = lvm.infer(model, data, method=method, steps=steps, lr=0.02, anneal=0, seed=0, progress=False,
                        fast_path=fast_path, callbacks=[lambda state: stamps.append(time.process_time()) and False])
    per_step = (stamps[-1] - stamps[WARMUP - 1]) / (len(stamps) - WARMUP)
    return per_step, fit.losses, bool(fit.options["fast_path"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    limit_threads()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, python {platform.python_version()}; "
          f"{args.repeats} repeats of {args.steps} steps")
    print(f"before: {load()}")
    rows = []
    for name, (model, data, method) in _data().items():
        times: dict[bool, list[float]] = {True: [], False: []}
        curves: dict[bool, np.ndarray] = {}
        ran: dict[bool, bool] = {}
        for r in range(args.repeats):
            for fast in ((True, False) if r % 2 == 0 else (False, True)):
                t, curves[fast], ran[fast] = run(model, data, method, args.steps, fast)
                times[fast].append(t)
        assert ran[True] and not ran[False], ran
        diff = float(np.max(np.abs(curves[True] - curves[False])))
        paired = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
        rows.append((name, method, times, paired, diff))
    print(f"after: {load()}")
    print(f"{'model (method)':<26s} {'fast ms/step':>13s} {'min':>7s} {'Pyro ms/step':>13s} {'min':>7s} "
          f"{'ratio of medians':>17s} {'paired':>7s} {'max |loss diff|':>16s}")
    for name, method, times, paired, diff in rows:
        fast, slow = statistics.median(times[True]) * 1e3, statistics.median(times[False]) * 1e3
        print(f"{name + ' (' + method + ')':<26s} {fast:13.3f} {min(times[True]) * 1e3:7.3f} {slow:13.3f} "
              f"{min(times[False]) * 1e3:7.3f} {fast / slow:17.3f} {paired:7.3f} {diff:16.3g}")


if __name__ == "__main__":
    main()
