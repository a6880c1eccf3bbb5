"""NUTS through the DSL against Pyro's NUTS on the same model written by hand: time per effective sample.

Run (a full run takes about 4-6 minutes on 2 shared cores; ``--quick`` about a minute):

    PYTHONPATH=. python bench/bench_nuts.py [--quick] [--repeats 3]

The model: a 2-component Gaussian mixture in 2-D, unit covariance, equal weights, ``Normal(0, 5)`` priors on the
component locations and the assignment ``z`` of each of the N points enumerated exactly (parallel enumeration,
``max_plate_nesting=1``). The DSL side is ``lvm.infer(gmm, x, method="nuts", num_chains=1, ...)``; the peer is
``pyro.infer.mcmc.MCMC(NUTS(gmm_pyro, max_plate_nesting=1), ...)`` on the same model written with
``pyro.sample`` and string names, the same seed (``pyro.set_rng_seed``), draws and warm-up. Both must produce the
same chain: the largest absolute difference of the two chains' draws is printed (0 means bit-identical).

Everything runs on one thread (torch and every BLAS / OpenMP pool, limited by ``bench/_timing.py`` after every
import; the pools and the machine's load are printed). Both are first run once untimed (first-call costs), then the
set-up cost of a call with one warm-up step and one draw is measured. Each repeat runs both, in alternating order. The clock is the
process CPU time of the whole call (``lvm.infer`` includes its model check, prototype run and building the
result; the peer includes ``get_samples``); wall-clock is printed too. Effective sample size: the smallest
``pyro.ops.stats.effective_sample_size`` over the four location coordinates. Ratios: of the medians over repeats
and the median of per-repeat (paired) ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import pyro
import pyro.distributions as pdist
import torch
from _timing import limit_threads, load
from pyro.infer.mcmc import MCMC, NUTS
from pyro.ops.stats import effective_sample_size

import ppl_lvm as lvm
from ppl_lvm import dist

torch.set_default_dtype(torch.float64)
K = 2


@lvm.model
def gmm(x):
    with lvm.plate(K, name="components"):
        locs = lvm.latent(dist.Normal(torch.zeros(2), 5.0).to_event(1))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(torch.ones(K) / K))
        lvm.observe(dist.Normal(locs[z], 1.0).to_event(1), x)


def gmm_pyro(x):
    with pyro.plate("components", K):
        locs = pyro.sample("locs", pdist.Normal(torch.zeros(2), 5.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", pdist.Categorical(torch.ones(K) / K), infer={"enumerate": "parallel"})
        pyro.sample("x", pdist.Normal(locs[z], 1.0).to_event(1), obs=x)


def data(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    half = n // 2
    return torch.cat([torch.randn(half, 2, generator=g) + centres[0], torch.randn(n - half, 2, generator=g) + centres[1]])


def run_dsl(x, draws, warmup, seed):
    fit = lvm.infer(gmm, x, method="nuts", num_samples=draws, warmup_steps=warmup, num_chains=1, seed=seed,
                    progress=False)
    return fit.samples["locs"][0]


def run_pyro(x, draws, warmup, seed):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(gmm_pyro, max_plate_nesting=1), num_samples=draws, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(x)
    return mcmc.get_samples()["locs"]


def timed(fn, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=100, 150 draws after 100 warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit_threads()  # after every import; prints the pools
    n, draws, warmup = (100, 150, 100) if args.quick else (200, 500, 300)
    x = data(n)
    print(f"python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}; "
          f"N={n}, K={K}, {draws} draws after {warmup} warm-up, one chain, {args.repeats} repeats, 1 thread; {load()}")
    runners = {"dsl": run_dsl, "pyro": run_pyro}
    fixed = {}
    with warnings.catch_warnings():  # chains this short are not converged, and say so
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        for fn in runners.values():  # untimed: first-call costs (lazy imports, allocator warm-up) of both sides
            fn(x, 5, 5, 0)
        for name, fn in runners.items():  # a call with one step and one draw: mostly set-up (model check, init)
            fixed[name] = statistics.median(timed(fn, x, 1, 1, 0)[1] for _ in range(3))
    print(f"CPU s of a call with 1 warm-up step and 1 draw (set-up): dsl {fixed['dsl']:.3f}, pyro {fixed['pyro']:.3f}")
    per = {name: {"cpu": [], "wall": [], "ess": [], "cpu_per_ess": []} for name in runners}
    for r in range(args.repeats):
        order = ["dsl", "pyro"] if r % 2 == 0 else ["pyro", "dsl"]
        chains = {}
        for name in order:
            chain, cpu, wall = timed(runners[name], x, draws, warmup, r)
            ess = float(effective_sample_size(chain.reshape(1, draws, -1), chain_dim=0, sample_dim=1).min())
            chains[name] = chain
            for key, value in (("cpu", cpu), ("wall", wall), ("ess", ess), ("cpu_per_ess", cpu / ess)):
                per[name][key].append(value)
        diff = float((chains["dsl"] - chains["pyro"]).abs().max())
        print(f"repeat {r} (seed {r}): dsl {per['dsl']['cpu'][-1]:.2f} s CPU, ess {per['dsl']['ess'][-1]:.0f}; "
              f"pyro {per['pyro']['cpu'][-1]:.2f} s CPU, ess {per['pyro']['ess'][-1]:.0f}; "
              f"largest |draw difference| {diff:.3g}", flush=True)
    print("\n| implementation | CPU s, median (min) | wall s, median (min) | min ESS (median) | "
          "CPU ms per effective sample, median (min) |")
    print("|---|---|---|---|---|")
    for name in runners:
        p = per[name]
        print(f"| {name} | {statistics.median(p['cpu']):.2f} ({min(p['cpu']):.2f}) | "
              f"{statistics.median(p['wall']):.2f} ({min(p['wall']):.2f}) | {statistics.median(p['ess']):.0f} | "
              f"{1000 * statistics.median(p['cpu_per_ess']):.2f} ({1000 * min(p['cpu_per_ess']):.2f}) |")
    ratio_medians = statistics.median(per["dsl"]["cpu_per_ess"]) / statistics.median(per["pyro"]["cpu_per_ess"])
    paired = statistics.median(a / b for a, b in zip(per["dsl"]["cpu_per_ess"], per["pyro"]["cpu_per_ess"],
                                                     strict=True))
    print(f"\nDSL / Pyro, CPU time per effective sample: ratio of medians {ratio_medians:.3f}, "
          f"median paired ratio {paired:.3f}")
    print(load())


if __name__ == "__main__":
    main()
