"""Large data in memory: closed-form EM reads a tensor of more than MEMORY_CHUNK_THRESHOLD rows in chunks, with
the numbers of the one-chunk route (exact EM from the same start: float64, 1e-10 relative), and the recogniser
compares broadcast views by their distinct entries only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppl_lvm as lvm
import ppl_lvm.em.stream as stream
from ppl_lvm.em.recognise_emission import _distinct
from ppl_lvm.models.mixtures import gaussian_mixture

RTOL = 1e-10


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 10.0, 0.0], [-3.0, 2.0, 6.0]])
    return torch.from_numpy(centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 3)))


def _fit(x, **options):
    options = {"tol": None, "max_iter": 15, **options}
    return lvm.infer(gaussian_mixture, {"x": x, "K": 3, "covariance_type": "diag"}, method="em", **options)


@pytest.mark.parametrize("online", [False, True])
def test_a_large_tensor_read_in_chunks_gives_the_in_memory_numbers(float64, monkeypatch, online):
    x = _data()
    start = {"locs": x[:3].numpy().copy(), "scales": np.ones((3, 3))}
    options = {"init_params": start} if not online else {"init_params": start, "online": True, "batch_size": 3000}
    whole = _fit(x, **options)
    monkeypatch.setattr(stream, "MEMORY_CHUNK_THRESHOLD", 1000)
    monkeypatch.setattr(stream, "MEMORY_CHUNK_ROWS", 512)
    assert isinstance(stream.memory_chunks(x), stream.Chunks)
    chunked = _fit(x, **options)
    np.testing.assert_allclose(chunked.history, whole.history, rtol=RTOL)
    for name, value in whole.params.items():
        np.testing.assert_allclose(chunked.params[name].numpy(), value.numpy(), rtol=RTOL,
                                   atol=RTOL * float(value.abs().max()), err_msg=name)
    assert chunked.log_likelihood == pytest.approx(whole.log_likelihood, rel=RTOL)
    assert chunked.n_samples == whole.n_samples == len(x)
    # every row's responsibilities and log-likelihood, as with the data in one piece
    (site,) = whole.responsibilities
    np.testing.assert_allclose(chunked.responsibilities[site].numpy(), whole.responsibilities[site].numpy(),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(chunked.log_likelihood_per_point.numpy(), whole.log_likelihood_per_point.numpy(),
                               rtol=RTOL)


def test_a_data_driven_start_on_a_large_tensor_uses_rows_drawn_at_random(float64, monkeypatch):
    # the rows are sorted by cluster, so the first chunk alone holds one cluster: a k-means start from it would
    # miss the others; the rows drawn at random hold all three
    x = _data()
    x = x[torch.argsort(x[:, 1])]
    monkeypatch.setattr(stream, "MEMORY_CHUNK_THRESHOLD", 1000)
    monkeypatch.setattr(stream, "MEMORY_CHUNK_ROWS", 512)
    fit = _fit(x, max_iter=100)
    whole_best = _fit(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))], max_iter=100)
    # the same optimum as a fit of the shuffled rows in one piece (the clusters are well separated)
    assert fit.log_likelihood == pytest.approx(whole_best.log_likelihood, rel=1e-8)


def test_distinct_entries_of_broadcast_views():
    locs = torch.randn(3, 1, 4, dtype=torch.float64)
    arg = locs.expand(3, 1000, 4)
    cut, value = _distinct(arg, locs)
    assert cut.shape == (3, 1, 4) and torch.equal(cut, value)
    # a view that is not broadcast along the rows is compared whole: a difference in its last row is seen
    full = arg.clone()
    full[:, -1] += 1e-3
    cut, value = _distinct(full, locs)
    assert cut.shape == (3, 1000, 4) and not torch.allclose(cut, value)


def test_chunk_size_is_refused_for_chunks_given_one_by_one():
    with pytest.raises(ValueError, match="chunk_size cuts an array into chunks of rows"):
        lvm.chunks([np.zeros((3, 2)), np.zeros((2, 2))], chunk_size=2)
    with pytest.raises(ValueError, match="drop chunk_size"):
        lvm.chunks(lambda: iter([np.zeros((3, 2))]), chunk_size=2)
