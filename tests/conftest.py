import os

import pyro
import pytest
import torch
from hypothesis import settings

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
