"""The ``ppl-lvm`` command: demo, fit (built-in and user models), report, Ctrl-C, and one-line errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.arviz_export import load_netcdf
from ppl_lvm.cli import CLIError, main, parse_assignments
from ppl_lvm.models.mixtures import gaussian_mixture

ROOT = pathlib.Path(__file__).resolve().parents[2]

USER_MODELS = '''
import torch
import ppl_lvm as lvm
from ppl_lvm import dist, constraints


@lvm.model
def two_groups(x, K=2):
    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(lambda: x[torch.linspace(0, len(x) - 1, K).long()].clone())
    scales = lvm.param(torch.ones(K, x.shape[1]), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)


CALLS = []


@lvm.model
def normal_mean(x):
    CALLS.append(1)
    if len(CALLS) == 200:  # well into the fit: tells a waiting test that steps are being taken
        open("steps_taken", "w").close()
    mu = lvm.latent(dist.Normal(torch.zeros(x.shape[1]), 10.0).to_event(1))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0).to_event(1), x)
'''


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _command():
    """The installed console script when it sits next to this interpreter, else ``python -m ppl_lvm``."""
    script = pathlib.Path(sys.executable).with_name("ppl-lvm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ppl_lvm"]


def run_cli(*args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "ppl_lvm", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """iris as a CSV (with a text column), two Gaussian groups as a CSV, and a file of user models."""
    from sklearn.datasets import load_iris

    folder = tmp_path_factory.mktemp("cli")
    iris = load_iris(as_frame=True).frame
    iris.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
    iris["species"] = iris["species"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    iris.to_csv(folder / "iris.csv", index=False)
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"a": np.r_[rng.normal(-3, 1, 80), rng.normal(3, 1, 80)], "b": rng.normal(0, 1, 160)})
    groups.to_csv(folder / "groups.csv", index=False)
    (folder / "mymodels.py").write_text(USER_MODELS)
    return folder


class Background:
    """Commands started together (two cores run two at once); each test waits for the one it checks."""

    def __init__(self):
        self.procs, self.done = {}, {}

    def start(self, name, argv, cwd):
        self.procs[name] = subprocess.Popen([*map(str, argv)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)

    def result(self, name, timeout=900):
        if name not in self.done:
            proc = self.procs[name]
            out, err = proc.communicate(timeout=timeout)
            self.done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return self.done[name]

    def stop(self):
        for name, proc in self.procs.items():
            if name not in self.done:  # not waited for (deselected test): end it and close its pipes
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def background(files):
    """The demo, a built-in model fit, a user-model fit and a bad command, started at once."""
    runs = Background()
    runs.start("demo", [*_command(), "demo", "--fast", "--out", files / "demo"], cwd=files)
    runs.start("iris", [sys.executable, "-m", "ppl_lvm", "fit", "gaussian_mixture", "iris.csv", "--columns",
                        "petal_length,petal_width", "--arg", "K=3", "--method", "em", "--option", "n_init=3",
                        "--option", "seed=1", "--out", files / "iris_fit"], cwd=files)
    runs.start("user", [sys.executable, "-m", "ppl_lvm", "fit", "mymodels.py:two_groups", "groups.csv", "--method",
                        "em", "--option", "n_init=2", "--out", files / "user_fit"], cwd=files)
    runs.start("bad", [sys.executable, "-m", "ppl_lvm", "fit", "mymodels.py:three_groups", "groups.csv", "--method",
                       "em", "--out", "o"], cwd=files)
    yield runs
    runs.stop()


@pytest.fixture(scope="module")
def iris_fit(background, files):
    """``ppl-lvm fit gaussian_mixture iris.csv ...``; the folder is shared by the tests below."""
    return background.result("iris"), files / "iris_fit"


# ---------------------------------------------------------------------------------------------------- demo
def test_demo_fast_runs_and_writes_the_report(background, files):
    proc = background.result("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  K=")}
    assert sorted(rows) == [f"K={k}" for k in range(1, 7)]  # the BIC table, one row per K
    # K=1 is one Gaussian: its maximum likelihood is closed-form (-490.26 on standardised iris, reg_covar 1e-3)
    assert rows["K=1"][1] == "-490.3"
    assert "BIC chooses K=" in out and "adjusted Rand index" in out and "held-out" in out
    # the chosen mixture's weights sum to one
    weights = [float(line.split()[1]) for line in out.splitlines() if line.startswith("  z=")]
    assert len(weights) >= 1 and sum(weights) == pytest.approx(1.0, abs=1e-3)
    assert "Traceback" not in proc.stderr
    page = (files / "demo" / "report.html").read_text()
    # iris: history, BIC/AIC, responsibilities; digits: loss, bound ladder, latent space
    assert page.count("data:image/png;base64,") == 6
    assert "not drawn" not in page


# ---------------------------------------------------------------------------------------------------- fit
def test_fit_builtin_model_writes_every_output(iris_fit):
    proc, out = iris_fit
    assert proc.returncode == 0, proc.stderr
    for name in ("fit.json", "result.pt", "posterior.nc", "summary.csv", "report.html", "responsibilities.npz"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "fit.json").read_text())
    assert manifest["model"] == "gaussian_mixture" and manifest["columns"] == ["petal_length", "petal_width"]
    assert manifest["options"] == {"n_init": "3", "seed": "1"} and manifest["args"] == {"K": "3"}

    fit = lvm.load(str(out / "result.pt"), model=gaussian_mixture)
    x = pd.read_csv(out.parent / "iris.csv")[["petal_length", "petal_width"]].to_numpy()
    # the exact log-likelihood of the saved parameters, recomputed with scipy (float32 fit: 1e-4 relative)
    from scipy.stats import multivariate_normal

    w, locs, trils = (fit.params[k].double().numpy() for k in ("weights", "locs", "scale_trils"))
    dens = sum(w[k] * multivariate_normal(locs[k], trils[k] @ trils[k].T).pdf(x) for k in range(3))
    assert fit.log_likelihood == pytest.approx(np.log(dens).sum(), rel=1e-4)
    # scikit-learn reaches the same optimum on these data (measured: -135.46 both)
    from sklearn.mixture import GaussianMixture

    reference = GaussianMixture(3, n_init=3, random_state=0).fit(x).score(x) * len(x)
    assert fit.log_likelihood == pytest.approx(reference, rel=1e-3)

    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert len(summary) >= 3 + 6 + 12  # weights, locs, scale_trils
    idata = load_netcdf(str(out / "posterior.nc"))
    assert "observed_data" in idata.groups()
    resp = np.load(out / "responsibilities.npz")["z"]
    assert resp.shape == (150, 3) and np.allclose(resp.sum(1), 1, atol=1e-5)
    assert "fitting gaussian_mixture to iris.csv" in proc.stdout


def test_report_command_rebuilds_the_page(iris_fit):
    _, out = iris_fit
    (out / "report.html").unlink()
    proc = run_cli("report", out, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    # history and responsibilities (the latter from responsibilities.npz: a loaded EMResult has none)
    assert page.count("data:image/png;base64,") == 2
    assert "petal_length" in page and "not drawn" not in page


def test_fit_user_model_from_a_file(background, files):
    out = files / "user_fit"
    proc = background.result("user")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "fit.json").read_text())
    assert manifest["model"] == f"{files / 'mymodels.py'}:two_groups"
    # the groups were drawn around -3 and +3 (80 points each, sd 1): means recovered within 0.35
    locs = torch.load(out / "result.pt", weights_only=True)["params"]["locs"][:, 0].sort().values
    assert locs.tolist() == pytest.approx([-3.0, 3.0], abs=0.35)


def test_fit_ppca_draws_every_figure_of_its_report(files, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 2)) @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(120, 4))
    pd.DataFrame(x, columns=["a", "b", "c", "d"]).to_csv(files / "four.csv", index=False)
    monkeypatch.chdir(files)
    assert main(["fit", "ppca", "four.csv", "--arg", "q=2", "--method", "svi", "--option", "steps=150",
                 "--option", "lr=0.05", "--out", "ppca_fit"]) == 0
    page = (files / "ppca_fit" / "report.html").read_text()
    assert "not drawn" not in page  # every figure of a continuous-latent fit is drawn (the latent space included)
    assert "Latent space" in page and page.count("<img") >= 3
    assert "W[3, 1]" in (files / "ppca_fit" / "summary.csv").read_text()


# ---------------------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_saves_the_fit_so_far(files):
    out = files / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppl_lvm", "fit", "mymodels.py:normal_mean", "groups.csv", "--method", "svi",
         "--option", "steps=1000000", "--out", str(out)],
        cwd=files, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell running this test in the background may have set SIGINT to ignored; Ctrl-C must reach the fit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()  # printed just before the fit starts
        assert first.startswith("fitting normal_mean"), first
        marker = files / "steps_taken"  # written by the model on its 200th call, whatever the machine's load
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the fit took no steps within 120 s"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted: the fit so far" in stderr and "Traceback" not in stderr
    fit = lvm.load(str(out / "result.pt"))
    assert fit.interrupted and fit.steps < 1000000
    assert (out / "report.html").is_file()
    assert "The fit was interrupted after" in (out / "report.html").read_text()


# ---------------------------------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    (["fit", "gaussian_mixture", "missing.csv", "--method", "em", "--out", "o"], "data file missing.csv does not exist"),
    (["fit", "gaussian_mix", "iris.csv", "--method", "em", "--out", "o"], "unknown model 'gaussian_mix'"),
    (["fit", "gaussian_mixture", "iris.csv", "--columns", "petal_length,petal_size", "--method", "em", "--out", "o"],
     "column(s) 'petal_size' not in iris.csv; its columns are: sepal_length"),
    (["fit", "gaussian_mixture", "iris.csv", "--method", "em", "--out", "o"],
     "column(s) 'species' of iris.csv are not numeric"),
    (["fit", "gaussian_mixture", "iris.csv", "--columns", "petal_length", "--method", "em", "--option", "tol=[1e-3",
      "--out", "o"], "--option tol=[1e-3: the value is not a Python literal"),
    (["fit", "gaussian_mixture", "iris.csv", "--columns", "petal_length", "--method", "em", "--option", "n_init=0",
      "--out", "o"], "n_init must be a positive integer, got 0"),
    (["fit", "gaussian_mixture", "iris.csv", "--columns", "petal_length", "--method", "em", "--option", "steps=5",
      "--out", "o"], "method 'em' got unknown option(s) ['steps']"),
    (["fit", "mymodels.py:three_groups", "groups.csv", "--method", "em", "--out", "o"],
     "mymodels.py has no function 'three_groups'; its models are: normal_mean, two_groups"),
    (["fit", "nothere.py:model", "groups.csv", "--method", "em", "--out", "o"], "model file nothere.py does not exist"),
    (["fit", "gaussian_mixture", "groups.csv", "--method", "gibbs", "--out", "o"], "unknown method 'gibbs'"),
    (["fit", "gaussian_mixture", "groups.csv", "--method", "nuts", "--out", "o"],
     "ppl-lvm fit cannot run method 'nuts': its results cannot be saved to a file yet"),
    (["fit", "gaussian_mixture", "groups.csv", "--arg", "L=3", "--method", "em", "--out", "o"],
     "--arg L: not an argument of gaussian_mixture()"),
    (["report", "."], "has no fit.json"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[m[:40] for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2(files, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(files)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppl-lvm: error: "), err
    assert message in err


def test_bad_input_in_a_real_process(background, files):
    proc = background.result("bad")
    assert proc.returncode == 2
    assert proc.stderr == ("ppl-lvm: error: mymodels.py has no function 'three_groups'; its models are: "
                           "normal_mean, two_groups\n")
    assert not (files / "o").exists()


def test_debug_shows_the_traceback(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    assert main(["--debug", "fit", "mymodels.py:three_groups", "groups.csv", "--method", "em", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CLIError" in err
    assert err.rstrip().splitlines()[-1].startswith("ppl-lvm: error: mymodels.py has no function")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- parsing
def test_option_values_are_python_literals():
    parsed = parse_assignments(["n_init=5", "tol=1e-4", "hidden=(64, 64)", "covariance_type=diag",
                                "init_params=k-means++", "name='a b'", "flag=True", "reg=None"], "--option")
    assert parsed == {"n_init": 5, "tol": 1e-4, "hidden": (64, 64), "covariance_type": "diag",
                      "init_params": "k-means++", "name": "a b", "flag": True, "reg": None}


@pytest.mark.parametrize("item, message", [
    ("n_init", "expects key=value"),
    ("2x=1", "expects key=value"),
    ("lr=0.1 0.2", "not a Python literal"),
    ("flag=true", "not a Python literal"),
])
def test_malformed_assignments(item, message):
    with pytest.raises(CLIError, match=message):
        parse_assignments([item], "--option")
    with pytest.raises(CLIError, match="given twice"):
        parse_assignments(["a=1", "a=2"], "--option")


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'ppl-lvm = "ppl_lvm.cli:entry_point"' in text
