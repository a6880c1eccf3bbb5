"""The ArviZ adapter gives the same answers on both designs (ArviZ 0.x; arviz-base/arviz-stats, the 1.x design):
each statistic is checked against numpy or a distribution with a known answer. .ci/run runs this file under both."""

import sys

import numpy as np
import pytest

from ppl_lvm.posterior import arviz_compat
from ppl_lvm.posterior.stats import psis_loo, summarize_draws

pytestmark = pytest.mark.arviz


def test_the_design_is_the_one_installed():
    try:
        import arviz

        expected = "0.x" if int(arviz.__version__.split(".")[0]) < 1 else "1.x"
    except ImportError:
        expected = "1.x"
    assert arviz_compat.design() == expected
    idata = arviz_compat.make_groups({"posterior": arviz_compat.xr().Dataset({"a": (["chain", "draw"], np.zeros((1, 4)))})})
    assert type(idata).__name__ == ("InferenceData" if expected == "0.x" else "DataTree")
    assert callable(arviz_compat.az().summary) and callable(arviz_compat.az().loo)


def test_without_arviz_the_error_names_both_installs(monkeypatch):
    for name in ("arviz", "arviz_base", "arviz_stats"):
        monkeypatch.setitem(sys.modules, name, None)  # "import arviz" now fails
    arviz_compat.design.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install arviz.*arviz-base>=0.8.*arviz-stats>=0.8"):
            arviz_compat.design()
    finally:
        monkeypatch.undo()
        arviz_compat.design.cache_clear()
    assert arviz_compat.design() in ("0.x", "1.x")


@pytest.mark.parametrize("seed", range(5))
def test_summary_columns_and_values_against_numpy(seed):
    rng = np.random.default_rng(seed)
    draws = {"a": rng.normal(size=2000), "b": rng.gamma(2.0, size=(2000, 2, 3))}
    table = summarize_draws(draws)
    assert list(table.columns) == arviz_compat.SUMMARY_COLUMNS
    assert list(table.index) == ["a"] + [f"b[{i}, {j}]" for i in range(2) for j in range(3)]
    flat = np.concatenate([draws["a"][:, None], draws["b"].reshape(2000, -1)], axis=1)
    np.testing.assert_allclose(table["mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(table["sd"], flat.std(0, ddof=1), rtol=1e-12)
    # the 94% HDI: the shortest interval holding floor(0.94 S) + 1 of the sorted draws (ArviZ's definition)
    ordered = np.sort(flat, axis=0)
    width = int(np.floor(0.94 * 2000))
    start = np.argmin(ordered[width:] - ordered[:-width], axis=0)
    np.testing.assert_allclose(table["hdi_3%"], ordered[start, np.arange(7)], rtol=1e-12)
    np.testing.assert_allclose(table["hdi_97%"], ordered[start + width, np.arange(7)], rtol=1e-12)
    # independent draws: ESS near S, R-hat near 1 and mcse_mean near sd / sqrt(S) (measured over seeds 0-9,
    # both designs: ESS 0.78-1.13 S, R-hat < 1.01)
    assert np.all((table["ess_bulk"] > 0.7 * 2000) & (table["ess_bulk"] < 1.3 * 2000))
    assert np.all(table["r_hat"] < 1.03)
    np.testing.assert_allclose(table["mcse_mean"], flat.std(0, ddof=1) / np.sqrt(2000), rtol=0.25)


def test_rhat_of_chains_in_different_places_is_large_and_of_mixed_ones_near_one():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(2, 300, 2))
    apart = mixed + np.array([0.0, 3.0])[:, None, None]
    assert np.all(arviz_compat.rhat("m", mixed) < 1.02)
    assert np.all(arviz_compat.rhat("a", apart) > 1.5)


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_psis_khat_recovers_the_tail_index_of_pareto_ratios(k):
    # ratios w = U^-k follow a Pareto law with tail index k; PSIS fits the generalised Pareto shape of their tail
    # (about 3 sqrt(S) = 600 of the S = 40000 draws, so one k-hat has sd ~0.05). Measured over seeds 0-4, both
    # designs alike to 1e-3: largest |k-hat - k| 0.113 (k = 0.9, seed 1), mean over the seeds within 0.02 of k.
    found = []
    for seed in range(5):
        u = np.random.default_rng(seed).uniform(size=(1, 40000))
        lw, khat = arviz_compat.psislw(-k * np.log(u))
        found.append(float(khat[0]))
        assert np.logaddexp.reduce(lw, axis=-1) == pytest.approx(0.0, abs=1e-10)  # normalised weights
        assert lw.shape == u.shape
    assert np.max(np.abs(np.array(found) - k)) < 0.15, found
    assert abs(np.mean(found) - k) < 0.05, found


def test_constant_ratios_give_equal_weights_and_an_infinite_khat():
    ratios = np.zeros((3, 100))
    ratios[1] = np.random.default_rng(0).normal(size=100)  # a row that varies among constant ones
    lw, khat = arviz_compat.psislw(ratios)
    np.testing.assert_allclose(lw[[0, 2]], -np.log(100), rtol=1e-12)
    assert np.isinf(khat[0]) and np.isinf(khat[2]) and np.isfinite(khat[1])
    assert np.logaddexp.reduce(lw[1]) == pytest.approx(0.0, abs=1e-10)


def test_loo_of_the_groups_equals_the_library_psis_loo():
    rng = np.random.default_rng(1)
    xr = arviz_compat.xr()
    log_lik = rng.normal(-1.0, 0.3, size=(1, 300, 12))
    idata = arviz_compat.make_groups({
        "posterior": xr.Dataset({"theta": (["chain", "draw"], rng.normal(size=(1, 300)))}),
        "log_likelihood": xr.Dataset({"x": (["chain", "draw", "x_index"], log_lik)}),
    })
    arviz_loo = arviz_compat.loo(idata, reff=1.0)
    ours = psis_loo(log_lik[0])
    for key in ("elpd_loo", "se", "p_loo"):
        assert arviz_loo[key] == pytest.approx(ours[key], rel=1e-10), key
    np.testing.assert_allclose(arviz_loo["elpd_i"], ours["elpd_i"], rtol=1e-10)
    np.testing.assert_allclose(arviz_loo["pareto_k"], ours["pareto_k"], rtol=1e-10)
    assert arviz_loo["warning"] == ours["warning"] and arviz_loo["good_k"] == pytest.approx(ours["good_k"])


def test_groups_and_netcdf_round_trip(tmp_path):
    xr = arviz_compat.xr()
    groups = {
        "posterior": xr.Dataset({"theta": (["chain", "draw", "k"], np.arange(24.0).reshape(2, 4, 3))},
                                coords={"k": ["a", "b", "c"]}, attrs={"method": "svi", "restart_seeds": [0, 1]}),
        "observed_data": xr.Dataset({"x": (["n"], np.arange(5))}),
    }
    idata = arviz_compat.make_groups(groups)
    assert arviz_compat.group_names(idata) == ["posterior", "observed_data"]
    post = arviz_compat.group(idata, "posterior")
    assert isinstance(post, xr.Dataset) and post.attrs["method"] == "svi"
    with pytest.raises(KeyError, match="no group 'prior'"):
        arviz_compat.group(idata, "prior")
    path = arviz_compat.to_netcdf(idata, tmp_path / "groups.nc")
    loaded = arviz_compat.from_netcdf(path)
    assert arviz_compat.group_names(loaded) == ["posterior", "observed_data"]
    for name, dataset in groups.items():
        assert arviz_compat.group(loaded, name).identical(dataset), name
