"""Streamed EM through ``lvm.infer`` on the chain and generic routes: the numbers of in-memory EM.

Exact EM from the same start is deterministic, so float64 results agree to rounding; 1e-10 relative is the
contract. Measured over 5 data seeds (0-4; relative to the largest value): categorical chain, history within
3.1e-16 and parameters within 1.2e-15; generic route (mixture of Poisson regressions, L-BFGS M-steps: the
optimiser sees the same numbers to rounding, so it takes the same steps), history within 1.9e-16 and parameters
within 5.7e-16. The tests below use seed 4 (chain) and seed 0 (regressions). A chain written as one
``DiscreteHMM`` site, streamed by whole sequences (data seeds 0-4): Gaussian, parameters within 3.0e-15 and
history within 5.1e-16; categorical, parameters within 3.1e-15 and history within 5.3e-16 (the test uses seed 2).
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

RTOL = 1e-10


def _same(streamed, in_memory) -> None:
    assert streamed.n_iter == in_memory.n_iter
    np.testing.assert_allclose(streamed.history, in_memory.history, rtol=RTOL)
    assert streamed.log_likelihood == pytest.approx(in_memory.log_likelihood, rel=RTOL)
    assert streamed.n_samples == in_memory.n_samples
    assert streamed.bic() == pytest.approx(in_memory.bic(), rel=RTOL)
    for name, value in in_memory.params.items():
        np.testing.assert_allclose(
            streamed.params[name].numpy(), value.numpy(), rtol=RTOL, atol=RTOL * float(value.abs().max()), err_msg=name
        )


# ---------------------------------------------------------------------------------------------- chains
def _symbol_sequences(seed: int = 4, n_seq: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4, size=int(n)) for n in rng.integers(2, 60, size=n_seq)]


def _chain_start() -> dict:
    emission = np.random.default_rng(9).dirichlet(np.ones(4), 3)
    return {
        "start": np.ones(3) / 3,
        "trans": np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]),
        "emission": emission,
    }


def test_categorical_chain_of_sequences_of_different_lengths_streams_like_in_memory(float64):
    from ppl_lvm.models.hmm import categorical_hmm, pad_sequences

    sequences = _symbol_sequences()
    lengths = np.array([len(s) for s in sequences])
    options = {"method": "em", "init_params": _chain_start(), "max_iter": 15, "tol": None}
    x, padded_lengths = pad_sequences([torch.as_tensor(s) for s in sequences])
    in_memory = lvm.infer(categorical_hmm, {"x": x, "lengths": padded_lengths, "K": 3, "n_symbols": 4}, **options)
    assert in_memory.closed_form
    # one array of sequences back to back (hmmlearn's layout) with lengths; a list of sequences; a function
    # yielding them afresh for every pass: chunks of whole sequences, at most 100 rows each
    streams = [
        lvm.chunks(np.concatenate(sequences), 100, lengths=lengths),
        lvm.chunks(sequences, 100, sequences=True),
        lvm.chunks(lambda: iter(sequences), 100, sequences=True),
    ]
    for stream in streams:
        streamed = lvm.infer(categorical_hmm, {"x": stream, "K": 3, "n_symbols": 4}, **options)
        assert streamed.closed_form
        _same(streamed, in_memory)
        assert streamed.responsibilities == {}  # the (N, K) state posteriors of data never held at once
    more = lvm.infer(categorical_hmm, {"x": streams[1], "K": 3, "n_symbols": 4}, **{**options, "max_iter": 5}).fit_more(
        max_iter=10
    )
    for name, value in in_memory.params.items():
        np.testing.assert_allclose(more.params[name].numpy(), value.numpy(), rtol=RTOL, atol=RTOL)


def test_gaussian_chain_streams_from_a_memory_mapped_file(tmp_path, float64):
    from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences

    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 40, size=10)
    levels = np.repeat(rng.normal(scale=3, size=(int(lengths.sum()) // 6 + 1, 2)), 6, 0)[: int(lengths.sum())]
    rows = rng.normal(size=(int(lengths.sum()), 2)) + levels
    np.save(tmp_path / "rows.npy", rows)
    start = {
        "start": np.ones(2) / 2,
        "trans": np.full((2, 2), 0.5),
        "locs": np.array([[-1.0, 0.0], [1.0, 0.5]]),
        "scales": np.ones((2, 2)) * 2,
    }
    options = {"method": "em", "init_params": start, "max_iter": 10, "tol": None}
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    x, padded = pad_sequences([torch.tensor(rows[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    in_memory = lvm.infer(gaussian_hmm, {"x": x, "lengths": padded, "K": 2}, **options)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    streamed = lvm.infer(gaussian_hmm, {"x": lvm.chunks(mapped, 60, lengths=lengths), "K": 2}, **options)
    _same(streamed, in_memory)


def test_a_stream_of_sequences_is_read_one_group_at_a_time():
    read = []

    def sequences():
        for i in range(20):
            read.append(i)
            yield np.zeros(5 + i % 3)

    seen = []
    for x, lengths in lvm.chunks(sequences, 12, sequences=True):
        # a chunk is handed on when the next sequence does not fit: one sequence read ahead, no more
        seen.append(len(lengths))
        assert len(read) <= sum(seen) + 1 and x.shape[0] == sum(lengths) <= 12
    assert sum(seen) == 20 and len(seen) > 5


@lvm.model
def symbol_chain(x, K=2, n_symbols=4):
    """A categorical chain written as one DiscreteHMM site over (sequences, steps) of symbols."""
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    emission = lvm.param(torch.ones(K, n_symbols) / n_symbols, constraint=constraints.simplex)
    transition = torch.cat([start.expand(1, K, K), trans.expand(x.shape[1] - 1, K, K)]).log()
    with lvm.plate(x.shape[0]):
        lvm.observe(dist.DiscreteHMM(torch.zeros(K), transition, dist.Categorical(emission)), x)


def test_a_discrete_hmm_chain_streams_by_whole_sequences(tmp_path, float64):
    # many sequences of one length in a memory-mapped (sequences, steps, ...) array: chunks of whole sequences
    from ppl_lvm.models.hmm import gaussian_hmm_vectorized

    rng = np.random.default_rng(2)
    x = rng.normal(size=(13, 17, 2)) + 3.0 * rng.integers(0, 2, size=(13, 17, 1))
    np.save(tmp_path / "x.npy", x)
    start = {"start": np.ones(2) / 2, "trans": np.array([[0.7, 0.3], [0.4, 0.6]]),
             "locs": np.array([[0.5, 0.0], [2.0, 2.5]]), "scales": np.ones((2, 2))}
    options = {"method": "em", "init_params": start, "max_iter": 12, "tol": None}
    in_memory = lvm.infer(gaussian_hmm_vectorized, {"x": torch.tensor(x), "K": 2}, **options)
    for stream in (lvm.chunks(np.load(tmp_path / "x.npy", mmap_mode="r"), 4),  # 4 sequences (rows) per chunk
                   lvm.chunks(list(x), 40, sequences=True)):  # one sequence per item, 40 steps per chunk
        streamed = lvm.infer(gaussian_hmm_vectorized, {"x": stream, "K": 2}, **options)
        assert streamed.closed_form and streamed.responsibilities == {}
        _same(streamed, in_memory)
    symbols = np.random.default_rng(2).integers(0, 4, size=(11, 9))
    symbols[:5, :4] = 3  # the states differ in their symbols
    start = {"start": np.array([0.6, 0.4]), "trans": np.array([[0.8, 0.2], [0.3, 0.7]]), "emission": _chain_start()["emission"][:2]}
    options = {**options, "init_params": start}
    in_memory = lvm.infer(symbol_chain, {"x": torch.tensor(symbols)}, **options)
    streamed = lvm.infer(symbol_chain, {"x": lvm.chunks(symbols, 3)}, **options)
    assert in_memory.closed_form and streamed.closed_form
    _same(streamed, in_memory)
    with pytest.raises(lvm.DataError, match=r"chunk 1 of the data has shape \(3, 8\), not \(sequences, 9, ...\)"):
        lvm.infer(symbol_chain, {"x": lvm.chunks([symbols[:3], symbols[3:6, :8]])}, **options)


# ---------------------------------------------------------------------------------------------- the generic route
@lvm.model
def poisson_regressions(X, y, K=2):
    """A mixture of Poisson regressions with a ridge prior on the coefficients (no closed-form M-step)."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.linspace(-0.5, 0.5, K * X.shape[1]).reshape(K, X.shape[1]))
    pyro.factor("ridge", -0.5 * (beta**2).sum())  # outside the data plate: counted once, not once per chunk
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Poisson((X * beta[z]).sum(-1).exp()), y)


def _regression_data(n: int = 121) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    beta = np.array([[0.5, 1.0, -0.5], [2.0, -0.3, 0.4]])
    y = rng.poisson(np.exp((X * beta[rng.integers(0, 2, n)]).sum(1)))
    return X, y


def test_generic_route_streams_q_and_its_gradient_like_in_memory(tmp_path, float64):
    X, y = _regression_data()
    np.save(tmp_path / "X.npy", X)
    options = {"method": "em", "max_iter": 3, "tol": None}
    in_memory = lvm.infer(poisson_regressions, {"X": torch.tensor(X), "y": torch.tensor(y)}, **options)
    assert not in_memory.closed_form
    # 121 rows in chunks of 40: the last chunk holds one row (a plate of size 1); X memory-mapped, y in memory
    X_stream = lvm.chunks(np.load(tmp_path / "X.npy", mmap_mode="r"), 40)
    streamed = lvm.infer(poisson_regressions, {"X": X_stream, "y": lvm.chunks(y, 40)}, **options)
    _same(streamed, in_memory)
    assert len(streamed.history) == 4 and streamed.history[-1] > streamed.history[0]
    assert streamed.responsibilities == {}


def test_streams_the_generic_route_cannot_read_are_refused(float64):
    X, y = _regression_data(20)
    with pytest.raises(ValueError, match="chunk 1 of the data read chunk by chunk has different numbers of rows"):
        lvm.infer(
            poisson_regressions,
            {"X": lvm.chunks(X, 10), "y": lvm.chunks([y[:10], y[10:14], y[14:]])},
            method="em",
            max_iter=1,
        )
    with pytest.raises(ValueError, match=r"\['y'\] end after 1 chunks"):
        lvm.infer(poisson_regressions, {"X": lvm.chunks(X, 10), "y": lvm.chunks([y[:10]])}, method="em", max_iter=1)

    @lvm.model
    def shared_switch(x):  # one latent for all the points couples the chunks
        w = lvm.param(torch.ones(2) / 2, constraint=constraints.simplex)
        locs = lvm.param(torch.tensor([-1.0, 1.0]))
        z = lvm.latent(dist.Categorical(w))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(locs[z], 1.0), x)

    with pytest.raises(lvm.UnsupportedModelError, match="couples the points"):
        lvm.infer(shared_switch, {"x": lvm.chunks(np.linspace(-2, 2, 30), 10)}, method="em", max_iter=1)


def test_sequences_go_to_chains_only(float64):
    from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm_vectorized
    from ppl_lvm.models.mixtures import gaussian_mixture

    sequences = [np.random.default_rng(0).normal(size=(8, 2)) for _ in range(3)]
    with pytest.raises(lvm.DataError, match="For a model of rows pass lvm.chunks"):
        lvm.infer(gaussian_mixture, {"x": lvm.chunks(sequences, 10, sequences=True), "K": 2}, method="em")

    @lvm.model
    def sequences_as_rows(x):  # runs on a (1, T) batch, but is no chain
        w = lvm.param(torch.ones(2) / 2, constraint=constraints.simplex)
        locs = lvm.param(torch.tensor([-1.0, 1.0]))
        with lvm.plate(x.shape[-1]):
            z = lvm.latent(dist.Categorical(w))
            lvm.observe(dist.Normal(locs[z], 1.0), x[0])

    with pytest.raises(lvm.UnsupportedModelError, match="hidden Markov chain written with lvm.markov"):
        lvm.infer(sequences_as_rows, {"x": lvm.chunks([s[:, 0] for s in sequences], 10, sequences=True)}, method="em")
    with pytest.raises(lvm.DataError, match=r"chunk 3 of the data holds sequences of \[7\] steps.*one DiscreteHMM"):
        lvm.infer(gaussian_hmm_vectorized, {"x": lvm.chunks(sequences + [sequences[0][:7]], 10, sequences=True),
                                            "K": 2}, method="em")
    symbols = _symbol_sequences(n_seq=4)
    with pytest.raises(lvm.DataError, match="chunk 1 of the data.*number of symbols"):
        # the model sizes its emissions from the first sequence unless told the number of symbols
        lvm.infer(
            categorical_hmm,
            {"x": lvm.chunks([np.zeros(5, dtype=np.int64)] + symbols, 10, sequences=True), "K": 2},
            method="em",
        )
    with pytest.raises(ValueError, match="drop lengths"):
        lvm.chunks(sequences, 10, lengths=[8, 8, 8], sequences=True)
    with pytest.raises(ValueError, match="sequence 1 has no steps"):
        list(lvm.chunks([np.zeros(3), np.zeros(0)], sequences=True))
