"""The ``ppl-lvm`` argument parser, the error boundary of the command line and the console script."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from ..errors import PplLvmError
from .commands import cmd_demo, cmd_fit, cmd_report
from .console import PROG
from .inputs import CLIError, _model_list


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
    fit.add_argument("--method", help="em, svi, meanfield, iwae, renyi, ... in any case (default for a built-in "
                     "model: em; svi from the closed-form maximum for ppca and factor_analysis)")
    fit.add_argument("--guide", help="normal, fullrank, delta, or path/to/file.py:function (VI methods)")
    fit.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="an option of lvm.infer, e.g. n_init=5, steps=2000, lr=0.01 (repeatable)")
    fit.add_argument("--arg", action="append", metavar="KEY=VALUE",
                     help="another argument of the model, e.g. K=3 (repeatable)")
    fit.add_argument("--columns", metavar="A,B", help="columns of a CSV/TSV table to use, by name")
    fit.add_argument("--key", help="the array of an .npz file to use")
    fit.add_argument("--standardize", action="store_true",
                     help="z-score every data column (mean 0, sd 1) before fitting; the means and scales are saved "
                     "in fit.json, and the columns are labelled '(standardised)'")
    fit.add_argument("--sequence-column", metavar="NAME",
                     help="a CSV/TSV column naming the sequence of each row: a hidden Markov model reads one sequence "
                     "per value (in order of first appearance, rows in file order)")
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
    try:
        return version("ppl_lvm")
    except PackageNotFoundError:
        return "0.1.0"


def _expected_errors() -> tuple[type[BaseException], ...]:
    return (CLIError, PplLvmError, ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError)


def _one_line(exc: BaseException) -> str:
    """The message on one line (library messages may wrap)."""
    text = " ".join(str(exc).split("Trace Shapes:")[0].split()) or type(exc).__name__  # Pyro appends a shape table
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
