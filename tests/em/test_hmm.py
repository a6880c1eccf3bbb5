"""HMM forward-backward, Viterbi and EM against hmmlearn and brute force."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from em_helpers import as_np, rel_err
from hmmlearn.hmm import CategoricalHMM, GaussianHMM

from ppl_lvm.em.families import Categorical, Gaussian
from ppl_lvm.em.hmm import (
    fit_hmm,
    forward_backward,
    hmm_e_step,
    hmm_log_likelihood,
    hmm_n_parameters,
    viterbi,
)

COV_TYPES = ["full", "diag", "spherical", "tied"]
METHODS = ["scaled", "log", "loop"]
LENGTHS = [50, 37, 81, 5, 1, 64]


def _gaussian_sequences(seed=1, d=2):
    rng = np.random.default_rng(seed)
    n = sum(LENGTHS)
    states = np.zeros(n, dtype=int)
    for t in range(1, n):
        states[t] = states[t - 1] if rng.random() < 0.8 else rng.integers(3)
    return rng.normal(size=(n, d)) + 2.5 * states[:, None]


@functools.cache
def _hmmlearn_pair_cached(ct, n_iter):
    return _hmmlearn_pair(_gaussian_sequences(), ct, n_iter)


def _hmmlearn_pair(X, ct, n_iter):
    """hmmlearn reference from hmmlearn's own random init; priors off so its
    M-step is the plain MLE (our reg=0)."""
    h0 = GaussianHMM(3, covariance_type=ct, n_iter=1, random_state=0).fit(X, LENGTHS)
    covars = h0._covars_.copy()
    if ct == "spherical" and covars.ndim == 2:
        covars = covars[:, 0]
    init = {
        "startprob": h0.startprob_.copy(),
        "transmat": h0.transmat_.copy(),
        "means": h0.means_.copy(),
        "covariances": covars,
    }
    ref = GaussianHMM(3, covariance_type=ct, n_iter=n_iter, tol=-np.inf, init_params="", covars_prior=0.0)
    ref.startprob_ = init["startprob"]
    ref.transmat_ = init["transmat"]
    ref.means_ = init["means"]
    ref.covars_ = covars
    ref.fit(X, LENGTHS)
    return init, ref


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ct", COV_TYPES)
def test_gaussian_hmm_matches_hmmlearn(ct, method):
    X = _gaussian_sequences()
    init, ref = _hmmlearn_pair_cached(ct, 12)
    res = fit_hmm(
        torch.as_tensor(X),
        LENGTHS,
        Gaussian(ct),
        init,
        max_iter=12,
        tol=-np.inf,
        reg=0.0,
        method=method,
    )
    assert len(res.history) == len(ref.monitor_.history) == 12
    assert rel_err(res.history, ref.monitor_.history) < 1e-6
    np.testing.assert_allclose(as_np(res.params["transmat"]), ref.transmat_, atol=1e-8)
    np.testing.assert_allclose(as_np(res.params["startprob"]), ref.startprob_, atol=1e-8)
    np.testing.assert_allclose(as_np(res.params["means"]), ref.means_, rtol=1e-6, atol=1e-8)
    # Final score and Viterbi path under the final parameters.
    log_em = Gaussian(ct).log_prob(torch.as_tensor(X), res.params)
    ll = hmm_log_likelihood(log_em, LENGTHS, res.params["startprob"], res.params["transmat"])
    assert rel_err(float(ll.sum()), ref.score(X, LENGTHS)) < 1e-6
    best, path = viterbi(log_em, LENGTHS, res.params["startprob"], res.params["transmat"])
    ref_best, ref_path = ref.decode(X, LENGTHS, algorithm="viterbi")
    np.testing.assert_array_equal(as_np(path), ref_path)
    assert rel_err(float(best.sum()), ref_best) < 1e-9


@pytest.mark.parametrize("method", METHODS)
def test_categorical_hmm_matches_hmmlearn(method):
    rng = np.random.default_rng(3)
    lengths = [40, 7, 120, 1, 33]
    X = rng.integers(0, 4, size=(sum(lengths), 1))
    X[60:140, 0] = rng.choice(4, size=80, p=[0.7, 0.1, 0.1, 0.1])
    h0 = CategoricalHMM(3, n_features=4, n_iter=1, random_state=2).fit(X, lengths)
    init = {
        "startprob": h0.startprob_.copy(),
        "transmat": h0.transmat_.copy(),
        "probs": h0.emissionprob_.copy(),
    }
    ref = CategoricalHMM(3, n_features=4, n_iter=15, tol=-np.inf, init_params="")
    ref.startprob_ = init["startprob"]
    ref.transmat_ = init["transmat"]
    ref.emissionprob_ = init["probs"]
    ref.fit(X, lengths)
    fam = Categorical(4)
    res = fit_hmm(X, lengths, fam, init, max_iter=15, tol=-np.inf, reg=0.0, method=method)
    assert rel_err(res.history, ref.monitor_.history) < 1e-6
    np.testing.assert_allclose(as_np(res.params["probs"]), ref.emissionprob_, atol=1e-8)
    log_em = fam.log_prob(X, res.params)
    _, path = viterbi(log_em, lengths, res.params["startprob"], res.params["transmat"])
    _, ref_path = ref.decode(X, lengths)
    np.testing.assert_array_equal(as_np(path), ref_path)


def test_viterbi_ties_broken_like_hmmlearn():
    """Two identical states: every path ties; hmmlearn keeps the first state."""
    X = np.array([[0], [1], [1], [0], [2], [2], [1]])
    ref = CategoricalHMM(2, n_features=3, init_params="")
    ref.startprob_ = np.array([0.5, 0.5])
    ref.transmat_ = np.array([[0.5, 0.5], [0.5, 0.5]])
    ref.emissionprob_ = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    _, ref_path = ref.decode(X)
    fam = Categorical(3)
    params = {
        "probs": torch.as_tensor(ref.emissionprob_),
        "startprob": torch.as_tensor(ref.startprob_),
        "transmat": torch.as_tensor(ref.transmat_),
    }
    _, path = viterbi(fam.log_prob(X, params), None, params["startprob"], params["transmat"])
    np.testing.assert_array_equal(as_np(path), ref_path)


def _brute_force(log_start, log_trans, log_em):
    """Sum over all K^T paths: log-likelihood, gamma (T, K), xi_sum (K, K)."""
    t_len, k = log_em.shape
    paths = list(itertools.product(range(k), repeat=t_len))
    logs = []
    for path in paths:
        lp = log_start[path[0]] + log_em[0, path[0]]
        for t in range(1, t_len):
            lp += log_trans[path[t - 1], path[t]] + log_em[t, path[t]]
        logs.append(lp)
    logs = np.array(logs)
    ll = np.logaddexp.reduce(logs)
    w = np.exp(logs - ll)
    gamma = np.zeros((t_len, k))
    xi = np.zeros((k, k))
    for weight, path in zip(w, paths, strict=True):
        for t in range(t_len):
            gamma[t, path[t]] += weight
        for t in range(1, t_len):
            xi[path[t - 1], path[t]] += weight
    return ll, gamma, xi


@pytest.mark.parametrize("method", METHODS)
def test_brute_force_three_state_chain(method):
    rng = np.random.default_rng(7)
    k, t_len = 3, 6
    start = rng.dirichlet(np.ones(k))
    trans = rng.dirichlet(np.ones(k), size=k)
    log_em = rng.normal(size=(t_len, k)) * 3
    ll, gamma, xi = _brute_force(np.log(start), np.log(trans), log_em)
    stats = hmm_e_step(
        torch.as_tensor(log_em),
        None,
        torch.as_tensor(start),
        torch.as_tensor(trans),
        method=method,
    )
    assert abs(float(stats.log_likelihood[0]) - ll) <= 1e-10 * abs(ll)
    np.testing.assert_allclose(as_np(stats.gamma), gamma, atol=1e-12)
    np.testing.assert_allclose(as_np(stats.xi_sum), xi, atol=1e-12)


def test_brute_force_several_sequences():
    """Sequences of lengths 6, 1, 4 in one call equal separate brute forces."""
    rng = np.random.default_rng(8)
    k = 3
    start = rng.dirichlet(np.ones(k))
    trans = rng.dirichlet(np.ones(k), size=k)
    lengths = [6, 1, 4]
    log_em = rng.normal(size=(sum(lengths), k)) * 2
    stats = hmm_e_step(torch.as_tensor(log_em), lengths, torch.as_tensor(start), torch.as_tensor(trans))
    offset = 0
    xi_total = np.zeros((k, k))
    for b, n in enumerate(lengths):
        ll, gamma, xi = _brute_force(np.log(start), np.log(trans), log_em[offset : offset + n])
        assert abs(float(stats.log_likelihood[b]) - ll) <= 1e-10 * abs(ll)
        np.testing.assert_allclose(as_np(stats.gamma[offset : offset + n]), gamma, atol=1e-12)
        xi_total += xi
        offset += n
    np.testing.assert_allclose(as_np(stats.xi_sum), xi_total, atol=1e-12)


def test_left_right_hmm_with_structural_zeros():
    """Zero transitions force the exact log-space path; still equals hmmlearn."""
    X = _gaussian_sequences(seed=4, d=1)
    trans = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    start = np.array([1.0, 0.0, 0.0])
    ref = GaussianHMM(3, covariance_type="diag", n_iter=8, tol=-np.inf, init_params="", covars_prior=0.0)
    ref.startprob_, ref.transmat_ = start, trans
    ref.means_ = np.array([[0.0], [2.5], [5.0]])
    ref.covars_ = np.ones((3, 1))
    ref.fit(X, LENGTHS)
    init = {
        "startprob": start,
        "transmat": trans,
        "means": np.array([[0.0], [2.5], [5.0]]),
        "covariances": np.ones((3, 1)),
    }
    res = fit_hmm(torch.as_tensor(X), LENGTHS, Gaussian("diag"), init, max_iter=8, tol=-np.inf, reg=0.0)
    assert rel_err(res.history, ref.monitor_.history) < 1e-6
    assert float(res.params["transmat"][1, 0]) == 0.0


def test_extreme_emissions_fall_back_to_log_space():
    """Emission log-ratios beyond exp underflow: auto == exact loop."""
    rng = np.random.default_rng(5)
    log_em = torch.as_tensor(rng.normal(size=(300, 4)) * 400)
    start = torch.full((4,), 0.25, dtype=torch.float64)
    trans = torch.as_tensor(rng.dirichlet(np.ones(4), size=4))
    auto = hmm_e_step(log_em, [100, 200], start, trans)
    loop = hmm_e_step(log_em, [100, 200], start, trans, method="loop")
    np.testing.assert_allclose(as_np(auto.log_likelihood), as_np(loop.log_likelihood), rtol=1e-12)
    np.testing.assert_allclose(as_np(auto.gamma), as_np(loop.gamma), atol=1e-10)
    assert torch.isfinite(auto.xi_sum).all()


def test_forward_backward_methods_agree():
    rng = np.random.default_rng(6)
    b, t_len, k = 3, 53, 4
    emis = torch.as_tensor(rng.normal(size=(b, t_len, k)))
    ls = torch.log(torch.as_tensor(rng.dirichlet(np.ones(k))))
    lt = torch.log(torch.as_tensor(rng.dirichlet(np.ones(k), size=k)))
    a1, b1 = forward_backward(ls, lt, emis, method="loop")
    for chunk in (1, 5, 8, 53):
        a2, b2 = forward_backward(ls, lt, emis, method="chunked", chunk=chunk)
        np.testing.assert_allclose(as_np(a2), as_np(a1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(as_np(b2), as_np(b1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_n_parameters_matches_hmmlearn(ct):
    X = _gaussian_sequences()
    h = GaussianHMM(3, covariance_type=ct, n_iter=1, random_state=0).fit(X, LENGTHS)
    covars = h._covars_ if ct != "spherical" else np.asarray(h._covars_).reshape(3, -1)[:, 0]
    params = {
        "means": h.means_,
        "covariances": covars,
        "startprob": h.startprob_,
        "transmat": torch.as_tensor(h.transmat_),
    }
    fam = Gaussian(ct)
    expected = sum(h._get_n_fit_scalars_per_param().values())
    assert hmm_n_parameters(fam, fam.complete_params(params)) == expected


def test_poisson_hmm_matches_hmmlearn():
    from hmmlearn.hmm import PoissonHMM

    from ppl_lvm.em.families import Poisson

    rng = np.random.default_rng(9)
    lengths = [60, 25, 90]
    rates = np.array([[1.0, 6.0], [4.0, 2.0], [9.0, 9.0]])
    z = rng.integers(0, 3, size=sum(lengths))
    X = rng.poisson(rates[z])
    init = {
        "startprob": np.array([0.5, 0.3, 0.2]),
        "transmat": rng.dirichlet(np.ones(3) * 3, size=3),
        "rates": np.array([[2.0, 3.0], [3.0, 3.5], [6.0, 5.0]]),
    }
    ref = PoissonHMM(3, n_iter=10, tol=-np.inf, init_params="")
    ref.startprob_, ref.transmat_, ref.lambdas_ = init["startprob"], init["transmat"], init["rates"]
    ref.fit(X, lengths)
    res = fit_hmm(X, lengths, Poisson(), init, max_iter=10, tol=-np.inf, reg=0.0)
    assert rel_err(res.history, ref.monitor_.history) < 1e-6
    np.testing.assert_allclose(as_np(res.params["rates"]), ref.lambdas_, rtol=1e-8)


def test_length_buckets_equal_separate_calls():
    """Very uneven lengths are bucketed; results equal one call per sequence."""
    rng = np.random.default_rng(10)
    lengths = [1, 3, 700, 7, 2000, 40, 41]
    k = 4
    log_em = torch.as_tensor(rng.normal(size=(sum(lengths), k)) * 2)
    start = torch.as_tensor(rng.dirichlet(np.ones(k)))
    trans = torch.as_tensor(rng.dirichlet(np.ones(k), size=k))
    together = hmm_e_step(log_em, lengths, start, trans)
    lp_all, path_all = viterbi(log_em, lengths, start, trans)
    offset = 0
    xi = torch.zeros(k, k, dtype=torch.float64)
    for b, n in enumerate(lengths):
        part = hmm_e_step(log_em[offset : offset + n], None, start, trans, method="loop")
        torch.testing.assert_close(together.log_likelihood[b], part.log_likelihood[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(together.gamma[offset : offset + n], part.gamma, rtol=0, atol=1e-12)
        lp, path = viterbi(log_em[offset : offset + n], None, start, trans)
        assert torch.equal(path_all[offset : offset + n], path)
        torch.testing.assert_close(lp_all[b], lp[0])
        xi += part.xi_sum
        offset += n
    torch.testing.assert_close(together.xi_sum, xi, rtol=1e-10, atol=1e-10)
