"""The result of an MCMC fit (an :class:`~ppl_lvm.outcome.MCMCOutcome` with its queries as methods): the chains'
draws, the sampler's per-draw statistics, summaries with R-hat and effective sample sizes across chains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import arviz_export
from ..outcome import MCMCOutcome
from .result import Result

__all__ = ["MCMCResult"]


@dataclass
class MCMCResult(Result, MCMCOutcome):
    """What ``infer(..., method="nuts")`` returns.

    ``sample_posterior(S)`` and every other query read the chains' draws: ``S`` draws evenly spaced over the chains
    laid end to end (all of them when ``S`` equals ``num_chains * num_draws``), enumerated discrete latents drawn
    from their exact conditional given each draw. ``summary()`` lists every draw with R-hat and effective sample
    sizes across the chains; ``to_arviz()`` exports the chains as ``(chain, draw)`` with ``diverging``,
    ``step_size``, ``acceptance_rate``, ``potential_energy`` and ``lp`` in ``sample_stats``.

    Attributes
    ----------
    samples : dict of str -> Tensor
        ``(num_chains, num_draws, *site)`` per continuous latent site.
    sample_stats : dict of str -> ndarray
        ``diverging``, ``step_size``, ``acceptance_rate``, ``potential_energy`` per draw, ``(num_chains, num_draws)``.
    num_chains, num_draws, warmup_steps : int
        Chains, draws kept per chain, warm-up steps per chain.
    """

    @property
    def divergences(self) -> int:
        """Divergent transitions after warm-up, all chains together."""
        return int(self.sample_stats["diverging"].sum()) if "diverging" in self.sample_stats else 0

    def __repr__(self) -> str:
        names = ", ".join(list(self.samples)[:6]) + (", ..." if len(self.samples) > 6 else "")
        return (f"MCMCResult(method={self.method!r}, num_chains={self.num_chains}, num_draws={self.num_draws}, "
                f"warmup_steps={self.warmup_steps}, divergences={self.divergences}, converged={self.converged}, "
                f"latents=[{names}])")

    def summary(self, num_samples: int | None = None, seed: int = 0, var_names: list[str] | None = None) -> Any:
        """One row per scalar coordinate of the global latents: ``az.summary`` of the chains (R-hat, ESS, MCSE).

        Parameters
        ----------
        num_samples : int, optional
            Draws used, evenly spaced over the chains (a multiple of ``num_chains``); default: every draw.
        seed : int
            Seed of the draws of enumerated discrete latents (the continuous draws are the chains' own).
        var_names : list of str, optional
            Sites to list; default: every global latent site.

        Returns
        -------
        pandas.DataFrame
        """
        return super().summary(num_samples=self.total_draws if num_samples is None else num_samples, seed=seed,
                               var_names=var_names)

    def to_arviz(self, num_samples: int | None = None, seed: int | None = None, **kw: Any) -> Any:
        """The chains as ArviZ groups (``posterior`` with ``(chain, draw)``, ``sample_stats`` with ``diverging``);
        ``num_samples`` (a multiple of ``num_chains``, default every draw) thins each chain evenly. See
        :mod:`ppl_lvm.arviz_export`."""
        if "chains" in kw:
            raise TypeError(f"to_arviz of an MCMC fit exports its own {self.num_chains} chains; drop chains=")
        n = self.total_draws if num_samples is None else num_samples
        return arviz_export.to_inference_data(self, num_samples=n, seed=seed, chains=self.num_chains, **kw)

    def elbo_estimate(self, num_particles: int = 100, seed: int | None = None) -> float:
        """Not defined for MCMC draws (no variational distribution): raises ``TypeError``."""
        raise TypeError("an MCMC fit has no variational distribution, so no ELBO; compare fits with lvm.compare "
                        "(PSIS-LOO) or lvm.compare_posteriors")

    def log_evidence(self, num_particles: int = 1000, seed: int | None = None) -> float:
        """Not available for MCMC draws (they carry no normalising constant): raises ``TypeError``."""
        raise TypeError("an MCMC fit gives no estimate of log p(x) (its draws have no density to weight); compare "
                        "fits with lvm.compare (PSIS-LOO), or fit method='iwae' for a bound")

    def diagnose(self, **kw: Any) -> Any:
        """Not defined: the variational diagnostics (k-hat, bound ladder) need a q; raises ``TypeError``."""
        raise TypeError("diagnose() checks a variational fit; an MCMC fit's health is its summary() (r_hat, "
                        "ess_bulk, ess_tail) and result.divergences")

    def fit_more(self, **options: Any) -> Result:
        """Not available: chains are not continued; raises ``TypeError``."""
        raise TypeError("an MCMC fit is not continued; run lvm.infer(model, data, method='nuts', num_samples=...) "
                        "with more draws or chains")

    def save(self, path: str) -> None:
        """Not available for MCMC fits (results files hold parameters); raises ``TypeError``."""
        raise TypeError("an MCMC fit is saved as its draws: lvm.arviz_export.save_netcdf(result.to_arviz(), path)")
