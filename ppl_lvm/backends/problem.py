"""What a backend receives: the model, the bound and checked data, the structure, the guide and the options.

:func:`make_problem` is the one path from a user's call (``lvm.infer``, ``Result.fit_more``) to a backend: it
binds and checks the data, validates the options before the (possibly slow) prototype run, and converts integer
data that feed a continuous likelihood once, with one warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..collective import collective, in_group
from ..data import BoundData, bind_data, to_tensor
from ..em.stream import Chunks
from ..errors import DataError, DataWarning, ModelCheckError
from ..model import PROTOTYPE_ROWS, Model, check_model, trace_structure
from ..structure import ModelStructure
from ..threads import validate_num_threads, work_size

__all__ = ["OPTION_HINTS", "Problem", "make_problem", "step_work"]

# options that belong to another method: the error says which
OPTION_HINTS = {
    "free_bits": "free_bits floors the analytic KL per latent dimension, which needs method='meanfield'",
    "baseline": "baseline sets the variance reduction of score-function gradients, an option of method='svi'",
    "distributed": "distributed=True (data-parallel) runs methods em, svi, meanfield, iwae and renyi; fit this "
                   "method in one process",
    "n_components": "the number of components is an argument of the model: pass it in data, e.g. {'x': x, 'K': 3}",
}


@dataclass
class Problem:
    """Everything :func:`ppl_lvm.infer` hands a backend."""

    model: Model
    data: BoundData
    structure: ModelStructure
    method: str
    guide: Any = None
    init_state: dict | None = None  # a parameter-store state to start from (fitting further)
    options: dict[str, Any] = field(default_factory=dict)
    #: ``backend.parse_options(options)``, validated once by :func:`make_problem` (the backend reads it from here)
    parsed_options: tuple[Any, dict[str, Any]] | None = None
    #: arguments given as :func:`~ppl_lvm.em.stream.chunks` (data read chunk by chunk); ``data`` holds their first
    #: chunk, on which the model is inspected and recognised
    streams: dict[str, Chunks] = field(default_factory=dict)
    #: the streams whose chunks carry whole sequences (``lvm.chunks`` with ``lengths`` or ``sequences=True``);
    #: ``data`` holds their first sequence in the padded layout of one sequence, shape ``(1, T_0, ...)``
    sequence_streams: frozenset[str] = frozenset()
    #: the fit's ``num_threads`` option (``"auto"``, ``None`` or a count), applied around the fit by the results
    #: layer (:mod:`ppl_lvm.threads`); every method takes it, so it is not among the backend's options
    num_threads: Any = "auto"


def step_work(problem: Problem) -> int:
    """The work of one step of ``problem`` (:func:`ppl_lvm.threads.work_size`), from what is known before the fit:
    the rows of a step (``batch_size`` or the data plate; for data read chunk by chunk, a chunk), the values of the
    model's parameters, the particles and the observed sites in the data plate."""
    structure = problem.structure
    loop = problem.parsed_options[0] if problem.parsed_options is not None else None
    rows = structure.n_data or 1
    batch = getattr(loop, "batch_size", None)
    if batch is not None:
        rows = min(rows, int(batch))
    parameters = sum(int(np.prod(site.shape)) for site in structure.param_sites)
    plate = structure.data_plate
    sites = sum(1 for site in structure.observed_sites if plate is not None and plate in site.plates)
    return work_size(rows, parameters, int(getattr(loop, "num_particles", 1) or 1), sites)


def _convert_integer_data(model: Model, bound: BoundData, kwargs: dict[str, Any]) -> ModelStructure:
    """Inspect the model; integer data feeding a continuous likelihood are converted once, with one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        # the prototype run: on the first rows of many (the data plate's full size kept), supports checked on all
        structure = trace_structure(model, (), kwargs, rows=PROTOTYPE_ROWS)
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    converted = []
    for site in structure.observed_sites:
        value = kwargs.get(site.argument) if site.argument else None
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and not site.discrete:
            kwargs[site.argument] = value.to(torch.get_default_dtype())
            converted.append(f"'{site.argument}' (site '{site.name}', {site.location})")
    if converted:
        warnings.warn(
            f"integer data given to a continuous likelihood were converted to {torch.get_default_dtype()}: "
            + ", ".join(converted),
            DataWarning,
            stacklevel=4,
        )
    elif any(issubclass(w.category, DataWarning) for w in caught):
        for w in caught:
            if issubclass(w.category, DataWarning):
                warnings.warn(w.message, DataWarning, stacklevel=4)
    bound.kwargs = kwargs
    return structure


def make_problem(backend: Any, model: Any, data: Any, *, guide: Any = None, init_state: dict | None = None,
                 options: dict[str, Any] | None = None) -> Problem:
    """Check ``model``, ``data`` and ``options`` for ``backend`` and bundle them as a :class:`Problem`.

    With ``distributed=True`` in a process group every rank checks its own rows, and a rank whose check fails
    tells the others (:func:`~ppl_lvm.collective.collective`), which raise too instead of waiting for it.
    """
    options = dict(options or {})
    if options.get("distributed") is True and in_group():
        with collective("binding and checking its data"):
            return _make_problem(backend, model, data, guide, init_state, options)
    return _make_problem(backend, model, data, guide, init_state, options)


def _make_problem(backend: Any, model: Any, data: Any, guide: Any, init_state: dict | None,
                  options: dict[str, Any]) -> Problem:
    num_threads = options.pop("num_threads", "auto")
    validate_num_threads(num_threads)
    model = check_model(model)
    parsed = backend.parse_options(options)  # before the (possibly slow) prototype run
    keep_float32 = bool(getattr(backend, "keeps_float32", lambda loop: False)(parsed[0]))
    bound = bind_data(model, data, keep_float32=keep_float32)
    kwargs = dict(bound.kwargs)
    missing = [
        name
        for name, p in model.signature.parameters.items()
        if p.default is p.empty and name not in kwargs and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        raise DataError(f"{model.__name__}() needs argument(s) {missing}; pass them in data (a dict by name)")
    streams, sequence_streams = _first_chunks(backend, kwargs, keep_float32)
    try:
        structure = _convert_integer_data(model, bound, kwargs)
    except (ModelCheckError, ValueError, RuntimeError) as exc:
        if not sequence_streams:
            raise
        raise DataError(
            f"{model.__name__}() failed on the first sequence of {sorted(sequence_streams)} (data read as whole "
            "sequences, lvm.chunks with lengths or sequences=True, reach the model as a batch of one padded "
            "sequence, shape (1, T, ...), the layout of a hidden Markov chain model). The chunks carry the "
            "sequences' lengths: leave a lengths argument of the model out. For a model of rows pass "
            f"lvm.chunks(x, chunk_size) without lengths. The model said: {exc}"
        ) from exc
    return Problem(model=model, data=bound, structure=structure, method=backend.name, guide=guide,
                   init_state=init_state, options=options, parsed_options=parsed, streams=streams,
                   sequence_streams=sequence_streams, num_threads=num_threads)


def _first_chunks(backend: Any, kwargs: dict[str, Any], keep_float32: bool = False
                  ) -> tuple[dict[str, Chunks], frozenset[str]]:
    """Arguments read chunk by chunk: replaced in ``kwargs`` by their first chunk (the model's prototype runs on it).

    A stream of sequences is replaced by its first sequence as a batch of one, ``(1, T_0, ...)``: the layout of a
    chain model's padded ``(B, T, ...)`` argument, with no padding to mask.
    """
    streams = {name: value for name, value in kwargs.items() if isinstance(value, Chunks)}
    if streams and not getattr(backend, "accepts_chunks", False):
        raise TypeError(f"data read chunk by chunk (lvm.chunks, argument(s) {sorted(streams)}) are fitted by "
                        f"method='em' only; method {backend.name!r} needs the data in memory")
    sequence_streams = set()
    for name, stream in streams.items():
        first = next(((x, lengths) for x, lengths in stream if x.shape[0]), None)
        if first is None:
            raise DataError(f"data '{name}' (lvm.chunks) gave no rows; pass at least one data point")
        x, lengths = first
        if lengths is not None:
            sequence_streams.add(name)
            x = x[: lengths[0]].unsqueeze(0)
        kwargs[name] = to_tensor(x, name, keep_float32)
    return streams, frozenset(sequence_streams)
