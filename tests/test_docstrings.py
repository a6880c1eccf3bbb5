"""The examples in the public docstrings run as written."""

import doctest
import importlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# the core modules with examples, and every ready-made model module (each model's docstring has a runnable example)
MODULES = ["ppl_lvm.model", "ppl_lvm.guides"] + sorted(
    f"ppl_lvm.models.{p.stem}" for p in (ROOT / "models").glob("*.py") if not p.stem.startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failures == 0
