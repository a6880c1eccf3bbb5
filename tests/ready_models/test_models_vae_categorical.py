"""models.vae_categorical.CategoricalVAE: the relaxed and the score-function fits train; exact and IW bounds agree."""

import math

import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.vae_categorical import CategoricalVAE


@pytest.fixture(scope="module")
def digits():
    split = binarized_digits()
    return split.x_train[:400], split.x_test[:200]


def test_the_relaxed_categorical_vae_trains_and_beats_a_random_decoder_on_held_out_digits(digits):
    train, test = digits
    torch.manual_seed(0)
    vae = CategoricalVAE(64, num_categories=8, num_latents=2, hidden=(64,))
    random_decoder = float(vae.exact_log_likelihood(test).mean())  # the initial weights: nothing learned
    guide = vae.guide(relaxed=True, temperature=lvm.temperature_schedule(1.0, 0.5, steps=400))
    fit = lvm.infer(vae.model, train, guide=guide, steps=400, lr=0.01, batch_size=100, seed=0)
    held_out = float(vae.exact_log_likelihood(test).mean())  # log p(x) summed over the 8**2 codes
    # seeds 0-4: random decoder -44.1 to -44.6 nats per digit; trained -23.8 to -24.5 (a gain of 19.6-20.7 nats)
    assert math.isfinite(held_out) and held_out > random_decoder + 10, (held_out, random_decoder)
    assert guide.last_temperature == pytest.approx(0.5 ** (399 / 400))
    # the importance-weighted estimate with the discrete guide is near the exact value (seeds 0-4: -0.009 to +0.001)
    iw = float(vae.log_likelihood(test, num_particles=200).mean())
    assert held_out - 3 < iw <= held_out + 0.05, (iw, held_out)
    # result.elbo is the ELBO of the discrete model with the unrelaxed guide: below the exact log-likelihood
    assert math.isfinite(fit.elbo) and fit.elbo < float(vae.exact_log_likelihood(train).sum())


def test_the_score_function_fit_trains_too_and_one_code_is_summed_out_exactly(digits):
    train, test = digits
    torch.manual_seed(0)
    vae = CategoricalVAE(64, num_categories=10, hidden=(32,))
    before = float(vae.exact_log_likelihood(test).mean())
    fit = lvm.infer(vae.model, train, guide=vae.guide(), steps=200, lr=0.01, batch_size=100, seed=0)
    assert fit.options["baseline"] == "average" and fit.options["score_function_sites"] == ["c"]
    after = float(vae.exact_log_likelihood(test).mean())
    # seeds 0-4: from -44.1 .. -44.8 to -23.7 .. -24.5 nats per digit
    assert after > before + 10, (after, before)
    # with no guide the code is enumerated: the bound of the fit is the exact log-likelihood
    exact = lvm.infer(vae.model, train, guide="none", steps=5, lr=0.01)
    assert exact.elbo == pytest.approx(float(vae.exact_log_likelihood(train).sum()), rel=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_categories must be a positive integer"):
        CategoricalVAE(64, num_categories=0)
    vae = CategoricalVAE(64, num_categories=10, num_latents=4)
    with pytest.raises(ValueError, match=r"K\*\*M = 10000 codes"):
        vae.exact_log_likelihood(torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(N, 64\)"):
        vae.exact_log_likelihood(torch.zeros(2, 63))
