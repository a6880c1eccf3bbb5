import io

import pyro
import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.fit_step import BestSnapshot


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
    with pytest.warns(lvm.ConvergenceWarning, match=r"stopped after 30 steps before the loss settled: over its last"):
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


def test_a_parameter_leaving_its_support_mid_fit_keeps_the_fit():
    @lvm.model
    def scale_only(x):
        s = lvm.param(torch.tensor(1.0))  # unconstrained on purpose: one large SGD step takes it below zero
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(0.0, s), x)

    x = 0.01 * torch.randn(50, generator=torch.Generator().manual_seed(0))
    with pytest.raises(lvm.FitError, match=r"step 2 of svi failed \(.*test_fit_loop\.py:\d+ in scale_only\(\): "
                       r"lvm\.observe\(dist\.Normal\(0\.0, s\), x\)\): ValueError: Expected parameter scale.*the "
                       r"parameters were s=-23\.99.*kept in the exception's \.result") as info:
        lvm.infer(scale_only, x, method="svi", steps=100, lr=0.5, optimizer="sgd", seed=0)
    assert info.value.step == 2
    assert float(info.value.result.params["s"]) == 1.0  # the parameters the last finite loss was computed at


def test_the_best_parameter_snapshot_follows_the_store():
    store = pyro.get_param_store()
    with store.scope():
        a = pyro.param("a", torch.tensor([1.0, 2.0]))
        snapshot = BestSnapshot(store)
        buffer = snapshot.state["a"]
        with torch.no_grad():
            a.unconstrained().add_(1.0)
        assert snapshot.state["a"].tolist() == [1.0, 2.0]  # a copy, not a view
        snapshot.take()
        assert snapshot.state["a"] is buffer and buffer.tolist() == [2.0, 3.0]  # the same buffer, refilled
        pyro.param("b", torch.tensor(5.0))  # a parameter created mid-fit
        store._params["a"] = torch.tensor([7.0, 8.0], requires_grad=True)  # one replaced
        snapshot.take()
        assert snapshot.state["a"].tolist() == [7.0, 8.0] and float(snapshot.state["b"]) == 5.0
        with torch.no_grad():
            store._params["a"].mul_(0.0)
        snapshot.restore()
        assert store._params["a"].tolist() == [7.0, 8.0] and store._params["a"].requires_grad
