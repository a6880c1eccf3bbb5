"""One fit's section of a report (facts, plain words, figures, tables) and the one-fit page :func:`build_report`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import plots
from ..outcome import MCMCOutcome
from ..plots import FIGSIZE
from ..results import Result
from ..results.display import bound_name, loss_name
from .facts import data_values, fit_facts
from .hmm_section import add_hmm_tables, hmm_figures, hmm_words, is_hmm
from .page import Report
from .words import _is_em, _mixture_responsibilities, describe_result

SUMMARY_OPEN = 20


# ---------------------------------------------------------------------------------------------------- tables
def selection_table(candidates: Mapping[Any, Any]) -> Any:
    """Model selection among EM fits: log-likelihood, free parameters, BIC, AIC, iterations, sorted as given.

    Parameters
    ----------
    candidates : mapping of label -> EMResult
    """
    import pandas as pd  # pandas is slow to import and only the tables need it

    if not candidates:
        raise ValueError("candidates must hold at least one fitted EM result")
    rows = {}
    for label, fit in candidates.items():
        if not hasattr(fit, "bic"):
            raise TypeError(f"candidate {label!r} is a {type(fit).__name__}; BIC needs EM results")
        rows[label] = {
            "log-likelihood": fit.log_likelihood,
            "parameters": fit.n_parameters,
            "BIC": fit.bic(),
            "AIC": fit.aic(),
            "iterations": fit.n_iter,
            "converged": fit.converged,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame


# ---------------------------------------------------------------------------------------------------- figures
def _local_latent(result: Any, site: str = "z") -> bool:
    structure = getattr(result, "structure", None)
    if structure is None or site not in structure.sites:
        return False
    info = structure.sites[site]
    return bool(info.plates) and not getattr(info, "discrete", False)


def _scatter(result: Any, data: Any) -> tuple[str, Callable[[], Any]]:
    """The responsibilities figure: two columns as they are, more on their first two principal components."""
    values = data_values(result, data)
    what = "coloured by the most probable component; faded where the assignment is uncertain."
    if values is None or values.ndim != 2 or values.shape[1] <= 2:
        return f"Data {what}", lambda: plots.plot_responsibilities(result, x=data)
    _, share = plots.pca_2d(values)
    scaled = " standardised" if plots.looks_standardised(values) else ""
    caption = (f"The {values.shape[1]}{scaled} data columns on their first two principal components, which explain "
               f"{100 * share[0]:.1f}% and {100 * share[1]:.1f}% of the variance ({100 * share.sum():.1f}% "
               f"together), {what}")
    return caption, lambda: plots.plot_responsibilities(result, x=data, projection="pca")


def _figures(result: Any, data: Any, labels: Any, diagnosis: Any,
             candidates: Mapping[Any, Any] | None) -> list[tuple[str, Callable[[], Any]]]:
    """Every figure of a result's section as ``(caption, draw)``; the calls into :mod:`ppl_lvm.plots` are here and in
    :func:`~ppl_lvm.report.hmm_section.hmm_figures`."""
    figs: list[tuple[str, Callable[[], Any]]] = []
    em = _is_em(result)
    if em:
        n = getattr(result, "n_samples", 0)
        figs.append((f"Total log-likelihood (summed over the {n} data points) per EM iteration; it never decreases.",
                     lambda: plots.plot_loss(result)))
    elif not isinstance(result, MCMCOutcome):
        figs.append((f"Loss per step, the {loss_name(result)} in nats, with its moving average.",
                     lambda: plots.plot_loss(result)))
    if candidates:
        figs.append(("BIC and AIC of the candidate models (lower is better).", lambda: _selection_figure(candidates)))
    if diagnosis is not None and len(diagnosis.ladder) > 1 and diagnosis.exact_source != "enumeration":
        figs.append(("The bound ladder: ELBO <= IWAE_K <= log p(x), loosest first.",
                     lambda: plots.plot_bound_ladder(diagnosis)))
    if is_hmm(result):
        figs += hmm_figures(result)
    elif _mixture_responsibilities(result) is not None or (not em and len(result.enumerated) == 1):
        figs.append(_scatter(result, data))
    if not em and _local_latent(result):
        figs.append(("Latent space: posterior means of z per data point.",
                     lambda: plots.plot_latent_space(result, x=data, labels=labels)))
    elif not em and result.structure is not None and result.structure.continuous_latents:
        figs.append(("Marginal posteriors of the latent variables (draws from the guide).",
                     lambda: plots.plot_posterior(result)))
    return figs


def _selection_figure(candidates: Mapping[Any, Any]) -> Any:
    import matplotlib.pyplot as plt  # matplotlib is optional and slow to import

    labels = [str(k) for k in candidates]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.plot(labels, [f.bic() for f in candidates.values()], "o-", label="BIC")
    ax.plot(labels, [f.aic() for f in candidates.values()], "s--", label="AIC")
    best = min(candidates, key=lambda k: candidates[k].bic())
    ax.axvline(labels.index(str(best)), color="0.6", lw=1, ls=":")
    ax.set_xlabel("model")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_title(f"model selection: BIC chooses {best}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- sections
def _diagnosis(result: Any, diagnose_samples: int) -> tuple[Any, str | None]:
    """``result.diagnose()`` for a variational fit, or None and why not (an MCMC fit, a fit loaded without model)."""
    if _is_em(result) or isinstance(result, MCMCOutcome) or result.model is None or result.structure is None:
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return result.diagnose(num_samples=diagnose_samples, warn=False), None
    except Exception as exc:  # noqa: BLE001 - a report shows what it can and says what it could not
        return None, f"The diagnosis (Pareto k-hat, bound ladder) could not be computed: {type(exc).__name__}: {exc}"


def _summary(result: Any, summary: Any) -> tuple[Any, str | None, list[str]]:
    """(table or None, why not, the warnings raised while summarising, each once)."""
    if summary is not None:
        return summary, None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table, error = result.summary(), None
        except Exception as exc:  # noqa: BLE001 - a report shows what it can and says what it could not
            table, error = None, f"{type(exc).__name__}: {exc}"
    # the Laplace approximation warns once per fit: its warnings, when given before this report, are kept in the cache
    kept = list(getattr(result, "cache", {}).get("laplace_warnings", ()))
    return table, error, list(dict.fromkeys([str(w.message) for w in caught] + kept))


def add_result(report: Report, result: Any, data: Any = None, *, heading: str | None = None, labels: Any = None,
               candidates: Mapping[Any, Any] | None = None, fit_warnings: Sequence[str] = (),
               summary: Any = None, diagnosis: Any = None, diagnose: bool = True, diagnose_samples: int = 200,
               ladder_note: str | None = None, notes: Sequence[str] = ()) -> Any:
    """Append one fit's section to ``report``; return the VI :class:`~ppl_lvm.diagnostics.Diagnosis` or None.

    Parameters
    ----------
    report : Report
    result : Result or EMResult
    data : array-like, optional
        The data for the responsibilities and latent-space plots (default: the fit's data; a DataFrame names the
        axes). Data with more than two columns are drawn on their first two principal components.
    heading : str, optional
        Section heading (default: the method).
    labels : array-like, optional
        True classes or column names, passed to the latent-space plot.
    candidates : mapping of label -> EMResult, optional
        Models compared by BIC (EM); ``result`` is normally the best of them.
    fit_warnings : sequence of str
        Warnings raised during the fit, shown in plain words.
    summary : DataFrame, optional
        A precomputed ``result.summary()``.
    diagnosis : Diagnosis, optional
        A precomputed :class:`~ppl_lvm.diagnostics.Diagnosis` (e.g. on held-out data); skips ``diagnose``.
    diagnose : bool
        Run ``result.diagnose()`` for a variational fit (k-hat, bound ladder, active units) when no
        ``diagnosis`` is given.
    diagnose_samples : int
        Draws behind that diagnosis.
    ladder_note : str, optional
        What the bound ladder's numbers are (default: log p(x) of the training data).
    notes : sequence of str
        More statements for the plain-words list.
    """
    if not isinstance(result, Result):
        raise TypeError(f"result must be a ppl_lvm Result, got {type(result).__name__}")
    report.heading(heading or f"Fit by {result.method}")
    supplied = diagnosis is not None
    problem = None
    if diagnosis is None and diagnose:
        diagnosis, problem = _diagnosis(result, diagnose_samples)
    table, table_error, table_warnings = _summary(result, summary)
    words = describe_result(result, diagnosis, candidates, fit_warnings, supplied=supplied)
    words += [("warn", f"While summarising the fit: {line}") for line in table_warnings]
    if problem:
        words.append(("warn", problem))
    if is_hmm(result):
        try:
            words += hmm_words(result)
        except Exception as exc:  # noqa: BLE001 - a report shows what it can and says what it could not
            words.append(("warn", f"The hidden Markov chain could not be summarised: {type(exc).__name__}: {exc}"))
    words += [("ok", note) for note in notes]
    report.facts_and_words(fit_facts(result), words)
    for caption, draw in _figures(result, data, labels, diagnosis, candidates):
        try:
            fig = draw()
        except Exception as exc:  # noqa: BLE001 - a report shows what it can and says what it could not
            report.missing_figure(caption, f"{type(exc).__name__}: {exc}")
        else:
            report.figure(fig, caption)
    report.flush_figures()
    if is_hmm(result):
        try:
            add_hmm_tables(report, result)
        except Exception as exc:  # noqa: BLE001
            report.paragraph(f"The tables of the hidden Markov chain could not be made: {type(exc).__name__}: {exc}",
                             cls="missing")
    if candidates:
        report.heading("Model selection", 3)
        best = min(candidates, key=lambda k: candidates[k].bic())
        report.table(selection_table(candidates), caption=f"the lowest BIC ({best}) is highlighted", highlight=best)
    if diagnosis is not None and len(diagnosis.ladder) > 1 and diagnosis.exact_source != "enumeration":
        report.heading("Bound ladder", 3)
        import pandas as pd  # pandas is slow to import and only the tables need it

        ladder = pd.DataFrame({"log p(x) bound": [v for _, v in diagnosis.ladder]},
                              index=[label for label, _ in diagnosis.ladder])
        report.table(ladder, caption=ladder_note or f"log p(x) of the training data; {diagnosis.num_samples} draws "
                     "from the guide; the IWAE_K rungs are lower bounds that tighten as K grows")
    if table is None:
        report.heading("Summary", 3)
        report.paragraph(f"The summary table could not be computed: {table_error}", cls="missing")
    else:
        if len(table) == 0:
            report.paragraph("Summary table: nothing to list (no global latent and no parameter outside neural "
                             "network modules).", cls="note")
            return diagnosis
        report.details(f"Summary table ({len(table)} rows)",
                       table, open_=len(table) <= SUMMARY_OPEN)
    report.flush_figures()
    return diagnosis


def build_report(result: Any, out_dir: str | Path, data: Any = None, title: str = "ppl_lvm fit report", *,
                 labels: Any = None, candidates: Mapping[Any, Any] | None = None, fit_warnings: Sequence[str] = (),
                 summary: Any = None, diagnose_samples: int = 200, filename: str = "report.html") -> Path:
    """Write one self-contained HTML report of ``result`` to ``out_dir/filename`` and return its path.

    Parameters
    ----------
    result : Result or EMResult
        The fit.
    out_dir : str or Path
        The folder (created when missing).
    data : array-like, optional
        Data for the responsibilities / latent-space plots (default: the fit's data).
    title : str
        Page title.
    labels : array-like, optional
        Class labels for the latent-space plot.
    candidates : mapping of label -> EMResult, optional
        EM fits compared by BIC and AIC (table, figure and verdict).
    fit_warnings : sequence of str
        Warnings raised during the fit.
    summary : DataFrame, optional
        A precomputed ``result.summary()``.
    diagnose_samples : int
        Draws from the guide behind the diagnosis of a variational fit.
    filename : str
        Name of the page.

    Returns
    -------
    Path
        The written page.

    Examples
    --------
    >>> import tempfile, torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.mixtures import gaussian_mixture
    >>> from ppl_lvm.report import build_report
    >>> x = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3])
    >>> fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     build_report(fit, folder, title="two clusters").name
    'report.html'
    """
    if not isinstance(result, Result):
        raise TypeError(f"result must be a ppl_lvm Result, got {type(result).__name__}")
    report = Report(title, subtitle=f"method {result.method}, {bound_name(result)}")
    add_result(report, result, data, labels=labels, candidates=candidates, fit_warnings=fit_warnings,
               summary=summary, heading="Fit", diagnose_samples=diagnose_samples)
    return report.write(Path(out_dir) / filename)
