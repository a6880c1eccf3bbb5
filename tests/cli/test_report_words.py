"""What the report says: the labels of every method and bound, why a k-hat is missing, no gap where the bound is
exact, and the hidden Markov chain's tables holding the fitted numbers; the templates are package data, escaped."""

import importlib.resources
import re
import warnings
from pathlib import Path

import numpy as np
import tomllib
import torch
from demo_data import two_clusters
from demo_models import normal_normal

import ppl_lvm as lvm
from ppl_lvm.diagnostics import Diagnosis
from ppl_lvm.errors import ConvergenceWarning
from ppl_lvm.models.hmm import categorical_hmm
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.report import Report, add_result, build_report, describe_result

ROOT = Path(__file__).resolve().parents[2]
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png')


def test_an_enumerated_model_has_no_gap_to_draw(tmp_path, float64):
    # every latent is discrete and summed out: the ELBO is log p(x); the report says so instead of a ladder
    fit = lvm.infer(gaussian_mixture, {"x": two_clusters(), "K": 2}, method="svi", steps=30, seed=0)
    page = build_report(fit, tmp_path, diagnose_samples=20).read_text()
    assert "Every latent is discrete and summed out exactly, so the ELBO is log p(x) itself" in page
    assert not any("bound ladder" in alt for alt in IMG.findall(page)) and "Bound ladder" not in page
    assert "Pareto k-hat is not available, and not needed: every latent is discrete" in page
    assert "gap -" not in page
    assert "so method=&#39;em&#39; fits it exactly" in page  # the hint to the exact method


def test_a_missing_khat_is_explained(float64):
    x = torch.randn(30, dtype=torch.float64)
    delta = lvm.infer(normal_normal, x, method="svi", steps=20, seed=0, guide="delta")
    words = [text for _, text in describe_result(delta, delta.diagnose(num_samples=20, warn=False))]
    assert any(w.startswith("Pareto k-hat is not available: the guide (point mass at the MAP estimate") for w in words)
    # a diagnosis handed to the report with bounds only (as the demo's held-out one)
    fit = lvm.infer(normal_normal, x, method="svi", steps=20, seed=0)
    held_out = Diagnosis(khat=None, num_samples=10, elbo=-50.0, iwae={10: -49.0})
    report = Report("held out")
    add_result(report, fit, diagnosis=held_out)
    page = report.html()
    assert "Pareto k-hat is not available here: this diagnosis was handed to the report with bounds only" in page
    assert "n/a" not in page


def test_em_history_is_called_a_total(tmp_path, float64):
    fit = lvm.infer(gaussian_mixture, {"x": two_clusters(), "K": 2}, method="em", seed=0)
    page = build_report(fit, tmp_path).read_text()
    captions = IMG.findall(page)
    assert (
        captions[0]
        == f"Total log-likelihood (summed over the {fit.n_samples} data points) per EM iteration; it never decreases."
    )
    assert "Mean log-likelihood" not in page
    assert "model: model" not in page and "gaussian_mixture (ppl_lvm.models.mixtures)" in page
    assert "none needed: every latent is discrete" not in page  # EM facts name no guide at all


def test_the_hmm_tables_hold_the_fitted_chain():
    x = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 1, 1]] * 4)
    fit = lvm.infer(categorical_hmm, {"x": x, "K": 2}, method="em", max_iter=50, seed=0)
    report = Report("chain")
    add_result(report, fit)
    tables = [b for b in report.blocks if b["kind"] == "table"]
    trans, emission = tables[0], tables[1]
    assert trans["columns"] == ["start", "to z=0", "to z=1"]
    values = np.array([cells for _, cells, _ in trans["rows"]], dtype=float)
    np.testing.assert_array_equal(values[:, 0], fit.params["start"].numpy())
    np.testing.assert_array_equal(values[:, 1:], fit.params["trans"].numpy())
    np.testing.assert_array_equal(
        np.array([c for _, c, _ in emission["rows"]], dtype=float), fit.params["emission"].numpy()
    )
    words = " ".join(text for block in report.blocks if block["kind"] == "pair" for _, text in block["words"])
    path = fit.map_assignments()["z"]
    counts = [int((path == k).sum()) for k in range(2)]
    assert f"steps per state {counts[0]}, {counts[1]}" in words
    stay = fit.params["trans"].diagonal()
    assert f"z=0: {1 / (1 - float(stay[0])):.3g}" in words


def test_templates_are_package_data_and_escape_everything():
    folder = importlib.resources.files("ppl_lvm.report") / "templates"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["blocks.html.j2", "page.html.j2", "report.css"]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-data"]["ppl_lvm.report"] == ["templates/*.j2", "templates/*.css"]
    assert any(d.startswith("jinja2>=3.1,<4") for d in config["project"]["dependencies"])
    report = Report("<script>alert(1)</script>", subtitle="a & b")
    report.facts_and_words([("<k>", "<v>")], [("ok", "<i>x</i>")])
    page = report.html()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;k&gt;" in page and "&lt;v&gt;" in page and "&lt;i&gt;x&lt;/i&gt;" in page and "a &amp; b" in page
    css = (folder / "report.css").read_text()
    facts = css.split("table.facts td {", 1)[1].split("}", 1)[0]
    assert "overflow-wrap: anywhere" in facts and "nowrap" not in facts


def test_an_mcmc_fit_gets_a_section_without_a_loss(float64):
    with warnings.catch_warnings():  # 20 warm-up steps leave divergences: the section reports them, whatever they are
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = lvm.infer(
            normal_normal,
            torch.randn(20, dtype=torch.float64),
            method="nuts",
            num_samples=20,
            warmup_steps=20,
            num_chains=1,
            seed=0,
        )
    report = Report("chains")
    add_result(report, fit)
    page = report.html()
    assert "chains x draws" in page and "1 chain of 20 draws after 20 warm-up steps each" in page
    assert "Loss per step" not in page and "not drawn" not in page
    assert "Marginal posteriors" in page
