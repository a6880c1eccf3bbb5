"""``lvm.infer(..., method="em")`` on hidden Markov models written with ``lvm.markov``: agreement with hmmlearn, monotonicity,
restarts (the kernels themselves are tested in test_hmm.py)."""

import warnings

import numpy as np
import pytest
import torch
from hmmlearn.hmm import CategoricalHMM, GaussianHMM

import ppl_lvm as lvm
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm, pad_sequences

K = 3
LENGTHS = [60, 45, 80, 7]


def _quiet_fit(model, x, lengths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, lengths)
    return model


def _viterbi_concat(fit):
    path = fit.map_assignments()["z"]
    return torch.cat([path[i, :n] for i, n in enumerate(LENGTHS)]).numpy()


def _regimes_and_reference(seed, lengths, n_iter):
    """Sequences that switch mean every 5 steps, and hmmlearn's diag GaussianHMM fitted from a known start."""
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, 2)) + np.repeat(rng.normal(scale=3, size=(n // 5 + 1, 2)), 5, 0)[:n] for n in lengths]
    x = np.concatenate(seqs)
    means = x[rng.choice(len(x), K, replace=False)]
    ref = GaussianHMM(K, covariance_type="diag", n_iter=n_iter, tol=-np.inf, init_params="", params="stmc",
                      covars_prior=0, min_covar=0, implementation="log")
    ref.startprob_, ref.transmat_ = np.ones(K) / K, np.ones((K, K)) / K
    ref.means_, ref.covars_ = means, np.ones((K, 2))
    _quiet_fit(ref, x, lengths)
    return seqs, x, means, ref


def test_gaussian_hmm_matches_hmmlearn_iteration_by_iteration(float64):
    seqs, x, means, ref = _regimes_and_reference(0, LENGTHS, n_iter=15)
    padded, lengths = pad_sequences([torch.tensor(s) for s in seqs])
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(gaussian_hmm, {"x": padded, "lengths": lengths, "K": K}, method="em",
                        init_params={"locs": means, "scales": np.ones((K, 2))}, max_iter=15, tol=0.0, reg_covar=0.0)
    assert fit.closed_form
    np.testing.assert_allclose(np.asarray(fit.history) * sum(LENGTHS), ref.monitor_.history, rtol=1e-6)
    assert fit.log_likelihood == pytest.approx(ref.score(x, LENGTHS), rel=1e-6)
    assert (_viterbi_concat(fit) == ref.predict(x, LENGTHS)).all()
    # Pyro's enumeration of the same DSL model (pyro.markov) gives the same exact log-likelihood
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-9)
    gamma = fit.responsibilities["z"]
    assert gamma.shape == (len(LENGTHS), max(LENGTHS), K)
    np.testing.assert_allclose(torch.cat([gamma[i, :n] for i, n in enumerate(LENGTHS)]).numpy(),
                               ref.predict_proba(x, LENGTHS), atol=1e-6)


def test_categorical_hmm_fitted_through_infer_matches_hmmlearn(float64):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 4, size=n) for n in LENGTHS]
    x = np.concatenate(seqs)[:, None]
    emission = rng.dirichlet(np.ones(4), size=K)
    ref = CategoricalHMM(K, n_iter=12, tol=-np.inf, init_params="", params="ste", implementation="log")
    ref.startprob_, ref.transmat_, ref.emissionprob_ = np.ones(K) / K, np.ones((K, K)) / K, emission
    _quiet_fit(ref, x, LENGTHS)
    padded, lengths = pad_sequences([torch.tensor(s) for s in seqs])
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(categorical_hmm, {"x": padded, "lengths": lengths, "K": K, "n_symbols": 4}, method="em",
                        init_params={"emission": emission}, max_iter=12, tol=0.0)
    assert fit.closed_form
    np.testing.assert_allclose(np.asarray(fit.history) * sum(LENGTHS), ref.monitor_.history, rtol=1e-6)
    assert (_viterbi_concat(fit) == ref.predict(x, LENGTHS)).all()


def test_hmm_log_likelihood_never_decreases(float64):
    rng = np.random.default_rng(2)
    seqs = [torch.tensor(rng.normal(size=(n, 2)) + (np.arange(n) % 20 < 10)[:, None] * 4.0) for n in LENGTHS]
    padded, lengths = pad_sequences(seqs)
    fit = lvm.infer(gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, method="em", max_iter=100, tol=1e-9,
                    n_init=2)
    h = np.asarray(fit.history)
    assert np.all(h[1:] >= h[:-1] - 1e-9 * np.abs(h[:-1]))
    # the two regimes are found: a strongly persistent transition matrix
    assert float(fit.params["trans"].diagonal().min()) > 0.8


def test_a_chain_declared_as_one_discrete_hmm_site_gets_baum_welch(float64):
    from ppl_lvm.models.hmm import gaussian_hmm_vectorized

    lengths = [50, 50, 50]
    seqs, x, means, ref = _regimes_and_reference(4, lengths, n_iter=10)
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(gaussian_hmm_vectorized, {"x": torch.tensor(np.stack(seqs)), "K": K}, method="em",
                        init_params={"locs": means, "scales": np.ones((K, 2))}, max_iter=10, tol=0.0, reg_covar=0.0)
    assert fit.closed_form
    np.testing.assert_allclose(np.asarray(fit.history) * sum(lengths), ref.monitor_.history, rtol=1e-6)
    path = fit.map_assignments()["states"]
    assert path.shape == (3, 50) and (path.reshape(-1).numpy() == ref.predict(x, lengths)).all()
    # Pyro's own forward algorithm on the DiscreteHMM site agrees
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-9)
