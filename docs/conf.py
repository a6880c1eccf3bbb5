"""Sphinx configuration of the ppl_lvm API reference (``sphinx-build -W -b html docs docs/_build/html``).

The pages are built from the numpydoc docstrings by autodoc; nothing is fetched from the network at build time
(no intersphinx), so the build works offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, whatever ppl_lvm the environment has installed
os.environ.setdefault("MPLBACKEND", "Agg")

project = "ppl_lvm"
author = "the ppl_lvm authors"
copyright = "the ppl_lvm authors, Apache-2.0"  # noqa: A001 - Sphinx's name for it

extensions = ["sphinx.ext.autodoc", "numpydoc"]
exclude_patterns = ["_build", "errors.md"]  # errors.md is Markdown, read on GitHub and by tests/test_docs.py
root_doc = "index"
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings' Parameters sections describe the types; signatures stay short
autodoc_default_options = {"show-inheritance": False}
numpydoc_show_class_members = False  # members are listed by autodoc's :members:, once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

