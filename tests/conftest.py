import functools
import os
import re
import sys
import tempfile
from pathlib import Path

# A byte-code cache for the suite's Python processes. Where PYTHONDONTWRITEBYTECODE is set (as on the CI machines)
# and the packages were installed with --no-compile, every process the suite starts (the tutorials, the CLI,
# torchrun ranks, 2-process tests) compiles torch, pyro and sympy from source again: measured here, importing
# torch, pyro and ppl_lvm took 4.4 s without a cache and 2.0 s with one, and the first optimiser step's import of
# torch._dynamo 4.7 s and 1.2 s. Their byte code goes to one cache outside the source trees instead (Python checks
# each cached file against its source); a PYTHONPYCACHEPREFIX of your own is kept.
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    _cache = os.path.join(tempfile.gettempdir(), f"ppl_lvm-test-pycache-{getattr(os, 'getuid', lambda: 0)()}")
    os.environ["PYTHONPYCACHEPREFIX"] = _cache
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    sys.pycache_prefix, sys.dont_write_bytecode = _cache, False

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run (set PPL_LVM_TEST_EXPLORE=1 to draw new ones): a suite that
# passes on one machine passes on the next. New examples are explored on purpose, and the failures found are kept
# as explicit @example cases.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("PPL_LVM_TEST_EXPLORE") == "1" else "fixed")

# One thread: on a 2-core machine small tensor ops under a second busy thread run several times slower. To see
# which tests depend on the floating-point path, run the suite with PPL_LVM_TEST_THREADS=2 and with
# PPL_LVM_TEST_DETERMINISTIC=1 (torch.use_deterministic_algorithms) too.
torch.set_num_threads(int(os.environ.get("PPL_LVM_TEST_THREADS", "1")))
if "PPL_LVM_TEST_THREADS" in os.environ:  # a count named in the environment is kept by every fit (ppl_lvm/threads.py)
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["PPL_LVM_TEST_THREADS"])
if os.environ.get("PPL_LVM_TEST_DETERMINISTIC") == "1":
    torch.use_deterministic_algorithms(True)


@pytest.fixture(autouse=True)
def _clean_state():
    """Every test starts with an empty parameter store, a fixed seed and float32 defaults."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def pytest_configure(config):
    # Many tests fit for a few steps on purpose (shapes, errors, options), and a gradient fit that stops before its
    # loss settled now says so with a ConvergenceWarning; those are not failures. EM's warnings stay errors, and
    # pytest.warns still sees every warning (tests/backends/test_vi_defaults.py checks this one).
    config.addinivalue_line(
        "filterwarnings", r"ignore:(svi|meanfield|iwae|renyi) stopped after \d+ steps before:ppl_lvm.errors.ConvergenceWarning"
    )


# ------------------------------------------------------------------------------------------- scheduling (xdist)
# Under pytest-xdist's default `--dist load` (the README's `-n auto`) the tests of one module are dealt to both
# workers one by one, so a module-scoped fixture (a torchrun launch, a NUTS fit, the CLI's background commands) is
# computed once per worker. The scheduler below keeps every test of a module that defines a module-scoped fixture
# on one worker, so that fixture is computed once; every other test is scheduled on its own, wherever a worker is
# free. (xdist's own `--dist loadgroup` cannot do this under pytest >= 9.2: it renames the tests through an
# attribute that pytest no longer reads.) An explicit `--dist` other than `load` is left alone.
#
# The tests that take longest start first (longest-processing-time-first), so that no long test starts last and
# leaves the other worker idle: the modules and tests below, in this order, then the rest in collection order.
# The list is a scheduling hint only (measured with --durations); a test missing from it still runs.
LONGEST_FIRST = (
    "tests/test_tutorials.py::test_tutorial_runs_in_fast_mode[11_",
    "tests/test_tutorials.py::test_tutorial_runs_in_fast_mode[10_",
    "tests/cli/test_cli_torchrun.py",
    "tests/test_tutorials.py::test_tutorial_runs_in_fast_mode[06_",
    "tests/backends/test_nuts.py",
    "tests/cli/test_cli.py",
    "tests/backends/test_vi_defaults.py::test_fitting_longer_as_the_warning_advises_reaches_the_optimum",
    "tests/backends/test_mcem.py::test_mcem_reaches_the_factor_analysis_maximum",
    "tests/em/test_distributed_em.py",
    "tests/test_tutorials.py::test_tutorial_runs_in_fast_mode[09_",
    "tests/test_docstrings.py::test_docstring_examples[ppl_lvm.posterior_distance]",
    "tests/test_tutorials.py",
    "tests/backends/test_vi_defaults.py",
    "tests/test_docstrings.py::test_docstring_examples[ppl_lvm.models.factor]",
    "tests/ready_models/test_models_vae_deep.py",
    "tests/results/test_em_uncertainty.py::test_hmm_standard_errors_match_parametric_bootstrap_refits",
    "tests/backends/test_mcem.py",
    "tests/backends/test_distributed_vi.py",
    "tests/backends/test_dreg_hierarchical.py",
    "tests/em/test_generic_fast_q.py",
    "tests/backends/test_local_iwae_models.py",
    "tests/analysis/test_posterior_distance.py",
    "tests/backends/test_svi.py",
    "tests/ready_models/test_models_factor.py",
    "tests/ready_models/test_models_vae_categorical.py",
    "tests/results/test_load_parity.py",
    "tests/cli/test_report_layout.py",
    "tests/cli/test_report.py",
    "tests/plots/test_plots.py",
)


def _rank(item) -> int:
    for rank, prefix in enumerate(LONGEST_FIRST):
        if item.nodeid.startswith(prefix):
            return rank
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: the tests of one module keep their order


@functools.cache
def _has_module_fixture(path: str) -> bool:
    """Whether the test module at ``path`` (relative to the repository) defines a module-scoped fixture."""
    file = ROOT / path
    return file.is_file() and re.search(r"@pytest\.fixture\(\s*scope=[\"']module[\"']", file.read_text()) is not None


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # late: only when pytest-xdist runs the suite

    class ModuleFixtureScheduling(LoadScopeScheduling):
        """One work unit per test, except the tests of a module with a module-scoped fixture: one unit together."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _has_module_fixture(path) else nodeid

    config.option.loadscopereorder = False  # keep the collection's (longest-first) order, not the largest unit first
    return ModuleFixtureScheduling(config, log)
