"""The examples in the public docstrings run as written."""

import doctest
import importlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# every library module that has examples in its docstrings, and every ready-made model module (each model's
# docstring has a runnable example, so a model module without one fails here)
LIBRARY = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "ppl_lvm").rglob("*.py")
    if ">>>" in p.read_text()
)
MODULES = LIBRARY + sorted(f"ppl_lvm.models.{p.stem}" for p in (ROOT / "models").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failures == 0
