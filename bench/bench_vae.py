"""Epoch time of ``models.vae.VAE`` fitted through ``lvm.infer`` vs the same VAE hand-written in Pyro vs plain PyTorch.

Run from the repository root (about 2-4 minutes on 2 shared cores; ``--quick`` under a minute):

    PYTHONPATH=. python bench/bench_vae.py [--repeats 7] [--epochs 6] [--quick]

The model: binarised sklearn digits (1437 training images of ``ppl_lvm.datasets.binarized_digits``), the VAE of
tutorial 6 (64-128-128-16 tanh MLPs, Bernoulli pixels), minibatches of 100 (14 steps per epoch, the last partial batch
dropped), Adam with lr 1e-3. Three implementations, all from the same initial weights and the same minibatch order:

* **ppl_lvm**: ``lvm.infer(vae.model, x, method="svi", guide=vae.guide, batch_size=100, lr=1e-3)``;
* **Pyro**: the same model and guide written with ``pyro.module`` / ``pyro.plate(subsample=...)`` / ``pyro.sample``,
  ``SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())``: what a Pyro user writes by hand;
* **PyTorch**: a plain loop, the analytic KL plus one-sample reconstruction, ``torch.optim.Adam``.

ppl_lvm and Pyro optimise the same Monte Carlo objective with the same seed, so their loss curves are compared (the
maximum absolute difference is printed; 0 means bit-identical). Timing: one thread (``torch.set_num_threads(1)`` and
``threadpoolctl``), the process CPU time after every step (a fit-loop callback for ppl_lvm, inline for the others),
the time per step averaged after a warm-up of 10 steps, times 14 steps per epoch. Configurations run interleaved in
a rotating order; the table shows medians over repeats and the ratios of the medians, plus the median of the
per-repeat (paired) ratios. The target is ppl_lvm / Pyro <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import pyro
import pyro.distributions as pdist
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from threadpoolctl import threadpool_limits

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.vae import VAE

torch.set_num_threads(1)
_THREADS = threadpool_limits(1)

SEED, BATCH, LR, LATENT, HIDDEN = 0, 100, 1e-3, 16, (128, 128)
WARMUP = 10


def clock() -> float:
    return time.process_time()


class Batches:
    """The fit loop's minibatch order: a seeded randperm per epoch, the last partial batch dropped."""

    def __init__(self, n: int, seed: int = SEED):
        self.n, self.gen, self.order, self.cursor = n, torch.Generator().manual_seed(seed), None, 0

    def next(self) -> torch.Tensor:
        if self.order is None or self.cursor + BATCH > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.cursor:self.cursor + BATCH]
        self.cursor += BATCH
        return idx


def fresh_vae(initial: dict) -> VAE:
    with torch.random.fork_rng(devices=[]):
        vae = VAE(64, latent_dim=LATENT, hidden=HIDDEN)
    vae.load_state_dict(initial)
    return vae


def run_lvm(x: torch.Tensor, initial: dict, steps: int) -> dict:
    vae = fresh_vae(initial)
    stamps: list[float] = []
    pyro.clear_param_store()
    fit = lvm.infer(vae.model, x, method="svi", guide=vae.guide, batch_size=BATCH, lr=LR, steps=steps, seed=SEED,
                    progress=False, callbacks=[lambda state: stamps.append(clock()) and False])
    return {"losses": list(fit.losses), "stamps": stamps}


def run_pyro(x: torch.Tensor, initial: dict, steps: int) -> dict:
    vae = fresh_vae(initial)
    encoder, decoder, n = vae.encoder, vae.decoder, len(x)

    def model(x_batch, idx):
        pyro.module("decoder", decoder)
        with pyro.plate("data", n, subsample=idx):
            z = pyro.sample("z", pdist.Normal(x_batch.new_zeros(LATENT), x_batch.new_ones(LATENT)).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(1), obs=x_batch)

    def guide(x_batch, idx):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x_batch)
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO(max_plate_nesting=1))
    batches, losses, stamps = Batches(n), [], []
    for _ in range(steps):
        idx = batches.next()
        losses.append(svi.step(x[idx], idx))
        stamps.append(clock())
    return {"losses": losses, "stamps": stamps}


def run_torch(x: torch.Tensor, initial: dict, steps: int) -> dict:
    vae = fresh_vae(initial)
    optim = torch.optim.Adam(vae.parameters(), lr=LR)
    torch.manual_seed(SEED)
    batches, losses, stamps, n = Batches(len(x)), [], [], len(x)
    for _ in range(steps):
        xb = x[batches.next()]
        loc, scale = vae.encoder(xb)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(vae.decoder(z), xb, reduction="sum")
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum()
        loss = (n / BATCH) * (kl - log_lik)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        stamps.append(clock())
    return {"losses": losses, "stamps": stamps}


RUNS = {"ppl_lvm": run_lvm, "Pyro": run_pyro, "PyTorch": run_torch}


def per_epoch_ms(stamps: list[float], steps_per_epoch: int) -> float:
    w = min(WARMUP, len(stamps) // 2)
    return 1000 * steps_per_epoch * (stamps[-1] - stamps[w - 1]) / (len(stamps) - w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (14 steps each)")
    parser.add_argument("--quick", action="store_true", help="3 repeats of 3 epochs")
    args = parser.parse_args()
    repeats, epochs = (3, 3) if args.quick else (args.repeats, args.epochs)

    x = binarized_digits().x_train
    steps_per_epoch = len(x) // BATCH
    steps = epochs * steps_per_epoch
    torch.manual_seed(SEED)
    initial = copy.deepcopy(VAE(64, latent_dim=LATENT, hidden=HIDDEN).state_dict())
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, python {platform.python_version()}, 1 thread; "
          f"{len(x)} images, batch {BATCH} ({steps_per_epoch} steps/epoch), {epochs} epochs x {repeats} repeats")

    times: dict[str, list[float]] = {name: [] for name in RUNS}
    curves: dict[str, list[float]] = {}
    names = list(RUNS)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out = RUNS[name](x, initial, steps)
            times[name].append(per_epoch_ms(out["stamps"], steps_per_epoch))
            curves.setdefault(name, out["losses"])
    diff = max(abs(a - b) for a, b in zip(curves["ppl_lvm"], curves["Pyro"], strict=True))
    print(f"loss curves ppl_lvm vs Pyro over {steps} steps: max |difference| = {diff:.3g}")
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{'implementation':<10s} {'CPU ms/epoch (median)':>22s} {'min-max':>16s}")
    for name, v in times.items():
        print(f"{name:<10s} {med[name]:22.1f} {min(v):8.1f}-{max(v):<7.1f}")
    paired = statistics.median(a / b for a, b in zip(times["ppl_lvm"], times["Pyro"], strict=True))
    print(f"ratio ppl_lvm / Pyro: {med['ppl_lvm'] / med['Pyro']:.3f} (paired median {paired:.3f}; target <= 1.05)")
    print(f"ratio ppl_lvm / PyTorch: {med['ppl_lvm'] / med['PyTorch']:.3f}; "
          f"Pyro / PyTorch: {med['Pyro'] / med['PyTorch']:.3f}")


if __name__ == "__main__":
    main()
