"""EM standard errors of a categorical HMM against 200 bootstrap refits (the acceptance's check), over data seeds.

The standard errors are the fit's (``result.standard_errors()``: observed information of the exact log-likelihood,
delta method to the probabilities); the refits are the Newton refits of tests/results/test_em_uncertainty.py
(a hand-written forward recursion, each refit run until max|gradient| < 1e-6). Two schemes:

* ``parametric``: data sets simulated from the fitted chain, refitted from the estimate (the standard check of
  observed-information standard errors for dependent data);
* ``sequences``: whole sequences resampled with replacement (the nonparametric bootstrap; its spread estimates the
  sandwich variance, which equals the inverse information only as the number of sequences grows).

Two designs: ``test`` (the test's chain: 400 sequences of 30 steps, every probability >= 0.1; every refit must
converge) and ``issue`` (60 sequences of 25 steps with emission probabilities of 0.05, where refits head for the
boundary: those are kept as they stand after 60 Newton steps, a probability below 1e-4).

    PYTHONPATH=. python bench/bench_hmm_bootstrap.py --design test --scheme parametric --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / d) for d in ("results", "")]
import test_em_uncertainty as T  # noqa: E402
from _timing import limit_threads, load  # noqa: E402

ISSUE_HMM = {"start": np.array([0.6, 0.4]), "trans": np.array([[0.85, 0.15], [0.25, 0.75]]),
             "emission": np.array([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])}
DESIGNS = {"test": (T.TRUE_HMM, T.HMM_SEQUENCES, T.HMM_LENGTH), "issue": (ISSUE_HMM, 60, 25)}


def run(design: str, scheme: str, seed: int, refits: int) -> dict:
    true, n_seq, length = DESIGNS[design]
    x = T.hmm_data(seed, n_seq, length, true)
    fit = T.fit_hmm(x, true)
    estimate = [fit.params[k].double().numpy() for k in ("start", "trans", "emission")]
    theta_hat = T.newton_refits(T.hmm_logits(*estimate), T.onehot(x)[None])
    rng = np.random.default_rng(1000 + seed)
    t0 = time.perf_counter()
    if scheme == "parametric":
        start, trans, emission = (v[0].numpy() for v in T.hmm_probabilities(theta_hat))
        sets = T.simulate_hmm(start, trans, emission, refits, n_seq, length, rng)
        theta = T.newton_refits(theta_hat.expand(refits, -1), T.onehot(sets), max_iter=60, strict=design == "test")
    else:
        counts = np.stack([np.bincount(rng.integers(0, n_seq, n_seq), minlength=n_seq) for _ in range(refits)])
        theta = T.newton_refits(theta_hat.expand(refits, -1), T.onehot(x)[None], torch.as_tensor(counts, dtype=torch.float64),
                                max_iter=60, strict=design == "test")
    seconds = time.perf_counter() - t0
    refitted = T.hmm_free_probabilities(theta)
    every = torch.cat([v.reshape(refits, -1) for v in T.hmm_probabilities(theta)], 1)
    se = T.flat_se(fit, ["start", "trans", "emission"])[[0, 2, 4, 6, 7, 9, 10]]
    ratio = se / refitted.numpy().std(0, ddof=1)
    return {"ratio": ratio, "se": se, "boundary": int((every.amin(1) < 1e-4).sum()), "seconds": seconds,
            "switched": int((refitted[:, 3] <= refitted[:, 5]).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), default="test")
    parser.add_argument("--scheme", choices=["parametric", "sequences"], default="parametric")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--refits", type=int, default=200)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    limit_threads()
    print(f"design {args.design}, scheme {args.scheme}, {args.refits} refits; {load()}")
    print("coordinates: start_0 trans_00 trans_10 emission_00 emission_01 emission_10 emission_11")
    worst = []
    for seed in (int(s) for s in args.seeds.split(",")):
        out = run(args.design, args.scheme, seed, args.refits)
        r = out["ratio"]
        worst.append(np.abs(r - 1).max())
        print(f"seed {seed}: SE / sd(refits) {np.array2string(r, precision=3)}; max|ratio-1| {np.abs(r - 1).max():.3f}, "
              f"RMS {np.sqrt(np.mean((r - 1) ** 2)):.3f}; refits with a probability < 1e-4: {out['boundary']}; "
              f"label switches: {out['switched']}; {out['seconds']:.0f} s")
    print(f"largest |ratio - 1| over seeds: {max(worst):.3f}; {load()}")


if __name__ == "__main__":
    main()
