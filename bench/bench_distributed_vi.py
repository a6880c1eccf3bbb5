"""Data-parallel SVI: 2 processes (torchrun, gloo, ``distributed=True``) against 1 on the same data and global batch.

A Bernoulli VAE (``ppl_lvm.models.vae.VAE``, 64-128-128-16, the networks registered with ``lvm.module``) on the
binarised digits tiled to ``--rows`` rows, ``method="svi"`` with its own guide, a global ``--batch-size``, ``--steps``
steps with ``anneal=0``. Each process runs one thread. The time is that of the steps (from the end of step 1 to the
end of the last, read by a callback, so the set-up, the bound at the end and the imports are not counted); for 2
processes the slower rank's. The 1- and 2-process runs alternate ``--repeats`` times; the table gives the medians.

Usage::

    PYTHONPATH=. python bench/bench_distributed_vi.py [--rows 16000] [--batch-size 1000] [--steps 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from _timing import limit_threads, load

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.em.stream import shard_range
from ppl_lvm.models.vae import VAE


def fit(args: argparse.Namespace, out: str) -> None:
    """One fit in this process (a torchrun rank when ``WORLD_SIZE`` is set); writes its step time to ``out``."""
    x = binarized_digits().x_train
    limit_threads()  # every pool to one thread, after the data's imports (scikit-learn); prints them
    x = x.repeat((args.rows + len(x) - 1) // len(x), 1)[: args.rows]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        lo, hi = shard_range(len(x), rank, dist.get_world_size())
        x = x[lo:hi]
    torch.manual_seed(0)
    vae = VAE(64, latent_dim=16, hidden=(128, 128))
    stamps: list[float] = []
    lvm.infer(vae.model, x, method="svi", guide=vae.guide, batch_size=args.batch_size, steps=args.steps, lr=1e-3,
              anneal=0.0, seed=0, distributed=distributed, callbacks=[lambda state: stamps.append(time.perf_counter())])
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"per_step": per_step}, f)
    if distributed:
        dist.destroy_process_group()


def run(command: list[str], out: str, ranks: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    times = []
    for r in range(ranks):
        with open(f"{out}.{r}") as f:
            times.append(json.load(f)["per_step"])
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit:
        fit(args, args.fit)
        return
    sizes = ["--rows", str(args.rows), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    one, two = [], []
    print(f"torch {torch.__version__}, {load()}")
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            out = os.path.join(folder, f"one{i}")
            one.append(run([sys.executable, __file__, *sizes, "--fit", out], out, 1))
            out = os.path.join(folder, f"two{i}")
            two.append(run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            __file__, *sizes, "--fit", out], out, 2))
            print(f"repeat {i}: 1 process {one[-1] * 1e3:.1f} ms/step, 2 processes {two[-1] * 1e3:.1f} ms/step, "
                  f"speed-up {one[-1] / two[-1]:.2f}x", flush=True)
    a, b = float(np.median(one)), float(np.median(two))
    print(f"N={args.rows} batch={args.batch_size} steps={args.steps}: median 1 process {a * 1e3:.1f} ms/step, "
          f"2 processes {b * 1e3:.1f} ms/step, speed-up {a / b:.2f}x; min 1 process {min(one) * 1e3:.1f}, "
          f"2 processes {min(two) * 1e3:.1f} ms/step")
    print(load())


if __name__ == "__main__":
    main()
