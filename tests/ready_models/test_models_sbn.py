"""models.sbn.SigmoidBeliefNet: the exact log-likelihood against the model's own trace and importance sampling; a
score-function fit learns."""

import itertools

import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.sbn import SigmoidBeliefNet


def test_the_exact_log_likelihood_sums_the_model_over_every_code(float64):
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(6, latent_dim=3, hidden=()).double()
    with torch.no_grad():
        sbn.generative.prior_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    # independent: the model's own trace at each of the 8 codes (every row given the same code), log-sum-exp'd
    joint = []
    for code in itertools.product((0.0, 1.0), repeat=3):
        z = torch.tensor(code, dtype=torch.float64).expand(4, 3)
        trace = poutine.trace(poutine.condition(sbn.model, data={"z": z})).get_trace(x)
        trace.compute_log_prob()
        joint.append(trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"])
    expected = torch.logsumexp(torch.stack(joint), dim=0)
    assert torch.allclose(sbn.exact_log_likelihood(x), expected, rtol=1e-12)
    # the importance-weighted estimate approaches it (K = 20000 draws from the untrained encoder)
    assert torch.allclose(sbn.log_likelihood(x, num_particles=20000), expected, atol=0.02)


def test_a_score_function_fit_raises_the_held_out_log_likelihood():
    split = binarized_digits()
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(64, latent_dim=10, hidden=(32,))
    before = float(sbn.exact_log_likelihood(split.x_test[:200]).mean())
    fit = lvm.infer(sbn.model, split.x_train[:400], guide=sbn.guide, steps=300, lr=0.02, batch_size=100, seed=0)
    after = float(sbn.exact_log_likelihood(split.x_test[:200]).mean())
    assert fit.options["baseline"] == "average"
    # seeds 0-4: from -43.8 .. -46.7 to -22.2 .. -22.8 nats per digit (a gain of 21.5-24.5)
    assert after > before + 10, (after, before)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        SigmoidBeliefNet(64, latent_dim=0)
    with pytest.raises(ValueError, match=r"2\*\*20 codes; it is offered up to 16 bits"):
        SigmoidBeliefNet(64, latent_dim=20).exact_log_likelihood(torch.zeros(1, 64))
