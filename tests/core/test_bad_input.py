"""Bad input ends in an error naming the site (or argument), the source line, what was expected and the fix."""

import pandas as pd
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.models.hmm import gaussian_hmm
from ppl_lvm.models.mixtures import gaussian_mixture


@lvm.model
def coin(x):
    p = lvm.param(torch.tensor(0.5), constraint=lvm.constraints.unit_interval)
    with lvm.plate(len(x)):
        lvm.observe(dist.Bernoulli(p), x)


@lvm.model
def counts(x):
    rate = lvm.param(torch.tensor(1.0), constraint=lvm.constraints.positive)
    with lvm.plate(len(x)):
        lvm.observe(dist.Poisson(rate), x)


@lvm.model
def row_means(x):
    mu = lvm.param(torch.zeros(2))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0).to_event(1), x)


@pytest.mark.parametrize("method", ["svi", "em"])
def test_values_outside_the_support_name_site_line_count_and_positions(method):
    with pytest.raises(lvm.ModelCheckError, match=r"site 'x' \(.*test_bad_input\.py:\d+ in coin\(\)\): 2 of 5 observed "
                       r"values lie outside the support of Bernoulli \(0 or 1\); the first at \(2,\) = 2\.0, \(4,\) = "
                       r"-1\.0\. Fix: clean or re-encode the data"):
        lvm.infer(coin, torch.tensor([0.0, 1.0, 2.0, 1.0, -1.0]), method=method)
    with pytest.raises(lvm.ModelCheckError, match=r"1 of 3 observed values lie outside the support of Poisson "
                       r"\(integers >= 0\); the first at \(1,\) = -2\.0"):
        lvm.infer(counts, torch.tensor([0.0, -2.0, 3.0]), steps=2)


def test_data_that_would_broadcast_against_the_plate_is_refused():
    # (N, 1) under lvm.plate(N) would give N x N likelihood terms: 514.9 instead of 25.7 before this check
    with pytest.raises(lvm.ModelCheckError, match=r"site 'x' \(.*in coin\(\)\): observed value has shape \(3, 1\): its "
                       r"dim -2 \(size 3\) is neither a plate's dim nor a dim of Bernoulli's parameters, so it would "
                       r"broadcast against the plates around it \('len\(x\)' \(size 3, dim -1\)\).*shape \(3,\)"):
        lvm.infer(coin, torch.tensor([[0.0], [1.0], [1.0]]), steps=2)


def test_empty_data_is_refused():
    with pytest.raises(lvm.DataError, match=r"data 'x' is empty \(shape \(0,\)\); pass at least one data point"):
        lvm.infer(coin, torch.zeros(0), steps=2)
    with pytest.raises(lvm.DataError, match=r"data 'x' is empty \(shape \(0, 2\)\)"):
        lvm.infer(row_means, torch.zeros(0, 2), steps=2)


def test_a_text_column_is_named():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["u", "v", "w"], "c": [1.0, 0.0, 1.0]})
    with pytest.raises(lvm.DataError, match=r"data 'x' has non-numeric column\(s\) \['b'\]; drop them or encode"):
        lvm.infer(row_means, frame, steps=2)


def test_ragged_sequences_point_to_pad_sequences():
    ragged = [[0.0, 1.0, 2.0], [1.0]]
    with pytest.raises(lvm.DataError, match=r"rows of different lengths: pad them.*pad_sequences"):
        lvm.infer(gaussian_hmm, {"x": ragged}, method="em")


def test_hyperparameters_of_ready_made_models_are_checked_by_name():
    with pytest.raises(ValueError, match=r"gaussian_mixture: K must be a positive integer \(the number of components\), "
                       r"got '3'; pass K=int"):
        lvm.infer(gaussian_mixture, {"x": torch.randn(20, 2), "K": "3"}, method="em")
    with pytest.raises(ValueError, match=r"gaussian_hmm: K must be a positive integer \(the number of hidden states\), "
                       r"got 0"):
        lvm.infer(gaussian_hmm, {"x": torch.randn(2, 5, 1), "K": 0}, method="em")


def test_a_device_this_machine_lacks_is_refused_before_fitting():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=r"device='cuda', but this torch build or machine has no CUDA device"):
        lvm.infer(coin, torch.tensor([0.0, 1.0]), steps=2, device="cuda")
