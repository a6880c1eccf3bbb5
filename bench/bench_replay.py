"""The replay pass behind to_arviz / diagnose / compare: a 40-point mixture with GLOBAL means written with
``locs[z]`` (its model cannot take a plate of draws, so each draw is replayed on its own) and ``n_init=2``.

No peer: the time of one query. Every thread pool is limited to one thread after the imports (``--threads``
then sets torch's), the pools and the machine's load are printed. Times ``to_arviz(200)`` on a fresh fit (nothing cached: the probe whether draws vectorise, one pass per restart and
the component count for the alignment are all inside the timing) and counts the runs of the model body.

    PYTHONPATH=. python bench/bench_replay.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _timing import limit_threads, load

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

RUNS = [0]


@lvm.model
def mixture(x, K=3):
    RUNS[0] += 1
    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.latent(dist.Normal(0.0, 10.0).expand([K, x.shape[1]]).to_event(2))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], 1.0).to_event(1), x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the test suite uses 1)")
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args()
    limit_threads()  # every pool to 1 after the imports (prints them); then torch's own count as asked
    torch.set_num_threads(args.threads)
    print(load())
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 2, generator=g) - 3, torch.randn(20, 2, generator=g) + 3])
    times, runs = [], []
    for repeat in range(args.repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = lvm.infer(mixture, x, method="svi", steps=100, lr=0.05, seed=repeat, n_init=2)
            RUNS[0] = 0
            start = time.perf_counter()
            fit.to_arviz(args.num_samples)
            times.append(time.perf_counter() - start)
            runs.append(RUNS[0])
            RUNS[0] = 0
            fit.diagnose(num_samples=args.num_samples, seed=None)  # the kept fit's pass at its seed: shared
            shared = RUNS[0]
    print(f"to_arviz({args.num_samples}) of a 40-point mixture, global means, n_init=2, {args.threads} thread(s)")
    print(f"  wall s: median {statistics.median(times):.3f}, min {min(times):.3f}, max {max(times):.3f} "
          f"over {args.repeats} fresh fits")
    print(f"  model-body runs: {runs} (2 restarts x ({args.num_samples} draws + 1 probe) + 1 component count)")
    print(f"  diagnose(num_samples={args.num_samples}, seed=None) afterwards: {shared} more model runs")
    print(load())


if __name__ == "__main__":
    main()
