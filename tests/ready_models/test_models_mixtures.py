"""Parameter recovery: data simulated from each ready-made mixture with known parameters, fitted by EM.

Components are matched to the truth by optimal assignment (Hungarian algorithm on the distance between means).
Tolerances are about twice the errors measured with these seeds (stated at each assertion); the errors themselves
are sampling error, of the size of the standard errors of the per-component sample moments.
"""

import numpy as np
import pyro
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import ppl_lvm as lvm
from ppl_lvm.models.mixtures import bernoulli_mixture, gaussian_mixture, poisson_mixture

N = 3000
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
LOCS = torch.tensor([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]], dtype=torch.float64)


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def _true_covariances(covariance_type):
    """(K, 2, 2) covariances of the given structure: full (each its own), tied (one), diag, spherical."""
    diag = torch.tensor([[1.0, 0.3], [0.5, 1.5], [0.8, 0.8]], dtype=torch.float64)
    if covariance_type == "full":
        angles = [0.5, -0.8, 1.2]
        return torch.stack([_rotation(a) @ torch.diag(d) @ _rotation(a).T for a, d in zip(angles, diag, strict=True)])
    if covariance_type == "tied":
        shared = _rotation(0.6) @ torch.diag(torch.tensor([1.2, 0.4], dtype=torch.float64)) @ _rotation(0.6).T
        return shared.expand(3, 2, 2)
    if covariance_type == "diag":
        return torch.diag_embed(diag)
    return torch.diag_embed(torch.tensor([0.6, 1.4, 1.0], dtype=torch.float64).unsqueeze(-1).expand(3, 2))


def _fitted_covariances(params, covariance_type):
    if covariance_type == "full":
        L = params["scale_trils"]
        return L @ L.transpose(-1, -2)
    if covariance_type == "tied":
        L = params["scale_tril"]
        return (L @ L.T).expand(3, 2, 2)
    if covariance_type == "diag":
        return torch.diag_embed(params["scales"] ** 2)
    return torch.diag_embed((params["scales"] ** 2).unsqueeze(-1).expand(3, 2))


def _match(true_rows, learned_rows):
    """The learned index for each true row, by optimal assignment on Euclidean distance."""
    cost = torch.cdist(torch.as_tensor(true_rows, dtype=torch.float64),
                       torch.as_tensor(learned_rows, dtype=torch.float64))
    rows, cols = linear_sum_assignment(cost.numpy())
    assert (rows == np.arange(len(rows))).all()
    return torch.as_tensor(cols)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_mixture_recovers_weights_means_and_covariances(covariance_type, float64):
    g = torch.Generator().manual_seed(10)
    cov = _true_covariances(covariance_type)
    z = torch.multinomial(WEIGHTS, N, replacement=True, generator=g)
    noise = torch.randn(N, 2, generator=g, dtype=torch.float64)
    x = LOCS[z] + (torch.linalg.cholesky(cov)[z] @ noise.unsqueeze(-1)).squeeze(-1)
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 3, "covariance_type": covariance_type}, method="em",
                    n_init=2, max_iter=300, tol=1e-8)
    assert fit.closed_form and fit.converged
    order = _match(LOCS, fit.params["locs"])
    weight_err = float((fit.params["weights"][order] - WEIGHTS).abs().max())
    loc_err = float((fit.params["locs"][order] - LOCS).abs().max())
    learned_cov = _fitted_covariances(fit.params, covariance_type)[order]
    cov_err = float((torch.linalg.matrix_norm(learned_cov - cov, ord=2) / torch.linalg.matrix_norm(cov, ord=2)).max())
    print(f"{covariance_type}: weights {weight_err:.4f} means {loc_err:.4f} covariances (rel. spectral) {cov_err:.4f}")
    # measured (N=3000, seed 10), max over components: weights <= 0.001, means <= 0.097,
    # covariances (relative spectral error) full 0.115, tied 0.032, diag 0.109, spherical 0.058
    assert weight_err < 0.02
    assert loc_err < 0.2
    assert cov_err < 0.25


def test_bernoulli_mixture_recovers_weights_and_probabilities(float64):
    g = torch.Generator().manual_seed(11)
    weights = torch.tensor([0.45, 0.35, 0.2], dtype=torch.float64)
    probs = torch.rand(3, 12, generator=g, dtype=torch.float64) * 0.8 + 0.1
    z = torch.multinomial(weights, 2000, replacement=True, generator=g)
    x = torch.bernoulli(probs[z], generator=g)
    fit = lvm.infer(bernoulli_mixture, {"x": x, "K": 3}, method="em", n_init=4, max_iter=500, tol=1e-8)
    assert fit.closed_form
    order = _match(probs, fit.params["probs"])
    weight_err = float((fit.params["weights"][order] - weights).abs().max())
    prob_err = float((fit.params["probs"][order] - probs).abs().max())
    print(f"bernoulli: weights {weight_err:.4f} probs {prob_err:.4f}")
    # measured (N=2000, D=12, seed 11): weights 0.008, probabilities 0.089 (max over 36 entries)
    assert weight_err < 0.03
    assert prob_err < 0.15


def test_poisson_mixture_recovers_weights_and_rates(float64):
    g = torch.Generator().manual_seed(12)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    rates = torch.tensor([[1.0, 6.0, 3.0, 0.5], [8.0, 1.0, 3.0, 4.0], [3.0, 3.0, 10.0, 1.0]], dtype=torch.float64)
    z = torch.multinomial(weights, 1500, replacement=True, generator=g)
    x = torch.poisson(rates[z], generator=g).long()
    fit = lvm.infer(poisson_mixture, {"x": x, "K": 3}, method="em", n_init=4, max_iter=500, tol=1e-8)
    assert fit.closed_form
    order = _match(rates, fit.params["rates"])
    weight_err = float((fit.params["weights"][order] - weights).abs().max())
    rate_err = float(((fit.params["rates"][order] - rates).abs() / rates).max())
    print(f"poisson: weights {weight_err:.4f} rates (relative) {rate_err:.4f}")
    # measured (N=1500, seed 12): weights 0.018, rates 0.066 relative
    assert weight_err < 0.04
    assert rate_err < 0.15


def test_gaussian_mixture_refuses_integer_data_saying_how_to_convert_them():
    x = torch.tensor([[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match=r"gaussian_mixture: x must hold floating-point measurements, got dtype "
                                         r"torch.int64; convert it with x.to\(torch.get_default_dtype\(\)\)"):
        lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em")
    # counts and 0/1 data stay integers: the Poisson and Bernoulli mixtures take them as they are
    fit = lvm.infer(poisson_mixture, {"x": x, "K": 1}, method="em")
    assert torch.allclose(fit.params["rates"].double(), x.double().mean(0))


def test_poisson_mixture_starts_its_rates_in_the_default_dtype_from_the_exact_count_means(float64):
    # the start is the column means of the counts times 0.5 + U(0, 1): computed in float64, not rounded to float32
    x = torch.tensor([[1, 2], [3, 4], [5, 7]])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.poutine.trace(poisson_mixture).get_trace(x, 2)
    start = pyro.param("rates").detach()
    pyro.set_rng_seed(0)
    expected = x.double().mean(0).expand(2, 2) * (0.5 + torch.rand(2, 2))
    assert start.dtype == torch.float64
    assert torch.equal(start, expected)
    pyro.clear_param_store()
