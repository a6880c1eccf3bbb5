import os
import pickle

import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm


@pytest.fixture
def fitted():
    x = 1.0 + torch.randn(30, generator=torch.Generator().manual_seed(0))
    return lvm.infer(normal_normal, x, steps=200, lr=0.05, seed=4)


def test_save_load_round_trip_is_bit_exact(fitted, tmp_path):
    path = tmp_path / "fit.lvm"
    fitted.save(path)
    loaded = lvm.load(path, model=normal_normal)
    assert loaded.params.keys() == fitted.params.keys()
    for name, value in fitted.params.items():
        assert torch.equal(loaded.params[name], value)
    assert (loaded.losses == fitted.losses).all()
    assert (loaded.method, loaded.steps, loaded.seed, loaded.guide_name) == ("svi", 200, 4, "normal")
    a = fitted.sample_posterior(100, seed=9)["mu"]
    b = loaded.sample_posterior(100, seed=9)["mu"]
    assert torch.equal(a, b)


def test_loaded_result_fits_further(fitted, tmp_path):
    path = tmp_path / "fit.lvm"
    fitted.save(path)
    more = lvm.load(path, model=normal_normal).fit_more(steps=50)
    assert more.steps == 50
    # it starts where the saved fit stopped, not from scratch, and it keeps learning
    assert more.losses[0] < fitted.losses[0]
    name = "MeanFieldNormal.locs.mu"
    assert not torch.equal(more.params[name], fitted.params[name])


def test_a_file_crafted_to_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.lvm"
    with open(path, "wb") as f:
        pickle.dump({"meta": "{}", "params": Exploit()}, f)
    with pytest.raises(lvm.PplLvmError, match="refused without running them|not a readable ppl_lvm result"):
        lvm.load(path)
    assert not marker.exists()


def test_loading_without_model_keeps_params_but_refuses_queries(fitted, tmp_path):
    path = tmp_path / "fit.lvm"
    fitted.save(path)
    loaded = lvm.load(path)
    assert torch.equal(loaded.params["MeanFieldNormal.locs.mu"], fitted.params["MeanFieldNormal.locs.mu"])
    with pytest.raises(RuntimeError, match="loaded without its model"):
        loaded.sample_posterior(3)


def test_an_em_result_round_trips_with_its_log_likelihood_and_bic(tmp_path):
    from ppl_lvm.models.mixtures import gaussian_mixture

    x = torch.cat([torch.randn(60, 2) - 3, torch.randn(60, 2) + 3])
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="em")
    path = tmp_path / "em.lvm"
    fit.save(path)
    loaded = lvm.load(path, model=gaussian_mixture)
    assert isinstance(loaded, type(fit))
    assert loaded.log_likelihood == fit.log_likelihood and loaded.bic() == fit.bic()
    assert (loaded.history == fit.history).all()
    for name, value in fit.params.items():
        assert torch.equal(loaded.params[name], value)
    # the exact log-likelihood recomputed from the loaded parameters by enumeration
    assert lvm.Result.log_evidence(loaded) == pytest.approx(fit.log_likelihood, rel=1e-5)
