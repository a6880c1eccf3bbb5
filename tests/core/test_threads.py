"""The thread policy of a fit (ppl_lvm/threads.py): the rule on synthetic work sizes and environments, the user's
count winning, the count applied during a fit and restored after it (also after an error), and its record."""

import numpy as np
import pytest
import torch
from demo_data import ppca_data
from demo_models import normal_normal, ppca

import ppl_lvm as lvm
from ppl_lvm import threads
from ppl_lvm.backends import get_backend
from ppl_lvm.backends.problem import make_problem, step_work
from ppl_lvm.models.mixtures import gaussian_mixture

NO_ENV: dict = {}


def auto(work, cores=2, ranks=1, current=2, environ=NO_ENV, idle=None, startup=2, startup_is_default=True):
    return threads.choose_threads("auto", work, current=current, environ=environ, cores=cores, ranks=ranks,
                                  idle=idle, startup=startup, startup_is_default=startup_is_default)


@pytest.fixture
def torch_default(monkeypatch):
    """As if torch had started with two threads and nobody had set a count; the suite's count restored after."""
    before = torch.get_num_threads()
    for name in threads.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "STARTUP_THREADS", 2)
    monkeypatch.setattr(threads, "_STARTUP_IS_DEFAULT", True)
    monkeypatch.setattr(threads, "usable_cores", lambda: {0, 1})
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------- the rule
def test_small_work_runs_one_thread():
    per_thread = threads.WORK_PER_THREAD
    for work in (1, 10**6, int(2 * per_thread) - 1):
        choice = auto(work, cores=64)
        assert choice.threads == 1, work
        assert choice.reason.startswith("auto: work")


def test_large_work_grows_with_the_work_up_to_the_cores():
    per_thread = int(threads.WORK_PER_THREAD)
    assert auto(2 * per_thread, cores=64).threads == 2
    assert auto(5 * per_thread, cores=64).threads == 5
    assert auto(10**15, cores=64).threads == 64
    assert auto(10**15, cores=2).threads == 2  # never more than the usable cores


def test_busy_cores_are_not_counted():
    big = 10**15
    assert auto(big, cores=2, idle=1.0).threads == 1  # another process keeps the second core busy
    assert auto(big, cores=2, idle=1.7).threads == 2
    assert auto(big, cores=2, idle=0.1).threads == 1  # never zero
    assert auto(big, cores=16, idle=5.2).threads == 5
    assert auto(big, cores=16, ranks=2, idle=5.2).threads == 3  # the idle cores shared by the local processes
    assert "5.2 idle" in auto(big, cores=16, idle=5.2).reason
    cpus = threads.usable_cores()
    measured = threads.idle_cores(cpus, interval=0.02)
    assert measured is None or 0.0 <= measured <= len(cpus) + 1e-9


def test_local_ranks_share_the_cores():
    big = 10**15
    assert auto(big, cores=16, ranks=4).threads == 4
    assert auto(big, cores=2, ranks=2).threads == 1
    assert auto(big, cores=2, ranks=8).threads == 1  # more processes than cores: one each, never zero
    assert "shared by 4 local processes" in auto(big, cores=16, ranks=4).reason
    assert threads.local_ranks({"LOCAL_WORLD_SIZE": "3"}) == 3
    assert threads.local_ranks({}) == 1  # no process group initialised in the test process


def test_the_users_count_wins():
    big = 10**15
    env = auto(big, environ={"OMP_NUM_THREADS": "1"}, current=1, startup=1)
    assert env.threads == 1 and "OMP_NUM_THREADS=1 is set" in env.reason
    assert auto(1, environ={"MKL_NUM_THREADS": "2"}).threads == 2  # small work, but the environment says 2
    called = auto(big, cores=8, current=3, startup=8)
    assert called.threads == 3 and "torch.set_num_threads(3) was called" in called.reason
    before_import = auto(1, current=2, startup=2, startup_is_default=False)
    assert before_import.threads == 2 and "before ppl_lvm was imported" in before_import.reason
    assert threads.user_setting(2, {}, 2, True) is None
    assert threads.user_setting(2, {"OMP_NUM_THREADS": " "}, 2, True) is None  # an empty variable is not a count


def test_an_explicit_count_or_none():
    assert threads.choose_threads(3, 1, cores=2).threads == 3  # the caller's count, as given
    assert threads.choose_threads(np.int64(2), 1).threads == 2
    none = threads.choose_threads(None, 10**15)
    assert none.threads is None and "left as it is" in none.reason


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "fast", "AUTO", [2]])
def test_bad_num_threads_is_refused(bad):
    with pytest.raises(ValueError, match="num_threads must be 'auto'.*or a positive integer"):
        threads.validate_num_threads(bad)
    with pytest.raises(ValueError, match="num_threads must be"):
        lvm.infer(normal_normal, torch.randn(5), steps=2, num_threads=bad)


def test_work_size_of_a_problem():
    x = ppca_data(n=40, d=5, q=2)
    full = make_problem(get_backend("svi"), ppca, x)
    parameters = 5 * 2 + 5 + 1  # W, mu, sigma
    assert step_work(full) == threads.work_size(40, parameters) == 40 * parameters
    batched = make_problem(get_backend("iwae"), ppca, x, options={"batch_size": 10, "num_particles": 4})
    assert step_work(batched) == 10 * parameters * 4
    assert threads.work_size(0, 0, 0, 0) == 1


# ---------------------------------------------------------------------------------------------------- in a fit
def counting():
    seen: list[int] = []

    def callback(state):
        seen.append(torch.get_num_threads())
        return False
    return seen, callback


def test_a_small_fit_runs_one_thread_and_restores_the_count(torch_default):
    seen, callback = counting()
    fit = lvm.infer(normal_normal, torch.randn(20), steps=3, callbacks=[callback])
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2
    assert fit.options["num_threads"] == 1
    assert fit.options["num_threads_reason"].startswith("auto: work")


def test_a_count_the_user_set_is_kept(torch_default):
    torch.set_num_threads(1)  # differs from the start-up count 2: the user's
    seen, callback = counting()
    fit = lvm.infer(normal_normal, torch.randn(20), steps=3, callbacks=[callback])
    assert set(seen) == {1}
    assert "torch.set_num_threads(1) was called" in fit.options["num_threads_reason"]
    assert torch.get_num_threads() == 1


def test_an_explicit_count_is_used_and_none_leaves_torch_alone(torch_default):
    seen, callback = counting()
    torch.set_num_threads(1)
    fit = lvm.infer(normal_normal, torch.randn(20), steps=3, callbacks=[callback], num_threads=2)
    assert set(seen) == {2} and fit.options["num_threads"] == 2
    assert torch.get_num_threads() == 1
    seen.clear()
    torch.set_num_threads(2)
    fit = lvm.infer(normal_normal, torch.randn(20), steps=3, callbacks=[callback], num_threads=None)
    assert set(seen) == {2} and fit.options["num_threads"] == 2
    assert "num_threads=None" in fit.options["num_threads_reason"]


def test_the_count_is_restored_after_an_error(torch_default):
    def fail(state):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        lvm.infer(normal_normal, torch.randn(20), steps=3, callbacks=[fail], num_threads=1)
    assert torch.get_num_threads() == 2


def test_a_failed_fit_restores_the_count_and_its_result_records_it(torch_default):
    calls = {"n": 0}

    @lvm.model
    def fragile(x):
        mu = lvm.param(torch.tensor(0.0))
        calls["n"] += 1
        scale = torch.exp(torch.tensor(1000.0 if calls["n"] > 7 else 0.0))  # inf from the eighth run: the loss is inf
        with lvm.plate(len(x)):
            lvm.observe(lvm.dist.Normal(mu, scale), x)

    with pytest.raises(lvm.FitError) as info:
        lvm.infer(fragile, torch.randn(20) + 3, steps=50, lr=0.1, fast_path=False)
    assert torch.get_num_threads() == 2
    assert info.value.result.options["num_threads"] == 1


def test_a_fit_inside_a_fit_keeps_the_outer_count(torch_default):
    inner = []

    def nested(state):
        if not inner:
            inner.append(lvm.infer(normal_normal, torch.randn(5), steps=2))
        return False

    lvm.infer(normal_normal, torch.randn(20), steps=2, callbacks=[nested], num_threads=2)
    assert inner[0].options["num_threads"] == 2
    assert inner[0].options["num_threads_reason"] == "a fit inside another fit keeps its count"
    assert torch.get_num_threads() == 2


def test_em_and_restarts_record_the_count(torch_default, float64):
    x = torch.cat([torch.randn(30, 2) - 3, torch.randn(30, 2) + 3])
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em", n_init=2)
    assert fit.options["num_threads"] == 1
    assert [r.options["num_threads"] for r in fit.restarts] == [1, 1]
    assert torch.get_num_threads() == 2


def test_fit_more_chooses_afresh_unless_given(torch_default):
    fit = lvm.infer(normal_normal, torch.randn(20), steps=3, num_threads=2)
    assert fit.fit_more(steps=2).options["num_threads"] == 1
    assert fit.fit_more(steps=2, num_threads=2).options["num_threads"] == 2
    assert torch.get_num_threads() == 2
