"""The ``ppl-lvm`` command (also ``python -m ppl_lvm``).

``ppl-lvm demo``
    Gaussian mixtures on iris by EM with K chosen by BIC, and a small VAE on binarised digits trained with IWAE;
    prints the numbers and writes an HTML report (:func:`ppl_lvm.cli.demo.run_demo`).
``ppl-lvm fit MODEL DATA [--method M] --out DIR``
    Fits a built-in model (``ppl-lvm fit --help`` lists them) or ``path/to/file.py:function`` to a CSV, TSV, .npy
    or .npz file and writes the result, the ArviZ netCDF, ``summary.csv`` and ``report.html`` to DIR.
    ``--standardize`` z-scores the columns first, ``--sequence-column`` reads several HMM sequences from one table;
    PPCA and factor analysis start at their closed-form maximum and are checked against it.
``ppl-lvm report DIR``
    Rebuilds the report of a fit folder from its manifest ``fit.json``.

Bad input ends with one line ``ppl-lvm: error: ...`` on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

from .console import REPORT_FILE as REPORT_FILE  # the report's file name, with the other names of a fit folder
from .inputs import MODELS, CLIError, load_model, load_table, parse_assignments
from .main import entry_point, main

__all__ = ["main", "MODELS", "CLIError", "parse_assignments", "load_table", "load_model", "entry_point"]
