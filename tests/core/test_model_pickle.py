"""Models and guides pickle by reference (module and qualified name), as Python pickles functions."""

from __future__ import annotations

import pickle

import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.models.mixtures import gaussian_mixture


@lvm.model
def normal_mean(x):
    mu = lvm.param(torch.tensor(0.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0), x)


def test_a_module_level_model_pickles_as_itself():
    assert pickle.loads(pickle.dumps(gaussian_mixture)) is gaussian_mixture
    assert pickle.loads(pickle.dumps(normal_mean)) is normal_mean


def test_a_fitted_em_result_pickles_and_still_scores(float64):
    x = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3])
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em")
    fit.standard_errors()  # fills the fit's cache (closures), which is not pickled
    again = pickle.loads(pickle.dumps(fit))
    assert again.model is gaussian_mixture
    torch.testing.assert_close(again.score_samples(x), fit.score_samples(x), rtol=0, atol=0)
    assert again.cache == {} and fit.cache


def test_a_model_defined_inside_a_function_says_why_it_cannot_pickle():
    @lvm.model
    def local(x):
        lvm.observe(dist.Normal(0.0, 1.0), x)

    with pytest.raises(pickle.PicklingError, match="define it at module level"):
        pickle.dumps(local)
