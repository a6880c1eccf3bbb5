"""``method="em", dtype="float32"``: a recognised mixture's E-step kernels in float32, the statistics summed in
float64, against the float64 fit from the same start."""

import pytest
import torch
from generic_models import student_mixture
from torch.utils._python_dispatch import TorchDispatchMode  # torch's own hook for seeing every op's output
from torch.utils._pytree import tree_flatten

import ppl_lvm as lvm
import ppl_lvm.em.stream as stream_module
from ppl_lvm.em.accumulate import chunk_statistics
from ppl_lvm.em.families import Gaussian
from ppl_lvm.em.mixture import mixture_posterior
from ppl_lvm.models.hmm import gaussian_hmm
from ppl_lvm.models.mixtures import gaussian_mixture

N, D, K = 6000, 3, 3


def _data(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return centres[torch.randint(0, K, (N,), generator=g)] + torch.randn(N, D, generator=g, dtype=torch.float64)


def _fit(x, covariance_type, dtype=None, data=None, **options):
    start = {"locs": x[:: N // K][:K].double(), "weights": torch.full((K,), 1.0 / K, dtype=torch.float64)}
    x = x if data is None else data
    return lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": covariance_type}, method="em",
                     init_params=start, max_iter=30, tol=None, dtype=dtype, **options)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_float32_fit_matches_the_float64_fit(seed, covariance_type, monkeypatch, float64):
    """Data in chunks of 1024 rows (the float64 sums over 6 chunks). Over seeds 0-4 (diag and full) the largest
    differences seen were 9.5e-8 relative in the log-likelihood, 1.5e-5 (absolute) in the parameters and 3.6e-5 in
    the responsibilities; the tolerances are 10x, 6.6x and 28x those."""
    monkeypatch.setattr(stream_module, "MEMORY_CHUNK_ROWS", 1024)
    x = _data(seed)
    wide, narrow = _fit(x, covariance_type), _fit(x.float(), covariance_type, "float32")
    assert wide.options["dtype"] == "float64" and narrow.options["dtype"] == "float32"
    assert wide.responsibilities["z"].dtype == torch.float64
    assert narrow.responsibilities["z"].dtype == torch.float32  # the kernels ran in float32
    assert narrow.log_likelihood_per_point.dtype == torch.float32
    assert abs(narrow.log_likelihood - wide.log_likelihood) <= 1e-6 * abs(wide.log_likelihood)
    for name, value in wide.params.items():
        assert torch.allclose(narrow.params[name].double(), value, rtol=0, atol=1e-4), name
    assert (narrow.responsibilities["z"].double() - wide.responsibilities["z"]).abs().max() < 1e-3


def test_float32_kernels_sum_their_statistics_in_float64():
    x = _data(0).float()
    family = Gaussian("diag", dtype=torch.float32)
    cache = family.precompute(x)
    params = family.complete_params({"means": x[:K], "covariances": torch.ones(K, D), "weights": torch.ones(K) / K})
    resp, part = chunk_statistics(family, cache, None, mixture_posterior(family), params)
    assert resp.dtype == torch.float32
    assert all(v.dtype == torch.float64 for v in part.values()) and {"s_lin", "log_likelihood"} <= set(part)


def test_float32_streamed_equals_float32_in_memory(monkeypatch, float64):
    monkeypatch.setattr(stream_module, "MEMORY_CHUNK_ROWS", 1024)
    x = _data(1).float()
    memory = _fit(x, "diag", "float32")
    streamed = _fit(x, "diag", torch.float32, data=lvm.chunks(x.numpy(), 1024))
    assert streamed.options["dtype"] == "float32"
    assert abs(streamed.log_likelihood - memory.log_likelihood) <= 1e-9 * abs(memory.log_likelihood)
    for name, value in memory.params.items():
        assert torch.allclose(streamed.params[name], value, rtol=1e-6, atol=1e-6), name


class _Float64Rows(TorchDispatchMode):
    """Records every op whose output is a float64 tensor with storage for ``rows`` rows of 3 columns or more."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.nbytes, self.seen = rows * D * 8, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.untyped_storage().nbytes() >= self.nbytes:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("keep", [True, False])
def test_float32_data_reach_the_float32_kernels_with_no_float64_copy(monkeypatch, float64, keep):
    """torch's default dtype float64, float32 data and dtype='float32': no float64 tensor of the data's size is made
    anywhere (9 000 rows: the model's prototype runs on a slice), the data are the caller's tensor, the parameters
    are float64 (as for converted data), and the fit is the one from float64 data (converted chunk by chunk to
    float32 for the kernels: the same float32 values; measured equal to the last bit)."""
    monkeypatch.setattr(stream_module, "MEMORY_CHUNK_ROWS", 1024)
    n = 9000
    g = torch.Generator().manual_seed(3)
    x = (3.0 * torch.randn(K, D, generator=g))[torch.randint(0, K, (n,), generator=g)]
    x = (x + torch.randn(n, D, generator=g)).float()
    seen = []
    precompute = Gaussian.precompute

    def spy(self, X, summary=None):
        seen.append(X.dtype)
        return precompute(self, X, summary)

    monkeypatch.setattr(Gaussian, "precompute", spy)
    options = {"init_params": {"locs": x[:: n // K][:K].double()}, "max_iter": 10, "tol": None}
    with _Float64Rows(n) as watch:
        fit = lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": "diag"}, method="em", dtype="float32",
                        keep_responsibilities=keep, **options)
        resp, per_point = fit.responsibilities["z"], fit.log_likelihood_per_point
    assert watch.seen == []
    assert fit.data.kwargs["x"].dtype == torch.float32 and fit.data.kwargs["x"].data_ptr() == x.data_ptr()
    assert seen and set(seen) == {torch.float32}
    assert all(v.dtype == torch.float64 for v in fit.params.values())
    assert resp.dtype == per_point.dtype == torch.float32
    converted = lvm.infer(gaussian_mixture, {"x": x.double(), "K": K, "covariance_type": "diag"}, method="em",
                          dtype="float32", keep_responsibilities=keep, **options)
    assert converted.data.kwargs["x"].dtype == torch.float64
    assert fit.log_likelihood == converted.log_likelihood
    for name, value in converted.params.items():
        assert torch.equal(fit.params[name], value), name
    assert torch.equal(resp, converted.responsibilities["z"])
    # with float64 kernels (the default) the data are converted to the default dtype, as before
    default = lvm.infer(gaussian_mixture, {"x": x, "K": K}, method="em", max_iter=2, tol=None)
    assert default.data.kwargs["x"].dtype == torch.float64


@pytest.mark.parametrize("value", ["float16", "double", torch.int64, 32, "f32"])
def test_bad_dtype_is_refused(value):
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64' .*got"):
        _fit(_data(0), "diag", value)


def test_float32_kernels_where_there_are_none_are_refused():
    x = _data(0).float()
    with pytest.raises(ValueError, match=r"dtype='float32' runs the kernels of batch EM; online=True"):
        _fit(x, "diag", "float32", online=True)
    with pytest.raises(lvm.UnsupportedModelError, match=r"dtype='float32' .*generic EM route"):
        lvm.infer(student_mixture, {"x": x[:200, 0], "K": 2}, method="em", dtype="float32", max_iter=2)
    seqs = x[:60].reshape(3, 20, D)
    with pytest.raises(lvm.UnsupportedModelError, match=r"hidden Markov chain, fitted in float64: drop dtype"):
        lvm.infer(gaussian_hmm, {"x": seqs, "K": 2}, method="em", dtype="float32", max_iter=2)
