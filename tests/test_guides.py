"""A model's declared guide (``@model.guide``) is used by every variational method unless ``guide=`` is given."""

import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist
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


@lvm.model
def two_latents(x):
    mu = lvm.latent(dist.Normal(0.0, 10.0))
    log_s = lvm.latent(dist.Normal(0.0, 1.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, log_s.exp()), x)


def test_a_guide_missing_a_continuous_latent_is_refused_with_both_sites_named():
    @lvm.guide
    def partial(x):
        m = lvm.param(torch.tensor(0.0))
        mu = lvm.latent(dist.Normal(m, 1.0))  # noqa: F841 - names the site
    with pytest.raises(lvm.ModelCheckError, match=r"site 'log_s' \(.*test_guides\.py:\d+ in two_latents\(\)\): the guide "
                       r"user guide partial does not sample the model's continuous latent\(s\) 'log_s'"):
        lvm.infer(two_latents, torch.randn(10), guide=partial, steps=2)


def test_a_guide_site_the_model_lacks_is_refused_with_its_line():
    @lvm.guide
    def extra(x):
        mu = lvm.latent(dist.Normal(lvm.param(torch.tensor(0.0), name="m"), 1.0))  # noqa: F841
        log_s = lvm.latent(dist.Normal(0.0, 1.0))  # noqa: F841
        sigma = lvm.latent(dist.Normal(0.0, 1.0))  # noqa: F841
    with pytest.raises(lvm.ModelCheckError, match=r"site 'sigma' \(.*test_guides\.py:\d+ in extra\(\)\): the guide user "
                       r"guide extra samples \['sigma'\], which the model does not have"):
        lvm.infer(two_latents, torch.randn(10), guide=extra, steps=2)


def test_a_complete_user_guide_passes_the_check():
    @lvm.guide
    def full(x):
        mu = lvm.latent(dist.Normal(lvm.param(torch.tensor(0.0), name="m"), 1.0))  # noqa: F841
        log_s = lvm.latent(dist.Normal(lvm.param(torch.tensor(0.0), name="s"), 0.5))  # noqa: F841
    fit = lvm.infer(two_latents, torch.randn(10), guide=full, steps=2)
    assert fit.steps == 2
