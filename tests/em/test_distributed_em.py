"""Data-parallel EM (``distributed=True``) on 2 processes over loopback with gloo, against one process on all the data.

The two ranks are started once (``torch.multiprocessing``, bounded in time) and run every case; each rank fits its
contiguous shard (``lvm.chunks(...).shard``), in memory or read 64 rows at a time from a memory-mapped file. Exact EM from the same start has no randomness, so the comparison is
deterministic: float64, 1e-10 relative (measured: at most 3.8e-15 on the parameters, 1.2e-15 on the history; the
ranks' parameters are bit-identical, since both run the M-step on the same all-reduced totals).

The generic route (a Student-t mixture with a prior term outside the data plate: L-BFGS M-steps on ``Q`` and its
gradient summed over the ranks at every evaluation) reaches the same numbers, with the same iterations, restarts
and convergence, and parameters bit-identical on the two ranks. Measured over data seeds 0-4 (relative to each
parameter's largest value): shards in memory (two restarts, converged after 8 to 24 iterations) at most 1.2e-15
on the parameters, 2.5e-15 on the history, 3.8e-16 on the log-likelihood and the BIC; shards streamed 32 rows at
a time (4 iterations) 2.8e-14 on the parameters, 4.3e-16 on the history. A chain written as one ``DiscreteHMM``
site, streamed by whole sequences from each rank's rows of a memory-mapped ``(sequences, steps, D)`` array:
4.3e-15 on the parameters, 3.8e-16 on the history. The cases below use data seeds 1 (mixture) and 2 (chain).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pyro
import pytest
import torch
import torch.distributed as dist
from ranks import run_ranks

import ppl_lvm as lvm
from ppl_lvm import constraints
from ppl_lvm.em.accumulate import ModelChunks, Reducer
from ppl_lvm.em.stream import chunks
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm_vectorized, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture

K = 3
RTOL = 1e-10
TIMEOUT_S = 900  # a hang guard, not a speed test: generous for a loaded machine


def _mixture_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (210, 3)), rng.normal(0, 0.5, (150, 3)) + [4, 0, 2],
                           rng.normal(0, 0.7, (141, 3)) + [0, 5, -3]])


def _mixture_start(covariance_type: str) -> dict:
    locs = np.array([[0.5, 0, 0], [3, 0.5, 1], [0, 4, -2]])
    if covariance_type == "full":
        return {"locs": locs, "scale_trils": np.stack([np.eye(3)] * K)}
    return {"locs": locs, "scales": np.ones((K, 3))}


def _sequences() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 40, size=24)
    return [rng.integers(0, 4, size=n) for n in lengths], lengths


HMM_START = {"start": np.array([0.5, 0.3, 0.2]), "trans": np.full((K, K), 1 / K) + 0.1 * np.eye(K) / (1 + 0.1 / K),
             "emission": np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.3, 0.2]])}
HMM_START["trans"] = HMM_START["trans"] / HMM_START["trans"].sum(1, keepdims=True)


def _hmm_data(seqs: list[np.ndarray]) -> dict:
    padded, lengths = pad_sequences([torch.as_tensor(s) for s in seqs])
    return {"x": padded, "lengths": lengths, "K": K, "n_symbols": 4}


@lvm.model
def student_mixture(x, K=2):
    """A mixture of Student-t (no closed-form M-step: the generic route), started from the data's first rows, with
    a prior on the locations outside the data plate (counted once, on rank 0)."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(lambda: x[:K].clone())
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    pyro.factor("prior", -0.5 * (locs**2).sum() / 100)
    with lvm.plate(len(x)):
        z = lvm.latent(lvm.dist.Categorical(w))
        lvm.observe(lvm.dist.StudentT(4.0, locs[z], scales[z]), x)


def _student_data(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_t(4, 90) - 2, rng.standard_t(4, 71) * 0.5 + 2])[rng.permutation(161)]


def _chain_sequences() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.normal(size=(13, 17, 2)) + 3.0 * rng.integers(0, 2, size=(13, 17, 1))


CHAIN_START = {"start": np.ones(2) / 2, "trans": np.array([[0.7, 0.3], [0.4, 0.6]]),
               "locs": np.array([[0.5, 0.0], [2.0, 2.5]]), "scales": np.ones((2, 2))}
#: the cases whose data are read chunk by chunk: no responsibilities kept
STREAMED = ("streamed", "student_streamed", "chain_streamed")


def _generic_fits(rank: int | None, world: int, folder: str) -> dict:
    """The generic route's cases and the streamed DiscreteHMM chain (``None``: one process, all the data)."""
    out = {}
    distributed = rank is not None
    y = _student_data()
    shard = torch.cat([c for c, _ in chunks(y).shard(rank, world)]) if distributed else torch.tensor(y)
    # two restarts from rank 0's starts (its seed, 0, and its first rows) on every rank, run to convergence
    out["student"] = lvm.infer(student_mixture, {"x": shard}, method="em", n_init=2, seed=rank or 0, max_iter=40,
                               tol=1e-8, distributed=distributed)
    # a callback asking to stop on rank 1 only stops every rank
    out["student_stopped"] = lvm.infer(student_mixture, {"x": shard}, method="em", max_iter=10, tol=None,
                                       callbacks=[lambda i, ll: i == 2 and rank in (None, 1)],
                                       distributed=distributed)
    x = _chain_sequences()
    if distributed:  # each rank reads its rows of memory-mapped files: 32 points, or 4 whole sequences, at a time
        np.save(os.path.join(folder, f"y{rank}.npy"), y)
        np.save(os.path.join(folder, f"chain{rank}.npy"), x)
        y_stream = chunks(np.load(os.path.join(folder, f"y{rank}.npy"), mmap_mode="r"), 32).shard(rank, world)
        x_stream = chunks(np.load(os.path.join(folder, f"chain{rank}.npy"), mmap_mode="r"), 4).shard(rank, world)
    else:
        y_stream, x_stream = torch.tensor(y), torch.tensor(x)
    out["student_streamed"] = lvm.infer(student_mixture, {"x": y_stream}, method="em", max_iter=4, tol=None,
                                        distributed=distributed)
    out["chain_streamed"] = lvm.infer(gaussian_hmm_vectorized, {"x": x_stream, "K": 2}, method="em",
                                      init_params=CHAIN_START, max_iter=12, tol=None, distributed=distributed)
    return out


def _fits(rank: int | None, world: int, folder: str) -> dict:
    """Every case's numbers, fitted on rank ``rank``'s shard (``None``: one process, all the data)."""
    out = {}
    x = _mixture_data()
    distributed = rank is not None
    for ct in ("full", "diag"):
        data = chunks(x).shard(rank, world) if distributed else chunks(x)
        shard = torch.cat([c for c, _ in data])
        fit = lvm.infer(gaussian_mixture, {"x": shard, "K": K, "covariance_type": ct}, method="em",
                        init_params=_mixture_start(ct), max_iter=25, tol=None, distributed=distributed)
        out[ct] = fit
    if distributed:  # each rank reads its contiguous range of a memory-mapped file, 64 rows at a time
        path = os.path.join(folder, f"x{rank}.npy")
        np.save(path, x)
        out["streamed"] = lvm.infer(gaussian_mixture, {"x": chunks(path, 64).shard(rank, world), "K": K},
                                    method="em", init_params=_mixture_start("full"), max_iter=25, tol=None,
                                    distributed=True)
    else:
        out["streamed"] = out["full"]
    seqs, lengths = _sequences()
    if distributed:
        lo, hi = _sequence_shard(lengths, rank, world)
        seqs = seqs[lo:hi]
    out["hmm"] = lvm.infer(categorical_hmm, _hmm_data(seqs), method="em", init_params=HMM_START, max_iter=20,
                           tol=None, distributed=distributed)
    return {**out, **_generic_fits(rank, world, folder)}


def _sequence_shard(lengths: np.ndarray, rank: int, world: int) -> tuple[int, int]:
    """The sequences of rank ``rank``: those of the row shard of ``lvm.chunks(x, lengths=...)``."""
    rows = np.concatenate([np.arange(n) for n in lengths])  # any array with these many rows
    return chunks(rows, lengths=lengths).shard(rank, world).sequence_range


def _record(fit) -> dict:
    return {"params": {k: v.detach().clone() for k, v in fit.params.items()}, "history": np.asarray(fit.history),
            "log_likelihood": fit.log_likelihood, "n_samples": fit.n_samples, "bic": fit.bic(),
            "n_iter": fit.n_iter, "converged": fit.converged,
            "resp": next((r.clone() for r in fit.responsibilities.values()), None),
            "per_point": None if fit.log_likelihood_per_point is None else fit.log_likelihood_per_point.clone()}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: _record(fit) for name, fit in _fits(rank, world, folder).items()}
        shard = torch.cat([c for c, _ in chunks(_mixture_data()).shard(rank, world)])
        seeded = lvm.infer(gaussian_mixture, {"x": shard, "K": K}, method="em", n_init=2, seed=rank + 5,
                           distributed=True)  # k-means++ on rank 0's shard, seeds of rank 0 too
        results["seeded"] = _record(seeded)
        on_demand = lvm.infer(gaussian_mixture, {"x": shard, "K": K, "covariance_type": "diag"}, method="em",
                              init_params=_mixture_start("diag"), max_iter=25, tol=None, distributed=True,
                              keep_responsibilities=False)
        results["diag_on_demand"] = {**_record(on_demand), "held": on_demand.rows is None}
        calls = []
        all_reduce = dist.all_reduce
        dist.all_reduce = lambda tensor, *a, **kw: (calls.append(tensor.numel()), all_reduce(tensor, *a, **kw))[1]
        try:
            lvm.infer(gaussian_mixture, {"x": shard, "K": K, "covariance_type": "diag"}, method="em",
                      init_params=_mixture_start("diag"), max_iter=7, tol=None, distributed=True)
        finally:
            dist.all_reduce = all_reduce
        results["all_reduce_sizes"] = calls
        results["failure"] = _failure_on_rank_1(rank)

        @lvm.model
        def shared_switch(x):  # one latent for all the points couples the shards
            w = lvm.param(torch.ones(2) / 2, constraint=constraints.simplex)
            locs = lvm.param(torch.tensor([-1.0, 1.0]))
            z = lvm.latent(lvm.dist.Categorical(w))
            with lvm.plate(len(x)):
                lvm.observe(lvm.dist.Normal(locs[z], 1.0), x)

        try:
            lvm.infer(shared_switch, torch.randn(20), method="em", max_iter=2, distributed=True)
        except lvm.UnsupportedModelError as err:
            results["coupled_error"] = str(err)
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _failure_on_rank_1(rank: int) -> tuple:
    """A pass of the generic route that fails on rank 1 only: how each rank ends it, then a pass that works."""
    data = ModelChunks({"x": torch.zeros(3)}, reducer=Reducer(True))

    def part(index: int, kwargs: dict, rows: int | None) -> dict:
        if rank == 1:
            raise ValueError("an invalid value in rank 1's rows")
        return {"q": torch.ones(())}

    try:
        data.total(part, what="testing a failure")
        raised = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        raised = (type(exc).__name__, str(exc))
    return raised, float(data.total(lambda i, kwargs, rows: {"q": torch.ones(())})["q"])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_ranks(_worker, str(tmp_path_factory.mktemp("ranks")), TIMEOUT_S)


@pytest.fixture(scope="module")
def one_process():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return {name: _record(fit) for name, fit in _fits(None, 1, "").items()}
    finally:
        torch.set_default_dtype(before)


@pytest.mark.skipif(sys.platform == "win32" or not dist.is_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("case", ["full", "diag", "hmm", "streamed", "student", "student_stopped",
                                  "student_streamed", "chain_streamed"])
def test_two_ranks_equal_one_process(two_ranks, one_process, case):
    ref = one_process[case]
    rank0, rank1 = two_ranks[0][case], two_ranks[1][case]
    for name, value in ref["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name  # identical on both ranks
        np.testing.assert_allclose(rank0["params"][name].numpy(), value.numpy(), rtol=RTOL, atol=1e-12, err_msg=name)
    for rank in (rank0, rank1):
        np.testing.assert_allclose(rank["history"], ref["history"], rtol=RTOL)
        assert rank["log_likelihood"] == pytest.approx(ref["log_likelihood"], rel=RTOL)
        assert rank["n_samples"] == ref["n_samples"]
        assert rank["bic"] == pytest.approx(ref["bic"], rel=RTOL)
        assert rank["n_iter"] == ref["n_iter"] and rank["converged"] == ref["converged"]
    # each rank's responsibilities are those of its own shard (none are kept for streamed data)
    if case in STREAMED:
        assert rank0["resp"] is None and rank1["resp"] is None
    elif case == "hmm":
        n_seq = rank0["resp"].shape[0]
        assert rank0["resp"].shape[0] + rank1["resp"].shape[0] == ref["resp"].shape[0]
        assert rank0["resp"].shape[1] <= ref["resp"].shape[1]
        np.testing.assert_allclose(rank0["resp"].numpy(), ref["resp"][:n_seq, : rank0["resp"].shape[1]].numpy(),
                                   atol=1e-10)
    else:
        np.testing.assert_allclose(torch.cat([rank0["resp"], rank1["resp"]]).numpy(), ref["resp"].numpy(), atol=1e-10)


def test_rows_recomputed_on_access_equal_the_held_ones_on_every_rank(two_ranks):
    """keep_responsibilities=False: each rank recomputes its shard's rows, centred on the whole data's shift, with no
    collective; bit for bit the rows a rank holds with the default."""
    for rank in two_ranks:
        held, on_demand = rank["diag"], rank["diag_on_demand"]
        assert not on_demand["held"]
        assert torch.equal(on_demand["resp"], held["resp"])
        assert torch.equal(on_demand["per_point"], held["per_point"])
        assert on_demand["log_likelihood"] == held["log_likelihood"] and on_demand["bic"] == held["bic"]


def test_a_data_seeded_start_is_rank_0s_on_every_rank(two_ranks):
    rank0, rank1 = two_ranks[0]["seeded"], two_ranks[1]["seeded"]
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    np.testing.assert_array_equal(rank0["history"], rank1["history"])


def test_one_all_reduce_per_iteration(two_ranks):
    # the set-up's flag exchanges (3 numbers each, ppl_lvm.collective: after binding the data, before the agreement
    # on the route and options, with the first pass's size check, before the start's broadcast), the first pass (the
    # data mean), one per iteration, the final log-likelihood
    sizes = two_ranks[0]["all_reduce_sizes"]
    assert len(sizes) == 5 + 7 + 1
    assert [sizes[i] for i in (0, 1, 2, 4)] == [3] * 4
    per_iteration = K + K * 3 + K * 3 + K + 1  # weights_sum, s_lin, s_quad, resp_sum, log-likelihood
    assert sizes[5:-1] == [per_iteration] * 7
    assert two_ranks[1]["all_reduce_sizes"] == sizes


def test_generic_route_converges_and_stops_on_every_rank(two_ranks, one_process):
    assert one_process["student"]["converged"] and one_process["student"]["n_iter"] < 40
    assert one_process["student_stopped"]["n_iter"] == two_ranks[0]["student_stopped"]["n_iter"] == 2


def test_a_model_whose_points_are_coupled_is_refused_on_every_rank(two_ranks):
    for rank in two_ranks:
        assert "couples the points" in rank["coupled_error"] and "distributed=True" in rank["coupled_error"]


def test_a_failure_on_one_rank_is_raised_on_every_rank(two_ranks):
    (kind0, text0), total0 = two_ranks[0]["failure"]
    (kind1, text1), total1 = two_ranks[1]["failure"]
    assert (kind1, text1) == ("ValueError", "an invalid value in rank 1's rows")  # its own error
    assert kind0 == "DistributedError"  # a RuntimeError: the M-step treats it as rank 1's invalid value
    assert "rank 1 of the data-parallel fit failed while testing a failure: ValueError: an invalid value" in text0
    assert total0 == total1 == 2.0  # and the ranks are still in step


def test_distributed_without_a_process_group_is_refused():
    assert not dist.is_initialized()
    x = torch.tensor(_mixture_data(), dtype=torch.float32)
    with pytest.raises(lvm.DistributedError, match="init_process_group"):
        lvm.infer(gaussian_mixture, {"x": x, "K": K}, method="em", distributed=True, max_iter=2)


def test_distributed_must_be_a_bool():
    x = torch.tensor(_mixture_data(), dtype=torch.float32)
    with pytest.raises(ValueError, match="distributed must be True or False"):
        lvm.infer(gaussian_mixture, {"x": x, "K": K}, method="em", distributed="yes")
