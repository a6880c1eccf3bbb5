import numpy as np
import pandas as pd
import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm
from ppl_lvm import dist


def test_nan_and_inf_are_refused_with_count_and_positions():
    x = torch.zeros(10)
    x[3] = float("nan")
    x[7] = float("inf")
    with pytest.raises(lvm.DataError, match=r"data 'x' contains 1 NaN and 1 infinite value\(s\) \(first at \[3\], \[7\]\)"):
        lvm.infer(normal_normal, x, steps=1)


def test_numpy_pandas_and_dict_inputs_are_converted_once():
    values = np.random.default_rng(0).normal(size=30)
    for data in (values, pd.Series(values), {"x": values.tolist()}):
        fit = lvm.infer(normal_normal, data, steps=2, progress=False)
        assert fit.data.kwargs["x"].dtype == torch.get_default_dtype()
    fit = lvm.infer(normal_normal, pd.Series(values, index=[f"r{i}" for i in range(30)]), steps=1)
    assert fit.data.coords["x"]["index"][:2] == ["r0", "r1"]


def test_integer_data_to_a_continuous_likelihood_is_converted_with_one_warning():
    x = torch.arange(10)
    with pytest.warns(lvm.DataWarning, match=r"integer data given to a continuous likelihood were converted.*'x' \(site 'x'"):
        fit = lvm.infer(normal_normal, x, steps=2)
    assert fit.data.kwargs["x"].is_floating_point()


def test_integer_data_to_a_discrete_likelihood_stay_integer():
    @lvm.model
    def counts(y):
        rate = lvm.param(torch.tensor(1.0), constraint=lvm.constraints.positive)
        with lvm.plate(len(y)):
            lvm.observe(dist.Poisson(rate), y)

    fit = lvm.infer(counts, np.array([1, 2, 3]), steps=50, lr=0.1)
    assert fit.data.kwargs["y"].dtype == torch.long


def test_bad_keys_non_numeric_and_missing_arguments():
    with pytest.raises(lvm.DataError, match=r"key\(s\) \['y'\] that are not arguments of normal_normal\(\); its arguments are \['x'\]"):
        lvm.infer(normal_normal, {"y": torch.zeros(3)})
    with pytest.raises(lvm.DataError, match="non-numeric dtype"):
        lvm.infer(normal_normal, np.array(["a", "b"]))
    with pytest.raises(lvm.DataError, match=r"needs argument\(s\) \['x'\]"):
        lvm.infer(normal_normal, None)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'hmc'; known methods: .*iwae.*meanfield.*nuts.*renyi.*svi"):
        lvm.infer(normal_normal, torch.zeros(3), method="hmc")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": -5}, r"steps must be a positive integer, got -5"),
        ({"lr": 0}, r"lr must be a positive number, got 0"),
        ({"lr": -1.0}, r"lr must be a positive number"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
        ({"optimizer": "lbfgs"}, r"unknown optimizer 'lbfgs'"),
        ({"stepz": 3}, r"unknown option\(s\) \['stepz'\]; its options are \[.*'steps'"),
        ({"beta": -1.0}, r"beta must be a number >= 0"),
    ],
)
def test_bad_option_values(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        lvm.infer(normal_normal, torch.zeros(3), **options)
