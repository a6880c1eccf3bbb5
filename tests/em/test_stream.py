"""Streamed EM (``lvm.chunks``): data read chunk by chunk give the numbers of the in-memory kernels.

Exact EM from the same start is deterministic: float64, 1e-10 relative is the contract (measured: at most ~1.4e-13
on the parameters, ~4e-15 on the history; the streamed route centres every chunk on the data mean computed in a
first pass, the in-memory route on ``X.mean(0)``, so they differ by rounding only).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.em.accumulate import Source
from ppl_lvm.em.families import Bernoulli, Categorical, Gaussian, Poisson
from ppl_lvm.em.hmm import fit_hmm
from ppl_lvm.em.init import initialize_hmm, initialize_mixture
from ppl_lvm.em.mixture import fit_mixture
from ppl_lvm.em.stream import chunks, shard_range

RTOL = 1e-10


def _clusters(seed: int = 0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return offset + np.concatenate([rng.normal(0, 1, (300, 3)), rng.normal(0, 0.5, (200, 3)) + [4, 10, 0],
                                    rng.normal(0, 0.8, (123, 3)) + [-3, 2, 6]])


def _assert_same_fit(a, b) -> None:
    assert a.n_iter == b.n_iter
    np.testing.assert_allclose(b.history, a.history, rtol=RTOL)
    for key, value in a.params.items():
        scale = float(value.abs().max())
        np.testing.assert_allclose(b.params[key].numpy(), value.numpy(), rtol=RTOL, atol=RTOL * scale, err_msg=key)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_memory_mapped_gaussian_mixture_equals_in_memory(tmp_path, covariance_type):
    x = _clusters()
    path = tmp_path / "x.npy"
    np.save(path, x)
    family = Gaussian(covariance_type)
    start = initialize_mixture(torch.tensor(x), family, 3, "k-means++", seed=0)
    in_memory = fit_mixture(torch.tensor(x), family, start, max_iter=30, tol=None)
    mapped = np.load(path, mmap_mode="r")
    streamed = fit_mixture(chunks(mapped, chunk_size=97), family, start, max_iter=30, tol=None)
    _assert_same_fit(in_memory, streamed)
    by_path = fit_mixture(chunks(str(path), chunk_size=1000), family, start, max_iter=30, tol=None)
    _assert_same_fit(in_memory, by_path)


def test_two_pass_covariances_and_empty_components_read_the_stream_again():
    # clusters 1000 away from the data mean: the moment statistics cancel, so each component's covariance is
    # recomputed from centred residuals, a second pass over the chunks; a start far from all data leaves a
    # component empty, whose covariance falls back to the data covariance (a pass too)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, (200, 2)) - 1000, rng.normal(0, 1, (200, 2)) + 1000])
    family = Gaussian("full")
    start = {"weights": torch.tensor([0.4, 0.4, 0.2]), "means": torch.tensor([[-999.0, 0], [999, 0], [0, 1e6]]),
             "covariances": torch.eye(2).expand(3, 2, 2).clone()}
    with pytest.warns(lvm.EMDegeneracyWarning, match="no responsibility"):
        in_memory = fit_mixture(torch.tensor(x), family, start, max_iter=5, tol=None)
    with pytest.warns(lvm.EMDegeneracyWarning, match="no responsibility"):
        streamed = fit_mixture(chunks(x, chunk_size=64), family, start, max_iter=5, tol=None)
    _assert_same_fit(in_memory, streamed)


@pytest.mark.parametrize("family, data", [
    (Bernoulli(), lambda rng: (rng.random((400, 5)) < np.repeat([[0.2], [0.7]], 200, 0)).astype(float)),
    (Poisson(), lambda rng: rng.poisson(np.repeat([[1.0], [6.0]], 200, 0), size=(400, 3)).astype(float)),
    (Categorical(5), lambda rng: rng.integers(0, 5, size=400)),
])
def test_discrete_mixtures_stream_like_in_memory(family, data):
    x = data(np.random.default_rng(1))
    start = initialize_mixture(torch.as_tensor(x), family, 2, "random", seed=2)
    in_memory = fit_mixture(torch.as_tensor(x), family, start, max_iter=20, tol=None)
    streamed = fit_mixture(chunks(x, chunk_size=33), family, start, max_iter=20, tol=None)
    _assert_same_fit(in_memory, streamed)


def _symbol_sequences(seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 60, size=30)
    return rng.integers(0, 4, size=int(lengths.sum())), lengths


def test_categorical_hmm_with_sequences_of_different_lengths():
    symbols, lengths = _symbol_sequences()
    family = Categorical(4)
    start = initialize_hmm(torch.tensor(symbols), family, 3, "random", seed=1)
    in_memory = fit_hmm(torch.tensor(symbols), lengths.tolist(), family, start, max_iter=20, tol=None)
    # chunks of whole sequences, ~100 rows each (a 59-step sequence and its neighbours never split)
    streamed = fit_hmm(chunks(symbols, chunk_size=100, lengths=lengths), None, family, start, max_iter=20, tol=None)
    _assert_same_fit(in_memory, streamed)
    # chunks given one by one as (rows, lengths) pairs, and a function yielding them afresh for every pass
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pieces = [(symbols[offsets[i]:offsets[i + 5]], lengths[i:i + 5]) for i in range(0, 30, 5)]
    _assert_same_fit(in_memory, fit_hmm(chunks(pieces), None, family, start, max_iter=20, tol=None))
    _assert_same_fit(in_memory, fit_hmm(chunks(lambda: iter(pieces)), None, family, start, max_iter=20, tol=None))


def test_gaussian_hmm_streams_like_in_memory():
    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 50, size=12)
    x = rng.normal(size=(int(lengths.sum()), 2)) + np.repeat(rng.normal(scale=3, size=(int(lengths.sum()) // 5 + 1, 2)),
                                                              5, 0)[: int(lengths.sum())]
    family = Gaussian("diag")
    start = initialize_hmm(torch.tensor(x), family, 3, "k-means++", seed=0)
    in_memory = fit_hmm(torch.tensor(x), lengths.tolist(), family, start, max_iter=15, tol=None)
    streamed = fit_hmm(chunks(x, chunk_size=80, lengths=lengths), None, family, start, max_iter=15, tol=None)
    _assert_same_fit(in_memory, streamed)


def test_each_chunk_is_read_once_per_iteration():
    x = _clusters()
    reads = []

    def pieces():
        for lo in range(0, len(x), 200):
            reads.append(lo)
            yield x[lo:lo + 200]

    family = Gaussian("diag")
    start = initialize_mixture(torch.tensor(x), family, 3, "k-means++", seed=0)
    fit_mixture(chunks(pieces), family, start, max_iter=4, tol=None)
    assert len(reads) == 4 * (1 + 4)  # the first pass (data mean), then one pass per iteration


def test_shards_are_contiguous_and_cover_the_rows():
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    x = np.arange(20.0).reshape(10, 2)
    parts = [torch.cat([c for c, _ in chunks(x, chunk_size=3).shard(r, 3)]) for r in range(3)]
    np.testing.assert_array_equal(torch.cat(parts).numpy(), x)
    assert [len(p) for p in parts] == [4, 3, 3]
    # sequences are never cut: each rank gets whole sequences, about as many rows as the others
    lengths = np.array([5, 1, 7, 3, 4, 6])
    rows = np.arange(26.0)
    got = [[ln for _, lens in chunks(rows, lengths=lengths).shard(r, 2) for ln in lens] for r in range(2)]
    assert got[0] + got[1] == lengths.tolist() and abs(sum(got[0]) - sum(got[1])) <= 7


def test_bad_chunks_are_refused():
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunks(np.zeros((4, 2)), chunk_size=0)
    with pytest.raises(ValueError, match="sum\\(lengths\\)=5 != number of rows 4"):
        chunks(np.zeros(4), lengths=[2, 3])
    with pytest.raises(ValueError, match="cannot be sharded"):
        chunks(lambda: iter([np.zeros((2, 2))])).shard(0, 2)
    with pytest.raises(TypeError, match="chunks needs an array"):
        chunks(3.0)


def test_a_one_chunk_source_in_memory_keeps_its_cache():
    x = torch.tensor(_clusters())
    family = Gaussian("full")
    source = Source(family, x)
    caches = [cache for cache, _ in source.chunks()] + [cache for cache, _ in source.chunks()]
    assert caches[0] is caches[1]  # precomputed once, not per iteration
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = initialize_mixture(x, family, 3, "k-means++", seed=0)
        _assert_same_fit(fit_mixture(x, family, start, max_iter=5, tol=None),
                         fit_mixture(source, family, start, max_iter=5, tol=None))


# ---------------------------------------------------------------------------------------------- through lvm.infer
def _infer_start(covariance_type: str) -> dict:
    locs = np.array([[0.5, 0, 0], [3, 9, 0.5], [-2, 2, 5]])
    if covariance_type == "full":
        return {"locs": locs, "scale_trils": np.stack([np.eye(3)] * 3)}
    return {"locs": locs, "scales": np.ones((3, 3))}


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_infer_on_a_memory_mapped_file_equals_in_memory(tmp_path, float64, covariance_type):
    from ppl_lvm.models.mixtures import gaussian_mixture

    x = _clusters(seed=7)
    np.random.default_rng(0).shuffle(x)
    np.save(tmp_path / "x.npy", x)
    options = {"method": "em", "init_params": _infer_start(covariance_type), "max_iter": 25, "tol": None}
    in_memory = lvm.infer(gaussian_mixture, {"x": torch.tensor(x), "K": 3, "covariance_type": covariance_type},
                          **options)
    data = lvm.chunks(np.load(tmp_path / "x.npy", mmap_mode="r"), chunk_size=100)
    streamed = lvm.infer(gaussian_mixture, {"x": data, "K": 3, "covariance_type": covariance_type}, **options)
    np.testing.assert_allclose(streamed.history, in_memory.history, rtol=RTOL)
    assert streamed.log_likelihood == pytest.approx(in_memory.log_likelihood, rel=RTOL)
    assert streamed.n_samples == in_memory.n_samples == len(x)
    assert streamed.bic() == pytest.approx(in_memory.bic(), rel=RTOL)
    for name, value in in_memory.params.items():
        np.testing.assert_allclose(streamed.params[name].numpy(), value.numpy(), rtol=RTOL, atol=1e-12)
    # the (N, K) responsibilities of data never held at once are not kept; new data are scored on demand
    assert streamed.responsibilities == {}
    np.testing.assert_allclose(streamed.predict_proba(x[:50]).numpy(), in_memory.responsibilities["z"][:50].numpy(),
                               atol=1e-10)


def test_infer_refuses_chunks_it_cannot_stream(float64):  # and streams the generic route
    from ppl_lvm.models.hmm import categorical_hmm
    from ppl_lvm.models.mixtures import gaussian_mixture

    x = lvm.chunks(_clusters(), chunk_size=100)
    with pytest.raises(TypeError, match="method='em' only"):
        lvm.infer(gaussian_mixture, {"x": x, "K": 3}, method="svi", steps=2)
    with pytest.raises(lvm.UnsupportedModelError, match="hidden Markov chain"):
        lvm.infer(categorical_hmm, {"x": lvm.chunks(np.zeros((4, 6), dtype=np.int64)), "K": 2, "n_symbols": 3},
                  method="em", max_iter=2)

    @lvm.model
    def not_a_mixture(x):  # the scale depends on z through an expression the recogniser does not know
        w = lvm.param(torch.ones(2) / 2, constraint=lvm.constraints.simplex)
        with lvm.plate(len(x)):
            z = lvm.latent(lvm.dist.Categorical(w))
            lvm.observe(lvm.dist.Normal(0.0, 1.0 + z), x)

    # the generic route streams (tests/em/test_stream_routes.py): the numbers of the data held at once
    x = np.random.default_rng(0).normal(size=40)
    streamed = lvm.infer(not_a_mixture, lvm.chunks(x, chunk_size=10), method="em", max_iter=3, tol=None)
    in_memory = lvm.infer(not_a_mixture, torch.tensor(x), method="em", max_iter=3, tol=None)
    np.testing.assert_allclose(streamed.history, in_memory.history, rtol=RTOL)
    np.testing.assert_allclose(streamed.params["w"].numpy(), in_memory.params["w"].numpy(), rtol=RTOL)


def test_non_finite_values_in_a_later_chunk_are_refused(float64):
    from ppl_lvm.models.mixtures import gaussian_mixture

    x = _clusters()
    x[500, 1] = np.nan
    with pytest.raises(lvm.DataError, match="chunk 5 of the data"):
        lvm.infer(gaussian_mixture, {"x": lvm.chunks(x, chunk_size=100), "K": 3}, method="em", max_iter=2)


def test_fit_more_continues_on_every_chunk(tmp_path, float64):
    from ppl_lvm.models.mixtures import gaussian_mixture

    x = _clusters(seed=7)
    np.random.default_rng(0).shuffle(x)
    np.save(tmp_path / "x.npy", x)
    options = {"method": "em", "init_params": _infer_start("diag"), "tol": None}
    data = {"K": 3, "covariance_type": "diag"}
    in_memory = lvm.infer(gaussian_mixture, {**data, "x": torch.tensor(x)}, max_iter=10, **options)
    streamed = lvm.infer(gaussian_mixture, {**data, "x": lvm.chunks(str(tmp_path / "x.npy"), 100)}, max_iter=4,
                         **options).fit_more(max_iter=6)
    assert streamed.n_samples == len(x)
    for name, value in in_memory.params.items():
        np.testing.assert_allclose(streamed.params[name].numpy(), value.numpy(), rtol=RTOL, atol=1e-12)
