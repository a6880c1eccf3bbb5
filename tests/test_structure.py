import pytest
import torch
from demo_models import gmm_map, ppca

import ppl_lvm as lvm
from ppl_lvm import dist


def test_inspect_records_every_site():
    x = torch.randn(20, 2)
    s = gmm_map.inspect(x)
    assert s.max_plate_nesting == 1
    z = s.sites["z"]
    assert (z.kind, z.discrete, z.enumerable, z.plates, z.batch_shape) == ("latent", True, True, ("len(x)",), (20,))
    assert s.sites["x"].kind == "observed" and s.sites["x"].event_shape == (2,)
    assert s.sites["locs"].plates == ("components",) and s.sites["locs"].event_shape == (2,)
    assert s.sites["weights"].support == "simplex"
    assert s.sites["z"].location.filename.endswith("demo_models.py")
    assert [p.name for p in s.plates.values()] == ["components", "len(x)"]
    assert {v.name for v in s.discrete_latents} == {"z"}


def test_describe_prints_a_table_with_source_lines(capsys):
    table = ppca.describe(torch.randn(5, 3))
    out = capsys.readouterr().out
    assert table in out
    assert "W" in table and "param" in table and "demo_models.py:" in table
    assert "max_plate_nesting = 1" in table


def test_wrong_shape_names_site_line_and_shapes():
    @lvm.model
    def m(x):
        mu = lvm.param(torch.zeros(3))
        lvm.observe(dist.Normal(mu, 1.0).to_event(1), x)

    with pytest.raises(lvm.ModelCheckError, match=r"site 'x' \(.*test_structure\.py:\d+ in m\(\)\): observed value has shape \(4,\), but Normal has batch_shape \(\) and event_shape \(3,\): expected a value of shape \(3,\)"):
        m.inspect(torch.zeros(4))


def test_broadcast_that_grows_both_sides_is_refused():
    @lvm.model
    def m(x):
        mu = lvm.param(torch.zeros(len(x), 1))
        lvm.observe(dist.Normal(mu, 1.0), x)

    with pytest.raises(lvm.ModelCheckError, match=r"expected a value of shape \(5, 1\)"):
        m.inspect(torch.zeros(5))


def test_plate_size_mismatch_names_site_and_line():
    @lvm.model
    def m(x):
        with lvm.plate(10):
            lvm.observe(dist.Normal(0.0, 1.0), x)

    with pytest.raises(lvm.ModelCheckError, match=r"site .x. \(.*test_structure\.py:\d+.*size 7 at dim -1, but that dim belongs to plate .10. of size 10"):
        m.inspect(torch.zeros(7))


def test_the_structure_alone_answers_data_plate_and_local_or_global():
    x = torch.randn(20, 2)
    s = gmm_map.inspect(x)
    assert s.data_plate == "len(x)" and s.n_data == 20
    assert [v.name for v in s.local_latents] == ["z"]
    assert {v.name for v in s.global_latents} == {"weights", "locs", "scales"}
    assert s.is_local("x") and not s.is_local("locs")
    p = ppca.inspect(torch.randn(5, 3))
    assert [v.name for v in p.local_continuous_latents] == ["z"] and p.global_latents == []
    assert p.model_param_names() == ["W", "mu", "sigma"] and p.model_param_names({"W"}) == ["W"]


def test_a_model_without_observations_has_no_data_plate():
    @lvm.model
    def prior_only():
        with lvm.plate(4):
            u = lvm.latent(dist.Normal(0.0, 1.0))  # noqa: F841 - names the site

    s = prior_only.inspect()
    assert s.data_plate is None and s.n_data is None and s.local_latents == []
