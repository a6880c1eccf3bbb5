"""The ``ppl-lvm demo`` command: the main job on built-in data.

Gaussian mixtures fitted to the standardised iris measurements by EM for K = 1..6 with restarts, K chosen by BIC;
a VAE with a 2-D latent space trained with the IWAE bound on binarised 8x8 digits; one HTML report of both.
:func:`run_demo` prints the numbers as it goes and returns the report's path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..api import infer
from ..datasets import binarized_digits, iris
from ..diagnostics import ACTIVE_UNIT_THRESHOLD, Diagnosis
from ..models.mixtures import gaussian_mixture
from ..models.vae import VAE
from ..report import Report, add_result, selection_table
from ..report.page import _fmt
from .console import REPORT_FILE, _record_warnings, _say, _warn, _warning_lines

__all__ = ["run_demo", "DEMO_KS", "DEMO_REG_COVAR", "DEMO_LADDER", "DEMO_LADDER_FAST"]

DEMO_KS = range(1, 7)
# iris is measured to 0.1 cm: with the default 1e-6 a component can shrink onto a few coplanar points, a likelihood
# spike that BIC then rewards (K=4 at log-likelihood -167 against -276 for scikit-learn's fits). 1e-3 on standardised
# data removes the spike and leaves the other fits unchanged to 0.5 in log-likelihood.
DEMO_REG_COVAR = 1e-3
DEMO_LADDER = (1, 10, 100, 500)
DEMO_LADDER_FAST = (1, 10)


def _format_table(frame: Any, best: Any) -> str:
    """A DataFrame as aligned text, the best row marked with '*'."""
    cells = [[str(frame.index.name or "")] + [str(c) for c in frame.columns]]
    for label, row in frame.iterrows():
        cells.append([f"{label}{' *' if label == best else ''}"] + [_fmt(v) for v in row.tolist()])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in cells)


def _vae_diagnosis(vae: Any, fit: Any, x_train: Any, x_test: Any, ladder: Sequence[int]) -> Any:
    """Per-image bounds on held-out data (IWAE_1 = the ELBO, then IWAE_K) and the active units of the encoder.

    ``result.diagnose()`` bounds the data the VAE was trained on; the demo judges it on held-out images instead.
    """
    bounds = {k: float(vae.log_likelihood(x_test, num_particles=k, seed=0).mean()) for k in ladder}
    loc, scale = vae.encode(x_train)
    variance = loc.double().var(0).numpy()
    kl = (0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)).double().mean(0).numpy()  # KL(N(loc, scale) || N(0, 1))
    return Diagnosis(khat=None, num_samples=max(ladder), elbo=bounds[1], iwae={k: v for k, v in bounds.items() if k > 1},
                     kl_per_dim={"z": kl}, active_units={"z": int((variance > ACTIVE_UNIT_THRESHOLD).sum())},
                     mean_variance={"z": variance})


def run_demo(out: Path, fast: bool = False, say: Callable[[str], None] = _say) -> Path:
    """The main job on built-in data; returns the report's path (see ``ppl-lvm demo --help``)."""
    start = time.perf_counter()
    report = Report("ppl_lvm demo", subtitle="Gaussian mixtures on iris by EM (K by BIC) and a VAE on digits by IWAE"
                    + (" - fast mode: tiny budgets, numbers not meaningful" if fast else ""))

    # ---- part 1: Gaussian mixtures on iris, K by BIC
    x, species, names = iris(standardize=True)
    n_init = 2 if fast else 5
    say(f"iris: {x.shape[0]} flowers x {x.shape[1]} standardised measurements ({', '.join(names)})")
    say(f"Gaussian mixtures (full covariance, reg_covar={DEMO_REG_COVAR}) by EM for K = {DEMO_KS[0]}..{DEMO_KS[-1]}, "
        f"{n_init} restarts each")
    catcher, caught = _record_warnings()
    try:
        fits = {f"K={k}": infer(gaussian_mixture, {"x": x, "K": k}, method="em", n_init=n_init, seed=0,
                                reg_covar=DEMO_REG_COVAR) for k in DEMO_KS}
    finally:
        catcher.__exit__(None, None, None)
    em_warnings = _warning_lines(caught)
    table = selection_table(fits)
    best = table["BIC"].idxmin()
    say(_format_table(table, best))
    chosen = fits[best]
    from sklearn.metrics import adjusted_rand_score  # scikit-learn is slow to import and only the demo needs it

    ari = adjusted_rand_score(species.numpy(), chosen.map_assignments()["z"].numpy())
    say(f"BIC chooses {best}; its clusters agree with the 3 species at adjusted Rand index {ari:.2f} "
        f"(EM: {time.perf_counter() - start:.1f} s)")
    import pandas as pd  # pandas is slow to import and only tables need it

    components = pd.DataFrame(chosen.params["locs"].numpy(), columns=[n.replace(" (cm)", "") for n in names])
    components.insert(0, "weight", chosen.params["weights"].numpy())
    components.index = [f"z={k}" for k in range(len(components))]
    components.index.name = "component"
    say(f"{best} components (weights, and means in standard deviations from the mean of each measurement):")
    say(_format_table(components, None))
    add_result(report, chosen, pd.DataFrame(x.numpy(), columns=names), heading=f"Iris: Gaussian mixture with {best} (chosen by BIC)", labels=species,
               candidates=fits, fit_warnings=em_warnings,
               notes=[f"Adjusted Rand index between the {best} clusters and the three species: {ari:.3f} (1 is "
                      "perfect agreement, 0 is chance). Versicolor and virginica overlap, so BIC may merge them."])

    # ---- part 2: a VAE on binarised digits, trained with the IWAE bound
    t_vae = time.perf_counter()
    split = binarized_digits(seed=0)
    torch.manual_seed(0)
    vae = VAE(split.x_train.shape[1], latent_dim=2)
    steps = 30 if fast else 1200
    particles = 5
    say(f"digits: {len(split.x_train)} training and {len(split.x_test)} test images, 8x8 binarised")
    say(f"VAE 64-128-128-2 (Bernoulli decoder) trained with IWAE (K={particles}) for {steps} steps, batches of 100")
    catcher, caught = _record_warnings()
    try:
        vae_fit = infer(vae.model, split.x_train, method="iwae", guide=vae.guide, batch_size=100, lr=1e-3,
                        steps=steps, num_particles=particles, seed=0)
    finally:
        catcher.__exit__(None, None, None)
    vae_warnings = _warning_lines(caught)
    train_time = time.perf_counter() - t_vae
    diagnosis = _vae_diagnosis(vae, vae_fit, split.x_train, split.x_test, ladder=DEMO_LADDER_FAST if fast else DEMO_LADDER)
    add_result(report, vae_fit, heading="Digits: VAE trained with the IWAE bound", labels=split.y_train,
               fit_warnings=vae_warnings, diagnosis=diagnosis,
               ladder_note=f"held-out log p(x) per test image ({len(split.x_test)} images): IWAE_K with K importance "
               "samples from q(z | x), a lower bound that tightens as K grows")
    best_k = max(diagnosis.iwae)
    heldout = diagnosis.iwae[best_k]
    say(f"VAE: training bound {vae_fit.elbo / len(split.x_train):.2f} nats per image after {vae_fit.steps} steps "
        f"({train_time:.1f} s); held-out ELBO {diagnosis.elbo:.2f}, IWAE_{best_k} {heldout:.2f} per image; "
        f"{diagnosis.active_units['z']} of 2 latent dimensions active")
    for line in em_warnings + vae_warnings:
        _warn(line)
    path = report.write(Path(out) / REPORT_FILE)
    say(f"report: {path} (demo took {time.perf_counter() - start:.1f} s)")
    return path
