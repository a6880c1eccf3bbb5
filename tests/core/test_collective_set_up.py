"""A data-parallel fit whose set-up fails on one rank raises on every rank (2 processes, gloo on loopback).

One launch of two ranks (bounded in time: a rank left waiting fails the test instead of hanging it) runs every case:
a bad shard on rank 1 only (NaN, the wrong dtype or shape, values a model check refuses) on the closed-form EM route, the
generic EM route and SVI, a failure between two collective calls of the EM set-up (an ``init_params`` name only
rank 1 gets wrong, a start that cannot be drawn on rank 0), an EM callback that raises on rank 1, then a fit that
works (the ranks are still in step).
The failing rank raises its own error; the other raises :class:`~ppl_lvm.errors.DistributedError` naming the rank,
what it was doing and the same text.

The generic route also fits a rank holding a single row (the data plate taken from the model's structure), and
``fit_more`` continues a data-parallel generic fit; both against one process on all the rows (exact EM from the same
start, float64, the same iterations). Measured over data seeds 0-4 (``PPL_LVM_SET_UP_SEED``; relative to each
parameter's largest value, and on the history): at most 4.3e-16, but 3.0e-11 with seed 3, whose L-BFGS M-steps
amplify the other order of the sums; tolerance 1e-10. Every failure case raised on both ranks with every seed.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pyro
import pytest
import torch
import torch.distributed as dist
from demo_models import bayes_linreg, loc_gmm
from ranks import run_ranks

import ppl_lvm as lvm
from ppl_lvm import collective, constraints
from ppl_lvm.em import routes
from ppl_lvm.models.mixtures import gaussian_mixture, poisson_mixture

RTOL = 1e-10
SEED = int(os.environ.get("PPL_LVM_SET_UP_SEED", "0"))  # the data's
TIMEOUT_S = 300  # a hang guard, not a speed test

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not dist.is_available(),
                                reason="needs torch.distributed with gloo")


@lvm.model
def student_mixture(x, K=2):
    """A Student-t mixture (the generic EM route) with a prior term outside the data plate."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.tensor([-1.0, 1.0]))
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    pyro.factor("prior", -0.5 * (locs**2).sum() / 100)
    with lvm.plate(len(x)):
        z = lvm.latent(lvm.dist.Categorical(w))
        lvm.observe(lvm.dist.StudentT(4.0, locs[z], scales[z]), x)


def _error(fn) -> tuple[str, str] | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test records what each rank raised
        return type(exc).__name__, str(exc)
    return None


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.cat([torch.randn(20, 2, generator=g) - 3, torch.randn(21, 2, generator=g) + 3])
    y = torch.cat([torch.randn(15, generator=g) - 2, torch.randn(16, generator=g) * 0.5 + 2])
    counts = torch.poisson(torch.tensor([2.0, 9.0])[torch.arange(30) % 2], generator=g).long()
    return {"x": x, "y": y, "counts": counts}


def _record(fit) -> dict:
    return {"params": {k: v.detach().clone() for k, v in fit.params.items()}, "history": np.asarray(fit.history),
            "log_likelihood": fit.log_likelihood, "n_iter": fit.n_iter}


def _failures(rank: int) -> dict:
    data = _data()
    x = data["x"][:21] if rank == 0 else data["x"][21:]
    y = data["y"][:16] if rank == 0 else data["y"][16:]
    counts = data["counts"][:15] if rank == 0 else data["counts"][15:]
    start = {"locs": [[-3.0, 0.0], [3.0, 0.0]], "scales": [[1.0, 1.0], [1.0, 1.0]]}
    nan_x, nan_y = x.clone(), y.clone()
    if rank == 1:
        nan_x[2, 1], nan_y[3] = float("nan"), float("nan")
    bad_counts = counts.clone()
    if rank == 1:
        bad_counts[4] = -1  # outside the Poisson's support: the model check refuses it
    em = dict(method="em", max_iter=5, tol=None, distributed=True)
    gaussian = {"K": 2, "covariance_type": "diag"}
    out = {
        "closed_nan": _error(lambda: lvm.infer(gaussian_mixture, {"x": nan_x, **gaussian}, init_params=start, **em)),
        "closed_check": _error(lambda: lvm.infer(poisson_mixture, {"x": bad_counts[:, None], "K": 2}, **em)),
        "closed_columns": _error(lambda: lvm.infer(gaussian_mixture, {"x": x if rank == 0 else x[:, :1],
                                                                      **gaussian}, **em)),
        "closed_init_name": _error(lambda: lvm.infer(
            gaussian_mixture, {"x": x, **gaussian}, **em,
            init_params=start if rank == 0 else {"locs": start["locs"], "scale": start["scales"]})),
        "generic_nan": _error(lambda: lvm.infer(student_mixture, {"x": nan_y}, **em)),
        "generic_dtype": _error(lambda: lvm.infer(student_mixture, {"x": y if rank == 0 else y.numpy().astype(str)},
                                                  **em)),
        "generic_shape": _error(lambda: lvm.infer(student_mixture, {"x": y if rank == 0 else y[:, None]}, **em)),
        "generic_options": _error(lambda: lvm.infer(student_mixture, {"x": y}, **{**em, "max_iter": 5 + rank})),
        "svi_nan": _error(lambda: lvm.infer(loc_gmm, {"x": nan_x}, method="svi", steps=3, distributed=True)),
        "svi_shape": _error(lambda: lvm.infer(bayes_linreg, {"X": x, "y": x.sum(1) if rank == 0 else x[:, :1]},
                                              method="svi", steps=3, distributed=True)),
    }
    def fails_on_rank_1(i, ll):
        if rank == 1 and i == 2:
            raise ValueError("a callback fails on rank 1")
        return False

    out["callback"] = _error(lambda: lvm.infer(student_mixture, {"x": y}, callbacks=[fails_on_rank_1], **em))
    draw = routes.initialize_mixture
    if rank == 0:  # a start that rank 0 alone draws, and cannot
        routes.initialize_mixture = lambda *a, **kw: (_ for _ in ()).throw(ValueError("no start on rank 0"))
    try:
        out["closed_start"] = _error(lambda: lvm.infer(gaussian_mixture, {"x": x, **gaussian}, n_init=2, seed=3,
                                                       init_params="kmeans", **{**em, "max_iter": 2}))
    finally:
        routes.initialize_mixture = draw
    # the ranks are still in step: a fit that works, on both routes
    out["after"] = [_record(lvm.infer(gaussian_mixture, {"x": x, **gaussian}, init_params=start, **em)),
                    _record(lvm.infer(student_mixture, {"x": y}, **em))]
    return out


def _generic(rank: int | None) -> dict:
    """A generic fit whose rank 1 holds a single row, then ``fit_more`` (``None``: one process, all the rows)."""
    y = _data()["y"]
    shard = y if rank is None else (y[:-1] if rank == 0 else y[-1:])
    fit = lvm.infer(student_mixture, {"x": shard}, method="em", max_iter=6, tol=None, distributed=rank is not None)
    more = fit.fit_more(max_iter=3)
    return {"single_row": _record(fit), "fit_more": _record(more), "more_options": more.options.get("distributed")}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {"failures": _failures(rank), "generic": _generic(rank)}
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_ranks(_worker, str(tmp_path_factory.mktemp("ranks")), TIMEOUT_S)


def _announced(two_ranks, case: str, kind: str, stage: str) -> tuple[str, str]:
    """Rank 1 raised its own ``kind``; rank 0 a DistributedError naming rank 1, the ``stage`` and the same text."""
    (kind0, text0), (kind1, text1) = two_ranks[0]["failures"][case], two_ranks[1]["failures"][case]
    assert kind1 == kind, (case, kind1, text1)
    assert kind0 == "DistributedError", (case, kind0, text0)
    assert text0 == f"rank 1 of the data-parallel fit failed while {stage}: {kind}: {text1}"
    return text0, text1


@pytest.mark.parametrize("case", ["closed_nan", "generic_nan", "svi_nan"])
def test_a_nan_in_rank_1s_shard_is_raised_on_every_rank(two_ranks, case):
    _, text1 = _announced(two_ranks, case, "DataError", "binding and checking its data")
    assert "NaN" in text1


def test_a_shard_of_another_dtype_on_rank_1_is_raised_on_every_rank(two_ranks):
    _, text1 = _announced(two_ranks, "generic_dtype", "DataError", "binding and checking its data")
    assert "non-numeric dtype" in text1


@pytest.mark.parametrize("case", ["generic_shape", "svi_shape"])
def test_a_shard_of_another_shape_on_rank_1_is_raised_on_every_rank(two_ranks, case):
    _, text1 = _announced(two_ranks, case, "ModelCheckError", "binding and checking its data")
    assert "site 'y'" in text1 or "site 'x'" in text1
    assert ".py:" in text1 and "Fix:" in text1  # the site's source line, and the fix


def test_a_shard_the_model_check_refuses_is_raised_on_every_rank(two_ranks):
    _, text1 = _announced(two_ranks, "closed_check", "ModelCheckError", "binding and checking its data")
    assert "mixtures.py" in text1


def test_a_failure_between_the_set_ups_collectives_is_raised_on_every_rank(two_ranks):
    _, text1 = _announced(two_ranks, "closed_init_name", "ValueError", "setting up the EM fit")
    assert "init_params has unknown parameter(s) ['scale']" in text1
    # a start only rank 0 draws: rank 1 waits for it in the broadcast, and learns why it does not come
    (kind0, text0), (kind1, text1) = two_ranks[0]["failures"]["closed_start"], two_ranks[1]["failures"]["closed_start"]
    assert (kind0, text0) == ("ValueError", "no start on rank 0")
    assert (kind1, text1) == ("DistributedError", "rank 0 of the data-parallel fit failed while drawing the start "
                                                  "of restart 0 (seed 3): ValueError: no start on rank 0")


def test_a_callback_that_fails_on_one_rank_is_raised_on_every_rank(two_ranks):
    _announced(two_ranks, "callback", "ValueError", "running the callbacks of iteration 2")


def test_errors_found_together_are_raised_alike_on_every_rank(two_ranks):
    for rank in two_ranks:
        kind, text = rank["failures"]["closed_columns"]
        assert kind == "DistributedError" and "the ranks hold data of different shapes" in text
        kind, text = rank["failures"]["generic_options"]
        assert kind == "DistributedError" and "disagree on the EM route and options: rank 0 has {'max_iter': '5'}, rank 1 has " \
            "{'max_iter': '6'}" in text


def test_the_ranks_are_still_in_step_after_the_failures(two_ranks):
    for after0, after1 in zip(two_ranks[0]["failures"]["after"], two_ranks[1]["failures"]["after"], strict=True):
        for name, value in after0["params"].items():
            assert torch.equal(value, after1["params"][name]), name
        np.testing.assert_array_equal(after0["history"], after1["history"])


@pytest.fixture(scope="module")
def one_process():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _generic(None)
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("case", ["single_row", "fit_more"])
def test_generic_route_with_a_single_row_on_a_rank_and_fit_more_equal_one_process(two_ranks, one_process, case):
    ref = one_process[case]
    for rank in two_ranks:
        got = rank["generic"][case]
        assert got["n_iter"] == ref["n_iter"]
        np.testing.assert_allclose(got["history"], ref["history"], rtol=RTOL)
        assert got["log_likelihood"] == pytest.approx(ref["log_likelihood"], rel=RTOL)
        for name, value in ref["params"].items():
            np.testing.assert_allclose(got["params"][name].numpy(), value.numpy(), rtol=RTOL, atol=1e-12,
                                       err_msg=name)
    assert two_ranks[0]["generic"]["more_options"] is True  # fit_more ran data-parallel too


def test_in_one_process_the_set_up_exchanges_nothing():
    assert not dist.is_initialized()
    with collective.set_up("setting up"):
        collective.checkpoint()
        collective.started()
        collective.restarting("again")
        with pytest.raises(ValueError, match="raised as is"), collective.set_up("inner"):
            raise ValueError("raised as is")
    with pytest.raises(lvm.DistributedError, match="init_process_group"), collective.collective("testing"):
        pass
    assert collective.failure_message(1, "testing", "ValueError: x") == \
        "rank 1 of the data-parallel fit failed while testing: ValueError: x"
    error = ValueError("seen by every rank")
    assert not collective.is_known(error) and collective.is_known(collective.known(error))
