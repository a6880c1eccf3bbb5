"""One self-contained HTML page per fit: numbers, figures and diagnostics in plain words.

:func:`build_report` writes ``report.html``: the facts of the fit, what they mean (convergence, the bound ladder,
Pareto k-hat, active units, warnings), the summary table, the loss or log-likelihood history, the BIC table of
candidate models (EM) or the bound ladder (VI), the responsibilities (mixtures) and the latent space (local
latents). Figures come from :mod:`ppl_lvm.plots` (all calls are in :func:`_figures`) and are embedded as base64 PNG;
the CSS is inline and nothing is loaded from elsewhere, so the page can be mailed or archived as one file.

:class:`Report` is the page builder behind it, for pages with several fits (``ppl-lvm demo``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Report", "build_report", "add_result", "selection_table", "describe_result"]

SUMMARY_ROWS = 200
SUMMARY_OPEN = 20

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; background: #fff;
       margin: 0; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 1.08em; margin: 22px 0 8px; color: #24292f; }
.meta { color: #57606a; font-size: 0.9em; margin-bottom: 8px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e5e7eb; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
table.facts td:first-child { color: #57606a; }
table.facts td { text-align: left; }
tr.best td { background: #dafbe1; font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
ul.words { padding-left: 20px; margin: 6px 0; }
ul.words li { margin: 4px 0; }
li.warn { color: #9a6700; }
li.bad { color: #cf222e; }
p.note { color: #57606a; font-size: 0.88em; margin: 2px 0 8px; }
figure { margin: 14px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; border-radius: 4px; display: block; }
figcaption { color: #57606a; font-size: 0.88em; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 0 24px; align-items: start; }
.missing { color: #cf222e; font-size: 0.9em; }
.pair { display: grid; grid-template-columns: minmax(260px, 340px) 1fr; gap: 28px; align-items: start; }
.pair h3 { margin-top: 4px; }
details { margin: 14px 0; }
details > summary { cursor: pointer; font-weight: 600; font-size: 1.02em; margin-bottom: 6px; }
footer { color: #8c959f; font-size: 0.8em; margin-top: 40px; }
"""


# ---------------------------------------------------------------------------------------------------- page builder
class Report:
    """An HTML page built piece by piece; :meth:`write` saves it as one self-contained file.

    Parameters
    ----------
    title : str
        The page title.
    subtitle : str, optional
        One line under the title.
    """

    def __init__(self, title: str, subtitle: str | None = None):
        if not isinstance(title, str) or not title:
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []
        self._figures: list[str] = []  # pending figures of the current grid

    # ------------------------------------------------------------------ pieces
    def heading(self, text: str, level: int = 2) -> None:
        self.flush_figures()
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, cls: str | None = None) -> None:
        self.flush_figures()
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def words(self, items: Iterable[tuple[str, str]]) -> None:
        """A list of plain-language statements, each ``(level, text)`` with level ``ok``, ``warn`` or ``bad``."""
        self.flush_figures()
        rows = [f'<li class="{html.escape(level)}">{html.escape(text)}</li>' for level, text in items]
        if rows:
            self.parts.append('<ul class="words">' + "".join(rows) + "</ul>")

    def facts(self, rows: Iterable[tuple[str, Any]]) -> None:
        """A two-column table of labelled values."""
        self.flush_figures()
        body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
        self.parts.append(f'<table class="facts">{body}</table>')

    def facts_and_words(self, facts: Iterable[tuple[str, Any]], words: Iterable[tuple[str, str]]) -> None:
        """The facts table beside the plain-language statements."""
        self.flush_figures()
        self.parts.append('<div class="pair"><div>')
        self.facts(facts)
        self.parts.append("</div><div><h3>In plain words</h3>")
        self.words(words)
        self.parts.append("</div></div>")

    def details(self, label: str, frame: Any, open_: bool = False, max_rows: int | None = SUMMARY_ROWS) -> None:
        """A table under a disclosure triangle (no script needed)."""
        self.flush_figures()
        self.parts.append(f"<details{' open' if open_ else ''}><summary>{html.escape(label)}</summary>")
        self.table(frame, max_rows=max_rows)
        self.parts.append("</details>")

    def table(self, frame: Any, caption: str | None = None, max_rows: int | None = None,
              highlight: Any = None) -> None:
        """A pandas DataFrame as a table (the first ``max_rows`` rows; the row labelled ``highlight`` marked)."""
        self.flush_figures()
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
        head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns) + "</tr>"
        body = []
        for label, row in shown.iterrows():
            cls = ' class="best"' if highlight is not None and label == highlight else ""
            cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.tolist())
            body.append(f"<tr{cls}><td>{html.escape(str(label))}</td>{cells}</tr>")
        self.parts.append(f'<div class="scroll"><table>{head}{"".join(body)}</table></div>')
        notes = []
        if shown is not frame:
            notes.append(f"first {len(shown)} of {len(frame)} rows")
        if caption:
            notes.append(caption)
        if notes:
            self.parts.append(f'<p class="note">{html.escape("; ".join(notes))}</p>')

    def figure(self, fig: Any, caption: str) -> None:
        """A matplotlib Figure, embedded as a PNG (the figure is closed); figures in a row share a grid."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self._figures.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def missing_figure(self, caption: str, reason: str) -> None:
        self._figures.append(f'<figure><p class="missing">{html.escape(caption)}: not drawn ({html.escape(reason)})'
                             "</p></figure>")

    def flush_figures(self) -> None:
        if self._figures:
            self.parts.append('<div class="grid">' + "".join(self._figures) + "</div>")
            self._figures = []

    # ------------------------------------------------------------------ output
    def html(self) -> str:
        self.flush_figures()
        from . import __version__

        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(self.title)}"
            f"</title><style>{_CSS}</style></head><body><main><h1>{html.escape(self.title)}</h1>{sub}"
            + "\n".join(self.parts)
            + f"<footer>ppl_lvm {html.escape(__version__)} &middot; written {stamp}</footer></main></body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


# ---------------------------------------------------------------------------------------------------- formatting
def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"  # one decimal from 100 on, so columns line up
    if value is None:
        return "-"
    return str(value)


# ---------------------------------------------------------------------------------------------------- tables
def selection_table(candidates: Mapping[Any, Any]) -> Any:
    """Model selection among EM fits: log-likelihood, free parameters, BIC, AIC, iterations, sorted as given.

    Parameters
    ----------
    candidates : mapping of label -> EMResult
    """
    import pandas as pd

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


# ---------------------------------------------------------------------------------------------------- plain words
def _is_em(result: Any) -> bool:
    return getattr(result, "method", None) == "em"


def describe_result(result: Any, diagnosis: Any = None, candidates: Mapping[Any, Any] | None = None,
                    fit_warnings: Sequence[str] = ()) -> list[tuple[str, str]]:
    """What the numbers mean, as ``(level, sentence)`` with level ``ok``, ``warn`` or ``bad``."""
    out: list[tuple[str, str]] = []
    if result.interrupted:
        out.append(("warn", f"The fit was interrupted after {result.steps} steps; the parameters are those reached "
                            "so far, not a converged fit."))
    if _is_em(result):
        max_iter = result.options.get("max_iter")
        if result.converged:
            out.append(("ok", f"EM converged after {result.n_iter} iterations (the mean log-likelihood changed by "
                              f"less than tol={result.options.get('tol')})."))
        elif not result.interrupted:
            out.append(("warn", f"EM stopped at max_iter={max_iter} before converging: raise max_iter or tol."))
        n = max(result.n_samples, 1)
        out.append(("ok", f"Exact log-likelihood {result.log_likelihood:.2f} ({result.log_likelihood / n:.3f} per "
                          f"data point, every latent summed out); BIC {result.bic():.1f} and AIC {result.aic():.1f} "
                          f"with {result.n_parameters} free parameters and {result.n_samples} data points."))
        out.append(("ok", "M-steps in closed form (a recognised model)." if result.closed_form else
                    "Generic route: exact E-step, numerical M-step accepted only when it improves the bound."))
        resp = _mixture_responsibilities(result)
        if resp is not None:
            probs = resp.max(1)
            counts = np.bincount(resp.argmax(1), minlength=resp.shape[1])
            uncertain = int((probs < 0.9).sum())
            out.append(("ok", f"Hard assignments per component: {', '.join(str(int(c)) for c in counts)}; "
                              f"{uncertain} of {len(probs)} points ({100 * uncertain / len(probs):.1f}%) have no "
                              "component with posterior probability >= 0.9."))
            empty = [k for k, c in enumerate(counts) if c == 0]
            if empty:
                out.append(("warn", f"Component(s) {empty} hold no point outright: fewer components may do."))
    else:
        if result.converged:
            out.append(("ok", f"The smoothed loss settled after {result.steps} steps."))
        elif not result.interrupted:
            out.append(("warn", f"The smoothed loss was still moving after {result.steps} steps: fit longer "
                                "(more steps) for a settled result."))
        out.append(("ok", f"Final bound (negative loss, last 10% of steps): {result.elbo:.4g} by {result.method} "
                          f"(guide: {result.guide_name})."))
    if diagnosis is not None:
        out += _diagnosis_words(diagnosis)
    if candidates:
        out += _selection_words(candidates)
    for line in fit_warnings:
        out.append(("warn", f"Warning during the fit: {line}"))
    return out


def _diagnosis_words(d: Any) -> list[tuple[str, str]]:
    from .diagnostics import KHAT_BAD

    out = []
    if d.khat is not None and not math.isnan(d.khat):
        verdict = d.khat_verdict
        meaning = {"good": "the guide covers the posterior well",
                   "ok": "usable, but importance-sampling estimates converge slowly",
                   "bad": "the importance ratios are heavy-tailed: the ELBO and summaries from the guide are "
                          "unreliable"}[verdict]
        where = ""
        if getattr(d, "khat_kind", None) == "per point":
            n_points = len(d.khat_points)
            n_bad = int(round(d.share_of_points_above(KHAT_BAD) * n_points))
            where = f", the largest over the {n_points} data points; {n_bad} of them above 0.7"
        out.append(("ok" if verdict == "good" else "warn" if verdict == "ok" else "bad",
                    f"Pareto k-hat {d.khat:.2f} ({verdict}{where}: {meaning}; < 0.5 good, <= 0.7 ok)."))
    rungs = d.ladder
    if len(rungs) > 1:
        first, last = rungs[0], rungs[-1]
        out.append(("ok", f"Bound ladder: {first[0]} {first[1]:.2f} up to {last[0]} {last[1]:.2f}; the gap "
                          f"{last[1] - first[1]:.2f} nats is what the ELBO leaves on the table."))
    for name, active in d.active_units.items():
        total = len(d.mean_variance[name])
        level = "bad" if active == 0 else "ok"
        out.append((level, f"Local latent '{name}': {active} of {total} dimensions are active (their posterior mean "
                           "varies across data points); inactive ones carry no information about the data."))
    if d.khat is not None and d.khat > KHAT_BAD and d.active_units and getattr(d, "khat_kind", None) != "per point":
        out.append(("ok", "With one latent per data point, k-hat measures the importance ratio of all data points "
                          "jointly, whose tail grows with the number of points: read it together with the per-point "
                          "bounds of the ladder."))
    for message in d.messages:
        out.append(("bad", message))
    return out


def _selection_words(candidates: Mapping[Any, Any]) -> list[tuple[str, str]]:
    bics = {label: fit.bic() for label, fit in candidates.items()}
    ranked = sorted(bics, key=bics.get)
    best = ranked[0]
    text = f"BIC chooses {best} (BIC {bics[best]:.1f})"
    if len(ranked) > 1:
        gap = bics[ranked[1]] - bics[best]
        strength = "strong" if gap > 10 else "positive" if gap > 2 else "weak"
        text += f"; the runner-up {ranked[1]} is {gap:.1f} higher ({strength} evidence, Kass and Raftery)"
    aics = {label: fit.aic() for label, fit in candidates.items()}
    best_aic = min(aics, key=aics.get)
    text += "." if best_aic == best else f"; AIC, which penalises parameters less, prefers {best_aic}."
    return [("ok", text)]


# ---------------------------------------------------------------------------------------------------- figures
def _mixture_responsibilities(result: Any) -> np.ndarray | None:
    resp = getattr(result, "responsibilities", None) or {}
    if len(resp) != 1:
        return None
    (value,) = resp.values()
    value = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
    return value if value.ndim == 2 else None


def _local_latent(result: Any, site: str = "z") -> bool:
    structure = getattr(result, "structure", None)
    if structure is None or site not in structure.sites:
        return False
    info = structure.sites[site]
    return bool(info.plates) and not getattr(info, "discrete", False)


def _figures(result: Any, data: Any, labels: Any, diagnosis: Any,
             candidates: Mapping[Any, Any] | None) -> list[tuple[str, Callable[[], Any]]]:
    """Every figure of a result's section as ``(caption, draw)``; all calls into :mod:`ppl_lvm.plots` are here."""
    from . import plots

    figs: list[tuple[str, Callable[[], Any]]] = []
    if _is_em(result):
        figs.append(("Mean log-likelihood per EM iteration (never decreases).", lambda: plots.plot_loss(result)))
    else:
        figs.append(("Loss per step (negative bound) with its smoothed trace.", lambda: plots.plot_loss(result)))
    if candidates:
        figs.append(("BIC and AIC of the candidate models (lower is better).", lambda: _selection_figure(candidates)))
    if diagnosis is not None and len(diagnosis.ladder) > 1:
        figs.append(("The bound ladder: ELBO <= IWAE_K <= log p(x).", lambda: plots.plot_bound_ladder(diagnosis)))
    mixture = _mixture_responsibilities(result) is not None
    if mixture or (not _is_em(result) and len(result.enumerated) == 1):
        figs.append(("Data coloured by the most probable component; faded where the assignment is uncertain.",
                     lambda: plots.plot_responsibilities(result, x=data)))
    if not _is_em(result) and _local_latent(result):
        figs.append(("Latent space: posterior means of z per data point.",
                     lambda: plots.plot_latent_space(result, x=data, labels=labels)))
    elif not _is_em(result) and result.structure is not None and result.structure.continuous_latents:
        figs.append(("Marginal posteriors of the latent variables (draws from the guide).",
                     lambda: plots.plot_posterior(result)))
    return figs


def _selection_figure(candidates: Mapping[Any, Any]) -> Any:
    import matplotlib.pyplot as plt

    labels = [str(k) for k in candidates]
    from .plots import FIGSIZE

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
        axes).
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
    from .results import Result

    if not isinstance(result, Result):
        raise TypeError(f"result must be a ppl_lvm Result, got {type(result).__name__}")
    report.heading(heading or f"Fit by {result.method}")
    can_diagnose = not _is_em(result) and result.model is not None and result.structure is not None
    if diagnosis is None and diagnose and can_diagnose:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diagnosis = result.diagnose(num_samples=diagnose_samples, warn=False)
    facts: list[tuple[str, Any]] = [("method", result.method)]
    if result.model is not None:
        facts.append(("model", getattr(result.model, "__name__", str(result.model))))
    shapes = {k: tuple(v.shape) for k, v in result.data.kwargs.items() if hasattr(v, "shape")}
    if shapes:
        facts.append(("data", ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())))
    for name, coords in (result.data.coords or {}).items():
        if coords.get("columns"):
            facts.append((f"columns of {name}", ", ".join(coords["columns"])))
    others = {k: v for k, v in result.data.kwargs.items() if not hasattr(v, "shape")}
    if others:
        facts.append(("arguments", ", ".join(f"{k}={v!r}" for k, v in others.items())))
    if _is_em(result):
        facts += [("log-likelihood", result.log_likelihood), ("BIC", result.bic()), ("AIC", result.aic()),
                  ("iterations", result.n_iter), ("converged", result.converged)]
        if result.options.get("n_init", 1) > 1:
            facts.append(("restarts (n_init)", result.options["n_init"]))
    else:
        facts += [("guide", result.guide_name), ("steps", result.steps), ("final bound", result.elbo)]
        if result.options.get("n_init", 1) > 1:
            facts.append(("restarts (n_init), best kept", result.options["n_init"]))
        rows = [v.shape[0] for v in result.data.kwargs.values() if hasattr(v, "shape") and len(v.shape) >= 1]
        if rows and rows[0] > 1:
            facts.append(("final bound per data row", result.elbo / rows[0]))
        facts.append(("converged", result.converged))
    facts.append(("interrupted", result.interrupted))
    words = describe_result(result, diagnosis, candidates, fit_warnings) + [("ok", note) for note in notes]
    report.facts_and_words(facts, words)
    for caption, draw in _figures(result, data, labels, diagnosis, candidates):
        try:
            fig = draw()
        except Exception as exc:  # noqa: BLE001 - a report shows what it can and says what it could not
            report.missing_figure(caption, f"{type(exc).__name__}: {exc}")
        else:
            report.figure(fig, caption)
    report.flush_figures()
    if candidates:
        report.heading("Model selection", 3)
        best = min(candidates, key=lambda k: candidates[k].bic())
        report.table(selection_table(candidates), caption=f"the lowest BIC ({best}) is highlighted", highlight=best)
    if diagnosis is not None and len(diagnosis.ladder) > 1:
        report.heading("Bound ladder", 3)
        import pandas as pd

        ladder = pd.DataFrame({"log p(x) bound": [v for _, v in diagnosis.ladder]},
                              index=[label for label, _ in diagnosis.ladder])
        report.table(ladder, caption=ladder_note or f"log p(x) of the training data; {diagnosis.num_samples} draws "
                     "from the guide; the IWAE_K rungs are lower bounds that tighten as K grows")
    try:
        table = summary if summary is not None else result.summary()
    except Exception as exc:  # noqa: BLE001
        report.heading("Summary", 3)
        report.paragraph(f"The summary table could not be computed: {type(exc).__name__}: {exc}", cls="missing")
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
    from .results import Result

    if not isinstance(result, Result):
        raise TypeError(f"result must be a ppl_lvm Result, got {type(result).__name__}")
    report = Report(title, subtitle=f"method {result.method}")
    add_result(report, result, data, labels=labels, candidates=candidates, fit_warnings=fit_warnings,
               summary=summary, heading="Fit", diagnose_samples=diagnose_samples)
    return report.write(Path(out_dir) / filename)
