"""Export and diagnosis of a variational mixture fit: ``to_arviz(500)``, ``diagnose()`` and the bound-ladder plot.

The ready-made ``gaussian_mixture`` (K=3, full covariance) on the standardised wine data (178 x 13), fitted by
``method="svi"`` (the assignment ``z`` enumerated), then on that fit: ``fit.to_arviz(500)``, ``fit.diagnose()``
and ``plot_bound_ladder(fit)``, each timed (wall clock), their sum printed. ArviZ, xarray and matplotlib are imported
before the clock starts (their import is printed apart: a one-off cost of the process). One thread, every pool
limited after the imports (printed), the machine's load printed. ``--repeats`` fresh fits, median and min.

Usage::

    PYTHONPATH=. python bench/bench_export.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

t_import = time.perf_counter()
import arviz  # noqa: E402, F401 - imported before timing: a one-off cost, not the export's
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import xarray  # noqa: E402, F401

t_import = time.perf_counter() - t_import
from _timing import limit_threads, load  # noqa: E402

import ppl_lvm as lvm  # noqa: E402
from ppl_lvm import datasets  # noqa: E402
from ppl_lvm.models.mixtures import gaussian_mixture  # noqa: E402
from ppl_lvm.plots import plot_bound_ladder  # noqa: E402
from ppl_lvm.posterior.draws import replay  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit_threads()
    warnings.simplefilter("ignore")
    x = datasets.wine(standardize=True)[0]
    print(f"torch {torch.__version__}, {load()}; arviz + xarray + matplotlib imported in {t_import:.2f} s")
    times: dict[str, list[float]] = {"fit": [], "to_arviz(500)": [], "diagnose()": [], "plot_bound_ladder": [],
                                     "together": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        fit = lvm.infer(gaussian_mixture, {"x": x, "K": 3}, method="svi", steps=args.steps, progress=False, seed=r)
        t1 = time.perf_counter()
        fit.to_arviz(500)
        t2 = time.perf_counter()
        fit.diagnose()
        t3 = time.perf_counter()
        plt.close(plot_bound_ladder(fit))
        t4 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t1), strict=True):
            times[key].append(value)
        found = replay(fit, 500)
        print(f"repeat {r}: vectorised={found.vectorised}, model runs of the pass={found.model_runs}")
    print(f"| step | wall s, median (min) of {args.repeats} fresh fits |")
    print("|---|---|")
    for key, values in times.items():
        print(f"| {key} | {statistics.median(values):.3f} ({min(values):.3f}) |")
    print(load())


if __name__ == "__main__":
    main()
