"""The commands ``ppl-lvm fit``, ``ppl-lvm report`` and ``ppl-lvm demo``, and the files of a fit folder."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..api import infer, methods
from ..arviz_export import save_netcdf
from ..backends import get_backend
from ..backends.problem import make_problem
from ..report import build_report
from ..results import fit_result, load
from .console import PROG, REPORT_FILE, _hint, _record_warnings, _say, _step, _warn, _warning_lines
from .demo import run_demo
from .exact import CLOSED_FORM_MODELS, GRADIENT_METHODS, closed_form, em_hint, reached
from .inputs import CLIError, _split_spec, bind_file_data, load_guide, load_model, load_table, parse_assignments
from .launch import from_environment
from .prepare import check_arguments, scale_warning, standardize

MANIFEST = "fit.json"
RESULT_FILE = "result.pt"
NETCDF_FILE = "posterior.nc"
SUMMARY_FILE = "summary.csv"
RESPONSIBILITIES_FILE = "responsibilities.npz"
MANIFEST_FORMAT = 1
DRAWS = 500  # draws from q for the netCDF and the report's diagnosis: one replay pass serves both (seed 0)


# ---------------------------------------------------------------------------------------------------- fitting
def _save_fit(result: Any, out: Path, manifest: dict[str, Any], fit_warnings: list[str], title: str) -> dict[str, Path]:
    """Write result, netCDF, summary, responsibilities and the report into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"result": out / RESULT_FILE, "netcdf": out / NETCDF_FILE, "summary": out / SUMMARY_FILE}
    with _step(f"writing the result ({RESULT_FILE})"):
        result.save(str(paths["result"]))
    responsibilities = getattr(result, "responsibilities", None)
    if responsibilities:
        paths["responsibilities"] = out / RESPONSIBILITIES_FILE
        np.savez(paths["responsibilities"], **{k: v.detach().cpu().numpy() for k, v in responsibilities.items()})
    manifest = {**manifest, "warnings": fit_warnings, "files": {k: p.name for k, p in paths.items()}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with _step(f"writing posterior draws ({NETCDF_FILE}, {DRAWS} draws)"):
            save_netcdf(result.to_arviz(num_samples=DRAWS, seed=0), str(paths["netcdf"]))
        with _step(f"writing the summary ({SUMMARY_FILE})"):
            summary = result.summary()
            summary.to_csv(paths["summary"])
        with _step(f"writing the report ({REPORT_FILE}, diagnosis from {DRAWS} draws)"):
            paths["report"] = build_report(result, out, title=title, fit_warnings=fit_warnings, summary=summary,
                                           diagnose_samples=DRAWS)
    for line in _warning_lines(caught):
        _warn(line)
    return paths


def _fit_title(manifest: dict[str, Any]) -> str:
    parsed = _split_spec(manifest["model"])
    model = parsed[1] if parsed else manifest["model"]
    scaled = ", standardised columns" if manifest.get("standardize") else ""
    return f"{model} on {Path(manifest['data']).name} ({manifest['method']}{scaled})"


#: the gradient loop's defaults when it starts at a closed-form maximum (options given on the command line win)
CLOSED_FORM_START_OPTIONS = {"steps": 100, "lr": 1e-4}
#: methods whose results the command cannot save (it saves every fit)
UNSAVED = ("nuts",)


def _method(given: str | None, entry: Any) -> str:
    """The method named by ``--method`` (any case), or the built-in model's own: EM, or svi for PPCA and factor
    analysis (started at their closed-form maximum)."""
    if given is None:
        if entry is None:
            raise CLIError(f"--method is required for a model from a file; choose one of: "
                           f"{', '.join(m for m in methods() if m not in UNSAVED)}")
        return "svi" if entry.function in CLOSED_FORM_MODELS else "em"
    method = given.strip().lower()
    if method not in methods():
        raise CLIError(f"unknown method {given!r}; choose one of: {', '.join(m for m in methods() if m not in UNSAVED)}")
    if method in UNSAVED:  # the command saves every fit, and these results have no file format yet
        raise CLIError(f"ppl-lvm fit cannot run method {method!r}: its results cannot be saved to a file yet; run "
                       f"lvm.infer(model, data, method={method!r}) from Python")
    return method


def cmd_fit(ns: argparse.Namespace) -> int:
    launch = from_environment()  # started by torchrun: this copy's rank, and all the copies
    quiet = open(os.devnull, "w") if launch.rank != 0 else None  # rank 0 prints
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            return _fit(ns, launch)
    finally:
        launch.stop()
        if quiet:
            quiet.close()


def _fit(ns: argparse.Namespace, launch: Any) -> int:
    options = parse_assignments(ns.option, "--option")
    launch.start(options)
    args = parse_assignments(ns.arg, "--arg")
    columns = [c.strip() for c in ns.columns.split(",")] if ns.columns else None
    if columns is not None and (not all(columns) or len(set(columns)) != len(columns)):
        raise CLIError(f"--columns expects distinct names separated by commas, got {ns.columns!r}")
    data_path = Path(ns.data)
    with launch.together("reading the model and its rows of the data file"):
        model, entry, model_spec = load_model(ns.model)
        method = _method(ns.method, entry)
        guide, guide_spec = load_guide(ns.guide)
        if launch.distributed and entry is not None and entry.layout != "table":
            raise CLIError(f"{ns.model} fits one sequence, which cannot be split between the {launch.world_size} "
                           "processes of torchrun; run it in one process")
        if launch.distributed and ns.standardize:
            raise CLIError("--standardize takes each column's mean and scale over all the rows, and under torchrun "
                           "each process reads only its own rows; standardise the file first, or run in one process")
        loaded, labels = load_table(data_path, columns, ns.key, ns.sequence_column, shard=launch.shard)
        fit_warnings: list[str] = []
        scaling = None
        if ns.standardize:
            loaded, scaling = standardize(loaded, entry, model.__name__)
        else:
            unscaled = scale_warning(loaded, entry, args, method in GRADIENT_METHODS, data_path.name)
            if unscaled is not None:
                if launch.rank == 0:
                    _warn(unscaled)
                fit_warnings.append(unscaled)
        data = bind_file_data(model, entry, loaded, labels, args, data_path)
        check_arguments(model, data, args)
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    manifest = {
        "format": MANIFEST_FORMAT,
        "ppl_lvm": __version__,
        "model": model_spec,
        "guide": guide_spec,
        "data": str(data_path.resolve()),
        "columns": columns,
        "key": ns.key,
        "method": method,
        "options": {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in ns.option or ()},
        "args": {item.partition("=")[0].strip(): item.partition("=")[2].strip() for item in ns.arg or ()},
        "standardize": scaling,
        "sequence_column": ns.sequence_column,
    }
    if ns.sequence_column is not None:
        manifest["sequences"] = labels["sequence_names"]
    start_state = None
    # every row of the file (read once, when first asked for): the closed form's data and rank 0's outputs under torchrun
    all_rows = functools.cache(lambda: bind_file_data(model, entry, *load_table(data_path, columns, ns.key), args,
                                                      data_path))
    with launch.together("computing the closed-form maximum"):
        # of all the rows: under torchrun each rank reads the whole table for it (a D x D problem), so the start is
        # the same on every rank and the check after the fit is against the maximum of the data set, not of a shard
        form = closed_form(entry, model, _all_rows(launch, entry, data, all_rows))
        if form is not None and method in GRADIENT_METHODS:
            start_state = form.start_state(model, with_guide=guide is None)
    if form is not None:
        _say(f"{model.__name__}: the maximum log-likelihood is {form.maximum:.1f} ({form.how})")
        if method in GRADIENT_METHODS:
            # from the maximum, larger steps only add noise (Adam moves every coordinate by about lr per step)
            options = {**CLOSED_FORM_START_OPTIONS, **options}
            _say(f"{method} starts at that maximum" + (", its guide at the exact posterior" if guide is None else "")
                 + f", and runs {options['steps']} steps at lr={options['lr']} (change with --option steps=, lr=)")
    first = next(iter(data))
    shape = "x".join(str(s) for s in getattr(data[first], "shape", ()))
    if launch.distributed:
        shape += f" on rank 0, one of {launch.world_size} processes started by torchrun"
    _say(f"fitting {model.__name__} to {data_path.name} ({first}: {shape}) with method {method!r} "
         "(Ctrl-C stops and saves the fit so far)")
    start = time.perf_counter()
    catcher, caught = _record_warnings()
    try:
        kwargs = {"guide": guide} if guide is not None else {}
        if start_state is None:
            result = infer(model, data, method=method, **kwargs, **options)
        else:
            backend = get_backend(method)
            result = fit_result(backend, make_problem(backend, model, data, guide=guide, init_state=start_state,
                                                      options=options))
    except KeyboardInterrupt:  # EM, or setup before the loop: no result exists yet
        print(f"{PROG}: interrupted before the fit produced a result; nothing was saved", file=sys.stderr)
        return 130
    finally:
        catcher.__exit__(None, None, None)
    caught_lines = _warning_lines(caught)
    if launch.distributed:  # rank 0 writes the outputs of all the rows
        launch.complete(result, model, all_rows)
        if launch.rank != 0:
            return 130 if result.interrupted else 0
        manifest["world_size"] = launch.world_size
    for line in caught_lines:
        _warn(line)
    fit_warnings += caught_lines
    elapsed = time.perf_counter() - start
    if result.interrupted:
        _say(f"interrupted after {elapsed:.1f} s at step {result.steps}; saving the fit so far")
    else:
        _say(f"fitted in {elapsed:.1f} s: {result!r}")
    check = reached(form, result) if form is not None else None
    if check is not None:
        exact, at_maximum = check
        manifest["closed_form"] = {"maximum": form.maximum, "log_likelihood": exact, "reached": at_maximum,
                                   "how": form.how, "started_there": start_state is not None}
        if at_maximum:
            _say(f"exact log-likelihood {exact:.1f}: the maximum ({form.maximum:.1f}, {form.how}) is reached")
        else:
            line = (f"the fit did not reach the maximum: its exact log-likelihood is {exact:.1f}, "
                    f"{form.maximum - exact:.1f} below the maximum {form.maximum:.1f} ({form.how})")
            _warn(line)
            fit_warnings.append(line)
    hint = em_hint(result, method, model.__name__)
    if hint is not None:
        _hint(hint)
        manifest["hints"] = [hint]
    paths = _save_fit(result, out, manifest, fit_warnings, _fit_title(manifest))
    if result.interrupted:
        print(f"{PROG}: interrupted: the fit so far ({result.steps} steps) was saved to {out}", file=sys.stderr)
    for kind, path in paths.items():
        _say(f"  {kind:<16} {path}")
    return 130 if result.interrupted else 0


def cmd_report(ns: argparse.Namespace) -> int:
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
        result = load(str(result_path), model=model, guide=guide if callable(guide) else None)
        resp_path = folder / RESPONSIBILITIES_FILE
        if hasattr(result, "responsibilities") and not result.responsibilities and resp_path.is_file():
            with np.load(resp_path, allow_pickle=False) as saved:
                result.responsibilities = {k: torch.from_numpy(saved[k]) for k in saved.files}
        with _step(f"writing the report ({REPORT_FILE})"):
            path = build_report(result, folder, title=_fit_title(manifest), fit_warnings=manifest.get("warnings", []))
    for line in _warning_lines(caught):
        _warn(line)
    _say(f"report: {path}")
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def cmd_demo(ns: argparse.Namespace) -> int:
    run_demo(Path(ns.out), fast=ns.fast)
    return 0


def _all_rows(launch: Any, entry: Any, data: dict[str, Any], read_all: Any) -> dict[str, Any]:
    """``data``, or under torchrun every row of the file (``read_all()``) where the model has a closed form."""
    if not launch.distributed or entry is None or entry.function not in CLOSED_FORM_MODELS:
        return data
    return read_all()
