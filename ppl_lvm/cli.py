"""The ``ppl-lvm`` command (also ``python -m ppl_lvm``).

``ppl-lvm demo``
    Gaussian mixtures on iris by EM with K chosen by BIC, and a small VAE on binarised digits trained with IWAE;
    prints the numbers and writes an HTML report (:func:`ppl_lvm.demo.run_demo`).
``ppl-lvm fit MODEL DATA --method M --out DIR``
    Fits a built-in model (``ppl-lvm fit --help`` lists them) or ``path/to/file.py:function`` to a CSV, TSV, .npy
    or .npz file and writes the result, the ArviZ netCDF, ``summary.csv`` and ``report.html`` to DIR.
``ppl-lvm report DIR``
    Rebuilds the report of a fit folder from its manifest ``fit.json``.

Bad input ends with one line ``ppl-lvm: error: ...`` on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._console import PROG, _record_warnings, _say, _warn, _warning_lines
from ._console import REPORT_FILE as REPORT_FILE  # the report's file name, with the other names of a fit folder
from .demo import run_demo

__all__ = ["main", "MODELS", "CLIError", "parse_assignments", "load_table", "load_model"]

MANIFEST = "fit.json"
RESULT_FILE = "result.pt"
NETCDF_FILE = "posterior.nc"
SUMMARY_FILE = "summary.csv"
RESPONSIBILITIES_FILE = "responsibilities.npz"
MANIFEST_FORMAT = 1


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


MODELS: dict[str, BuiltinModel] = {
    "gaussian_mixture": BuiltinModel("ppl_lvm.models.mixtures", "gaussian_mixture", "table",
                                     "mixture of K Gaussians (args: K, covariance_type=full|diag|spherical|tied)"),
    "bernoulli_mixture": BuiltinModel("ppl_lvm.models.mixtures", "bernoulli_mixture", "table",
                                      "mixture of K products of Bernoullis over 0/1 columns (args: K)"),
    "poisson_mixture": BuiltinModel("ppl_lvm.models.mixtures", "poisson_mixture", "table",
                                    "mixture of K products of Poissons over count columns (args: K)"),
    "ppca": BuiltinModel("ppl_lvm.models.factor", "ppca", "table",
                         "probabilistic PCA with q latent dimensions, fitted with method svi (args: q)"),
    "factor_analysis": BuiltinModel("ppl_lvm.models.factor", "factor_analysis", "table",
                                    "factor analysis with q latent factors, fitted with method svi (args: q)"),
    "gaussian_hmm": BuiltinModel("ppl_lvm.models.hmm", "gaussian_hmm", "sequence",
                                 "hidden Markov chain, diagonal-Gaussian emissions; rows are time steps (args: K)"),
    "categorical_hmm": BuiltinModel("ppl_lvm.models.hmm", "categorical_hmm", "symbols",
                                    "hidden Markov chain over integer symbols; one column, rows are time steps "
                                    "(args: K, n_symbols)"),
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
    from .model import Model

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
        from .model import model as compile_model

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


def load_table(path: Path, columns: list[str] | None = None, key: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Read a data file; return ``(data, labels)``: a DataFrame for tables, an array, or {name: array} for npz.

    ``labels`` holds ``columns`` (the chosen column names, tables only) and ``key`` (the npz array used).
    """
    import numpy as np

    if not path.exists():
        raise CLIError(f"data file {path} does not exist")
    if path.is_dir():
        raise CLIError(f"data file {path} is a directory; give a .csv, .tsv, .npy or .npz file")
    suffix = _suffix(path)
    if suffix not in DATA_SUFFIXES:
        raise CLIError(f"data file {path}: unknown type {suffix or '(no suffix)'}; use one of {', '.join(DATA_SUFFIXES)}")
    if suffix in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        import pandas as pd

        if key is not None:
            raise CLIError("--key selects an array of an .npz file; for a table use --columns")
        try:
            frame = pd.read_csv(path, sep="\t" if suffix.startswith(".tsv") else ",")
        except Exception as exc:  # noqa: BLE001 - any parser failure is bad input
            raise CLIError(f"cannot read {path} as {suffix.lstrip('.').split('.')[0].upper()}: {exc}") from exc
        if frame.empty:
            raise CLIError(f"data file {path} has no rows")
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
        return frame, {"columns": list(frame.columns)}
    if columns is not None:
        raise CLIError(f"--columns selects columns of a CSV/TSV table by name; {path.name} has no column names")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot read {path} as {suffix}: {exc}") from exc
    if suffix == ".npy":
        if key is not None:
            raise CLIError("--key selects an array of an .npz file; an .npy file holds one array")
        return loaded, {}
    with loaded:
        arrays = {k: loaded[k] for k in loaded.files}
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
    """Arrange a table as the built-in model's first argument expects."""
    import numpy as np

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
    else:
        bound = {names[0]: _shape_for(entry, loaded, path.name)}
    clash = sorted(set(bound) & set(args))
    if clash:
        raise CLIError(f"--arg {', '.join(clash)}: already given by the data file {path.name}")
    return {**bound, **args}


# ---------------------------------------------------------------------------------------------------- fitting
def _save_fit(result: Any, out: Path, manifest: dict[str, Any], fit_warnings: list[str], title: str) -> dict[str, Path]:
    """Write result, netCDF, summary, responsibilities and the report into ``out``; return the paths."""
    from .arviz_export import save_netcdf
    from .report import build_report

    out.mkdir(parents=True, exist_ok=True)
    paths = {"result": out / RESULT_FILE, "netcdf": out / NETCDF_FILE, "summary": out / SUMMARY_FILE}
    result.save(str(paths["result"]))
    responsibilities = getattr(result, "responsibilities", None)
    if responsibilities:
        import numpy as np

        paths["responsibilities"] = out / RESPONSIBILITIES_FILE
        np.savez(paths["responsibilities"], **{k: v.detach().cpu().numpy() for k, v in responsibilities.items()})
    manifest = {**manifest, "warnings": fit_warnings, "files": {k: p.name for k, p in paths.items()}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        save_netcdf(result.to_arviz(), str(paths["netcdf"]))
        summary = result.summary()
        summary.to_csv(paths["summary"])
        paths["report"] = build_report(result, out, title=title, fit_warnings=fit_warnings, summary=summary)
    for line in _warning_lines(caught):
        _warn(line)
    return paths


def _fit_title(manifest: dict[str, Any]) -> str:
    parsed = _split_spec(manifest["model"])
    model = parsed[1] if parsed else manifest["model"]
    return f"{model} on {Path(manifest['data']).name} ({manifest['method']})"


def cmd_fit(ns: argparse.Namespace) -> int:
    import ppl_lvm as lvm

    options = parse_assignments(ns.option, "--option")
    args = parse_assignments(ns.arg, "--arg")
    columns = [c.strip() for c in ns.columns.split(",")] if ns.columns else None
    if columns is not None and (not all(columns) or len(set(columns)) != len(columns)):
        raise CLIError(f"--columns expects distinct names separated by commas, got {ns.columns!r}")
    data_path = Path(ns.data)
    if ns.method not in lvm.methods():
        raise CLIError(f"unknown method {ns.method!r}; choose one of: {', '.join(lvm.methods())}")
    model, entry, model_spec = load_model(ns.model)
    guide, guide_spec = load_guide(ns.guide)
    loaded, labels = load_table(data_path, columns, ns.key)
    data = bind_file_data(model, entry, loaded, labels, args, data_path)
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    manifest = {
        "format": MANIFEST_FORMAT,
        "ppl_lvm": lvm.__version__,
        "model": model_spec,
        "guide": guide_spec,
        "data": str(data_path.resolve()),
        "columns": columns,
        "key": ns.key,
        "method": ns.method,
        "options": {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in ns.option or ()},
        "args": {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in ns.arg or ()},
    }
    first = next(iter(data))
    shape = "x".join(str(s) for s in getattr(data[first], "shape", ()))
    _say(f"fitting {model.__name__} to {data_path.name} ({first}: {shape}) with method {ns.method!r} "
         "(Ctrl-C stops and saves the fit so far)")
    start = time.perf_counter()
    catcher, caught = _record_warnings()
    try:
        kwargs = {"guide": guide} if guide is not None else {}
        result = lvm.infer(model, data, method=ns.method, **kwargs, **options)
    except KeyboardInterrupt:  # EM, or setup before the loop: no result exists yet
        print(f"{PROG}: interrupted before the fit produced a result; nothing was saved", file=sys.stderr)
        return 130
    finally:
        catcher.__exit__(None, None, None)
    fit_warnings = _warning_lines(caught)
    for line in fit_warnings:
        _warn(line)
    elapsed = time.perf_counter() - start
    if result.interrupted:
        _say(f"interrupted after {elapsed:.1f} s at step {result.steps}; saving the fit so far")
    else:
        _say(f"fitted in {elapsed:.1f} s: {result!r}")
    paths = _save_fit(result, out, manifest, fit_warnings, _fit_title(manifest))
    if result.interrupted:
        print(f"{PROG}: interrupted: the fit so far ({result.steps} steps) was saved to {out}", file=sys.stderr)
    for kind, path in paths.items():
        _say(f"  {kind:<16} {path}")
    return 130 if result.interrupted else 0


def cmd_report(ns: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import ppl_lvm as lvm

    from .report import build_report

    folder = Path(ns.dir)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory; give the --out folder of `ppl-lvm fit`")
    if not manifest_path.is_file():
        raise CLIError(f"{folder} has no {MANIFEST}; give the --out folder of `ppl-lvm fit`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "model" not in manifest:
        raise CLIError(f"{manifest_path} is not a ppl-lvm fit manifest (format {MANIFEST_FORMAT})")
    model, _, _ = load_model(manifest["model"])
    guide, _ = load_guide(manifest.get("guide"))
    result_path = folder / manifest.get("files", {}).get("result", RESULT_FILE)
    if not result_path.is_file():
        raise CLIError(f"{result_path} is missing; rerun `ppl-lvm fit`")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = lvm.load(str(result_path), model=model, guide=guide if callable(guide) else None)
        resp_path = folder / RESPONSIBILITIES_FILE
        if hasattr(result, "responsibilities") and not result.responsibilities and resp_path.is_file():
            with np.load(resp_path, allow_pickle=False) as saved:
                result.responsibilities = {k: torch.from_numpy(saved[k]) for k in saved.files}
        path = build_report(result, folder, title=_fit_title(manifest), fit_warnings=manifest.get("warnings", []))
    for line in _warning_lines(caught):
        _warn(line)
    _say(f"report: {path}")
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def cmd_demo(ns: argparse.Namespace) -> int:
    run_demo(Path(ns.out), fast=ns.fast)
    return 0


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fit latent variable models from the command line and write HTML reports.",
        epilog="Bad input ends with one error line and exit code 2; --debug shows the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="Gaussian mixtures on iris (EM, BIC) and a VAE on digits (IWAE), with a report",
                          description="The main job on built-in data: Gaussian mixtures fitted to the standardised "
                          "iris measurements by EM for K = 1..6 with restarts, K chosen by BIC; a VAE with a 2-D latent "
                          "space trained with the IWAE bound on binarised 8x8 digits; an HTML report of both.")
    demo.add_argument("--out", default="out/demo", help="folder of the report (default: %(default)s)")
    demo.add_argument("--fast", action="store_true", help="tiny budgets (a smoke test, numbers not meaningful)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo)

    fit = sub.add_parser(
        "fit", help="fit a model to a data file and write result, netCDF, summary and report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit MODEL to DATA.\n\nMODEL is path/to/file.py:function (a @lvm.model function) or one of:\n"
        + _model_list()
        + "\n\nDATA is a .csv or .tsv table with a header, an .npy array, or an .npz archive. The data become the "
        "model's\nfirst argument (npz arrays named like arguments bind by name). Values of --option and --arg are "
        "Python\nliterals (5, 1e-3, (64,64), None, \"text\"); a bare word is a string.",
        epilog="example: ppl-lvm fit gaussian_mixture iris.csv --columns petal_length,petal_width --arg K=3 "
        "--method em --option n_init=5 --out out/iris",
    )
    fit.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:function")
    fit.add_argument("data", metavar="DATA", help="CSV, TSV, .npy or .npz file")
    fit.add_argument("--method", required=True, help="em, svi, meanfield, iwae or renyi")
    fit.add_argument("--guide", help="normal, fullrank, delta, or path/to/file.py:function (VI methods)")
    fit.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="an option of lvm.infer, e.g. n_init=5, steps=2000, lr=0.01 (repeatable)")
    fit.add_argument("--arg", action="append", metavar="KEY=VALUE",
                     help="another argument of the model, e.g. K=3 (repeatable)")
    fit.add_argument("--columns", metavar="A,B", help="columns of a CSV/TSV table to use, by name")
    fit.add_argument("--key", help="the array of an .npz file to use")
    fit.add_argument("--out", required=True, metavar="DIR", help="folder for the results (created)")
    fit.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    fit.set_defaults(handler=cmd_fit)

    report = sub.add_parser("report", help="rebuild the HTML report of a fit folder",
                            description="Rebuild DIR/report.html from the saved fit in DIR (written by `ppl-lvm fit`).")
    report.add_argument("dir", metavar="DIR", help="the --out folder of `ppl-lvm fit`")
    report.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    report.set_defaults(handler=cmd_report)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppl_lvm")
    except PackageNotFoundError:
        return "0.1.0"


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .errors import PplLvmError

    return (CLIError, PplLvmError, ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError)


def _one_line(exc: BaseException) -> str:
    """The message on one line (library messages may wrap)."""
    text = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
    return f"KeyError: {text}" if isinstance(exc, KeyError) else text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 1 unexpected failure, 130 interrupted)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files, never shown
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = ns.handler
    try:
        return handler(ns)
    except KeyboardInterrupt:
        if ns.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line's boundary: one line, or the traceback on --debug
        if ns.debug:
            traceback.print_exc()
        if isinstance(exc, _expected_errors()):
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def entry_point() -> None:
    """The console script ``ppl-lvm``."""
    sys.exit(main())
