"""``ppl-lvm fit``: method names in any case, bad ``--arg`` values, ``--standardize`` and the scale warning, PPCA and
factor analysis from their closed-form maximum, the hint to use EM, the announced post-fit steps and
``--sequence-column``."""

import json
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.backends import get_backend
from ppl_lvm.backends.problem import make_problem
from ppl_lvm.cli import main
from ppl_lvm.cli.console import _step
from ppl_lvm.cli.exact import closed_form
from ppl_lvm.cli.inputs import MODELS, load_model
from ppl_lvm.cli.prepare import scale_warning
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.results import fit_result

USER_MODEL = '''
import torch
import ppl_lvm as lvm
from ppl_lvm import dist


@lvm.model
def picks(x, K=2):
    centres = x[torch.arange(K) * 1000]  # an IndexError for K > 1 on fewer than 1001 rows
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(centres.mean(0), 1.0).to_event(1), x)
'''


def _ppca_maximum(x: np.ndarray, q: int) -> float:
    """The PPCA maximum log-likelihood from the eigenvalues of the sample covariance (Tipping & Bishop 1999, eq. 4
    at the MLE): -N/2 (D log 2 pi + sum_{j<=q} log l_j + (D - q) log sigma^2 + D), sigma^2 = mean(l_{q+1..D})."""
    n, d = x.shape
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    sigma2 = eig[q:].mean()
    return -n / 2 * (d * math.log(2 * math.pi) + np.log(eig[:q]).sum() + (d - q) * math.log(sigma2) + d)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sklearn.datasets import load_wine

    folder = tmp_path_factory.mktemp("cli_options")
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"a": np.r_[rng.normal(-3, 1, 60), rng.normal(3, 1, 60)], "b": rng.normal(0, 1, 120)})
    groups.to_csv(folder / "groups.csv", index=False)
    load_wine(as_frame=True).frame.drop(columns="target").to_csv(folder / "wine.csv", index=False)
    # three sequences of a two-state chain, rows grouped by a text column, the groups not in sorted order
    rows = []
    for name, length in (("s2", 40), ("s1", 30), ("s3", 50)):
        state = np.cumsum(rng.random(length) < 0.1) % 2
        x = np.where(state[:, None] == 1, 3.0, -3.0) + rng.normal(size=(length, 2))
        rows += [(name, *r) for r in x]
    pd.DataFrame(rows, columns=["seq", "u", "v"]).to_csv(folder / "sequences.csv", index=False)
    (folder / "user.py").write_text(USER_MODEL)
    return folder


def _run(files, monkeypatch, capsys, *argv):
    monkeypatch.chdir(files)
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------- --method
def test_method_name_is_case_insensitive_and_post_fit_steps_are_announced(files, monkeypatch, capsys):
    code, out, err = _run(files, monkeypatch, capsys, "fit", "gaussian_mixture", "groups.csv", "--arg", "K=2",
                          "--method", "EM", "--out", "em_upper")
    assert code == 0, err
    assert json.loads((files / "em_upper" / "fit.json").read_text())["method"] == "em"
    # every post-fit step is announced on stderr, in order, and says when it ended
    steps = ["writing the result (result.pt)", "writing posterior draws (posterior.nc, 500 draws)",
             "writing the summary (summary.csv)", "writing the report (report.html"]
    positions = [err.index(f"ppl-lvm: {s}") for s in steps]
    assert positions == sorted(positions)
    assert err.count("done after") == 4 and "hint" not in err  # EM itself: no hint to use EM


def test_a_step_shows_its_progress_and_says_when_it_stopped(capsys):
    with _step("writing something", heartbeat=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ppl-lvm: writing something..." and err[-1].startswith("ppl-lvm:   writing something: done")
    assert any(line.startswith("ppl-lvm:   still writing something (") for line in err[1:-1])
    with pytest.raises(RuntimeError), _step("failing", heartbeat=10):
        raise RuntimeError("boom")
    assert "failing: stopped after" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- --arg
BAD_ARGS = [
    (["gaussian_mixture", "groups.csv", "--arg", "K=0"], "gaussian_mixture() with --arg K=0: gaussian_mixture: K must "
     "be a positive integer (the number of components), got 0"),
    (["gaussian_mixture", "groups.csv", "--arg", "K=abc"], "with --arg K='abc': gaussian_mixture: K must be a positive "
     "integer"),
    (["gaussian_mixture", "groups.csv", "--arg", "K=2.5"], "got 2.5"),
    (["gaussian_mixture", "groups.csv", "--arg", "covariance_type=round"], "covariance_type must be one of"),
    (["gaussian_mixture", "groups.csv", "--arg", "k=3"], "--arg k: not an argument of gaussian_mixture()"),
    (["ppca", "groups.csv", "--arg", "q=2"], "the latent dimension q must be an integer in [1, D-1] = [1, 1], got 2"),
    (["user.py:picks", "groups.csv", "--arg", "K=3", "--method", "svi"],
     "picks() with --arg K=3: the model failed on its first run: IndexError: index 1000 is out of bounds"),
    (["gaussian_mixture", "groups.csv", "--method", "Gibbs"], "unknown method 'Gibbs'"),
    (["user.py:picks", "groups.csv"], "--method is required for a model from a file"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGS, ids=[m[:40] for _, m in BAD_ARGS])
def test_bad_arg_values_end_with_one_line_and_exit_code_2(files, monkeypatch, capsys, argv, message):
    code, out, err = _run(files, monkeypatch, capsys, "fit", *argv, "--out", "never")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ppl-lvm: error: "), err
    assert message in err and "Trace Shapes" not in err
    assert "fitting" not in out and not (files / "never").exists()  # refused before the fit


# ---------------------------------------------------------------------------------------------------- closed form
def test_ppca_starts_at_and_reaches_its_closed_form_maximum(files, monkeypatch, capsys):
    code, out, err = _run(files, monkeypatch, capsys, "fit", "ppca", "wine.csv", "--standardize", "--out", "ppca_std")
    assert code == 0, err
    manifest = json.loads((files / "ppca_std" / "fit.json").read_text())
    raw = pd.read_csv(files / "wine.csv").to_numpy()
    z = (raw - raw.mean(0)) / raw.std(0)
    # the maximum the command reports is the eigenvalue formula's (-2875.64 on standardised wine, q=2), in float64
    assert manifest["closed_form"]["maximum"] == pytest.approx(_ppca_maximum(z, 2), rel=1e-9)
    # 100 steps at lr=1e-4 from the maximum keep it (measured 0.0014-0.0062 nats below over seeds 0-4)
    assert manifest["closed_form"]["reached"] and manifest["closed_form"]["started_there"]
    assert manifest["closed_form"]["log_likelihood"] == pytest.approx(_ppca_maximum(z, 2), abs=0.05)
    assert manifest["method"] == "svi" and "is reached" in out and "did not reach" not in err
    assert "very different scales" not in err  # standardised: no scale warning
    # the scaling is saved: original = mean + scale * standardised, scikit-learn's StandardScaler (divisor N)
    scaling = manifest["standardize"]
    np.testing.assert_allclose(scaling["mean"], raw.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scaling["scale"], raw.std(0), rtol=1e-12)
    fit = lvm.load(str(files / "ppca_std" / "result.pt"))
    mu = fit.params["mu"].double().numpy()
    # the fitted mean mapped back is the raw column mean, up to the 100 Adam steps of at most lr=1e-4 each that the
    # fit took from it (measured over seeds 0-4: at most 0.0018 standard deviations)
    mapped = np.asarray(scaling["mean"]) + np.asarray(scaling["scale"]) * mu
    assert np.all(np.abs(mapped - raw.mean(0)) <= 0.01 * raw.std(0))
    assert "alcohol (standardised)" in (files / "ppca_std" / "summary.csv").read_text() or \
        "alcohol (standardised)" in (files / "ppca_std" / "report.html").read_text()
    assert "standardised columns" in (files / "ppca_std" / "report.html").read_text()  # the title says so


def test_factor_analysis_start_is_scikit_learns_maximum_and_its_exact_posterior(files):
    from sklearn.decomposition import FactorAnalysis

    model, entry, _ = load_model("factor_analysis")
    raw = pd.read_csv(files / "wine.csv").to_numpy()
    z = (raw - raw.mean(0)) / raw.std(0)
    form = closed_form(entry, model, {"x": pd.DataFrame(z), "q": 3})
    reference = FactorAnalysis(3, tol=1e-8, max_iter=10000, random_state=0).fit(z).score(z) * len(z)
    assert form.maximum == pytest.approx(reference, abs=0.1)  # measured: the two agree to 0.01 nats
    # the guide's start is the exact posterior: its ELBO equals the log-likelihood (float32 data: 1e-4 relative)
    state = form.start_state(model, with_guide=True)
    assert sorted(state["params"]) == ["W", "encoder_bias", "encoder_weight", "mu", "posterior_scale_tril", "psi"]
    backend = get_backend("svi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)  # one step: too short to tell, on purpose
        start = fit_result(backend, make_problem(backend, model, {"x": pd.DataFrame(z), "q": 3}, init_state=state,
                                                 options={"steps": 1, "lr": 1e-12, "anneal": 0.0}))
    assert -start.losses[0] == pytest.approx(form.maximum, rel=1e-4)


def test_a_fit_that_misses_the_maximum_says_so(files, monkeypatch, capsys):
    # unscaled wine (proline's sd is 2530 times nonflavanoid_phenols'): Adam at lr=0.05 leaves the maximum
    # (measured 701-854 nats below it over seeds 0-4 after 300 steps)
    code, out, err = _run(files, monkeypatch, capsys, "fit", "ppca", "wine.csv", "--option", "lr=0.05", "--option",
                          "steps=300", "--out", "ppca_raw")
    assert code == 0, err
    manifest = json.loads((files / "ppca_raw" / "fit.json").read_text())
    assert not manifest["closed_form"]["reached"]
    gap = manifest["closed_form"]["maximum"] - manifest["closed_form"]["log_likelihood"]
    assert gap > 100
    assert "ppl-lvm: warning: the fit did not reach the maximum" in err
    assert any(w.startswith("the fit did not reach the maximum") for w in manifest["warnings"])
    # the data look unscaled for PPCA: a plain-words warning that suggests --standardize
    assert "very different scales" in err and "Rerun with --standardize" in err and "proline" in err


# ---------------------------------------------------------------------------------------------------- scales
def test_scale_warning_is_for_scale_sensitive_models_only():
    wide = pd.DataFrame({"small": [0.1, 0.2, 0.3, 0.1], "large": [100.0, 300.0, 200.0, 50.0]})
    narrow = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.1], "b": [0.5, 1.5, 1.0, 0.25]})  # 6x apart: below 10x
    for name, args in (("ppca", {}), ("gaussian_mixture", {"covariance_type": "spherical"}), ("gaussian_hmm", {})):
        text = scale_warning(wide, MODELS[name], args, gradient=False, source="d.csv")
        assert text is not None and "--standardize" in text and "small" in text and "large" in text
        assert scale_warning(narrow, MODELS[name], args, gradient=False, source="d.csv") is None
    # factor analysis is equivariant to rescaling a column (its loading row and variance rescale with it): only a
    # gradient fit from scratch depends on the scale; counts and user models are never rescaled
    assert scale_warning(wide, MODELS["factor_analysis"], {}, gradient=False, source="d.csv") is None
    assert scale_warning(wide, MODELS["factor_analysis"], {}, gradient=True, source="d.csv") is not None
    assert scale_warning(wide, MODELS["poisson_mixture"], {}, gradient=False, source="d.csv") is None
    assert scale_warning(wide, None, {}, gradient=True, source="d.csv") is None


def test_standardize_is_refused_where_it_would_change_the_likelihood(files, monkeypatch, capsys):
    pd.DataFrame({"a": [0, 1, 1, 0], "b": [1, 1, 0, 0]}).to_csv(files / "binary.csv", index=False)
    code, _, err = _run(files, monkeypatch, capsys, "fit", "bernoulli_mixture", "binary.csv", "--standardize",
                        "--arg", "K=2", "--out", "never")
    assert code == 2 and "bernoulli_mixture models 0/1 data" in err
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "c": [5.0, 5.0, 5.0]}).to_csv(files / "constant.csv", index=False)
    code, _, err = _run(files, monkeypatch, capsys, "fit", "gaussian_mixture", "constant.csv", "--standardize",
                        "--arg", "K=1", "--out", "never")
    assert code == 2 and "constant column(s) 'c'" in err


def test_whole_numbers_in_a_table_are_measurements_for_a_gaussian_model(files, monkeypatch, capsys):
    # a CSV of whole numbers is read as int64; a model of continuous measurements takes them as floats
    whole = pd.DataFrame({"a": [1, 2, 2, 9, 10, 11], "b": [0, 1, 0, 7, 8, 8]})
    whole.to_csv(files / "whole.csv", index=False)
    code, _, err = _run(files, monkeypatch, capsys, "fit", "gaussian_mixture", "whole.csv", "--arg", "K=2",
                        "--arg", "covariance_type=spherical", "--out", "whole_fit")
    assert code == 0, err
    floats = torch.tensor(whole.to_numpy(float))
    reference = lvm.infer(gaussian_mixture, {"x": floats, "K": 2, "covariance_type": "spherical"}, method="em")
    fit = lvm.load(str(files / "whole_fit" / "result.pt"))
    assert float(fit.log_likelihood) == pytest.approx(float(reference.log_likelihood), rel=1e-9)


# ---------------------------------------------------------------------------------------------------- EM hint
def test_a_variational_fit_of_an_enumerable_model_hints_at_em(files, monkeypatch, capsys):
    code, out, err = _run(files, monkeypatch, capsys, "fit", "gaussian_mixture", "groups.csv", "--arg", "K=2",
                          "--arg", "covariance_type=diag", "--method", "SVI", "--option", "steps=30", "--out",
                          "svi_mixture")
    assert code == 0, err
    assert "ppl-lvm: hint: every latent of gaussian_mixture (z) is discrete with finite support, so --method em" in err
    assert json.loads((files / "svi_mixture" / "fit.json").read_text())["hints"][0].startswith("every latent")


# ---------------------------------------------------------------------------------------------------- sequences
def test_sequence_column_reads_several_sequences_in_order(files, monkeypatch, capsys):
    code, out, err = _run(files, monkeypatch, capsys, "fit", "gaussian_hmm", "sequences.csv", "--sequence-column",
                          "seq", "--arg", "K=2", "--out", "hmm_seqs")
    assert code == 0, err
    manifest = json.loads((files / "hmm_seqs" / "fit.json").read_text())
    assert manifest["sequences"] == ["s2", "s1", "s3"] and manifest["method"] == "em"
    # the same fit from Python on the groups in file order gives the same numbers
    table = pd.read_csv(files / "sequences.csv")
    x, lengths = pad_sequences([torch.tensor(table[table.seq == s][["u", "v"]].to_numpy(), dtype=torch.float32)
                                for s in ("s2", "s1", "s3")])
    assert lengths.tolist() == [40, 30, 50]
    reference = lvm.infer(gaussian_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em")
    fit = lvm.load(str(files / "hmm_seqs" / "result.pt"), model=gaussian_hmm)
    assert fit.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-6)
    torch.testing.assert_close(fit.params["trans"], reference.params["trans"])


@pytest.mark.parametrize("argv, message", [
    (["gaussian_mixture", "sequences.csv", "--sequence-column", "seq"], "gaussian_mixture() takes no lengths"),
    (["gaussian_hmm", "sequences.csv", "--sequence-column", "run"], "--sequence-column 'run' is not a column"),
    (["gaussian_hmm", "sequences.csv", "--sequence-column", "seq", "--columns", "seq,u"], "leave it out of --columns"),
])
def test_sequence_column_errors(files, monkeypatch, capsys, argv, message):
    code, _, err = _run(files, monkeypatch, capsys, "fit", *argv, "--out", "never")
    assert code == 2 and message in err and err.count("\n") == 1
