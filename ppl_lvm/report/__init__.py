"""One self-contained HTML page per fit: numbers, figures and diagnostics in plain words.

:func:`build_report` writes ``report.html``: the facts of the fit, what they mean (convergence, the bound ladder,
Pareto k-hat, active units, warnings), the summary table, the loss or log-likelihood history, the BIC table of
candidate models (EM) or the bound ladder (VI), the responsibilities (mixtures; data with more than two columns on
their first two principal components), the Viterbi path, transition matrix and state means (hidden Markov models)
and the latent space (local latents). Every objective is named as what it is (:mod:`ppl_lvm.results.display`).
Figures come from :mod:`ppl_lvm.plots` (called in :func:`~ppl_lvm.report.fit_section._figures`) and are
embedded as base64 PNG. The page is rendered from Jinja2 templates (``ppl_lvm/report/templates``, autoescaped); the
CSS is inline and nothing is loaded from elsewhere, so the page can be mailed or archived as one file.

:class:`Report` is the page builder behind it, for pages with several fits (``ppl-lvm demo``).
"""

from __future__ import annotations

from .fit_section import add_result, build_report, selection_table
from .page import Report
from .words import describe_result

__all__ = ["Report", "build_report", "add_result", "selection_table", "describe_result"]
