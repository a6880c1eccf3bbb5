"""The examples in the public docstrings run as written."""

import doctest
import importlib

import pytest
import torch

MODULES = ["ppl_lvm.model", "ppl_lvm.guides", "ppl_lvm.models.mixtures"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failures == 0
