import os
import sys
import tempfile

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
