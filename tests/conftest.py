import os

import pyro
import pytest
import torch

# One thread: on a 2-core machine small tensor ops under a second busy thread run several times slower. To see
# which tests depend on the floating-point path, run the suite with PPL_LVM_TEST_THREADS=2 and with
# PPL_LVM_TEST_DETERMINISTIC=1 (torch.use_deterministic_algorithms) too.
torch.set_num_threads(int(os.environ.get("PPL_LVM_TEST_THREADS", "1")))
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
