"""Free bits (method="meanfield", free_bits=...) and the posterior-collapse experiment on binarised digits."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import ppl_lvm as lvm
from ppl_lvm.backends.meanfield import FreeBitsMeanField_ELBO
from ppl_lvm.datasets import binarized_digits


def _vae(latent_dim=4, **kw):
    from ppl_lvm.models.vae import VAE

    return VAE(64, latent_dim=latent_dim, hidden=(16,), **kw)


@pytest.fixture(scope="module")
def digits():
    return binarized_digits()


def _first_loss(vae, x, initial, **options):
    """The loss of the first step (before any update) from the same initial weights and seed."""
    vae.load_state_dict(initial)
    return lvm.infer(vae.model, x, method="meanfield", guide=vae.guide, steps=1, seed=0, **options).losses[0]


# ---------------------------------------------------------------------------------------------------- free bits
def test_free_bits_zero_is_trace_mean_field(float64, digits):
    x = digits.x_train[:120].to(torch.get_default_dtype())
    vae = _vae()
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    for options in ({}, {"batch_size": 40}, {"num_particles": 3}, {"beta": 0.3, "batch_size": 60}):
        plain = _first_loss(vae, x, initial, **options)
        floored = _first_loss(vae, x, initial, free_bits=0.0, **options)
        assert floored == pytest.approx(plain, rel=1e-12, abs=1e-9), options
    # the estimator itself, without the fit loop: same seed, same draws, the same loss
    vae.load_state_dict(initial)
    losses = []
    for elbo in (TraceMeanField_ELBO(max_plate_nesting=1), FreeBitsMeanField_ELBO(0.0, max_plate_nesting=1)):
        pyro.set_rng_seed(3)
        losses.append(elbo.loss(vae.model, vae.guide, x))
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)


def _kl_per_dim(vae, x):
    loc, scale = vae.encode(x)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0))
    return kl.mean(0)


def _encoder_grads(vae, x, elbo, seed=5):
    pyro.clear_param_store()
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    last = vae.encoder.net[-1]
    return last.weight.grad.clone(), last.bias.grad.clone()


def test_free_bits_cut_the_kl_gradient_of_dimensions_under_the_floor(float64, digits):
    x = digits.x_train[:64].to(torch.get_default_dtype())
    vae = _vae(latent_dim=4)
    with torch.no_grad():  # dims 0, 1 far from the prior (KL ~ 4.5, ~2), dims 2, 3 close to it (KL < 0.3)
        vae.encoder.net[-1].bias[:4] = torch.tensor([3.0, 2.0, 0.0, 0.0])
    kl = _kl_per_dim(vae, x)
    floor = 1.0
    above = kl > floor
    assert above.tolist() == [True, True, False, False], kl
    common = dict(max_plate_nesting=1)
    w_fb, b_fb = _encoder_grads(vae, x, FreeBitsMeanField_ELBO(floor, **common))
    w_kl, b_kl = _encoder_grads(vae, x, FreeBitsMeanField_ELBO(0.0, **common))
    w_rec, b_rec = _encoder_grads(vae, x, _NoKL(**common))
    L = 4
    rows = torch.arange(2 * L)
    for d in range(L):
        mine = (rows == d) | (rows == d + L)  # the output rows of loc_d and log_scale_d
        expected_w, expected_b = (w_kl, b_kl) if above[d] else (w_rec, b_rec)
        torch.testing.assert_close(w_fb[mine], expected_w[mine], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b_fb[mine], expected_b[mine], rtol=1e-10, atol=1e-12)
        # and the KL gradient is really there for that dimension without the floor
        assert (b_kl[mine] - b_rec[mine]).abs().max() > 1e-3
    # a floor above every dimension's KL leaves only the reconstruction gradient
    w_all, b_all = _encoder_grads(vae, x, FreeBitsMeanField_ELBO(10.0, **common))
    torch.testing.assert_close(w_all, w_rec, rtol=1e-10, atol=1e-12)


class _NoKL(TraceMeanField_ELBO):
    """The reconstruction term alone: the negative expected log-likelihood."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss = -sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"])
        return float(loss.detach()), loss


def test_free_bits_with_beta(float64, digits):
    x = digits.x_train[:80].to(torch.get_default_dtype())
    vae = _vae(latent_dim=4)
    with torch.no_grad():
        vae.encoder.net[-1].bias[:4] = torch.tensor([3.0, 2.0, 0.0, 0.0])
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    floor = 1.0
    l0 = _first_loss(vae, x, initial, free_bits=floor, beta=0.0)
    l1 = _first_loss(vae, x, initial, free_bits=floor)
    l3 = _first_loss(vae, x, initial, free_bits=floor, beta=3.0)
    # KL part at beta = 1: N * sum_d max(floor, mean_n KL_nd), from the encoder's outputs directly
    vae.load_state_dict(initial)
    expected = len(x) * _kl_per_dim(vae, x).clamp(min=floor).sum()
    assert l1 - l0 == pytest.approx(float(expected), rel=1e-10)
    assert l3 - l0 == pytest.approx(3 * float(expected), rel=1e-10)
    # with a minibatch the floored KL of the batch is scaled by N / batch_size like the likelihood
    lb = _first_loss(vae, x, initial, free_bits=floor, batch_size=40, beta=2.0)
    lb0 = _first_loss(vae, x, initial, free_bits=floor, batch_size=40, beta=0.0)
    order = torch.randperm(80, generator=torch.Generator().manual_seed(0))[:40]
    vae.load_state_dict(initial)
    expected_batch = 2.0 * (80 / 40) * 40 * _kl_per_dim(vae, x[order]).clamp(min=floor).sum()
    assert lb - lb0 == pytest.approx(float(expected_batch), rel=1e-10)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "0.5", None])
def test_free_bits_validation(digits, value):
    vae = _vae()
    with pytest.raises(ValueError, match="free_bits must be a number >= 0"):
        lvm.infer(vae.model, digits.x_train[:20], method="meanfield", guide=vae.guide, steps=1, free_bits=value)


@pytest.mark.parametrize("method", ["svi", "iwae"])
def test_free_bits_only_for_meanfield(digits, method):
    vae = _vae()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['free_bits'\].*needs method='meanfield'"):
        lvm.infer(vae.model, digits.x_train[:20], method=method, guide=vae.guide, steps=1, free_bits=0.5)


# ---------------------------------------------------------------------------------------------------- collapse
def _collapse_fit(x, **options):
    """A VAE whose decoder (16 -> 256 -> 256 -> 64) can model the images without using most of its 16 latents."""
    from ppl_lvm.models.vae import VAE

    torch.manual_seed(0)  # the same initial weights for every fit
    vae = VAE(64, latent_dim=16, hidden=(64,), decoder_hidden=(256, 256))
    fit = lvm.infer(vae.model, x, method="meanfield", guide=vae.guide, lr=1.5e-2, steps=200, seed=0, **options)
    return fit.diagnose(num_samples=50, ladder=(1,), warn=False)


def test_posterior_collapse_without_warmup_or_free_bits(digits):
    x = digits.x_train[:300]
    plain = _collapse_fit(x)
    warmup = _collapse_fit(x, beta=lvm.linear_warmup(200))
    free_bits = _collapse_fit(x, free_bits=0.5)
    counts = {name: d.active_units["z"] for name, d in (("plain", plain), ("warm-up", warmup), ("free bits", free_bits))}
    # measured (seed 0): plain ELBO 9 of 16 active units (Var_n E_q[z_d] > 0.01), KL warm-up 14, free bits 16;
    # with seed 1: 9, 13, 16. The plain fit's inactive units carry no information (KL per dim < 0.01 nats).
    assert counts["plain"] < counts["warm-up"] - 2, counts
    assert counts["plain"] < counts["free bits"] - 4, counts
    inactive = plain.mean_variance["z"] <= 0.01
    assert plain.kl_per_dim["z"][inactive].max() < 0.05
    # free bits hold every dimension's batch-averaged KL near the floor of 0.5 nats or above it
    assert free_bits.kl_per_dim["z"].min() > 0.4
