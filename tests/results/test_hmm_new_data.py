"""A fitted hidden Markov chain on new sequences (``score_samples``, ``predict_proba``, ``predict``) against hmmlearn
at the same parameters, its draws (``sample``), and the refusals of the new-data methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hmmlearn.hmm import CategoricalHMM, GaussianHMM

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm_vectorized, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.models.regression import regression_mixture, simulate_regression_mixture

START, TRANS = np.array([0.7, 0.3]), np.array([[0.9, 0.1], [0.2, 0.8]])
EMISSION = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])


def simulate(seed: int, lengths) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        z, seq = rng.choice(2, p=START), []
        for _ in range(n):
            seq.append(rng.choice(3, p=EMISSION[z]))
            z = rng.choice(2, p=TRANS[z])
        out.append(torch.tensor(seq))
    return out


@pytest.fixture
def fitted(float64):
    x, lengths = pad_sequences(simulate(0, [30, 25, 40, 18]))
    return lvm.infer(categorical_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em", tol=1e-8, max_iter=500)


def hmmlearn_of(fit) -> CategoricalHMM:
    model = CategoricalHMM(n_components=2, n_features=3, init_params="", params="")
    model.startprob_ = fit.params["start"].numpy()
    model.transmat_ = fit.params["trans"].numpy()
    model.emissionprob_ = fit.params["emission"].numpy()
    return model


def test_new_sequences_of_other_lengths_score_as_in_hmmlearn(fitted):
    sequences = simulate(1, [12, 30, 7])  # other lengths and another number of sequences than the fit's
    x, lengths = pad_sequences(sequences)
    reference = hmmlearn_of(fitted)
    flat, sizes = torch.cat(sequences).numpy().reshape(-1, 1), [len(s) for s in sequences]
    score = fitted.score_samples(x, lengths=lengths)
    np.testing.assert_allclose(
        score.numpy(), [reference.score(s.numpy().reshape(-1, 1)) for s in sequences], rtol=1e-10
    )
    proba = fitted.predict_proba(x, lengths=lengths)
    assert proba.shape == (3, 30, 2)
    mask = torch.arange(30)[None, :] < lengths[:, None]
    np.testing.assert_allclose(proba[mask].numpy(), reference.predict_proba(flat, sizes), rtol=1e-8, atol=1e-12)
    assert torch.all(proba[~mask] == 0)
    path = fitted.predict(x, lengths=lengths)
    np.testing.assert_array_equal(path[mask].numpy(), reference.predict(flat, sizes))
    assert torch.all(path[~mask] == -1)
    # the fit's own data: the responsibilities and the Viterbi path it reported
    own = fitted.data.kwargs
    torch.testing.assert_close(fitted.predict_proba(own["x"], lengths=own["lengths"]), fitted.responsibilities["z"])
    assert torch.equal(fitted.predict(own["x"], lengths=own["lengths"]), fitted.map_assignments()["z"])


def test_a_vectorised_gaussian_chain_scores_new_sequences_as_in_hmmlearn(float64):
    g = torch.Generator().manual_seed(0)
    levels = 3.0 * (torch.arange(40) % 10 < 5)
    x = levels[None, :, None] + torch.randn(4, 40, 2, generator=g)
    fit = lvm.infer(gaussian_hmm_vectorized, {"x": x, "K": 2}, method="em", tol=1e-8, max_iter=500)
    reference = GaussianHMM(n_components=2, covariance_type="diag", init_params="", params="")
    reference.startprob_, reference.transmat_ = fit.params["start"].numpy(), fit.params["trans"].numpy()
    reference.means_, reference.covars_ = fit.params["locs"].numpy(), fit.params["scales"].numpy() ** 2
    new = levels[None, :15, None] + torch.randn(3, 15, 2, generator=g)
    flat, sizes = new.reshape(-1, 2).numpy(), [15] * 3
    np.testing.assert_allclose(fit.score_samples(new).numpy(), [reference.score(s.numpy()) for s in new], rtol=1e-10)
    np.testing.assert_allclose(
        fit.predict_proba(new).reshape(-1, 2).numpy(), reference.predict_proba(flat, sizes), rtol=1e-8, atol=1e-12
    )
    np.testing.assert_array_equal(fit.predict(new).reshape(-1).numpy(), reference.predict(flat, sizes))


def test_sampled_sequences_follow_the_fitted_chain(fitted):
    x, states = fitted.sample(4000, seed=3, n_steps=3)
    assert x.shape == states.shape == (4000, 3) and x.dtype == torch.long
    again = fitted.sample(4000, seed=3, n_steps=3)
    assert torch.equal(again[0], x) and torch.equal(again[1], states)
    assert fitted.sample(2)[0].shape == (2, 40)  # default: the fit's longest sequence
    start, trans, emission = (fitted.params[k] for k in ("start", "trans", "emission"))
    # frequencies within 4.5 standard errors of the fitted probabilities (binomial), from 4000 sequences; over
    # sample seeds 0-4 the largest |z| seen was 3.1
    checks = [(states[:, 0] == 0, start[0])]
    for k in range(2):
        checks.append((states[:, 1][states[:, 0] == k] == 0, trans[k, 0]))
        on_k = x[states == k]
        checks += [(on_k == c, emission[k, c]) for c in range(3)]
    for hits, p in checks:
        n = len(hits)
        if n == 0:  # no sequence starts in a state of start probability 0
            continue
        if p * (1 - p) < 1e-12:  # an estimate of 0 or 1 (the start of four sequences): every draw agrees
            assert float(hits.double().mean()) == pytest.approx(float(p), abs=1e-9)
            continue
        z = (hits.double().mean() - p) / torch.sqrt(p * (1 - p) / n)
        assert abs(float(z)) < 4.5, (float(z), float(p), n)


@lvm.model
def _t_mixture(y, K=2):
    """A mixture of Student t's: no closed-form M-step (the generic EM route)."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    loc = lvm.param(torch.tensor([-1.0, 1.0]))
    scale = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.StudentT(4.0, loc[z], scale[z]), y)


def test_new_data_methods_refuse_what_they_cannot_do(float64):
    x = torch.cat([torch.randn(20, 2) - 3, torch.randn(20, 2) + 3])
    mixture = lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="em")
    with pytest.raises(TypeError, match=r"predict_proba\(\) of a mixture takes only the new data x, not \['lengths'\]"):
        mixture.predict_proba(x, lengths=torch.tensor([3]))
    with pytest.raises(TypeError, match=r"n_steps= sets the length of sampled sequences .* a mixture"):
        mixture.sample(3, n_steps=4)
    rx, ry, _ = simulate_regression_mixture(
        40, weights=[0.5, 0.5], intercepts=[-3.0, 3.0], coefs=[[2.0], [-1.0]], scales=[0.5, 0.5], seed=0
    )
    generic = lvm.infer(_t_mixture, ry, method="em", max_iter=20)
    assert not generic.closed_form
    for call in (lambda: generic.predict(ry), lambda: generic.sample(3)):
        with pytest.raises(ValueError, match=r"needs a recognised mixture or hidden Markov chain .* generic EM route"):
            call()
    # a mixture of regressions is closed form, but its kernels read a response and a design, not one argument
    regressions = lvm.infer(regression_mixture, {"x": rx, "y": ry, "K": 2}, method="em", max_iter=200)
    with pytest.raises(ValueError, match=r"reads? .* refit on the new data"):
        regressions.predict(rx)
    with pytest.raises(ValueError, match=r"draws responses given covariates"):
        regressions.sample(3)
    chain = lvm.infer(
        categorical_hmm, {"x": torch.tensor([[0, 0, 1, 1, 2, 2]] * 3), "K": 2}, method="em", max_iter=50, tol=None
    )
    with pytest.raises(ValueError, match=r"n_steps must be a positive integer, got 0"):
        chain.sample(3, n_steps=0)
    with pytest.raises(ValueError, match=r"lengths must be 2 integers in \[1, 6\]"):
        chain.predict(torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), lengths=torch.tensor([7, 2]))
