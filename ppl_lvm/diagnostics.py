"""VI health in one call: ``diagnose(result)`` (also ``result.diagnose()``) returns a :class:`Diagnosis` and warns.

Three checks of a variational fit (svi / meanfield / iwae / renyi):

* **Pareto k-hat** (Yao et al. 2018) of the importance ratios over draws from the guide, discrete local latents
  summed out exactly. When every latent is local (one value per data point, in the data plate: PPCA, a VAE, an
  amortised guide) the joint ratio log w = log p(x, z) - log q(z | x) is a sum of N independent per-point ratios
  log w_i = log p(x_i, z_i) - log q(z_i | x_i), and its k-hat grows with N however good q is (a product of N
  ratios is heavy-tailed); k-hat is then computed per point (``khat_kind == "per point"``, ``khat_points``) and
  ``khat`` is the largest, with the share of points above 0.7 and 0.5 reported. With a global latent the weights
  do not factorise and k-hat is that of the joint ratios (``khat_kind == "joint"``, the ``log_weight`` of the
  ArviZ export). Below 0.5 the guide is good, 0.5 - 0.7 usable, above 0.7 the ratios have so heavy a tail that
  importance sampling and the ELBO are unreliable: a :class:`DiagnosticWarning` says what to do.
* **The bound ladder**: the ELBO, IWAE_K for a few K (``result.log_evidence(K)``), the importance-sampling estimate
  logsumexp(log w) - log S from the same draws, and the exact log p(x) when known (every latent discrete and
  enumerated, or passed as ``exact=``). Each rung is a lower bound (or, for IS, a consistent estimate) of log p(x).
* **R-hat across restarts** (fits with ``n_init > 1``): each restart's draws of the global latents are one chain,
  components aligned to the kept fit (:mod:`ppl_lvm.posterior.alignment`); R-hat above 1.05 means the restarts found
  different local optima, and a :class:`DiagnosticWarning` names the coordinates. R-hat needs spread within each
  restart: for point-estimate guides (``delta``) it is NaN; compare the restarts' final losses instead.
* **Local latents** (one value per data point, as in PPCA or a VAE): KL(q(z_i | x_i) || p(z_i)) per latent
  dimension averaged over the data, and the active units of Burda et al. 2016 (dimensions whose posterior mean
  E_q[z_d | x_i] varies across the data with variance > 0.01), with a posterior-collapse warning when none is.

Every number comes from the replay pass of :mod:`ppl_lvm.posterior.draws` (the one ``to_arviz`` and
:func:`ppl_lvm.compare` read at the same number of draws and seed); the statistics from :mod:`ppl_lvm.posterior.stats`.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import DiagnosticWarning
from .fit_options import smoothed_final_loss
from .outcome import EMOutcome, Outcome
from .posterior import queries
from .posterior.alignment import aligned_restart_draws, ordered_restarts
from .posterior.draws import replay
from .posterior.local_latents import ACTIVE_UNIT_THRESHOLD, local_latent_stats
from .posterior.stats import (
    iwae_from_draws,
    psis_khat,
    psis_khat_points,
    ratios_vary,
    rhat_across_restarts,
    row_labels,
)

__all__ = ["DiagnosticWarning", "Diagnosis", "diagnose", "iwae_from_draws", "rhat_across_restarts", "KHAT_GOOD",
           "KHAT_BAD", "RHAT_BAD", "ACTIVE_UNIT_THRESHOLD"]

KHAT_GOOD = 0.5
KHAT_BAD = 0.7
RHAT_BAD = 1.05


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes
    ----------
    khat : float or None
        Pareto k-hat of the importance ratios (None when the guide has no density, e.g. ``delta``, or samples
        nothing because every latent is enumerated): the largest per-point k-hat when ``khat_kind`` is
        ``"per point"``, the k-hat of the joint ratios when it is ``"joint"``.
    khat_kind : str or None
        ``"per point"`` (every latent local: the weights factorise over the data points) or ``"joint"``.
    khat_points : ndarray or None
        With ``khat_kind == "per point"``: k-hat of each data point's ratios, shape (N,) (NaN where they are
        constant to rounding, i.e. q is exact there).
    khat_joint : float or None
        k-hat of the joint ratios (for reference when per point: it grows with N however good q is).
    num_samples : int
        Draws from the guide behind ``khat``, ``elbo`` and ``is_estimate``.
    elbo : float
        The ELBO: the mean of log w over those draws (``result.elbo_estimate()`` when log w is unavailable).
    iwae : dict of int -> float
        IWAE_K for each K of the ladder (empty when unavailable or exact). For K <= ``num_samples`` from the same
        draws (:func:`iwae_from_draws`: averaged over groups of K draws, a ladder that cannot go down), per data
        point when the weights factorise, on the joint weights otherwise; a larger K (or a guide without a density)
        by ``result.log_evidence(K)``.
    is_estimate : float or None
        The importance-sampling estimate of log p(x) from all S draws: per data point when the weights factorise
        (sum over i of logsumexp_s log w_is - log S, i.e. IWAE_S), else logsumexp(log w) - log S of the joint
        weights.
    exact : float or None
        The exact log p(x), when known; ``exact_source`` says where from (``"enumeration"`` or ``"given"``).
    kl_per_dim : dict of str -> ndarray
        Per local latent site, KL(q(z_i | x_i) || p(z_i)) per latent dimension averaged over data points.
    active_units : dict of str -> int
        Per local latent site, the number of dimensions with Var_i(E_q[z_id]) > 0.01.
    mean_variance : dict of str -> ndarray
        Per local latent site, Var_i(E_q[z_id]) per dimension (the activity behind ``active_units``).
    rhat : dict of str -> ndarray
        With restarts: per global latent site, the R-hat across restarts of each coordinate (empty otherwise).
    restart_losses : list of float
        With restarts: the final smoothed loss of each restart, the kept fit first.
    messages : list of str
        The warnings that were emitted.
    """

    khat: float | None
    num_samples: int
    elbo: float
    iwae: dict[int, float] = field(default_factory=dict)
    is_estimate: float | None = None
    exact: float | None = None
    exact_source: str | None = None
    kl_per_dim: dict[str, np.ndarray] = field(default_factory=dict)
    active_units: dict[str, int] = field(default_factory=dict)
    mean_variance: dict[str, np.ndarray] = field(default_factory=dict)
    rhat: dict[str, np.ndarray] = field(default_factory=dict)
    restart_losses: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    khat_kind: str | None = None
    khat_points: np.ndarray | None = None
    khat_joint: float | None = None

    @property
    def max_rhat(self) -> float | None:
        """The largest R-hat across restarts over every coordinate (None without restarts)."""
        values = [v[np.isfinite(v)] for v in self.rhat.values()]
        values = [v for v in values if v.size]
        return float(max(v.max() for v in values)) if values else None

    def share_of_points_above(self, threshold: float) -> float | None:
        """The share of data points whose k-hat exceeds ``threshold`` (None unless ``khat_kind == "per point"``)."""
        if self.khat_points is None:
            return None
        return float(np.mean(np.nan_to_num(self.khat_points, nan=-np.inf) > threshold))

    @property
    def khat_verdict(self) -> str:
        """"good" (< 0.5), "ok" (<= 0.7), "bad"; "exact" when every point's ratios are constant (q is the exact
        posterior), "n/a" without k-hat."""
        if self.khat is None and self.khat_kind == "per point":
            return "exact"
        if self.khat is None or math.isnan(self.khat):
            return "n/a"
        return "good" if self.khat < KHAT_GOOD else ("ok" if self.khat <= KHAT_BAD else "bad")

    @property
    def ladder(self) -> list[tuple[str, float]]:
        """The bound ladder as (label, value) rows, loosest first."""
        rows = [("ELBO", self.elbo)]
        rows += [(f"IWAE_{k}", v) for k, v in sorted(self.iwae.items())]
        if self.is_estimate is not None:
            rows.append((f"IS ({self.num_samples} draws)", self.is_estimate))
        if self.exact is not None:
            rows.append((f"exact log p(x) ({self.exact_source})", self.exact))
        return rows

    def table(self) -> str:
        lines = ["VI diagnosis"]
        khat = "n/a" if self.khat is None else f"{self.khat:.3f}"
        if self.khat_kind == "per point":
            n = len(self.khat_points)
            lines.append(f"  Pareto k-hat   {khat:>12}  ({self.khat_verdict}; max over {n} data points, "
                         f"{self.num_samples} draws; <{KHAT_GOOD} good, <={KHAT_BAD} ok)")
            lines.append(f"    points with k-hat > {KHAT_BAD}: {self.share_of_points_above(KHAT_BAD):.1%}, "
                         f"> {KHAT_GOOD}: {self.share_of_points_above(KHAT_GOOD):.1%}")
            if self.khat_joint is not None:
                lines.append(f"    joint k-hat {self.khat_joint:.3f} (not used: the ratio of all points is a product "
                             f"of {n} independent ones)")
        else:
            kind = "" if self.khat_kind is None else "joint; "
            lines.append(f"  Pareto k-hat   {khat:>12}  ({self.khat_verdict}; {kind}{self.num_samples} draws; "
                         f"<{KHAT_GOOD} good, <={KHAT_BAD} ok)")
        lines.append("  bound ladder (log p(x))")
        width = max(len(label) for label, _ in self.ladder)
        for label, value in self.ladder:
            gap = f"  gap {self.exact - value:.4g}" if self.exact is not None and "exact" not in label else ""
            lines.append(f"    {label:<{width}}  {value:14.6g}{gap}")
        if self.restart_losses:
            rhat = "n/a" if self.max_rhat is None else f"{self.max_rhat:.3f}"
            lines.append(f"  restarts       {len(self.restart_losses):>12}  max R-hat across restarts {rhat} "
                         f"(<= {RHAT_BAD} same optimum)")
            lines.append("    final smoothed loss: " + ", ".join(f"{v:.6g}" for v in self.restart_losses))
        for name, kl in self.kl_per_dim.items():
            lines.append(f"  local latent '{name}': {self.active_units[name]} of {len(kl)} active units")
            lines.append("    dim   KL(q||p)   Var_i E_q[z_d]")
            for d, (k, v) in enumerate(zip(kl, self.mean_variance[name], strict=True)):
                lines.append(f"    {d:>3}  {k:9.4g}  {v:14.4g}")
        for message in self.messages:
            lines.append(f"  warning: {message}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def diagnose(result: Outcome, num_samples: int = 500, ladder: tuple[int, ...] = (1, 10, 100),
             seed: int | None = 0, exact: float | None = None, warn: bool = True) -> Diagnosis:
    """VI health of a variational fit: Pareto k-hat, the bound ladder and active units / posterior collapse.

    k-hat is computed per data point when every latent is local (the importance weights factorise over the points:
    ``Diagnosis.khat_kind == "per point"``, ``khat`` the largest of ``khat_points``) and on the joint weights
    otherwise (``"joint"``); see the module notes.

    Parameters
    ----------
    result : Result
        A variational fit (svi, meanfield, iwae, renyi).
    num_samples : int
        Draws from the guide for k-hat, the ELBO, the IWAE_K rungs with K <= num_samples and the
        importance-sampling estimate: one replay pass, the one ``result.to_arviz()`` reads at the same
        ``num_samples`` and ``seed`` (both default to 500 draws; ``to_arviz``'s seed defaults to the fit's, 0
        unless ``infer`` was given another, so the two calls share the pass).
    ladder : tuple of int
        The K of the IWAE_K rungs.
    seed : int, optional
        Seed of every draw (None: the fit's seed).
    exact : float, optional
        The exact log p(x) at the fitted parameters when known in closed form (e.g. PPCA).
    warn : bool
        Emit :class:`DiagnosticWarning` for k-hat > 0.7 (any data point's, when per point), R-hat across restarts
        > 1.05 and for posterior collapse (the messages are kept in
        ``Diagnosis.messages`` either way).
    """
    if isinstance(result, EMOutcome):
        raise ValueError("diagnose is for variational fits; an EM fit is exact (see log_likelihood, bic())")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    ladder = tuple(ladder)
    if any(not isinstance(k, int) or k < 1 for k in ladder):
        raise ValueError(f"ladder must hold positive integers, got {ladder!r}")
    structure = result.structure
    all_enumerated = not structure.continuous_latents
    found = replay(result, num_samples, seed)
    seed = found.seed

    point_w = None if all_enumerated else found.point_weights
    log_w = point_w.sum(axis=1) if point_w is not None else found.log_weight
    khat = is_estimate = khat_kind = khat_points = khat_joint = None
    if log_w is not None:
        elbo = float(np.mean(log_w))
        if point_w is not None:  # IWAE_S per point, summed: the tightest bound the draws give
            is_estimate = float((np.logaddexp.reduce(point_w, axis=0) - math.log(len(point_w))).sum())
        else:
            is_estimate = float(np.logaddexp.reduce(log_w) - math.log(len(log_w)))
        if not all_enumerated and ratios_vary(log_w):
            khat_joint = psis_khat(log_w)
            khat, khat_kind = khat_joint, "joint"
        if point_w is not None:
            khat_points = psis_khat_points(point_w)
            finite = khat_points[np.isfinite(khat_points)]
            khat, khat_kind = (float(finite.max()) if finite.size else None), "per point"
    else:
        elbo = queries.elbo_estimate(result, num_particles=min(num_samples, 100), seed=seed)

    iwae: dict[int, float] = {}
    exact_source = "given" if exact is not None else None
    if all_enumerated:
        exact, exact_source = queries.log_evidence(result, seed=seed), "enumeration"
    elif point_w is not None or (log_w is not None and not result.enumerated):
        # from the pass's draws, per point when the weights factorise; K beyond the draws by their own particles
        iwae = iwae_from_draws(point_w if point_w is not None else log_w[:, None], ladder)
        iwae.update({k: queries.log_evidence(result, num_particles=k, seed=seed) for k in ladder if k not in iwae})
    elif not result.enumerated:
        iwae = {k: queries.log_evidence(result, num_particles=k, seed=seed) for k in ladder}

    kl, variance, active = local_latent_stats(result.structure, found)
    rhat, restart_losses = _restart_rhat(result, num_samples, seed)
    diagnosis = Diagnosis(khat=khat, num_samples=num_samples, elbo=elbo, khat_kind=khat_kind,
                          khat_points=khat_points, khat_joint=khat_joint, iwae=iwae, is_estimate=is_estimate,
                          exact=None if exact is None else float(exact), exact_source=exact_source,
                          kl_per_dim=kl, active_units=active, mean_variance=variance, rhat=rhat,
                          restart_losses=restart_losses)
    high = [(label, value) for name, values in rhat.items()
            for label, value in zip(row_labels(name, values.shape), values.reshape(-1), strict=True)
            if np.isfinite(value) and value > RHAT_BAD]
    if high:
        high.sort(key=lambda item: -item[1])
        named = ", ".join(f"{label} ({value:.3g})" for label, value in high[:5])
        more = f" and {len(high) - 5} more" if len(high) > 5 else ""
        message = (f"R-hat across the {len(restart_losses)} restarts exceeds {RHAT_BAD} for {named}{more}: the "
                   f"restarts found different local optima (final smoothed losses "
                   f"{', '.join(f'{v:.6g}' for v in restart_losses)}; the kept fit is the first). Run more restarts "
                   f"(n_init), fit longer, or start from better values.")
        _record(diagnosis, message, warn)
    if khat is not None and khat > KHAT_BAD and khat_kind == "per point":
        n = len(khat_points)
        bad = int(np.sum(khat_points[np.isfinite(khat_points)] > KHAT_BAD))
        message = (f"Pareto k-hat = {khat:.2f} > {KHAT_BAD} (per data point, the largest of {n}; {bad} of the {n} "
                   f"points ({diagnosis.share_of_points_above(KHAT_BAD):.1%}) above {KHAT_BAD}, "
                   f"{diagnosis.share_of_points_above(KHAT_GOOD):.1%} above {KHAT_GOOD}): the importance ratios "
                   f"p(x_i, z_i) / q(z_i | x_i) of those points are heavy-tailed, so q(z_i | x_i) misses posterior "
                   f"mass and the ELBO, importance sampling and posterior summaries there are unreliable. Fit longer "
                   f"(result.fit_more(steps=...) continues from these parameters and ends with its own annealing), "
                   f"use a richer guide ('fullrank' or your own), or fit with method='iwae'.")
        _record(diagnosis, message, warn)
    elif khat is not None and khat > KHAT_BAD:
        message = (f"Pareto k-hat = {khat:.2f} > {KHAT_BAD} (joint): the importance ratios p(x, theta) / q(theta) "
                   f"are heavy-tailed, so the guide misses posterior mass and the ELBO, importance sampling and "
                   f"posterior summaries from it are unreliable. Fit longer (result.fit_more(steps=...) "
                   f"continues from these parameters and ends with its own annealing), use a richer guide "
                   f"('fullrank' or your own), or fit with method='iwae'.")
        _record(diagnosis, message, warn)
    for name, n_active in active.items():
        if n_active == 0:
            message = (f"posterior collapse: the local latent '{name}' has 0 active units of "
                       f"{len(variance[name])} (Var over data of E_q[z_d] <= {ACTIVE_UNIT_THRESHOLD} for every "
                       f"d): q(z | x) does not depend on x and the model ignores '{name}'. Use a KL warm-up "
                       f"(beta=lvm.linear_warmup(...)), free bits, or a weaker decoder.")
            _record(diagnosis, message, warn)
    return diagnosis


def _restart_rhat(result: Outcome, num_samples: int, seed: int) -> tuple[dict[str, np.ndarray], list[float]]:
    """R-hat across restarts of every global latent coordinate (aligned draws), and the restarts' final losses."""
    if len(result.restarts) <= 1:
        return {}, []
    smoothing = int(result.options.get("smoothing", 50))
    losses = [float(smoothed_final_loss(r.losses, smoothing)) for r in ordered_restarts(result)]
    names = [s.name for s in result.structure.global_latents if not s.discrete]
    if not names:
        return {}, losses
    chains = aligned_restart_draws(result, min(num_samples, 500), seed, names)
    return rhat_across_restarts(chains), losses


def _record(diagnosis: Diagnosis, message: str, warn: bool) -> None:
    diagnosis.messages.append(message)
    if warn:
        warnings.warn(message, DiagnosticWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this module and ``Result.diagnose`` (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") in (__name__, "ppl_lvm.results.result", "ppl_lvm.results.em_result"):
        frame, level = frame.f_back, level + 1
    return level
