import os
import pickle
import re

import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm
from ppl_lvm import dist


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
    with pytest.raises(lvm.PplLvmError, match="refused without running them|damaged or not a ppl_lvm result"):
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


def test_a_file_with_one_flipped_byte_in_a_tensor_is_refused(fitted, tmp_path):
    path = tmp_path / "fit.pt"
    fitted.save(str(path))
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["params"]))
    flat = payload["params"][name].reshape(-1).view(torch.uint8)
    flat[0] ^= 1  # what a damaged disk or transfer does: one bit of one stored number
    torch.save(payload, path)
    with pytest.raises(lvm.PplLvmError, match=rf"damaged or not a ppl_lvm result: params/{re.escape(name)} differ"):
        lvm.load(str(path), model=fitted.model)


def test_changed_metadata_is_refused(fitted, tmp_path):
    path = tmp_path / "fit.pt"
    fitted.save(str(path))
    payload = torch.load(path, weights_only=True)
    payload["meta"] = payload["meta"].replace('"steps": ', '"steps": 1')
    torch.save(payload, path)
    with pytest.raises(lvm.PplLvmError, match=r"damaged or not a ppl_lvm result: meta differ"):
        lvm.load(str(path))


def test_save_checks_the_target_and_leaves_nothing_behind(fitted, tmp_path):
    with pytest.raises(lvm.PplLvmError, match=r"the folder .*missing does not exist; create it first"):
        fitted.save(str(tmp_path / "missing" / "fit.pt"))
    (tmp_path / "plain").write_text("x")
    with pytest.raises(lvm.PplLvmError, match=r"plain is a file, not a folder"):
        fitted.save(str(tmp_path / "plain" / "fit.pt"))
    with pytest.raises(lvm.PplLvmError, match=r"it is a folder; give a file name"):
        fitted.save(str(tmp_path))
    fitted.save(str(tmp_path / "fit.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt", "plain"]  # no temporary file left


def test_loading_into_a_model_with_other_parameters_lists_both(fitted, tmp_path):
    path = tmp_path / "fit.pt"
    fitted.save(str(path))

    @lvm.model
    def other(x):
        center = lvm.param(torch.tensor(0.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(center, 1.0), x)

    with pytest.raises(lvm.PplLvmError, match=r"saved from a model with parameters \[.*\], but other\(\) has \['center'\]"):
        lvm.load(str(path), model=other)


def test_a_file_of_format_1_without_checksums_still_loads(fitted, tmp_path):
    path = tmp_path / "old.pt"
    fitted.save(str(path))
    payload = torch.load(path, weights_only=True)
    del payload["checksums"]
    payload["meta"] = payload["meta"].replace('"format": 2', '"format": 1')
    torch.save(payload, path)
    loaded = lvm.load(str(path), model=fitted.model)
    assert all(torch.equal(loaded.params[k], v) for k, v in fitted.params.items())
    payload["meta"] = payload["meta"].replace('"format": 1', '"format": 2')  # a new file whose checksums were cut
    torch.save(payload, path)
    with pytest.raises(lvm.PplLvmError, match=r"damaged or not a ppl_lvm result \(its checksums are missing\)"):
        lvm.load(str(path))
