"""What the command line reads: models (built-in names or ``file.py:function``), guides, ``key=value`` literals
and data files (CSV, TSV, .npy, .npz), and how a data file becomes the model's arguments."""

from __future__ import annotations

import ast
import gzip
import importlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..em.stream import shard_range
from ..model import Model
from ..model import model as compile_model
from ..models.hmm import pad_sequences


class CLIError(Exception):
    """Bad input on the command line: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------------- built-in models
@dataclass(frozen=True)
class BuiltinModel:
    """A ready-made model the command line knows by name, and how a data file becomes its first argument."""

    module: str
    function: str
    layout: str  # "table": (N, D); "sequence": one (T, D) sequence -> (1, T, D); "symbols": (T,) -> (1, T)
    description: str
    #: what the data are when they are not measurements on a continuous scale ("counts"); for a model of
    #: continuous measurements (""), integer columns of the file are read as floats
    discrete: str = ""


MODELS: dict[str, BuiltinModel] = {
    "gaussian_mixture": BuiltinModel("ppl_lvm.models.mixtures", "gaussian_mixture", "table",
                                     "mixture of K Gaussians (args: K, covariance_type=full|diag|spherical|tied)"),
    "bernoulli_mixture": BuiltinModel("ppl_lvm.models.mixtures", "bernoulli_mixture", "table",
                                      "mixture of K products of Bernoullis over 0/1 columns (args: K)",
                                      discrete="0/1 data"),
    "poisson_mixture": BuiltinModel("ppl_lvm.models.mixtures", "poisson_mixture", "table",
                                    "mixture of K products of Poissons over count columns (args: K)",
                                    discrete="counts"),
    "ppca": BuiltinModel("ppl_lvm.models.factor", "ppca", "table",
                         "probabilistic PCA with q latent dimensions; svi from its closed-form maximum (args: q)"),
    "factor_analysis": BuiltinModel("ppl_lvm.models.factor", "factor_analysis", "table",
                                    "factor analysis with q latent factors; svi from its EM maximum (args: q)"),
    "gaussian_hmm": BuiltinModel("ppl_lvm.models.hmm", "gaussian_hmm", "sequence",
                                 "hidden Markov chain, diagonal-Gaussian emissions; rows are time steps, "
                                 "--sequence-column for several sequences (args: K)"),
    "categorical_hmm": BuiltinModel("ppl_lvm.models.hmm", "categorical_hmm", "symbols",
                                    "hidden Markov chain over integer symbols; one column, rows are time steps "
                                    "(args: K, n_symbols)", discrete="integer symbols"),
}


def _model_list() -> str:
    width = max(len(n) for n in MODELS)
    return "\n".join(f"  {name:<{width}}  {m.description}" for name, m in MODELS.items())


def _import_file(path: Path, what: str) -> Any:
    """Import a Python file by its path (it need not be on sys.path)."""
    if not path.is_file():
        raise CLIError(f"{what} file {path} does not exist")
    name = "ppl_lvm_user_" + re.sub(r"\W", "_", path.stem) + f"_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"{path} cannot be imported as a Python file (use a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free introspection look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise CLIError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _split_spec(spec: str) -> tuple[Path, str] | None:
    """``path/to/file.py:function`` -> (path, function); None when ``spec`` is not of that form."""
    path, sep, function = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        return None
    if not function.isidentifier():
        raise CLIError(f"{spec!r}: after the ':' comes the name of a function in {path}, got {function!r}")
    return Path(path), function


def load_model(spec: str) -> tuple[Any, BuiltinModel | None, str]:
    """The model named by ``spec``, its built-in entry (or None), and the spec to store in the manifest.

    ``spec`` is a key of :data:`MODELS` or ``path/to/file.py:function``; the path is stored absolute.
    """
    if spec in MODELS:
        entry = MODELS[spec]
        return getattr(importlib.import_module(entry.module), entry.function), entry, spec
    parsed = _split_spec(spec)
    if parsed is None:
        raise CLIError(f"unknown model {spec!r}; use path/to/file.py:function or one of: {', '.join(MODELS)}")
    path, function = parsed
    module = _import_file(path, "model")
    fn = getattr(module, function, None)
    if fn is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, Model))
        hint = f"its models are: {', '.join(found)}" if found else "it defines no @lvm.model function"
        raise CLIError(f"{path} has no function {function!r}; {hint}")
    if not isinstance(fn, Model):
        if not callable(fn):
            raise CLIError(f"{path}:{function} is a {type(fn).__name__}, not a model function")

        fn = compile_model(fn)
    return fn, None, f"{path.resolve()}:{function}"


def load_guide(spec: str | None) -> tuple[Any, str | None]:
    """A guide given as a built-in name (passed through) or ``path/to/file.py:function``."""
    if spec is None:
        return None, None
    parsed = _split_spec(spec)
    if parsed is None:
        return spec, spec  # a built-in name; lvm.infer checks it
    path, function = parsed
    module = _import_file(path, "guide")
    fn = getattr(module, function, None)
    if fn is None or not callable(fn):
        raise CLIError(f"{path} has no guide function {function!r}")
    return fn, f"{path.resolve()}:{function}"


# ---------------------------------------------------------------------------------------------------- key=value
_BARE_WORD = re.compile(r"^[A-Za-z_][\w.+\-]*$")


def parse_value(text: str, flag: str, key: str) -> Any:
    """A Python literal (``5``, ``1e-3``, ``"diag"``, ``(64, 64)``, ``None``); a bare word is taken as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        if _BARE_WORD.match(text) and text not in ("true", "false", "none", "null"):
            return text
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
        raise CLIError(
            f"{flag} {key}={text}: the value is not a Python literal ({reason}); write numbers as 5 or 1e-3, "
            f"strings as plain words or quoted, tuples as (64,64), booleans as True/False"
        ) from exc


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["n_init=5", "tol=1e-4"]`` -> ``{"n_init": 5, "tol": 1e-4}``; refuses malformed or repeated keys."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"{flag} expects key=value with a Python name as key, got {item!r}")
        if key in out:
            raise CLIError(f"{flag} {key} is given twice")
        out[key] = parse_value(text.strip(), flag, key)
    return out


# ---------------------------------------------------------------------------------------------------- data files
DATA_SUFFIXES = (".csv", ".tsv", ".npy", ".npz", ".csv.gz", ".tsv.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix.lower())


def _count_rows(path: Path, suffix: str) -> int:
    """Data rows of a table file (its non-blank lines after the header), read line by line."""
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(path, "rt") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def _rows_of(array: Any, shard: tuple[int, int] | None) -> Any:
    if shard is None or np.ndim(array) == 0:
        return array
    lo, hi = shard_range(len(array), *shard)
    return np.array(array[lo:hi])  # a copy: only these rows of a memory map are read


def load_table(path: Path, columns: list[str] | None = None, key: str | None = None,
               sequence_column: str | None = None,
               shard: tuple[int, int] | None = None) -> tuple[Any, dict[str, Any]]:
    """Read a data file; return ``(data, labels)``: a DataFrame for tables, an array, or {name: array} for npz.

    ``labels`` holds ``columns`` (the chosen column names, tables only) and ``key`` (the npz array used); with
    ``sequence_column`` (tables only) that column is taken out of the data and its values are ``labels["sequence"]``.
    ``shard=(rank, world_size)`` reads only that rank's contiguous range of rows
    (:func:`~ppl_lvm.em.stream.shard_range`): the lines of a table (one row per line), the rows of a memory-mapped
    ``.npy``; of an ``.npz``, the rows of every array as long as the first one.
    """
    if not path.exists():
        raise CLIError(f"data file {path} does not exist")
    if path.is_dir():
        raise CLIError(f"data file {path} is a directory; give a .csv, .tsv, .npy or .npz file")
    suffix = _suffix(path)
    if suffix not in DATA_SUFFIXES:
        raise CLIError(f"data file {path}: unknown type {suffix or '(no suffix)'}; use one of {', '.join(DATA_SUFFIXES)}")
    if sequence_column is not None and shard is not None:
        raise CLIError("--sequence-column groups rows into sequences, which a rank's range of rows would cut; run "
                       "the HMM fit in one process (without torchrun)")
    if suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        import pandas as pd  # pandas is slow to import and only tables need it

        if key is not None:
            raise CLIError("--key selects an array of an .npz file; for a table use --columns")
        sep = "\t" if suffix.startswith(".tsv") else ","
        rows: dict[str, Any] = {}
        if shard is not None:
            lo, hi = shard_range(_count_rows(path, suffix), *shard)
            rows = {"skiprows": range(1, lo + 1), "nrows": hi - lo}
        try:
            frame = pd.read_csv(path, sep=sep, **rows)
        except Exception as exc:  # noqa: BLE001 - any parser failure is bad input
            raise CLIError(f"cannot read {path} as {suffix.lstrip('.').split('.')[0].upper()}: {exc}") from exc
        if frame.empty:
            raise CLIError(f"data file {path} has no rows")
        groups = None
        if sequence_column is not None:
            if sequence_column not in frame.columns:
                raise CLIError(f"--sequence-column {sequence_column!r} is not a column of {path.name}; its columns "
                               f"are: {', '.join(map(str, frame.columns))}")
            if columns is not None and sequence_column in columns:
                raise CLIError(f"--sequence-column {sequence_column!r} names the sequences; leave it out of --columns")
            groups = frame.pop(sequence_column).to_numpy()
        if columns is not None:
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise CLIError(
                    f"column(s) {', '.join(repr(c) for c in missing)} not in {path.name}; "
                    f"its columns are: {', '.join(map(str, frame.columns))}"
                )
            frame = frame[columns]
        non_numeric = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            raise CLIError(
                f"column(s) {', '.join(repr(c) for c in non_numeric)} of {path.name} are not numeric; "
                "choose numeric columns with --columns a,b"
            )
        frame.columns = [str(c) for c in frame.columns]
        labels = {"columns": list(frame.columns)}
        if groups is not None:
            labels.update(sequence=groups, sequence_column=sequence_column)
        return frame, labels
    if sequence_column is not None:
        raise CLIError(f"--sequence-column names a column of a CSV/TSV table; {path.name} has no column names")
    if columns is not None:
        raise CLIError(f"--columns selects columns of a CSV/TSV table by name; {path.name} has no column names")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if suffix == ".npy" else None)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot read {path} as {suffix}: {exc}") from exc
    if suffix == ".npy":
        if key is not None:
            raise CLIError("--key selects an array of an .npz file; an .npy file holds one array")
        return np.array(_rows_of(loaded, shard)), {}
    with loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    if shard is not None and arrays:
        first = arrays.get(key, next(iter(arrays.values())))
        n = len(first) if np.ndim(first) else None
        arrays = {k: _rows_of(v, shard) if np.ndim(v) and len(v) == n else v for k, v in arrays.items()}
    if not arrays:
        raise CLIError(f"{path} holds no arrays")
    if key is not None:
        if key not in arrays:
            raise CLIError(f"{path.name} has no array {key!r}; its arrays are: {', '.join(arrays)}")
        return arrays[key], {"key": key}
    if len(arrays) == 1:
        (name, array), = arrays.items()
        return array, {"key": name}
    return arrays, {"keys": list(arrays)}


def _shape_for(entry: BuiltinModel | None, array: Any, name: str) -> Any:
    """Arrange a table as the built-in model's first argument expects; integer columns of a model of continuous
    measurements (a CSV of whole numbers) become floats."""
    if entry is not None and not entry.discrete and np.asarray(array).dtype.kind in "biu":
        array = array.astype(float)
    if hasattr(array, "columns") and (entry is None or entry.layout == "table"):
        return array  # a table keeps its column names (axes of plots, coordinates of the ArviZ export)
    array = np.asarray(array)
    if entry is None:
        return array
    if entry.layout == "table":
        if array.ndim == 1:
            return array[:, None]
        if array.ndim != 2:
            raise CLIError(f"{name}: {entry.function} needs a table (rows x columns), got an array of shape {array.shape}")
        return array
    if entry.layout == "sequence":
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim == 2:
            return array[None]  # one sequence: (1, T, D)
        if array.ndim == 3:
            return array
        raise CLIError(f"{name}: {entry.function} needs (T, D) or (B, T, D), got shape {array.shape}")
    # symbols
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 1:
        return array[None]
    if array.ndim == 2:
        return array
    raise CLIError(f"{name}: {entry.function} needs one column of integer symbols or (B, T), got shape {array.shape}")


def bind_file_data(model: Any, entry: BuiltinModel | None, loaded: Any, labels: dict, args: dict[str, Any],
                   path: Path) -> dict[str, Any]:
    """The model's arguments: the file's data (first argument, or npz arrays by name) plus ``--arg`` values."""
    names = list(model.signature.parameters)
    if not names:
        raise CLIError(f"{model.__name__}() takes no arguments, so it cannot be fitted to {path.name}")
    unknown = [k for k in args if k not in names]
    if unknown:
        raise CLIError(f"--arg {', '.join(unknown)}: not an argument of {model.__name__}(); its arguments are "
                       f"{', '.join(names)}")
    if isinstance(loaded, dict):  # an npz with several arrays: bind those named like arguments
        bound = {k: v for k, v in loaded.items() if k in names}
        if not bound:
            raise CLIError(f"{path.name} holds arrays {', '.join(loaded)}; none is an argument of "
                           f"{model.__name__}({', '.join(names)}); choose one with --key")
        if names[0] in bound:
            bound[names[0]] = _shape_for(entry, bound[names[0]], path.name)
    elif labels.get("sequence") is not None:
        bound = _bind_sequences(model, entry, loaded, labels, names)
    else:
        bound = {names[0]: _shape_for(entry, loaded, path.name)}
    clash = sorted(set(bound) & set(args))
    if clash:
        raise CLIError(f"--arg {', '.join(clash)}: already given by the data file {path.name}")
    return {**bound, **args}


def _bind_sequences(model: Any, entry: BuiltinModel | None, table: Any, labels: dict, names: list[str]) -> dict:
    """Rows grouped by ``--sequence-column`` (groups in order of first appearance, rows in file order): the padded
    ``(B, T_max, D)`` sequences (``(B, T_max)`` symbols) as the first argument and their ``lengths``."""
    column = labels["sequence_column"]
    if (entry is not None and entry.layout == "table") or "lengths" not in names:
        raise CLIError(f"--sequence-column {column}: {model.__name__}() takes no lengths argument; the option reads "
                       "several sequences for a hidden Markov model (gaussian_hmm, categorical_hmm)")
    values = np.asarray(table.to_numpy() if hasattr(table, "to_numpy") else table)
    keys = [str(g) for g in labels["sequence"]]
    order = list(dict.fromkeys(keys))  # the groups in order of first appearance
    rank = {k: r for r, k in enumerate(order)}
    index = np.array([rank[k] for k in keys])
    groups = [values[index == k] for k in range(len(order))]
    if entry is not None and entry.layout == "symbols":
        if values.shape[1] != 1:
            raise CLIError(f"--sequence-column {column}: {entry.function} reads one column of integer symbols, got "
                           f"{values.shape[1]}; choose it with --columns")
        if not np.array_equal(values, np.round(values)):
            raise CLIError(f"--sequence-column {column}: the symbols of {entry.function} must be integers 0, 1, ...")
        x, lengths = pad_sequences([torch.as_tensor(g[:, 0].astype(np.int64)) for g in groups])
    else:
        x, lengths = pad_sequences([torch.as_tensor(g, dtype=torch.get_default_dtype()) for g in groups])
    labels["sequence_names"] = order
    return {names[0]: x, "lengths": lengths}
