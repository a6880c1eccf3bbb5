import io

import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm


def test_progress_bar_shows_the_running_loss(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    lvm.infer(normal_normal, torch.randn(20), steps=200, progress=True)
    text = stream.getvalue()
    assert "svi" in text and "200/200" in text and "loss=" in text


def test_progress_bar_is_off_when_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    lvm.infer(normal_normal, torch.randn(20), steps=20)
    assert stream.getvalue() == ""


def test_device_option_moves_the_data():
    fit = lvm.infer(normal_normal, torch.randn(20), steps=5, device="cpu")
    assert fit.data.kwargs["x"].device.type == "cpu" and fit.options["device"] == "cpu"


def test_convergence_warning_when_patience_is_never_met():
    with pytest.warns(lvm.ConvergenceWarning, match=r"stopped after 30 steps before the smoothed loss settled"):
        fit = lvm.infer(normal_normal, torch.randn(20) + 20, steps=30, lr=0.05, patience=25, tol=0.0)
    assert not fit.converged


def test_same_seed_same_losses():
    x = torch.randn(20)
    a = lvm.infer(normal_normal, x, steps=30, seed=5).losses
    b = lvm.infer(normal_normal, x, steps=30, seed=5).losses
    c = lvm.infer(normal_normal, x, steps=30, seed=6).losses
    assert (a == b).all() and not (a == c).all()


def test_fits_do_not_leak_parameters_into_the_global_store():
    import pyro

    lvm.infer(normal_normal, torch.randn(20), steps=5)
    assert list(pyro.get_param_store().keys()) == []


def test_ready_made_models_are_importable_as_ppl_lvm_models():
    import ppl_lvm.models

    assert ppl_lvm.models.__file__.endswith("__init__.py")
