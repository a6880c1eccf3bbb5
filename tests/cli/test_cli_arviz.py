"""``ppl-lvm fit`` writes its summary and netCDF file on either ArviZ design (.ci/run runs this file under both):
a variational fit with a global latent (its summary has the interval columns) and an EM fit."""

import numpy as np
import pandas as pd
import pytest

from ppl_lvm.arviz_export import load_netcdf
from ppl_lvm.cli import main
from ppl_lvm.posterior.arviz_compat import group, group_names

pytestmark = pytest.mark.arviz

NORMAL_MEAN = '''
import torch
import ppl_lvm as lvm
from ppl_lvm import dist


@lvm.model
def normal_mean(x):
    mu = lvm.latent(dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0).to_event(1), x)
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_arviz")
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(1.0, 1.0, 60), "b": rng.normal(-1.0, 1.0, 60)}).to_csv(folder / "g.csv",
                                                                                       index=False)
    pd.DataFrame({"a": np.r_[rng.normal(-3, 1, 40), rng.normal(3, 1, 40)]}).to_csv(folder / "two.csv", index=False)
    (folder / "models.py").write_text(NORMAL_MEAN)
    return folder


def test_svi_fit_with_a_global_latent_writes_summary_and_netcdf(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    code = main(["fit", "models.py:normal_mean", "g.csv", "--method", "svi", "--guide", "normal",
                 "--option", "steps=200", "--option", "lr=0.05", "--out", "svi"])
    assert code == 0, capsys.readouterr().err
    summary = pd.read_csv(folder / "svi" / "summary.csv", index_col=0)
    assert {"hdi_3%", "hdi_97%", "ess_bulk", "r_hat"} <= set(summary.columns)
    # the posterior of mu is N(mean(x) * n / (n + 1/100), 1 / (n + 1/100)) per column: the interval holds the mean
    x = pd.read_csv(folder / "g.csv").to_numpy()
    for i, column_mean in enumerate(x.mean(0)):
        row = summary.loc[f"mu[{i}]"]
        assert row["hdi_3%"] < column_mean < row["hdi_97%"]
    idata = load_netcdf(str(folder / "svi" / "posterior.nc"))
    assert {"posterior", "log_likelihood", "observed_data"} <= set(group_names(idata))
    assert group(idata, "posterior")["mu"].shape == (1, 500, 2)


def test_em_fit_writes_summary_and_netcdf(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    code = main(["fit", "gaussian_mixture", "two.csv", "--arg", "K=2", "--method", "em", "--out", "em"])
    assert code == 0, capsys.readouterr().err
    summary = pd.read_csv(folder / "em" / "summary.csv", index_col=0)
    assert summary.loc["weights[0]", "mean"] == pytest.approx(0.5, abs=0.1)
    idata = load_netcdf(str(folder / "em" / "posterior.nc"))
    assert {"point_estimate", "responsibilities", "observed_data"} <= set(group_names(idata))
