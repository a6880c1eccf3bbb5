"""``keep_responsibilities``: a recognised mixture's result that does not hold every row's responsibilities and
log p(x_i) recomputes them on access (:mod:`ppl_lvm.em.rows`), with the numbers of a result that holds them.

Exact EM from one start has no randomness: the comparisons are deterministic. Where both fits read the data in the
same chunks the answers are bit for bit the same (a loaded result too: the parameters it stores give the same
numbers, or differ by rounding). Where the held fit reads its data in one piece and the other in chunks (each chunk
centred on the whole data's mean instead of the data on their own), they agree to rounding; measured over seeds 0-4,
diag and full: 6.8e-16 relative on the log-likelihood, 2.8e-14 on the parameters (relative to each one's largest
entry), 4.0e-14 absolute on the responsibilities, 3.5e-14 relative on log p(x_i); the tolerances are 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppl_lvm as lvm
import ppl_lvm.em.rows as rows_module
import ppl_lvm.em.stream as stream
from ppl_lvm.em.families import Gaussian
from ppl_lvm.models.hmm import categorical_hmm
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.outcome import ResponsibilitiesOnDemand

N, K = 3000, 3
RTOL = 1e-12
CENTRES = np.array([[0.0, 0.0, 0.0], [4.0, 10.0, 0.0], [-3.0, 2.0, 6.0]])


def _data(seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(CENTRES[rng.integers(0, K, N)] + rng.normal(size=(N, 3)))


def _fit(x, covariance_type="diag", **options):
    options = {"tol": None, "max_iter": 12, "init_params": {"locs": CENTRES + 0.5}, **options}
    return lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": covariance_type}, method="em", **options)


@pytest.fixture
def small_chunks(monkeypatch):
    """Data in memory read in chunks of 512 rows from 1 000 rows on (instead of 2**16 from 2**20)."""
    monkeypatch.setattr(stream, "MEMORY_CHUNK_THRESHOLD", 1000)
    monkeypatch.setattr(stream, "MEMORY_CHUNK_ROWS", 512)


def _same_answers(held, on_demand, exact: bool) -> None:
    site = "z"
    if exact:
        assert on_demand.log_likelihood == held.log_likelihood and on_demand.bic() == held.bic()
        np.testing.assert_array_equal(on_demand.history, held.history)
        for name, value in held.params.items():
            assert torch.equal(on_demand.params[name], value), name
        assert torch.equal(on_demand.responsibilities[site], held.responsibilities[site])
        assert torch.equal(on_demand.log_likelihood_per_point, held.log_likelihood_per_point)
        return
    assert on_demand.log_likelihood == pytest.approx(held.log_likelihood, rel=RTOL)
    assert on_demand.bic() == pytest.approx(held.bic(), rel=RTOL)
    np.testing.assert_allclose(on_demand.history, held.history, rtol=RTOL)
    for name, value in held.params.items():
        assert float((on_demand.params[name] - value).abs().max()) <= RTOL * float(value.abs().max()), name
    np.testing.assert_allclose(on_demand.responsibilities[site].numpy(), held.responsibilities[site].numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(on_demand.log_likelihood_per_point.numpy(), held.log_likelihood_per_point.numpy(),
                               rtol=RTOL)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("online", [False, True])
def test_recomputed_rows_are_the_held_rows_bit_for_bit(float64, small_chunks, covariance_type, online):
    x = _data()
    options = {"online": True, "batch_size": 700} if online else {}
    held = _fit(x, covariance_type, keep_responsibilities=True, **options)
    on_demand = _fit(x, covariance_type, keep_responsibilities=False, **options)
    assert held.rows is None and isinstance(held.responsibilities, dict)
    assert isinstance(on_demand.responsibilities, ResponsibilitiesOnDemand) and on_demand.rows is not None
    assert on_demand.__dict__["_per_point"] is None  # nothing of N rows is held
    assert list(on_demand.responsibilities) == ["z"] and len(on_demand.responsibilities) == 1
    assert on_demand.options["keep_responsibilities"] is False
    _same_answers(held, on_demand, exact=True)
    # the queries that read the rows: MAP assignments, the pointwise log-likelihood and responsibilities for ArviZ
    assert torch.equal(on_demand.map_assignments()["z"], held.map_assignments()["z"])
    groups = [r.to_arviz(num_samples=4, seed=1) for r in (held, on_demand)]
    for group in ("pointwise_log_likelihood", "responsibilities", "log_likelihood"):
        a, b = (g[group] for g in groups)
        for name in a.data_vars:
            np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]))
    new = _data(1)[:50]
    assert torch.equal(on_demand.predict_proba(new), held.predict_proba(new))


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_rows_recomputed_from_chunks_equal_rows_held_from_one_piece(float64, monkeypatch, covariance_type):
    # the held fit reads its 3 000 rows in one piece; recomputing on access reads them in chunks of 512 rows
    monkeypatch.setattr(stream, "MEMORY_CHUNK_ROWS", 512)
    x = _data()
    held, on_demand = _fit(x, covariance_type), _fit(x, covariance_type, keep_responsibilities=False)
    assert held.rows is None and on_demand.rows is not None
    assert isinstance(on_demand.rows.data, stream.Chunks)
    _same_answers(held, on_demand, exact=False)


def test_auto_keeps_the_rows_up_to_a_number_of_entries(float64, monkeypatch):
    x = _data()
    assert _fit(x).rows is None  # 9 000 entries: held (the default, "auto")
    monkeypatch.setattr(rows_module, "KEEP_ROWS_ENTRIES", N * K - 1)
    fit = _fit(x)
    assert fit.options["keep_responsibilities"] == "auto" and fit.rows is not None
    assert _fit(x, keep_responsibilities=True).rows is None
    monkeypatch.setattr(rows_module, "KEEP_ROWS_ENTRIES", N * K)
    assert _fit(x).rows is None


def test_a_recomputation_holds_one_chunk_besides_its_answer(float64, small_chunks, monkeypatch):
    x = _data()
    calls = []
    compute = rows_module.MixtureRows.compute

    def record(self, per_point=True, responsibilities=True, caches=None):
        calls.append((per_point, responsibilities))
        return compute(self, per_point, responsibilities, caches)

    monkeypatch.setattr(rows_module.MixtureRows, "compute", record)
    fit = _fit(x, keep_responsibilities=False)
    assert calls == [(False, False)]  # the fit's final E-step: its total only; building the result computes nothing
    seen = []
    precompute = Gaussian.precompute

    def spy(self, X, summary=None):
        seen.append(X.shape[0])
        return precompute(self, X, summary)

    monkeypatch.setattr(Gaussian, "precompute", spy)
    first = fit.responsibilities["z"]
    assert seen and max(seen) == 512 and sum(seen) == N  # chunk by chunk
    assert fit.responsibilities["z"] is first and len(seen) == 6  # held by the caller: not recomputed
    del first
    again = fit.responsibilities["z"]
    assert len(seen) == 12 and again.shape == (N, K)
    assert fit.log_likelihood_per_point.shape == (N,) and len(seen) == 18


def test_a_saved_result_loads_with_the_same_rows(float64, small_chunks, tmp_path):
    x = _data()
    results = {}
    for keep in (True, False):
        fit = _fit(x, keep_responsibilities=keep)
        path = tmp_path / f"{keep}.pt"
        fit.save(str(path))
        results[keep] = fit, lvm.load(str(path), model=gaussian_mixture)
    (held, held_loaded), (on_demand, on_demand_loaded) = results[True], results[False]
    assert held_loaded.rows is None and on_demand_loaded.rows is not None
    _same_answers(held_loaded, on_demand_loaded, exact=True)
    # a loaded result recomputes from the stored parameters (the scales' square roots squared again): rounding
    _same_answers(on_demand, on_demand_loaded, exact=False)
    _same_answers(held, held_loaded, exact=False)


def test_data_read_chunk_by_chunk_keep_no_rows(float64):
    x = _data()
    with pytest.raises(lvm.UnsupportedModelError, match=r"keep_responsibilities=True holds every row's .*lvm.chunks"):
        _fit(lvm.chunks(x.numpy(), 1000), keep_responsibilities=True)
    auto = _fit(lvm.chunks(x.numpy(), 1000))
    streamed = _fit(lvm.chunks(x.numpy(), 1000), keep_responsibilities=False)
    assert streamed.responsibilities == {} == auto.responsibilities and streamed.log_likelihood_per_point is None
    assert streamed.log_likelihood == auto.log_likelihood


def test_keep_responsibilities_is_checked():
    x = _data().float()
    with pytest.raises(ValueError, match=r"keep_responsibilities must be True, False or 'auto', got 'yes'"):
        _fit(x, keep_responsibilities="yes")
    with pytest.raises(ValueError, match=r"keep_responsibilities must be True, False or 'auto', got 1"):
        _fit(x, keep_responsibilities=1)
    seqs = torch.randint(0, 3, (4, 10))
    with pytest.raises(lvm.UnsupportedModelError, match=r"hidden Markov chain, whose result holds"):
        lvm.infer(categorical_hmm, {"x": seqs, "K": 2, "n_symbols": 3}, method="em", max_iter=2,
                  keep_responsibilities=False)


def test_the_generic_route_refuses_not_keeping_its_rows():
    @lvm.model
    def not_a_mixture(x):  # its scale depends on z: the generic route
        w = lvm.param(torch.ones(2) / 2, constraint=lvm.constraints.simplex)
        with lvm.plate(len(x)):
            z = lvm.latent(lvm.dist.Categorical(w))
            lvm.observe(lvm.dist.Normal(0.0, 1.0 + z), x)

    with pytest.raises(lvm.UnsupportedModelError, match=r"keep_responsibilities=False .*generic EM route"):
        lvm.infer(not_a_mixture, torch.randn(20), method="em", max_iter=2, keep_responsibilities=False)
