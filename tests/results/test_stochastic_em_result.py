"""The result of method="vem" / "mcem": history fields, save and load, queries through the guide."""

import numpy as np
import pytest
import torch
from demo_models import one_way_random_effects

import ppl_lvm as lvm
from ppl_lvm.errors import UnsupportedModelError


def _data():
    g = torch.Generator().manual_seed(1)
    return 2.0 + torch.randn(30, 1, generator=g) + 0.7 * torch.randn(30, 8, generator=g)


@pytest.mark.parametrize("method", ["vem", "mcem"])
def test_history_save_and_load(tmp_path, method, float64):
    y = _data()
    fit = lvm.infer(one_way_random_effects, {"y": y}, method=method, tol=None, max_iter=3)
    assert isinstance(fit, lvm.StochasticEMResult)
    assert fit.n_iter == 3 and len(fit.history) == 4 and len(fit.history_se) == 4
    assert list(fit.sample_sizes) == [10, 13, 17]
    assert np.all(fit.history_se > 0)
    assert fit.elbo == pytest.approx(fit.history[-1] * 30)
    fit.save(str(tmp_path / "fit"))
    back = lvm.load(str(tmp_path / "fit"), model=one_way_random_effects)
    assert isinstance(back, lvm.StochasticEMResult)
    np.testing.assert_array_equal(back.history, fit.history)
    np.testing.assert_array_equal(back.history_se, fit.history_se)
    np.testing.assert_array_equal(back.sample_sizes, fit.sample_sizes)
    assert fit.sample_posterior(5)["b"].shape == (5, 30)
    more = fit.fit_more(max_iter=2)  # continues from the fitted parameters (and guide)
    assert isinstance(more, lvm.StochasticEMResult) and more.n_iter == 2
    assert more.history[0] == pytest.approx(fit.history[-1], abs=0.05)


def test_a_fit_from_the_prior_has_no_guide_to_query(float64):
    fit = lvm.infer(one_way_random_effects, {"y": _data()}, method="mcem", proposal="prior", tol=None, max_iter=2)
    assert fit.guide_name == "prior (no guide)"
    with pytest.raises(UnsupportedModelError, match="proposal='guide'"):
        fit.sample_posterior(5)
    assert set(fit.summary().index) >= {"mu", "tau", "sigma"}
