"""Scale: a diagonal GMM (D=5, K=5, 20 iterations) through ``lvm.infer``: in memory, streamed from a memory-mapped
file, and on 2 processes (torchrun, gloo), against scikit-learn in memory on the same data.

Every configuration runs in its own process (one thread per process), so that its peak resident memory is its own;
"extra peak" is the peak resident memory (``VmHWM``, reset after the imports) minus the resident memory then. All fits start from the same parameters
(``init_params`` by value, scikit-learn's ``means_init`` / ``precisions_init`` / ``weights_init``) with ``tol``
disabled. The data are written to a ``.npy`` file first (in blocks, never held at once by the writer).

``--mmap`` streams from ``np.load(path, mmap_mode="r")`` (a memory map; each chunk's pages are released once
copied) instead of the path (plain file reads); ``--dtype float32`` writes the file in float32 (and makes float32
the torch default dtype of our fits, so the data stay float32, as for a user of float32 data); ``--iters`` sets the
iterations; ``--default-dtype float64`` keeps torch's default dtype float64 for a float32 file (a user of float64
models with float32 data; default: the file's dtype). ``--kernels float64,float32`` runs the in-memory route once per kernel dtype (``lvm.infer(...,
dtype=...)``; default float64 only). "peak RSS" is the process's whole peak resident memory (``VmHWM``, imports
included). For our routes the time is split, from an EM callback's clock, into the set-up (to the end of the first
iteration, less one iteration's time), the time per iteration (the mean of iterations 2 to the last) and the rest
(the final E-step of every row and the result).

Usage::

    PYTHONPATH=. python bench/bench_scale.py [--n 1000000] [--chunk 65536] [--skip sklearn,memory,stream,torchrun]
        [--mmap] [--dtype float64] [--iters 20] [--kernels float64,float32] [--default-dtype float64]
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

K, D, ITERS = 5, 5, 20


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024.0  # kB


_PEAK_BEFORE_RESET = [0.0]


def _reset_peak() -> float:
    """Reset the process's peak resident memory (Linux ``clear_refs``) and return the resident memory now.

    The peak so far (the imports') is kept for the whole-process peak, ``max(that, VmHWM at the end)``: the
    process's own memory map's high-water mark. (``ru_maxrss`` would not do: Linux carries the parent's peak
    over ``fork`` and ``exec``, and the parent has just written the data file through a memory map.)
    """
    _PEAK_BEFORE_RESET[0] = _status_mb("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def write_data(path: str, n: int, dtype: str = "float64") -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(K, D))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, D))
    for lo in range(0, n, 1_000_000):
        m = min(1_000_000, n - lo)
        out[lo : lo + m] = centres[rng.integers(0, K, m)] + rng.normal(size=(m, D))
    out.flush()
    del out


def start(path: str) -> dict:
    x = np.load(path, mmap_mode="r")
    return {"locs": np.array(x[:K * 1000 : 1000], dtype=np.float64), "scales": np.ones((K, D))}


def run_config(kind: str, path: str, chunk: int, mmap: bool = False, iters: int = ITERS,
               kernel: str = "float64", default_dtype: str = "auto") -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    float32_file = np.load(path, mmap_mode="r").dtype == np.float32
    if default_dtype == "auto":
        default_dtype = "float32" if float32_file else "float64"
    torch.set_default_dtype(getattr(torch, default_dtype))
    import ppl_lvm as lvm
    from ppl_lvm.models.mixtures import gaussian_mixture

    if kind == "sklearn":
        from sklearn.mixture import GaussianMixture  # imported before the baseline and the clock
    base = _reset_peak()
    init = start(path)
    clock: list[float] = []
    with threadpool_limits(1):
        t0 = time.perf_counter()
        if kind == "sklearn":
            x = np.load(path)
            gm = GaussianMixture(K, covariance_type="diag", max_iter=iters, tol=0.0, reg_covar=1e-6,
                                 means_init=init["locs"], precisions_init=1.0 / init["scales"] ** 2,
                                 weights_init=np.ones(K) / K)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm.fit(x)
            ll = float(gm.score(x))
        else:
            if kind == "memory":
                x = torch.from_numpy(np.load(path))
            elif kind == "stream":
                x = lvm.chunks(np.load(path, mmap_mode="r") if mmap else path, chunk)
            else:  # a torchrun rank: its contiguous range of the memory-mapped file
                import torch.distributed as dist

                dist.init_process_group("gloo")
                x = lvm.chunks(path, chunk).shard(dist.get_rank(), dist.get_world_size())
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": "diag"}, method="em",
                                init_params=init, max_iter=iters, tol=None, distributed=kind == "rank",
                                callbacks=[lambda i, ll: clock.append(time.perf_counter())],
                                **({} if kernel == "float64" else {"dtype": kernel}))
            ll = fit.log_likelihood / fit.n_samples
        seconds = time.perf_counter() - t0
    row = {"kind": kind if kernel == "float64" else f"{kind} ({kernel} kernels)", "seconds": seconds,
           "extra_peak_mb": _status_mb("VmHWM") - base, "ll_per_point": ll,
           "peak_rss_mb": max(_PEAK_BEFORE_RESET[0], _status_mb("VmHWM"))}
    if len(clock) > 1:
        per_iter = (clock[-1] - clock[0]) / (len(clock) - 1)
        row.update(setup_s=clock[0] - t0 - per_iter, per_iter_s=per_iter, rest_s=t0 + seconds - clock[-1])
    return row


def _child(kind: str, path: str, chunk: int, mmap: bool = False, iters: int = ITERS, kernel: str = "float64",
           default_dtype: str = "auto") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--path", path, "--chunk", str(chunk),
                          "--iters", str(iters), "--kernels", kernel, "--default-dtype", default_dtype]
                         + (["--mmap"] if mmap else []),
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torchrun(path: str, chunk: int, iters: int = ITERS) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          __file__, "--child", "rank", "--path", path, "--chunk", str(chunk), "--iters", str(iters)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    ranks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {"kind": "torchrun x2", "seconds": max(r["seconds"] for r in ranks), "wall_with_start_s": wall,
            "extra_peak_mb": max(r["extra_peak_mb"] for r in ranks), "ll_per_point": ranks[0]["ll_per_point"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--skip", default="")
    parser.add_argument("--child")
    parser.add_argument("--path")
    parser.add_argument("--mmap", action="store_true")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--kernels", default="float64")
    parser.add_argument("--default-dtype", default="auto", choices=["auto", "float64", "float32"])
    args = parser.parse_args()
    kernels = args.kernels.split(",")
    if args.child:
        print(json.dumps(run_config(args.child, args.path, args.chunk, args.mmap, args.iters, kernels[0],
                                    args.default_dtype)))
        return
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.npy")
        t0 = time.perf_counter()
        write_data(path, args.n, args.dtype)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
        size_mb = args.n * D * np.dtype(args.dtype).itemsize / 2**20
        runs = [("sklearn", "float64")] + [("memory", k) for k in kernels] + [("stream", "float64")]
        rows = [_child(kind, path, args.chunk, args.mmap, args.iters, kernel, args.default_dtype)
                for kind, kernel in runs if kind not in skip]
        if "torchrun" not in skip:
            rows.append(_torchrun(path, args.chunk, args.iters))
    ref = next((r for r in rows if r["kind"] == "sklearn"), None)
    print(f"N={args.n:,} D={D} K={K}, {args.iters} iterations, data {size_mb:.0f} MB ({args.dtype}), chunk "
          f"{args.chunk:,} rows, streamed from {'a memory map' if args.mmap else 'the path (file reads)'}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; torch default dtype {args.default_dtype}")
    print("| route | seconds | vs sklearn | set-up s | s per iteration | rest s | extra peak MB | x data | "
          "peak RSS MB | LL per point |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        split = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in ("setup_s", "per_iter_s", "rest_s"))
        print(f"| {r['kind']} | {r['seconds']:.2f} | {ratio} | {split} | {r['extra_peak_mb']:.0f} | "
              f"{r['extra_peak_mb'] / size_mb:.2f} | {r['peak_rss_mb']:.0f} | {r['ll_per_point']:.10f} |")
    two = next((r for r in rows if r["kind"] == "torchrun x2"), None)
    stream = next((r for r in rows if r["kind"] == "stream"), None)
    if two and stream:
        print(f"2 processes vs 1 (both streamed): speed-up {stream['seconds'] / two['seconds']:.2f}x "
              f"(fit time; {two['wall_with_start_s']:.1f} s with torchrun's start)")


if __name__ == "__main__":
    main()
