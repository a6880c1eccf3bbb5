"""Figures of a fit: the loss trace, the bound ladder, Pareto k-hat, responsibilities, posteriors, latent spaces.

Every function returns a :class:`matplotlib.figure.Figure`, draws into an existing Axes when given ``ax=``, saves
the figure when given ``path=`` (PNG, or any format matplotlib infers from the suffix) and never calls
``plt.show()``. matplotlib is imported only when a function is called (``pip install matplotlib``).

===============================  =================================================================================
:func:`plot_loss`                the loss per step and its moving average (VI), the log-likelihood per iteration (EM)
:func:`plot_bound_ladder`        ELBO, IWAE_K, the importance-sampling estimate and the exact log p(x) when known
:func:`plot_khat`                Pareto k-hat of the importance ratios, per batch of draws from the guide
:func:`plot_responsibilities`    the data coloured by the most probable component, faded where it is uncertain
:func:`plot_posterior`           marginal histograms of draws from q for the global latent sites
:func:`plot_latent_space`        the posterior means E_q[z | x] of a local latent in 2-D (PCA beyond two dimensions)
:func:`plot_state_path`          a hidden Markov model's Viterbi path on the data of one sequence
:func:`plot_transition_matrix`   a hidden Markov model's transition matrix as a heatmap
===============================  =================================================================================

ArviZ is not called here: k-hat and the importance weights come from :mod:`ppl_lvm.posterior`, the ladder from
:mod:`ppl_lvm.diagnostics`.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import torch, ppl_lvm as lvm
>>> from ppl_lvm import plots
>>> from ppl_lvm.models.mixtures import gaussian_mixture
>>> x = torch.cat([torch.randn(50, 2) - 2, torch.randn(50, 2) + 2])
>>> fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em")
>>> fig = plots.plot_responsibilities(fit)            # the data coloured by p(z | x)
>>> fig = plots.plot_loss(fit)                         # the log-likelihood per iteration; path="em.png" saves it
>>> fig.axes[0].get_ylabel()
'total log-likelihood (nats)'
"""

from __future__ import annotations

# the figure size and dpi (the report's figures share them), the fewest draws per k-hat and the k-hat verdict colours
# are importable from here too
from ._figure import DPI as DPI
from ._figure import FIGSIZE as FIGSIZE
from ._figure import looks_standardised as looks_standardised
from ._figure import pca_2d as pca_2d
from .assignments import plot_responsibilities
from .hmm import hmm_parameters as hmm_parameters
from .hmm import plot_state_path, plot_transition_matrix
from .khat import MIN_BATCH as MIN_BATCH
from .khat import VERDICT_COLOURS as VERDICT_COLOURS
from .khat import plot_khat
from .latents import plot_latent_space, plot_posterior
from .loss import plot_bound_ladder, plot_loss

__all__ = [
    "plot_loss",
    "plot_bound_ladder",
    "plot_khat",
    "plot_responsibilities",
    "plot_posterior",
    "plot_latent_space",
    "plot_state_path",
    "plot_transition_matrix",
]
