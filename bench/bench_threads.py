"""Torch intra-op threads: 1 against 2 for a small-step fit (the tutorial VAE) and a large E-step (a diagonal GMM).

Run from the repository root (about 3-6 minutes on 2 shared cores):

    PYTHONPATH=. python bench/bench_threads.py [--repeats 5] [--epochs 4] [--rows 2000000] [--busy]

* **VAE**: ``models.vae.VAE`` (64-128-128-16 tanh MLPs) on ``ppl_lvm.datasets.binarized_digits`` (1437 images),
  ``lvm.infer(vae.model, x, method="meanfield", guide=vae.guide, batch_size=100)``: wall time per epoch (14 steps),
  after a first epoch of warm-up.
* **GMM**: ``models.mixtures.gaussian_mixture`` with ``covariance_type="diag"``, K=5, D=5, N rows (2e6 by default;
  ``--rows 2e5,2e6`` for several sizes) by ``method="em"`` from the same initial parameters, ``tol=None``: wall time
  per EM iteration (the first not timed).

Each configuration is fitted with ``num_threads=1`` and ``num_threads=2`` (the fit's own thread count, which the
thread policy of :mod:`ppl_lvm.threads` then leaves alone), interleaved (A B A B ...), min and median over the
repeats; every other pool (numpy's BLAS) is limited to one thread after all imports. ``--busy`` also runs every
measurement again with a busy loop (``python -c "while True: pass"``) started on the side, as another user's job
on the other core. The load average is printed before each table and at the end, and what ``num_threads="auto"``
chooses for each configuration (one untimed fit, as the machine is then).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings

import numpy as np
import pyro
import torch
from _timing import interleaved, limit_threads, load

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.models.vae import VAE

BATCH, K, D = 100, 5, 5


def vae_epoch(x: torch.Tensor, epochs: int, threads: int):
    steps_per_epoch = len(x) // BATCH

    def run() -> float:
        stamps: list[float] = []
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE(64, latent_dim=16, hidden=(128, 128))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lvm.ConvergenceWarning)
            fit = lvm.infer(vae.model, x, method="meanfield", guide=vae.guide, batch_size=BATCH, lr=1e-3,
                            steps=(epochs + 1) * steps_per_epoch, anneal=0, progress=False, num_threads=threads,
                            callbacks=[lambda state: stamps.append(time.perf_counter()) and False])
        if threads == "auto":
            return f"{fit.options['num_threads']} ({fit.options['num_threads_reason']})"
        return steps_per_epoch * (stamps[-1] - stamps[steps_per_epoch - 1]) / (len(stamps) - steps_per_epoch)
    return run


def gmm_iteration(x: torch.Tensor, init: dict, iters: int, threads: int):
    def run() -> float:
        stamps: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": "diag"}, method="em",
                            init_params=init, max_iter=iters, tol=None, progress=False, num_threads=threads,
                            callbacks=[lambda i, ll: stamps.append(time.perf_counter())])
        if threads == "auto":
            return f"{fit.options['num_threads']} ({fit.options['num_threads_reason']})"
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return run


def report(title: str, fns: dict, repeats: int) -> None:
    print(f"{title}: {load()}", flush=True)
    stats, out = interleaved(fns, repeats)
    for name, s in stats.items():
        print(f"  {name:>10}: min {1000 * s['min']:9.1f} ms, median {1000 * s['median']:9.1f} ms")
    names = list(stats)
    print(f"  ratio of medians {names[1]} / {names[0]}: {stats[names[1]]['median'] / stats[names[0]]['median']:.2f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", default="2e6", help="GMM rows, comma-separated for several sizes")
    parser.add_argument("--iters", type=int, default=4, help="EM iterations per GMM fit (the first is not timed)")
    parser.add_argument("--busy", action="store_true", help="also measure with a busy loop on the side")
    parser.add_argument("--no-idle", action="store_true", help="only with the busy loop")
    parser.add_argument("--only", choices=["vae", "gmm"], default=None)
    args = parser.parse_args()
    limit_threads()
    # torch's own count back, as a user's script has it, so that num_threads="auto" shows its choice (the timed fits
    # name their count); numpy's and scipy's pools stay limited to one
    torch.set_num_threads(lvm.threads.STARTUP_THREADS)
    print(f"torch {torch.__version__}; cores this process may use: {len(lvm.threads.usable_cores())}; "
          f"torch's start-up threads: {lvm.threads.STARTUP_THREADS}")

    x_img = binarized_digits().x_train
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (K, D))
    init = {"weights": np.full(K, 1 / K), "locs": centres + 0.5, "scales": np.ones((K, D))}

    benches = []
    if args.only in (None, "vae"):
        benches.append((f"VAE epoch, batch {BATCH}",
                        {f"{t} thread{'s' * (t > 1)}": vae_epoch(x_img, args.epochs, t) for t in (1, 2)},
                        vae_epoch(x_img, 0, "auto")))
    if args.only in (None, "gmm"):
        for n in (int(float(r)) for r in args.rows.split(",")):
            x_gmm = torch.from_numpy(centres[rng.integers(0, K, n)] + rng.normal(0, 1, (n, D)))
            benches.append((f"GMM diag EM iteration, N={n:.0e}, K={K}, D={D}",
                            {f"{t} thread{'s' * (t > 1)}": gmm_iteration(x_gmm, init, args.iters, t)
                             for t in (1, 2)}, gmm_iteration(x_gmm, init, 2, "auto")))
    for title, fns, auto in benches:
        print(f"{title}: num_threads='auto' chooses {auto()}")
        if not args.no_idle:
            report(title + ", as the machine is", fns, args.repeats)
        if args.busy:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(1.0)
                report(title + ", busy loop on the side", fns, args.repeats)
            finally:
                busy.kill()
                busy.wait()
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
