"""IWAE with a global latent and minibatches: ``LocalIWAE`` (and its DReG gradient) vs Pyro's plain ``RenyiELBO``.

``RenyiELBO`` on a model with a global latent takes one importance weight for the whole batch and puts the subsample
scale inside the log-mean-exp, so it optimises no bound; it is the speed reference only. All three run the same
hand-written Pyro model and guide, the same minibatch indices and the step of ``pyro.infer.SVI`` with ``Adam``;
one thread.

Run (about 1 minute on 2 shared cores):

    PYTHONPATH=. python bench/bench_local_iwae.py [--steps 300] [--repeats 3]

The model: mu ~ N(0, 2^2); z_i ~ N(mu, 1); x_i ~ N(z_i, 0.5^2), N = 1000 rows, batches of 100; the guide
q(mu) = N(m, s^2), q(z_i | x_i) = N(a x_i + b, c^2). Time per step is the process CPU time over all steps after
10 warm-up steps; each configuration runs ``--repeats`` times in rotating order; median (min) are reported, the ratios are of the
medians. Every thread pool is limited to one thread after the imports (printed), with the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from _timing import limit_threads, load
from pyro.infer import RenyiELBO

from ppl_lvm.backends.local_iwae import LocalIWAE

N, B = 1000, 100


def model(x, sub):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", N, subsample=sub) as i:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[i])


def guide(x, sub):
    m = pyro.param("m", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
    a = pyro.param("a", torch.tensor(0.5))
    b = pyro.param("b", torch.tensor(0.0))
    c = pyro.param("c", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(m, s))
    with pyro.plate("data", N, subsample=sub) as i:
        pyro.sample("z", dist.Normal(a * x[i] + b, c))


def run(elbo, x, steps: int, warmup: int = 10) -> float:
    """CPU seconds per step after ``warmup`` steps."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    order = torch.Generator().manual_seed(0)
    optim = pyro.optim.Adam({"lr": 0.01})
    for step in range(steps):
        if step == warmup:
            start = time.process_time()
        with pyro.poutine.trace(param_only=True) as capture:  # the step of pyro.infer.SVI, for any loss_and_grads
            elbo.loss_and_grads(model, guide, x, torch.randperm(N, generator=order)[:B])
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        optim(params)
        pyro.infer.util.zero_grads(params)
    return (time.process_time() - start) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit_threads()  # every pool to one thread after the imports; prints them
    print(f"torch {torch.__version__}, {load()}; ms/step: median (min) of {args.repeats} interleaved repeats")
    x = 1.0 + 1.2 * torch.randn(N, generator=torch.Generator().manual_seed(0))
    print("| K | RenyiELBO ms/step | LocalIWAE ms/step | ratio of medians | LocalIWAE DReG ms/step | ratio of medians |")
    print("|---|---|---|---|---|---|")
    for k in (10, 50):
        configs = {
            "renyi": lambda k=k: RenyiELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1),
            "local": lambda k=k: LocalIWAE(k, "data", 1),
            "dreg": lambda k=k: LocalIWAE(k, "data", 1, estimator="dreg"),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        names = list(configs)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(run(configs[name](), x, args.steps))
        med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        low = {name: 1e3 * min(t) for name, t in times.items()}

        def cell(name: str, med: dict = med, low: dict = low) -> str:
            return f"{med[name]:.2f} ({low[name]:.2f})"

        print(f"| {k} | {cell('renyi')} | {cell('local')} | {med['local'] / med['renyi']:.2f} | "
              f"{cell('dreg')} | {med['dreg'] / med['renyi']:.2f} |")
    print(load())


if __name__ == "__main__":
    main()
