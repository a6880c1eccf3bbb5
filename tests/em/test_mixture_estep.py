"""The mixture E-step's underflow handling: entries whose exp would be subnormal (float32: below exp(-60)) are
exactly 0, every other responsibility and the log-likelihood are those of the plain formula."""

import math

import pytest
import torch

from ppl_lvm.em.mixture import mixture_e_step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_underflowing_responsibilities_are_zero_and_the_rest_unchanged(dtype):
    g = torch.Generator().manual_seed(0)
    lp = torch.empty(200, 4, dtype=torch.float64).uniform_(-3000.0, 0.0, generator=g).to(dtype)
    lp[:, 0] = 0.0  # every row has a likely component
    lp[5, 2] = -math.inf  # an impossible component for one point
    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype))
    work = lp + log_w
    shifted = work - work.amax(dim=1, keepdim=True)
    plain = shifted.exp()
    ll, resp = mixture_e_step(lp.clone(), log_w)
    # float64: 0.98 log(tiny); float32: -60, a margin for the division and the statistics' products with the data
    floor = -60.0 if dtype == torch.float32 else 0.98 * math.log(torch.finfo(dtype).tiny)
    kept = shifted >= floor
    assert (~kept).any() and kept.any()
    assert torch.equal(resp[kept], (plain / plain.sum(1, keepdim=True))[kept])
    assert bool((resp[~kept] == 0).all())
    rtol = 1e-14 if dtype == torch.float64 else 1e-6
    assert torch.allclose(ll.double(), torch.logsumexp(work.double(), dim=1), rtol=rtol, atol=0)


def test_impossible_point_gives_a_zero_row():
    lp = torch.tensor([[0.0, -1.0], [-math.inf, -math.inf], [-800.0, 0.0]], dtype=torch.float64)
    ll, resp = mixture_e_step(lp, torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)))
    assert torch.equal(resp[1], torch.zeros(2, dtype=torch.float64)) and ll[1] == -math.inf
    assert torch.equal(resp[2], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(resp[0].sum(), torch.tensor(1.0, dtype=torch.float64))
