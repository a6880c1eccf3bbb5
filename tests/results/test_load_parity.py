"""Every public method of a loaded result answers as the result did before it was saved, for every built-in model.

The public names are enumerated from the result's class (``inspect.getmembers``), so a new method or attribute fails
``test_every_public_name_has_a_load_check`` until it is given a call in ``CALLS`` or a commented place in
``EXCLUDED``. Each call runs on the fitted result and on the result loaded from its file (``lvm.load(path,
model=...)``); the answers must agree to float error (random ones with the same seed), a call that raises must raise
the same error after loading, and the same warnings must be given.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.data import BoundData
from ppl_lvm.diagnostics import Diagnosis
from ppl_lvm.em.patterns import HMMPattern, MixturePattern
from ppl_lvm.errors import ConvergenceWarning
from ppl_lvm.models import factor, hmm, mixtures, regression, topic, vae
from ppl_lvm.posterior import arviz_compat
from ppl_lvm.report import build_report, describe_result
from ppl_lvm.results import EMResult, MCMCResult, Result, StochasticEMResult

# Exact methods and replays of stored parameters repeat the same float operations, so they agree bit for bit, except
# where a fit reported a number from its float64 kernel parameters before storing them in a float32 model (the
# responsibilities of bernoulli_mixture, whose parameters are float32): there the loaded result recomputes it from
# the stored float32 values, a float32 rounding apart (measured: 5.2e-8 at most).
TOLERANCE = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-5, 1e-6)}  # (rtol, atol) by the parameters' dtype

#: how each public method is called: ``call(result, case) -> answer``
CALLS = {
    "aic": lambda r, c: r.aic(),
    "bic": lambda r, c: r.bic(),
    "constrained_params": lambda r, c: r.constrained_params(),
    "diagnose": lambda r, c: r.diagnose(num_samples=20, ladder=(1, 5)),
    "elbo_estimate": lambda r, c: r.elbo_estimate(num_particles=5, seed=1),
    "fit_more": lambda r, c: _continued(r),
    "global_latent_names": lambda r, c: r.global_latent_names(),
    "guide_draws": lambda r, c: r.guide_draws(5, seed=1),
    "log_evidence": lambda r, c: r.log_evidence(num_particles=5, seed=1),
    "map_assignments": lambda r, c: r.map_assignments(),
    "observed_information": lambda r, c: r.observed_information(),
    "posterior_predictive": lambda r, c: r.posterior_predictive(4, seed=1),
    "predict": lambda r, c: r.predict(**c["new"]),
    "predict_proba": lambda r, c: r.predict_proba(**c["new"]),
    "sample": lambda r, c: r.sample(6, seed=1),
    "sample_posterior": lambda r, c: r.sample_posterior(5, seed=1),
    "score_samples": lambda r, c: r.score_samples(**c["new"]),
    "standard_errors": lambda r, c: r.standard_errors(),
    "summary": lambda r, c: r.summary(num_samples=10, seed=1),
    "to_arviz": lambda r, c: r.to_arviz(num_samples=10, seed=1),
    # the report's plain-words reading of the fit (the HTML page itself: test_the_report_of_a_loaded_result_...)
    "describe_result": lambda r, c: describe_result(r),
}

EXCLUDED = {
    "activated": "a context manager (the parameter store of the fit); constrained_params() runs inside it",
    "from_outcome": "the constructor from an engine's outcome, not a query of a result",
    "field_values": "the stored fields a result is built from (from_outcome), not a query of a result",
    "save": "saving is what is tested: test_a_loaded_result_saves_to_the_same_file saves a loaded result again",
    "model": "the model object given to lvm.load (compiled again by the caller); its answers are compared instead",
    "guide": "rebuilt by name or given to lvm.load; compared through guide_draws(), summary(), ...",
    "structure": "recomputed from the model on the saved data; compared by its sites in check_fields",
    "param_state": "the parameter store state; compared through params and constrained_params()",
    "cache": "answers memoised per fit (not saved by design; each result fills its own)",
    "restarts": "compared restart by restart in check_fields",
    "pattern": "the recognised mixture or chain (re-derived on load); compared field by field in check_fields",
}


def _continued(result):
    options = {"max_iter": 2} if result.method in ("em", "vem", "mcem") else {"steps": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # two iterations are not meant to converge
        return result.fit_more(**options).params


# ---------------------------------------------------------------------------------------------------- the fits
@lvm.model
def t_mixture(x, K=2):
    """A mixture of Student t's: no closed-form M-step (the generic EM route)."""
    w = lvm.param(torch.ones(K, dtype=x.dtype) / K, constraint=lvm.constraints.simplex)
    loc = lvm.param(torch.linspace(-1.0, 1.0, K, dtype=x.dtype))
    scale = lvm.param(torch.ones(K, dtype=x.dtype), constraint=lvm.constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.StudentT(4.0, loc[z], scale[z]), x)


def _cases():
    g = torch.Generator().manual_seed(0)
    two = torch.cat([torch.randn(15, 2, generator=g) - 3, torch.randn(15, 2, generator=g) + 3]).double()
    binary = torch.cat([torch.rand(15, 4, generator=g) < 0.8, torch.rand(15, 4, generator=g) < 0.2]).double()
    counts = torch.cat(
        [torch.poisson(torch.full((15, 3), 1.0), generator=g), torch.poisson(torch.full((15, 3), 6.0), generator=g)]
    ).double()
    symbols = torch.tensor([[0, 0, 0, 2, 2, 2, 0, 0, 1, 2, 2, 2], [2, 2, 1, 0, 0, 0, 0, 2, 2, 2, 0, 0]])
    levels = (4.0 * (torch.arange(10) % 6 < 3)).double()[None, :, None]
    sequences = levels + torch.randn(3, 10, 1, generator=g).double()
    lengths = torch.tensor([10, 7, 5])
    rx, ry, _ = regression.simulate_regression_mixture(
        30, weights=[0.5, 0.5], intercepts=[-3.0, 3.0], coefs=[[2.0], [-1.0]], scales=[0.5, 0.5], seed=0
    )
    corpus = topic.generate_corpus(num_docs=12, vocab_size=8, num_topics=2, seed=0)
    lda = topic.ProdLDA(vocab_size=8, num_topics=2, hidden=6)
    auto = vae.VAE(4, latent_dim=2, hidden=(6,))
    em = {"method": "em", "tol": 1e-6, "max_iter": 300}
    for cov in mixtures.COVARIANCE_TYPES:
        yield f"gaussian_mixture-{cov}-em", mixtures.gaussian_mixture, {"x": two, "K": 2, "covariance_type": cov}, em
    yield "bernoulli_mixture-em", mixtures.bernoulli_mixture, {"x": binary, "K": 2}, em
    yield "poisson_mixture-em-restarts", mixtures.poisson_mixture, {"x": counts, "K": 2}, {**em, "n_init": 2}
    yield "categorical_hmm-em", hmm.categorical_hmm, {"x": symbols, "K": 2}, em
    yield "gaussian_hmm-em", hmm.gaussian_hmm, {"x": sequences, "lengths": lengths, "K": 2}, em
    yield "gaussian_hmm_vectorized-em", hmm.gaussian_hmm_vectorized, {"x": sequences, "K": 2}, em
    yield (
        "regression_mixture-em",
        regression.regression_mixture,
        {"x": rx, "y": ry, "K": 2},
        {**em, "max_iter": 30},
    )
    yield "t_mixture-em-generic", t_mixture, {"x": two[:, 0], "K": 2}, {**em, "max_iter": 20}
    yield (
        "gaussian_mixture-svi",
        mixtures.gaussian_mixture,
        {"x": two, "K": 2, "covariance_type": "diag"},
        {"method": "svi", "steps": 20, "n_init": 2},
    )
    yield "ppca-svi", factor.ppca, {"x": two, "q": 1}, {"method": "svi", "steps": 20}
    yield "factor_analysis-iwae", factor.factor_analysis, {"x": two, "q": 1}, {"method": "iwae", "steps": 20}
    yield "ppca-renyi", factor.ppca, {"x": two, "q": 1}, {"method": "renyi", "steps": 10}
    yield "ppca-vem", factor.ppca, {"x": two, "q": 1}, {"method": "vem", "max_iter": 3}
    yield "ppca-mcem", factor.ppca, {"x": two, "q": 1}, {"method": "mcem", "max_iter": 3}
    yield (
        "prodlda-meanfield",
        lda.model,
        corpus.counts,
        {"method": "meanfield", "steps": 10, "guide": lda.guide, "beta": lvm.linear_warmup(5)},
    )
    yield "vae-svi", auto.model, binary.float(), {"method": "svi", "steps": 10, "guide": auto.guide}


CASES = {name: (model, data, options) for name, model, data, options in _cases()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (fitted, path) of every case, fitted once."""
    out = {}
    for name, (model, data, options) in CASES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # short fits, on purpose
            fit = lvm.infer(model, data, seed=0, **options)
        path = tmp_path_factory.mktemp("fits") / f"{name}.pt"
        fit.save(str(path))
        out[name] = (fit, path)
    return out


def _load(name, saved):
    model, data, options = CASES[name]
    return lvm.load(str(saved[name][1]), model=model, guide=options.get("guide"))


def _case(name):
    model, data, options = CASES[name]
    new = {k: v for k, v in data.items() if k in ("x", "lengths")} if isinstance(data, dict) else {}
    return {"new": new}


# ---------------------------------------------------------------------------------------------------- comparison
def assert_same(a, b, where: str, tol=TOLERANCE[torch.float64]) -> None:
    """``a`` (before saving) and ``b`` (after loading) agree to float error, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=tol[0], atol=tol[1], equal_nan=True, msg=where)
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape, where
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(b, a, rtol=tol[0], atol=tol[1], err_msg=where)
        else:
            np.testing.assert_array_equal(b, a, err_msg=where)
    elif isinstance(a, (float, np.floating)) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=tol[0], abs=tol[1], nan_ok=True), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]", tol)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(b, a, rtol=tol[0], atol=tol[1], obj=where)
        assert_same(dict(a.attrs), dict(b.attrs), f"{where}.attrs", tol)
    elif isinstance(a, (Diagnosis, MixturePattern, HMMPattern, BoundData)):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            left, right = getattr(a, f.name), getattr(b, f.name)
            if f.name == "family":  # an emission family: the same kind with the same settings
                assert type(left) is type(right) and vars(left) == vars(right), where
            else:
                assert_same(left, right, f"{where}.{f.name}", tol)
    elif hasattr(a, "groups") or hasattr(a, "children"):  # InferenceData (ArviZ 0.x) or DataTree (1.x)
        assert arviz_compat.group_names(a) == arviz_compat.group_names(b), where
        for name in arviz_compat.group_names(a):
            left, right = arviz_compat.group(a, name), arviz_compat.group(b, name)
            assert list(left.data_vars) == list(right.data_vars), f"{where}.{name}"
            for var in left.data_vars:
                assert left[var].dims == right[var].dims, f"{where}.{name}.{var}"
                assert_same(left[var].values, right[var].values, f"{where}.{name}.{var}", tol)
            attrs = {k: v for k, v in left.attrs.items() if k != "created_at"}
            assert attrs == {k: v for k, v in right.attrs.items() if k != "created_at"}, f"{where}.{name}.attrs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _answer(call, result, case):
    """``("ok", value, warnings)`` or ``("error", (type, message), warnings)`` of one call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = ("ok", call(result, case))
        except Exception as exc:  # noqa: BLE001 - the same refusal must come before and after loading
            outcome = ("error", (type(exc), str(exc)))
    return (*outcome, [(w.category, str(w.message)) for w in caught])


def public_names(cls) -> list[str]:
    return sorted(n for n, _ in inspect.getmembers(cls) if not n.startswith("_"))


def _fields(result) -> list[str]:
    return [f.name for f in dataclasses.fields(result) if f.name not in EXCLUDED]


# ---------------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("cls", [Result, EMResult, StochasticEMResult, MCMCResult])
def test_every_public_name_has_a_load_check(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    unchecked = [
        n
        for n in public_names(cls)
        if n not in CALLS
        and n not in EXCLUDED
        and n not in fields
        and not isinstance(inspect.getattr_static(cls, n), property)
    ]
    assert not unchecked, (
        f"public name(s) {unchecked} of {cls.__name__} have no load check: add them to CALLS "
        "(how to call them) or to EXCLUDED (why not)"
    )


@pytest.mark.arviz
@pytest.mark.parametrize("name", list(CASES))
def test_every_public_method_of_a_loaded_result_answers_as_before_saving(name, saved):
    fitted, _ = saved[name]
    loaded = _load(name, saved)
    assert type(loaded) is type(fitted)
    case = _case(name)
    float32 = any(v.dtype == torch.float32 for v in fitted.params.values())
    tol = TOLERANCE[torch.float32 if float32 else torch.float64]
    check_fields(fitted, loaded, name, tol)
    cls = type(fitted)
    properties = [n for n in public_names(cls) if isinstance(inspect.getattr_static(cls, n), property)]
    for prop in properties:
        assert_same(getattr(fitted, prop), getattr(loaded, prop), f"{name}.{prop}", tol)
    answered = 0
    for method in [n for n in public_names(cls) if n in CALLS] + ["describe_result"]:
        before, after = _answer(CALLS[method], fitted, case), _answer(CALLS[method], loaded, case)
        where = f"{name}.{method}()"
        assert before[0] == after[0], f"{where}: {before[:2]} before saving, {after[:2]} after loading"
        if before[0] == "ok":
            assert_same(before[1], after[1], where, tol)
            answered += 1
        else:
            assert before[1] == after[1], where
        assert before[2] == after[2], f"{where} warned differently: {before[2]} vs {after[2]}"
    assert answered >= 8, f"{name}: only {answered} methods answered"


def check_fields(fitted, loaded, where: str, tol) -> None:
    """Every dataclass field of the result (the ones EXCLUDED are compared here by what they determine)."""
    for field in _fields(fitted):
        assert_same(getattr(fitted, field), getattr(loaded, field), f"{where}.{field}", tol)
    assert list(fitted.structure.sites) == list(loaded.structure.sites), where
    assert_same(getattr(fitted, "pattern", None), getattr(loaded, "pattern", None), f"{where}.pattern", tol)
    assert len(fitted.restarts) == len(loaded.restarts), where
    for i, (a, b) in enumerate(zip(fitted.restarts, loaded.restarts, strict=True)):
        assert (a is fitted) == (b is loaded), f"{where}.restarts[{i}] kept"
        if a is not fitted:
            for field in _fields(a):
                if field != "restarts":
                    assert_same(getattr(a, field), getattr(b, field), f"{where}.restarts[{i}].{field}", tol)
            assert_same(getattr(a, "pattern", None), getattr(b, "pattern", None), f"{where}.restarts[{i}].pattern", tol)


@pytest.mark.parametrize(
    "name", ["gaussian_mixture-diag-em", "categorical_hmm-em", "regression_mixture-em", "ppca-svi"]
)
def test_a_loaded_result_saves_to_the_same_file(name, saved, tmp_path):
    again = tmp_path / "again.pt"
    _load(name, saved).save(str(again))
    first, second = (torch.load(p, weights_only=True) for p in (saved[name][1], again))
    assert first["checksums"] == second["checksums"]


@pytest.mark.parametrize("name", ["gaussian_mixture-full-em", "gaussian_hmm-em", "ppca-svi"])
def test_the_report_of_a_loaded_result_reads_as_before_saving(name, saved, tmp_path):
    pages = []
    for which, result in (("fitted", saved[name][0]), ("loaded", _load(name, saved))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report's own notes are in its text, compared below
            path = build_report(result, tmp_path / which, diagnose_samples=20)
        text = re.sub(r'src="data:image/[^"]*"', "", path.read_text())  # figures: rendered pixels, not numbers
        text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", text)  # when the page was written
        pages.append(text)
    assert pages[0] == pages[1]


def test_a_result_loaded_without_its_model_says_which_queries_need_it(saved):
    loaded = lvm.load(str(saved["gaussian_mixture-diag-em"][1]))
    fitted = saved["gaussian_mixture-diag-em"][0]
    assert all(torch.equal(loaded.params[k], v) for k, v in fitted.params.items())
    assert loaded.bic() == fitted.bic()
    for call in (
        lambda: loaded.predict(fitted.data.kwargs["x"]),
        lambda: loaded.sample(3),
        lambda: loaded.map_assignments(),
    ):
        with pytest.raises(RuntimeError, match=r"loaded without it; pass model= to lvm.load"):
            call()


def test_an_mcmc_result_refuses_to_be_saved_and_says_how_to_keep_its_draws(tmp_path):
    x = torch.tensor([0.3, -0.2, 0.5, 1.1])

    @lvm.model
    def mean(x):
        mu = lvm.latent(lvm.dist.Normal(0.0, 1.0))
        with lvm.plate(len(x)):
            lvm.observe(lvm.dist.Normal(mu, 1.0), x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # ten draws: the chain is not meant to mix
        fit = lvm.infer(mean, x, method="nuts", num_samples=10, warmup_steps=10, num_chains=1, seed=0)
    with pytest.raises(TypeError, match=r"an MCMC fit is saved as its draws: .*save_netcdf\(result.to_arviz"):
        fit.save(str(tmp_path / "fit.pt"))
    assert not (tmp_path / "fit.pt").exists()
