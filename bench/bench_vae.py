"""Epoch time of ``models.vae.VAE`` fitted through ``lvm.infer`` vs the same VAE hand-written in Pyro vs plain PyTorch.

Run from the repository root (about 3-5 minutes on 2 shared cores; ``--quick`` about a minute):

    PYTHONPATH=. python bench/bench_vae.py [--repeats 7] [--epochs 6] [--quick] [--runs "ROW;ROW..."] [--icount]

The model: binarised sklearn digits (1437 training images of ``ppl_lvm.datasets.binarized_digits``), the VAE of
tutorial 6 (64-128-128-16 tanh MLPs, Bernoulli pixels), minibatches of 100 (14 steps per epoch, the last partial batch
dropped), Adam with lr 1e-3, ``anneal=0`` (a constant step size, as the hand-written loops). All from the same initial
weights and the same minibatch order:

* **ppl_lvm meanfield / svi / iwae**: ``lvm.infer(vae.model, x, method=..., guide=vae.guide, batch_size=100)``, on
  the fast path (the default) and with ``fast_path=False`` (Pyro's ELBO every step);
* **Pyro**: the same model and guide written with ``pyro.module`` / ``pyro.plate(subsample=...)`` / ``pyro.sample``,
  ``SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())``: what a Pyro user writes by hand (compared with
  ``svi, estimator="standard", fast_path=False``, the same estimator on Pyro's path: the loss curves are printed);
* **PyTorch**: a plain loop, the analytic KL plus one-sample reconstruction, ``torch.optim.Adam``; and a plain IWAE
  loop with K=5 (the reference of ``iwae``).

Timing: every thread pool limited to one thread after all imports (``_timing.limit_threads``, printed), the load
average printed; process CPU time after every step (a fit-loop callback for ppl_lvm, inline for the others), per
step averaged after a warm-up of 10 steps, times 14 steps per epoch. Configurations run interleaved in a rotating
order; the table shows the minimum and the median over repeats, the ratios of the medians and the median of the
per-repeat (paired) ratios.

``--icount`` counts instructions per step instead, under valgrind's callgrind (deterministic, whatever the machine's
load): ppl_lvm on Pyro's path and hand-written Pyro each run S and 2S steps, and the instructions per step are
``(I(2S) - I(S)) / S`` (the one-time set-up cancels); ``--runs`` picks other rows of the table. Importing
torch under valgrind takes most of its ~5-10 minutes.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import pyro
import pyro.distributions as pdist
import pyro.optim
import torch
from _timing import limit_threads, load
from pyro.infer import SVI, Trace_ELBO

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.vae import VAE

SEED, BATCH, LR, LATENT, HIDDEN, K = 0, 100, 1e-3, 16, (128, 128), 5
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


def lvm_run(method: str, **options):
    def run(x: torch.Tensor, initial: dict, steps: int) -> dict:
        vae = fresh_vae(initial)
        stamps: list[float] = []
        pyro.clear_param_store()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lvm.ConvergenceWarning)
            fit = lvm.infer(vae.model, x, method=method, guide=vae.guide, batch_size=BATCH, lr=LR, steps=steps,
                            seed=SEED, anneal=0, progress=False, **options,
                            callbacks=[lambda state: stamps.append(clock()) and False])
        return {"losses": list(fit.losses), "stamps": stamps, "fast_path": fit.options["fast_path"]}
    return run


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


def run_torch_iwae(x: torch.Tensor, initial: dict, steps: int) -> dict:
    vae = fresh_vae(initial)
    optim = torch.optim.Adam(vae.parameters(), lr=LR)
    torch.manual_seed(SEED)
    batches, losses, stamps, n = Batches(len(x)), [], [], len(x)
    for _ in range(steps):
        xb = x[batches.next()]
        loc, scale = vae.encoder(xb)
        z = loc + scale * torch.randn((K, *loc.shape))
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            vae.decoder(z), xb.expand(K, *xb.shape), reduction="none").sum(-1)
        bound = torch.logsumexp(log_lik + log_prior - log_q, 0) - math.log(K)
        loss = -(n / BATCH) * bound.sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        stamps.append(clock())
    return {"losses": losses, "stamps": stamps}


RUNS = {
    "PyTorch": run_torch,
    "ppl_lvm meanfield": lvm_run("meanfield"),
    "ppl_lvm svi": lvm_run("svi"),
    "ppl_lvm svi standard, Pyro path": lvm_run("svi", estimator="standard", fast_path=False),
    "Pyro Trace_ELBO": run_pyro,
    "PyTorch IWAE K=5": run_torch_iwae,
    "ppl_lvm iwae K=5": lvm_run("iwae", num_particles=K),
    "ppl_lvm iwae K=5, Pyro path": lvm_run("iwae", num_particles=K, fast_path=False),
}
RATIOS = [("ppl_lvm meanfield", "PyTorch", "<= 1.2"), ("ppl_lvm svi", "PyTorch", ""),
          ("ppl_lvm iwae K=5", "PyTorch IWAE K=5", "<= 1.3"),
          ("ppl_lvm svi standard, Pyro path", "Pyro Trace_ELBO", "<= 1.02"),
          ("ppl_lvm svi", "ppl_lvm svi standard, Pyro path", ""),
          ("ppl_lvm iwae K=5", "ppl_lvm iwae K=5, Pyro path", "")]


def per_epoch_ms(stamps: list[float], steps_per_epoch: int) -> float:
    w = min(WARMUP, len(stamps) // 2)
    return 1000 * steps_per_epoch * (stamps[-1] - stamps[w - 1]) / (len(stamps) - w)


def git_rev() -> str:
    """The commit of the library measured, and whether ppl_lvm/ or models/ have uncommitted edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(lvm.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "ppl_lvm", "models"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return head + (" + uncommitted edits" if dirty else "")


def icount_child(steps: int, names: list[str], labels_path: str) -> None:
    """Under callgrind: each run S and 2S steps, a marker call (``os.getppid``, where callgrind dumps and resets
    its counters) after each, so that each dump holds one run."""
    x = binarized_digits().x_train
    torch.manual_seed(SEED)
    initial = copy.deepcopy(VAE(64, latent_dim=LATENT, hidden=HIDDEN).state_dict())
    for name in names:
        RUNS[name](x, initial, 3)  # warm-up, not counted
    labels = []
    os.getppid()
    for name in names:
        for n in (steps, 2 * steps):
            RUNS[name](x, initial, n)
            os.getppid()
            labels.append([name, n])
    with open(labels_path, "w") as f:
        json.dump(labels, f)


def icount(steps: int, names: list[str]) -> None:
    """Instructions per step of each run, ``(I(2S) - I(S)) / S``, and their ratios to the last one."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--icount needs valgrind on PATH")
    print(f"instruction counts under valgrind/callgrind, S={steps} vs 2S steps; ppl_lvm at {git_rev()}")
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = os.path.join(tmp, "labels.json")
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={tmp}/cg.out",
               sys.executable, os.path.abspath(__file__), "--icount-child", labels_path, "--icount-steps", str(steps),
               "--runs", ";".join(names)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(labels_path):
            raise SystemExit(proc.stderr[-3000:])
        parts = []
        for path in glob.glob(f"{tmp}/cg.out.*"):
            with open(path) as f:
                text = f.read()
            if "Trigger: --dump-before=os_getppid" in text:
                parts.append((int(re.search(r"^part: (\d+)", text, re.M).group(1)),
                              int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))))
        with open(labels_path) as f:
            labels = [tuple(label) for label in json.load(f)]
    totals = [total for _, total in sorted(parts)]
    if len(totals) != len(labels) + 1:
        raise SystemExit(f"unexpected callgrind dumps: {len(totals)} for {len(labels)} runs")
    run = {label: totals[i + 1] for i, label in enumerate(labels)}  # dump 0: imports and warm-up
    per = {name: (run[(name, 2 * steps)] - run[(name, steps)]) / steps for name in names}
    for name in names:
        print(f"{name:<34s} {per[name] / 1e6:8.4f} M instructions/step   ratio to {names[-1]}: "
              f"{per[name] / per[names[-1]]:.4f}")
    print(f"valgrind run took {time.perf_counter() - t0:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (14 steps each)")
    parser.add_argument("--quick", action="store_true", help="3 repeats of 3 epochs")
    parser.add_argument("--icount", action="store_true", help="instructions per step under callgrind instead")
    parser.add_argument("--icount-steps", type=int, default=20, help="S of --icount (S vs 2S steps)")
    parser.add_argument("--runs", default=None,
                        help="only these rows, separated by ';' (--icount: ratios to the last; its default is "
                             "'ppl_lvm svi standard, Pyro path;Pyro Trace_ELBO')")
    parser.add_argument("--icount-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats, epochs = (3, 3) if args.quick else (args.repeats, args.epochs)
    limit_threads()
    default = "ppl_lvm svi standard, Pyro path;Pyro Trace_ELBO" if args.icount or args.icount_child else None
    names = (args.runs or default).split(";") if args.runs or default else list(RUNS)
    if not set(names) <= set(RUNS):
        raise SystemExit(f"--runs: unknown rows {sorted(set(names) - set(RUNS))}; the rows are {list(RUNS)}")
    if args.icount_child:
        return icount_child(args.icount_steps, names, args.icount_child)
    if args.icount:
        return icount(args.icount_steps, names)

    x = binarized_digits().x_train
    steps_per_epoch = len(x) // BATCH
    steps = epochs * steps_per_epoch
    torch.manual_seed(SEED)
    initial = copy.deepcopy(VAE(64, latent_dim=LATENT, hidden=HIDDEN).state_dict())
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, python {platform.python_version()}; "
          f"{len(x)} images, batch {BATCH} ({steps_per_epoch} steps/epoch), {epochs} epochs x {repeats} repeats")
    print(f"ppl_lvm at {git_rev()}; before: {load()}")

    times: dict[str, list[float]] = {name: [] for name in names}
    outs: dict[str, dict] = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out = RUNS[name](x, initial, steps)
            times[name].append(per_epoch_ms(out["stamps"], steps_per_epoch))
            outs.setdefault(name, out)
    print(f"after: {load()}")
    for a, b in (("ppl_lvm svi standard, Pyro path", "Pyro Trace_ELBO"), ("ppl_lvm svi", "ppl_lvm svi standard, "
                                                                         "Pyro path")):
        if a not in outs or b not in outs:
            continue
        diff = max(abs(u - v) for u, v in zip(outs[a]["losses"], outs[b]["losses"], strict=True))
        print(f"loss curves {a} vs {b} over {steps} steps: max |difference| = {diff:.3g}")
    for name, out in outs.items():
        if "fast_path" in out:
            print(f"{name}: fast_path ran = {out['fast_path']}")
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{'implementation':<34s} {'CPU ms/epoch median':>20s} {'min':>8s}")
    for name, v in times.items():
        print(f"{name:<34s} {med[name]:20.1f} {min(v):8.1f}")
    for a, b, target in RATIOS:
        if a not in times or b not in times:
            continue
        paired = statistics.median(u / v for u, v in zip(times[a], times[b], strict=True))
        print(f"ratio {a} / {b}: {med[a] / med[b]:.3f} (paired median {paired:.3f}; minima "
              f"{min(times[a]) / min(times[b]):.3f}){'; target ' + target if target else ''}")


if __name__ == "__main__":
    main()
