"""Tutorial 6's digits table (VAE / IWAE, k = 1, 5, 50, one and two stochastic layers, DReG) at any number of epochs.

Every entry is trained and judged exactly as in ``tutorials/06_iwae.py`` (the same data split, architectures, seed 0
initial weights, batches of 100, Adam with lr 2e-3, held-out log-likelihood by IWAE_5000 ten images at a time, active
units from ``diagnose()``); ``--lr`` and ``--warmup`` change the training of every entry alike. One depth runs per
process, so that the two depths can run side by side. Each entry also records IWAE_50 on the 360 held-out images and
on the first 360 training images every ``--every`` epochs (the learning curves and the train / held-out gap), and
prints one line per entry as soon as it is done, in ``--order``.

    PYTHONPATH=. python bench/iwae_digits_table.py --depth 1 --epochs 200 [--json out.jsonl]

One thread; the CPU time of each entry is printed next to its wall time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.vae import VAE
from ppl_lvm.models.vae_deep import TwoLayerVAE

ENTRIES = {"VAE1": ("VAE", 1), "VAE5": ("VAE", 5), "VAE50": ("VAE", 50), "IWAE5": ("IWAE", 5),
           "IWAE50": ("IWAE", 50), "DReG50": ("IWAE, DReG", 50)}


def make_vae(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights for every objective of one depth, as in tutorial 6
    if depth == 1:
        return VAE(64, latent_dim=16, hidden=(128, 128))
    return TwoLayerVAE(64, latent_dims=(16, 8), hidden=(128, 128), hidden2=(64, 64))


def run_entry(depth: int, objective: str, k: int, epochs: int, every: int, lr: float, data, warmup: int = 0) -> dict:
    x_train, x_test = data.x_train, data.x_test
    x_fit = x_train[: len(x_test)]
    steps_per_epoch = len(x_train) // 100
    vae = make_vae(depth)
    curve = []

    def recorder(state):
        if state.step % (every * steps_per_epoch) == 0:
            curve.append((state.step // steps_per_epoch, float(vae.log_likelihood(x_test, num_particles=50).mean()),
                          float(vae.log_likelihood(x_fit, num_particles=50).mean())))

    start, cpu_start = time.perf_counter(), time.process_time()
    fit = lvm.infer(vae.model, x_train, method="svi" if objective == "VAE" else "iwae", guide=vae.guide,
                    num_particles=k, batch_size=100, lr=lr, steps=epochs * steps_per_epoch, seed=0,
                    callbacks=[recorder], **({"estimator": "dreg"} if objective == "IWAE, DReG" else {}),
                    **({"beta": lvm.linear_warmup(warmup * steps_per_epoch)} if warmup else {}))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    held_out = float(vae.log_likelihood(x_test, num_particles=5000, batch_size=10, seed=0).mean())
    diagnosis = fit.diagnose(num_samples=20, ladder=(1,), warn=False)
    return {"depth": depth, "objective": objective, "k": k, "epochs": epochs, "lr": lr, "warmup": warmup,
            "wall_s": seconds,
            "cpu_s": cpu, "held_out": held_out, "active_units": diagnosis.active_units,
            "activity": {site: [float(v) for v in values] for site, values in diagnosis.mean_variance.items()},
            "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(1, 2), required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="epochs between two points of the learning curves")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=0,
                        help="epochs of linear KL warm-up (beta from 0 to 1, lvm.linear_warmup); 0: none (tutorial 6)")
    parser.add_argument("--order", default="IWAE50,VAE50,IWAE5,VAE5,DReG50,VAE1", help="entries, in this order")
    parser.add_argument("--json", help="append one JSON line per entry to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = binarized_digits(test_fraction=0.2, seed=0)
    for name in args.order.split(","):
        objective, k = ENTRIES[name]
        r = run_entry(args.depth, objective, k, args.epochs, args.every, args.lr, data, args.warmup)
        warmup = f" (KL warm-up over {args.warmup})" if args.warmup else ""
        print(f"{args.depth} layer{'s' if args.depth > 1 else ' '} {objective:<10s} k={k:<2d}: {args.epochs} epochs"
              f"{warmup} in {r['wall_s']:5.0f} s ({r['cpu_s']:.0f} s CPU); held-out log p(x) (IWAE_5000) = "
              f"{r['held_out']:.3f}; active units " + ", ".join(f"{s} {n}" for s, n in r["active_units"].items()),
              flush=True)
        print("    IWAE_50 (held out / training images) at epoch "
              + ", ".join(f"{e}: {h:.2f} / {t:.2f}" for e, h, t in r["curve"]), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
