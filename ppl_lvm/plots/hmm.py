"""A fitted hidden Markov model: its Viterbi path drawn on the data, its transition matrix as a heatmap."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._figure import _axes, _check_result, _finish, _is_em, _numpy, looks_standardised, standardised_name

__all__ = ["hmm_parameters", "plot_state_path", "plot_transition_matrix"]

ANNOTATE_MAX_STATES = 12  # beyond this many states the heatmap's cells are too small for their numbers


def hmm_parameters(result: Any) -> dict[str, Any]:
    """The fitted chain of an EM fit of a hidden Markov model, as numpy arrays.

    Returns
    -------
    dict
        ``latent`` (the chain's site name), ``startprob`` (K,), ``transmat`` (K, K) with rows ``from`` and columns
        ``to``, ``means`` (K, D) for Gaussian emissions or ``probs`` (K, symbols) for categorical ones,
        ``data`` (the sequences concatenated, hmmlearn's layout), ``lengths`` (B,) and ``columns`` (the names of the
        data's columns, when known).

    Raises
    ------
    ValueError
        If ``result`` is not an EM fit of a recognised hidden Markov model.
    """
    _check_result(result, "hmm_parameters")
    pattern = getattr(result, "pattern", None) if _is_em(result) else None
    if pattern is None or not hasattr(pattern, "trans"):
        raise ValueError(
            "this fit holds no recognised hidden Markov chain (an EM fit of a model written with "
            "lvm.markov whose M-step is closed-form, such as ppl_lvm.models.hmm.gaussian_hmm)"
        )
    kernel = pattern.family.complete_params(pattern.to_kernel(result.params))
    out = {
        "latent": pattern.latent,
        "startprob": _numpy(kernel["startprob"]),
        "transmat": _numpy(kernel["transmat"]),
        "data": _numpy(pattern.data),
        "lengths": _numpy(pattern.lengths).astype(int),
        "columns": None,
    }
    for key in ("means", "probs", "rates"):
        if key in kernel:
            out[key] = _numpy(kernel[key])
    coords = getattr(result.data, "coords", None) or {}
    for labels in coords.values():
        if labels.get("columns") and out["data"].ndim == 2 and len(labels["columns"]) == out["data"].shape[1]:
            out["columns"] = list(labels["columns"])
    return out


def plot_state_path(result: Any, sequence: int = 0, ax: Any = None, path: Any = None) -> Any:
    """One sequence over time with its Viterbi path: the background coloured by the most probable state, the data as
    a line and, for Gaussian emissions, the mean of the state at each step as a black step line.

    Data with more than one column are drawn on their first principal component (the axis says the share of
    variance it explains); categorical symbols as points at their symbol.

    Parameters
    ----------
    result : EMResult
        An EM fit of a recognised hidden Markov model (:func:`ppl_lvm.models.hmm.gaussian_hmm`, ...).
    sequence : int
        Which sequence to draw.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the fit is not an HMM (see :func:`hmm_parameters`) or ``sequence`` is not one of its sequences.
    """
    params = hmm_parameters(result)
    lengths = params["lengths"]
    if isinstance(sequence, bool) or not isinstance(sequence, (int, np.integer)) or not 0 <= sequence < len(lengths):
        raise ValueError(f"sequence must be an integer in [0, {len(lengths) - 1}], got {sequence!r}")
    latent = params["latent"]
    path_states = _numpy(result.map_assignments()[latent])
    length = int(lengths[sequence])
    states = path_states[sequence, :length].astype(int)
    start = int(lengths[:sequence].sum())
    data = params["data"][start : start + length]
    k = params["transmat"].shape[0]
    fig, ax, created = _axes(ax, figsize=(6.4, 4.0))
    means = None
    if "means" in params:
        values = data.reshape(length, -1).astype(float)
        all_values = params["data"].reshape(len(params["data"]), -1).astype(float)
        if values.shape[1] == 1:
            name = (params["columns"] or ["x"])[0]
            ylabel = standardised_name(name) if looks_standardised(all_values) else name
            y, means = values[:, 0], params["means"][states, 0]
        else:
            centre = all_values.mean(0)
            _, singular, vt = np.linalg.svd(all_values - centre, full_matrices=False)
            share = singular[0] ** 2 / max(float((singular**2).sum()), 1e-300)
            y = (values - centre) @ vt[0]
            means = (params["means"][states] - centre) @ vt[0]
            ylabel = f"PC 1 of the data ({100 * share:.0f}% of variance, {values.shape[1]} columns)"
        ax.plot(np.arange(length), y, color="0.25", lw=0.9, marker="o", ms=2.5, label="data")
        ax.step(np.arange(length), means, where="mid", color="k", lw=1.6, label="mean of the Viterbi state")
    else:
        y = data.reshape(-1).astype(float)
        ax.scatter(np.arange(length), y, color="0.2", s=10, zorder=3, label="symbol")
        ylabel = "symbol"
    low, high = float(np.min(y)), float(np.max(y))
    if means is not None:
        low, high = min(low, float(np.min(means))), max(high, float(np.max(means)))
    pad = 0.08 * ((high - low) or 1.0)
    from matplotlib.colors import ListedColormap  # matplotlib is optional and slow to import
    from matplotlib.patches import Patch  # matplotlib is optional and slow to import

    colours = [f"C{j % 10}" for j in range(k)]
    ax.imshow(
        states[None, :],
        aspect="auto",
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=k - 0.5,
        alpha=0.25,
        extent=(-0.5, length - 0.5, low - pad, high + pad),
        interpolation="nearest",
        zorder=0,
    )
    ax.set_ylim(low - pad, high + pad)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color=colours[j], alpha=0.35, label=f"{latent} = {j} ({int((states == j).sum())} steps)")
        for j in range(k)
    ]
    ax.legend(
        handles=handles,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=min(len(handles), 4),
        frameon=False,
    )
    ax.set_xlabel("time step")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(f"Viterbi path of sequence {sequence} ({length} steps, {k} states)", fontsize=10)
    return _finish(fig, created, path)


def plot_transition_matrix(result: Any, ax: Any = None, path: Any = None) -> Any:
    """The fitted transition matrix as a heatmap: row ``i``, column ``j`` is p(z_t = j | z_{t-1} = i).

    Parameters
    ----------
    result : EMResult
        An EM fit of a recognised hidden Markov model.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the fit is not an HMM (see :func:`hmm_parameters`).
    """
    params = hmm_parameters(result)
    trans = params["transmat"]
    k = trans.shape[0]
    latent = params["latent"]
    fig, ax, created = _axes(ax, figsize=(4.6, 4.0))
    image = ax.imshow(trans, cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= ANNOTATE_MAX_STATES:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{trans[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if trans[i, j] > 0.6 else "black",
                )
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(j) for j in ticks])
    ax.set_yticks(ticks, [str(j) for j in ticks])
    ax.set_xlabel(f"to state ({latent}_t)")
    ax.set_ylabel(f"from state ({latent}_t-1)")
    ax.set_title("transition probabilities", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _finish(fig, created, path)
