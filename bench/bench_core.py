"""Core benchmark: the DSL's per-step overhead over hand-written Pyro, and IWAE vectorisation.

Run (a full run takes about 3-4 minutes on 2 shared cores; ``--quick`` about 30 s):

    . /work/venv/bin/activate && PYTHONPATH=/work/main python bench/bench_core.py [--quick]

Everything runs on one thread (torch and every BLAS / OpenMP pool, limited by ``bench/_timing.py`` after every
library, scikit-learn included, is imported; the pools and the machine's load are printed) with the same seeds for
every implementation:

1. Time per step of ``lvm.infer(..., method="svi", progress=False)`` against the same model
   hand-written in plain Pyro (``pyro.sample`` with string names, the same guide, ``Trace_ELBO`` /
   ``TraceEnum_ELBO``, ``pyro.infer.SVI`` with ``pyro.optim.Adam``, the same lr, minibatch order
   and number of steps) on

   a. a VAE on binarised sklearn digits (64-128-128-16 MLP encoder and decoder, Bernoulli
      likelihood, batch_size=100, guide ``lvm.AmortizedNormal(encoder, site="z")``);
   b. a 3-component Gaussian mixture, 1000 points in 2-D, assignment enumerated exactly (params
      only, no guide).

   Both implementations must give the same loss curve for the same seed: the maximum absolute
   difference of the two curves is printed (0 means bit-identical).
2. IWAE (``method="iwae"``, K=50) on the same VAE with ``vectorize_particles=True`` vs ``False``,
   and a hand-written Pyro ``RenyiELBO`` loop with the DSL's loss scaling for reference.
3. A plain-PyTorch VAE loop (no Pyro, analytic KL, ``torch.optim.Adam``) for reference.

How a step is timed. ``infer`` does one-time work before the first step (the model's prototype
run, building the guide, a guide trace) and after the last (building the Result). To time steps
only, every implementation records the clocks after each step: the DSL through a ``callbacks=[...]``
entry (called by the fit loop after the optimiser step and its own bookkeeping), the hand-written
loops inline at the same point. The time per step of a run is ``(t[n] - t[w]) / (n - w)``, the mean
over all steps after ``w`` warm-up steps, so occasional costs (e.g. the DSL loop's best-parameter
snapshot) count at their true rate. The clock is the process CPU time (``time.process_time``; with
one thread it is the time the step ran on a core), because on a shared 2-core machine wall-clock
times swing by 10-50%; wall-clock medians are shown too. Each configuration runs ``--repeats``
times, interleaved in rotating order. Ratios: of the medians over repeats, the median of the
per-repeat ratios (runs of one repeat are adjacent in time: "paired"), and of the minima. The fixed
CPU cost of ``infer`` outside the steps is reported separately.

``--icount`` replaces the timing by a deterministic count: the process runs under valgrind's
callgrind, every configuration runs S and 2S steps, and the instructions per step are
``(I(2S) - I(S)) / S`` (the one-time setup cancels). It takes ~15 minutes (most of it is importing
torch under valgrind) and is not part of the default run.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as pdist
import pyro.optim
import pyro.poutine as poutine
import torch
import torch.nn as nn
import torch.nn.functional as F
from _timing import limit_threads, load
from pyro.distributions import constraints
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample
from sklearn.datasets import load_digits

import ppl_lvm as lvm
from ppl_lvm import dist

SEED = 0
LATENT = 16
HIDDEN = 128
BATCH = 100
VAE_LR = 1e-3
GMM_LR = 0.05
GMM_N, GMM_K, GMM_D = 1000, 3, 2


# -------------------------------------------------------------------------------------- data
def digits() -> torch.Tensor:
    x = load_digits().data.astype(np.float32) / 16.0
    return torch.from_numpy((x > 0.5).astype(np.float32))


def gmm_data() -> torch.Tensor:
    rng = np.random.default_rng(SEED)
    means = np.array([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]])
    z = rng.integers(0, GMM_K, size=GMM_N)
    x = means[z] + rng.normal(size=(GMM_N, GMM_D)) * np.array([1.0, 0.7])
    return torch.tensor(x, dtype=torch.float32)


def gmm_init(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    return {
        "weights": torch.ones(GMM_K) / GMM_K,
        "locs": x[torch.randperm(len(x), generator=g)[:GMM_K]].clone(),
        "scales": torch.ones(GMM_K, GMM_D),
    }


# -------------------------------------------------------------------------------------- nets
class Encoder(nn.Module):
    def __init__(self, d: int = 64, h: int = HIDDEN, k: int = LATENT):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.loc = nn.Linear(h, k)
        self.log_scale = nn.Linear(h, k)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.log_scale(h).clamp(-8, 4).exp()


class Decoder(nn.Module):
    def __init__(self, d: int = 64, h: int = HIDDEN, k: int = LATENT):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(k, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d)
        )

    def forward(self, z):
        return self.net(z)


_NETS: dict[int, tuple[dict, dict]] = {}


def make_nets(seed: int = SEED) -> tuple[Encoder, Decoder]:
    """Fresh encoder and decoder, same initial weights every call (fits train them in place)."""
    if seed not in _NETS:
        torch.manual_seed(seed)
        e, d = Encoder(), Decoder()
        _NETS[seed] = (copy.deepcopy(e.state_dict()), copy.deepcopy(d.state_dict()))
    with torch.random.fork_rng(devices=[]):  # building the modules must not move the global RNG
        e, d = Encoder(), Decoder()
    e.load_state_dict(_NETS[seed][0])
    d.load_state_dict(_NETS[seed][1])
    return e, d


class Batches:
    """The minibatch order of ppl_lvm's fit loop: a seeded randperm per epoch, last partial batch
    dropped."""

    def __init__(self, n: int, batch_size: int, seed: int = SEED):
        self.n, self.b = n, batch_size
        self.gen = torch.Generator().manual_seed(int(seed))
        self.order = None
        self.cursor = 0

    def next(self) -> torch.Tensor:
        if self.order is None or self.cursor + self.b > self.n:
            self.order = torch.randperm(self.n, generator=self.gen)
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.b]
        self.cursor += self.b
        return idx


class Stamps:
    """A fit-loop callback recording the clocks (wall, CPU) after each step."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, state) -> bool:
        self.t.append(now())
        return False


def now() -> tuple[float, float]:
    """Wall clock and process CPU time (one thread: the CPU time is the time spent on a core)."""
    return time.perf_counter(), time.process_time()


def per_step(stamps: list[tuple[float, float]], warmup: int, clock: int) -> float:
    """Mean seconds per step after ``warmup`` steps, (t[n] - t[w]) / (n - w), on clock 0 (wall) or
    1 (CPU)."""
    w = max(1, min(warmup, len(stamps) // 2))
    return (stamps[-1][clock] - stamps[w - 1][clock]) / max(1, len(stamps) - w)


# -------------------------------------------------------------------------------------- runs
# Every run returns {"losses": [...], "stamps": [...], optional "t_call", "t_return"}.


def iwae_guide_for(encoder):
    """The guide of ``AmortizedNormal(encoder, site="z")`` written out, plate subsample site hidden.

    Needed because ppl_lvm's iwae backend refuses every guide with a plate: its checks in
    ``IWAEBackend.plan`` and ``local_and_global`` treat the plate's ``_Subsample`` sample site as a
    latent (no rsample, outside the data plate). Hiding that site changes nothing numerically
    (Pyro prunes subsample sites from the traces anyway).
    """

    def iwae_guide(x):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x)
        with poutine.block(hide_fn=site_is_subsample):
            plate = pyro.plate("data", len(x), dim=-1)
        with plate:
            return pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    return iwae_guide


IWAE_GUIDE = {
    "kind": None
}  # "amortized" when ppl_lvm accepts AmortizedNormal for iwae, else "workaround"


def choose_iwae_guide(x) -> None:
    """Use AmortizedNormal for the IWAE runs if ppl_lvm accepts it, else the written-out guide."""
    IWAE_GUIDE["kind"] = "amortized"
    try:
        run_dsl_vae(x, 2, "iwae", 2, True)
        return
    except lvm.UnsupportedModelError as exc:
        IWAE_GUIDE["kind"] = "workaround"
        print(
            f"# NOTE: infer(method='iwae') refuses AmortizedNormal ({exc}). The IWAE runs use the "
            "same guide written out with the plate's subsample site hidden (iwae_guide_for)."
        )
    run_dsl_vae(x, 2, "iwae", 2, True)  # the workaround must work, else the section is skipped


def run_dsl_vae(x, steps, method="svi", num_particles=1, vectorize=True):
    encoder, decoder = make_nets()

    @lvm.model
    def vae(x):
        lvm.module(decoder)
        with lvm.plate(len(x)) as data:  # noqa: F841 - the plate is named "data" from the `as` target
            z = lvm.latent(dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            lvm.observe(dist.Bernoulli(logits=decoder(z)).to_event(1), x)

    stamps = Stamps()
    options = dict(
        steps=steps, lr=VAE_LR, batch_size=BATCH, seed=SEED, progress=False, callbacks=[stamps],
        # the hand-written loop's gradient and schedule: the standard estimator (not STL), a constant learning rate
        # and the last iterate (no annealing or averaging), so both sides do the same work
        anneal=0,
    )
    if method == "svi":
        options["estimator"] = "standard"

    if method == "iwae":
        options.update(num_particles=num_particles, vectorize_particles=vectorize)
    guide = lvm.AmortizedNormal(encoder, site="z")
    if method == "iwae" and IWAE_GUIDE["kind"] != "amortized":
        guide = iwae_guide_for(encoder)
    t0 = now()
    fit = lvm.infer(vae, x, method=method, guide=guide, **options)
    t1 = now()
    return {"losses": list(fit.losses), "stamps": stamps.t, "t_call": t0, "t_return": t1}


def _pyro_vae(x_full):
    encoder, decoder = make_nets()
    n = len(x_full)

    def model(x, idx):
        pyro.module("decoder", decoder)
        with pyro.plate("data", n, subsample=idx):
            z = pyro.sample("z", pdist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x, idx):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x)
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    return model, guide


def run_pyro_vae(x, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    model, guide = _pyro_vae(x)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": VAE_LR}), Trace_ELBO())
    batches = Batches(len(x), BATCH)
    losses, stamps = [], []
    for _ in range(steps):
        idx = batches.next()
        losses.append(svi.step(x.index_select(0, idx), idx))
        stamps.append(now())
    pyro.clear_param_store()
    return {"losses": losses, "stamps": stamps}


def run_pyro_iwae(x, steps, num_particles):
    """Hand-written Pyro IWAE with the DSL's minibatch convention: a plate over the batch, loss and
    grads times N/B."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    encoder, decoder = make_nets()

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pdist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    elbo = RenyiELBO(
        alpha=0.0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )
    optim = pyro.optim.Adam({"lr": VAE_LR})
    scale = len(x) / BATCH
    batches = Batches(len(x), BATCH)
    losses, stamps = [], []
    for _ in range(steps):
        idx = batches.next()
        with poutine.trace(param_only=True) as capture:
            loss = elbo.loss_and_grads(model, guide, x.index_select(0, idx))
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
        optim(params)
        pyro.infer.util.zero_grads(params)
        losses.append(float(loss) * scale)
        stamps.append(now())
    pyro.clear_param_store()
    return {"losses": losses, "stamps": stamps}


def run_torch_vae(x, steps):
    """Plain PyTorch: reparameterised z, Bernoulli NLL, analytic KL; loss x N/B like Pyro."""
    torch.manual_seed(SEED)
    encoder, decoder = make_nets()
    opt = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=VAE_LR)
    scale = len(x) / BATCH
    batches = Batches(len(x), BATCH)
    losses, stamps = [], []
    for _ in range(steps):
        xb = x.index_select(0, batches.next())
        loc, sd = encoder(xb)
        z = loc + sd * torch.randn_like(loc)
        nll = F.binary_cross_entropy_with_logits(decoder(z), xb, reduction="sum")
        kl = 0.5 * (loc.pow(2) + sd.pow(2) - 1.0).sum() - sd.log().sum()
        loss = (nll + kl) * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        stamps.append(now())
    return {"losses": losses, "stamps": stamps}


def run_dsl_gmm(x, steps):
    init = gmm_init(x)

    @lvm.model
    def gmm(x):
        weights = lvm.param(lambda: init["weights"].clone(), constraint=constraints.simplex)
        locs = lvm.param(lambda: init["locs"].clone())
        scales = lvm.param(lambda: init["scales"].clone(), constraint=constraints.positive)
        with lvm.plate(len(x)) as data:  # noqa: F841
            z = lvm.latent(dist.Categorical(weights))
            lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)

    stamps = Stamps()
    t0 = now()
    fit = lvm.infer(
        gmm, x, method="svi", steps=steps, lr=GMM_LR, seed=SEED, progress=False, callbacks=[stamps],
        anneal=0,  # the hand-written loop's constant learning rate and last iterate
    )
    t1 = now()
    return {"losses": list(fit.losses), "stamps": stamps.t, "t_call": t0, "t_return": t1}


def run_pyro_gmm(x, steps):
    init = gmm_init(x)

    def model(x):
        weights = pyro.param(
            "weights", lambda: init["weights"].clone(), constraint=constraints.simplex
        )
        locs = pyro.param("locs", lambda: init["locs"].clone())
        scales = pyro.param(
            "scales", lambda: init["scales"].clone(), constraint=constraints.positive
        )
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pdist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", pdist.Normal(locs[z], scales[z]).to_event(1), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": GMM_LR}), TraceEnum_ELBO(max_plate_nesting=1))
    losses, stamps = [], []
    for _ in range(steps):
        losses.append(svi.step(x))
        stamps.append(now())
    pyro.clear_param_store()
    return {"losses": losses, "stamps": stamps}


# -------------------------------------------------------------------------------------- driver
def bench(configs: dict, repeats: int, warmup: int, log) -> dict:
    """Run each config ``repeats`` times in rotating order: ms/step and the first loss curve."""
    names = list(configs)
    out = {
        k: {"cpu": [], "wall": [], "setup_ms": [], "teardown_ms": [], "losses": None} for k in names
    }
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            res = configs[name]()
            cpu = 1e3 * per_step(res["stamps"], warmup, 1)
            wall = 1e3 * per_step(res["stamps"], warmup, 0)
            out[name]["cpu"].append(cpu)
            out[name]["wall"].append(wall)
            if "t_call" in res:
                out[name]["setup_ms"].append(1e3 * (res["stamps"][0][1] - res["t_call"][1]) - cpu)
                out[name]["teardown_ms"].append(1e3 * (res["t_return"][1] - res["stamps"][-1][1]))
            if out[name]["losses"] is None:
                out[name]["losses"] = res["losses"]
            log(
                f"  repeat {r + 1}/{repeats} {name:<14s} CPU {cpu:8.3f} ms/step"
                f"   wall {wall:8.3f} ms/step"
            )
    return out


def curve_diff(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = min(len(a), len(b))
    d = np.abs(a[:n] - b[:n])
    return float(d.max()), float((d / np.maximum(np.abs(b[:n]), 1e-12)).max())


def git_state() -> str:
    """The commit of the library measured, and whether its working tree has uncommitted edits."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(lvm.__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "ppl_lvm"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{head}" + (" + uncommitted edits in ppl_lvm/" if dirty else "")


# ---------------------------------------------------------------------------------------------- icount
ICOUNT_PLAN = ["dsl_vae", "pyro_vae", "torch_vae", "dsl_gmm", "pyro_gmm"]


def icount_child(steps: int, labels_path: str) -> int:
    """Under callgrind: each configuration runs S and 2S steps, with a marker call after each run.

    ``--dump-before=os_getppid`` makes callgrind dump (and reset) its counters at every
    ``os.getppid()``, so each dump holds exactly one run.
    """
    import json

    data = {"vae": digits(), "gmm": gmm_data()}
    runs = {name: globals()[f"run_{name}"] for name in ICOUNT_PLAN}
    for name in ICOUNT_PLAN:
        runs[name](data[name.split("_")[1]], 3)  # warm-up, not counted
    labels = []
    os.getppid()
    for name in ICOUNT_PLAN:
        for n in (steps, 2 * steps):
            runs[name](data[name.split("_")[1]], n)
            os.getppid()
            labels.append([name, n])
    with open(labels_path, "w") as f:
        json.dump(labels, f)
    return 0


def icount_parent(steps: int) -> int:
    """Instructions per step = (I(2S steps) - I(S steps)) / S: setup and teardown cancel."""
    import glob
    import json
    import re
    import shutil
    import subprocess
    import tempfile

    if shutil.which("valgrind") is None:
        print("--icount needs valgrind on PATH")
        return 2
    print(
        f"# instruction counts under valgrind/callgrind, S={steps} vs 2S steps; ppl_lvm at "
        f"{git_state()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = os.path.join(tmp, "labels.json")
        cmd = [
            "valgrind", "--tool=callgrind", "--dump-before=os_getppid",
            f"--callgrind-out-file={tmp}/cg.out", sys.executable, os.path.abspath(__file__),
            "--icount-child", labels_path, "--icount-steps", str(steps),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(labels_path):
            print(proc.stderr[-3000:])
            return 1
        parts = []
        for path in glob.glob(f"{tmp}/cg.out.*"):
            text = open(path).read()
            if "Trigger: --dump-before=os_getppid" not in text:
                continue
            part = int(re.search(r"^part: (\d+)", text, re.M).group(1))
            total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
            parts.append((part, total))
        with open(labels_path) as f:
            labels = [tuple(x) for x in json.load(f)]
    totals = [t for _, t in sorted(parts)]
    if len(totals) != len(labels) + 1:
        print(f"unexpected callgrind dumps: {len(totals)} for {len(labels)} runs")
        return 1
    seg = {label: totals[i + 1] for i, label in enumerate(labels)}  # dump 0: imports, warm-up
    per = {n: (seg[(n, 2 * steps)] - seg[(n, steps)]) / steps for n in ICOUNT_PLAN}
    fixed = {n: seg[(n, steps)] - steps * per[n] for n in ICOUNT_PLAN}
    ref = {"dsl_vae": "pyro_vae", "torch_vae": "pyro_vae", "dsl_gmm": "pyro_gmm"}
    print(
        "\n| run | M instructions / step | vs | ratio | M instructions fixed (setup, first step) |"
    )
    print("|---|---|---|---|---|")
    for n in ICOUNT_PLAN:
        r = f"{ref[n]} | {per[n] / per[ref[n]]:.4f}" if n in ref else " | "
        print(f"| {n} | {per[n] / 1e6:.3f} | {r} | {fixed[n] / 1e6:.1f} |")
    print(f"\nvalgrind run took {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="short run (fewer steps and repeats), ~30 s"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats per configuration (default 15, quick 3; IWAE: half, at least 3)",
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="SVI steps per VAE/GMM run (default 150, quick 100)"
    )
    ap.add_argument(
        "--iwae-steps", type=int, default=None, help="IWAE steps per run (default 24, quick 10)"
    )
    ap.add_argument(
        "--particles", type=int, default=50, help="IWAE importance samples K (default 50)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="steps excluded from timing (default 30, quick 10)"
    )
    ap.add_argument("--quiet", action="store_true", help="no per-run lines")
    ap.add_argument(
        "--icount",
        action="store_true",
        help="instead of timing, count instructions per step under valgrind (deterministic; "
        "slow: ~15 min, needs valgrind)",
    )
    ap.add_argument("--icount-steps", type=int, default=20, help="S for --icount (S vs 2S steps)")
    ap.add_argument("--icount-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    limit_threads()  # after every import; prints the pools
    if args.icount_child:
        return icount_child(args.icount_steps, args.icount_child)
    if args.icount:
        return icount_parent(args.icount_steps)
    repeats = args.repeats or (3 if args.quick else 15)
    steps = args.steps or (100 if args.quick else 150)
    iwae_steps = args.iwae_steps or (10 if args.quick else 24)
    warmup = args.warmup if args.warmup is not None else (10 if args.quick else 30)
    iwae_warmup = max(2, min(warmup, iwae_steps // 4))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    warnings.filterwarnings("ignore", category=lvm.PplLvmWarning)

    t_start = time.perf_counter()
    print(
        f"# bench_core: python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, {torch.get_num_threads()} torch thread(s), "
        "every thread pool limited to 1, "
        f"cpu count {os.cpu_count()}"
    )
    print(f"# ppl_lvm at {git_state()}; at start: {load()}")
    print(
        f"# steps={steps} iwae_steps={iwae_steps} K={args.particles} repeats={repeats} "
        f"warmup={warmup}"
    )
    x = digits()
    xg = gmm_data()

    # warm-up of imports / allocator / first-call caches, not timed
    (
        run_dsl_vae(x, 5),
        run_pyro_vae(x, 5),
        run_torch_vae(x, 5),
        run_dsl_gmm(xg, 5),
        run_pyro_gmm(xg, 5),
    )

    log("## 1a. VAE, svi (Trace_ELBO), batch 100")
    vae = bench(
        {
            "dsl_vae": lambda: run_dsl_vae(x, steps),
            "pyro_vae": lambda: run_pyro_vae(x, steps),
            "torch_vae": lambda: run_torch_vae(x, steps),
        },
        repeats,
        warmup,
        log,
    )
    log("## 1b. GMM, svi (TraceEnum_ELBO, z enumerated), N=1000")
    gmm = bench(
        {"dsl_gmm": lambda: run_dsl_gmm(xg, steps), "pyro_gmm": lambda: run_pyro_gmm(xg, steps)},
        repeats,
        warmup,
        log,
    )
    log(f"## 2. IWAE K={args.particles}, VAE, batch 100")
    iwae = {}
    try:
        choose_iwae_guide(x)
        iwae = bench(
            {
                "dsl_iwae_vec": lambda: run_dsl_vae(x, iwae_steps, "iwae", args.particles, True),
                "dsl_iwae_loop": lambda: run_dsl_vae(x, iwae_steps, "iwae", args.particles, False),
                "pyro_iwae_vec": lambda: run_pyro_iwae(x, iwae_steps, args.particles),
            },
            max(3, repeats // 2),
            iwae_warmup,
            log,
        )
    except lvm.PplLvmError as exc:
        print(f"# IWAE SKIPPED: infer(method='iwae') failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ same losses?
    d_vae = curve_diff(vae["dsl_vae"]["losses"], vae["pyro_vae"]["losses"])
    d_gmm = curve_diff(gmm["dsl_gmm"]["losses"], gmm["pyro_gmm"]["losses"])
    d_torch = curve_diff(vae["torch_vae"]["losses"], vae["pyro_vae"]["losses"])

    allr = {**vae, **gmm, **iwae}
    cpu = {k: statistics.median(v["cpu"]) for k, v in allr.items()}
    wall = {k: statistics.median(v["wall"]) for k, v in allr.items()}

    def paired(key, ref):  # median over repeats of the ratio of the two runs of the same repeat
        return statistics.median(
            a / b for a, b in zip(allr[key]["cpu"], allr[ref]["cpu"], strict=True)
        )

    def row(label, key, ref=None):
        lo, hi = min(allr[key]["cpu"]), max(allr[key]["cpu"])
        ratios = " | | "
        if ref:
            r_min = lo / min(allr[ref]["cpu"])
            ratios = f"{cpu[key] / cpu[ref]:.3f} | {paired(key, ref):.3f} | {r_min:.3f}"
        return f"| {label} | {cpu[key]:.3f} | {lo:.3f}-{hi:.3f} | {wall[key]:.3f} | {ratios} |"

    k = args.particles
    lines = [
        "| variant | CPU ms/step (median) | CPU min-max over repeats | wall ms/step (median) "
        "| ratio of CPU medians | paired ratio (median) | ratio of CPU minima |",
        "|---|---|---|---|---|---|---|",
        row("(a) VAE: hand-written Pyro, SVI + Trace_ELBO", "pyro_vae"),
        row("(a) VAE: ppl_lvm infer(svi) + AmortizedNormal, vs Pyro", "dsl_vae", "pyro_vae"),
        row("(a) VAE: plain PyTorch, analytic KL, vs Pyro", "torch_vae", "pyro_vae"),
        row("(a) VAE: ppl_lvm, vs plain PyTorch", "dsl_vae", "torch_vae"),
        row("(b) GMM: hand-written Pyro, SVI + TraceEnum_ELBO", "pyro_gmm"),
        row("(b) GMM: ppl_lvm infer(svi), z enumerated, vs Pyro", "dsl_gmm", "pyro_gmm"),
    ]
    if iwae:
        lines += [
            row(f"IWAE K={k}: ppl_lvm, vectorize_particles=True", "dsl_iwae_vec"),
            row(
                f"IWAE K={k}: ppl_lvm, vectorize_particles=False, vs True",
                "dsl_iwae_loop",
                "dsl_iwae_vec",
            ),
            row(f"IWAE K={k}: hand-written Pyro RenyiELBO vectorised", "pyro_iwae_vec"),
            row(
                f"IWAE K={k}: ppl_lvm vectorised, vs hand-written Pyro",
                "dsl_iwae_vec",
                "pyro_iwae_vec",
            ),
        ]
    print()
    print("\n".join(lines))
    print()
    target = 1.05
    for name in ("vae", "gmm"):
        r1, r2 = cpu[f"dsl_{name}"] / cpu[f"pyro_{name}"], paired(f"dsl_{name}", f"pyro_{name}")
        print(
            f"DSL / Pyro ({name}): {r1:.3f} (CPU medians), {r2:.3f} (paired); target <= {target}: "
            f"{'MET' if max(r1, r2) <= target else 'NOT MET'}"
        )
    for key in [k for k in ("dsl_vae", "dsl_gmm", "dsl_iwae_vec") if k in allr]:
        print(
            f"infer() fixed CPU cost outside the steps ({key}): before the first step "
            f"{statistics.median(allr[key]['setup_ms']):.1f} ms, after the last "
            f"{statistics.median(allr[key]['teardown_ms']):.1f} ms"
        )
    print()
    print("loss curves, same seed (max |DSL - Pyro|, max relative):")
    print(
        f"  VAE  svi   {d_vae[0]:.3g}  {d_vae[1]:.3g}   over {len(vae['dsl_vae']['losses'])} steps"
    )
    print(
        f"  GMM  svi   {d_gmm[0]:.3g}  {d_gmm[1]:.3g}   over {len(gmm['dsl_gmm']['losses'])} steps"
    )
    if iwae:
        d_iw = curve_diff(iwae["dsl_iwae_vec"]["losses"], iwae["pyro_iwae_vec"]["losses"])
        d_iw_loop = curve_diff(iwae["dsl_iwae_vec"]["losses"], iwae["dsl_iwae_loop"]["losses"])
        print(
            f"  VAE  iwae  {d_iw[0]:.3g}  {d_iw[1]:.3g}   "
            "(DSL vectorised vs hand-written Pyro vectorised)"
        )
        print(
            f"  VAE  iwae  {d_iw_loop[0]:.3g}  {d_iw_loop[1]:.3g}   (vectorised vs loop: K "
            "sequential draws of (B, 16) are the same draws in the same order, so expected to "
            "match to rounding)"
        )
    print(
        f"  VAE  torch vs Pyro  {d_torch[0]:.3g}  {d_torch[1]:.3g}   "
        "(analytic vs Monte Carlo KL: different "
        "estimators, not expected to match)"
    )
    tail = max(1, steps // 10)
    print(
        "  final-10% mean loss, VAE: DSL "
        f"{np.mean(vae['dsl_vae']['losses'][-tail:]):.1f}, "
        f"Pyro {np.mean(vae['pyro_vae']['losses'][-tail:]):.1f}, "
        f"torch {np.mean(vae['torch_vae']['losses'][-tail:]):.1f}"
    )
    print(
        f"\ntotal wall time {time.perf_counter() - t_start:.0f} s; at end: {load()} "
        "(2 cores: above ~1 other processes share this one's core)"
    )
    ok = all(math.isfinite(v) for v in cpu.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
