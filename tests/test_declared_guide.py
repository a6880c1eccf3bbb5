"""A model's declared guide (``@model.guide``) is used by every variational method unless ``guide=`` is given."""

import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.models.factor import ppca


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 2, generator=g) @ torch.randn(2, 4, generator=g) + 0.1 * torch.randn(40, 4, generator=g)


@pytest.mark.parametrize("method", ["svi", "meanfield", "iwae"])
def test_every_variational_method_uses_the_declared_guide(method, data):
    fit = lvm.infer(ppca, {"x": data, "q": 2}, method=method, steps=3, seed=0)
    assert fit.guide_name == "user guide linear_gaussian_guide()", fit.guide_name
    assert fit.guide is ppca.user_guide


@pytest.mark.parametrize("method", ["meanfield", "iwae"])
def test_an_explicit_guide_still_wins(method, data):
    fit = lvm.infer(ppca, {"x": data, "q": 2}, method=method, guide="normal", steps=3, seed=0)
    assert fit.guide_name == "normal"
