"""Plots: every figure draws the numbers of the fit (checked against an independent computation), saves a PNG,
draws into a given Axes and refuses what it cannot show with a clear error."""

import dataclasses
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from demo_data import ppca_data, two_clusters  # noqa: E402
from demo_models import Encoder, gmm_map, ppca, ppca_log_marginal  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import norm  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

import ppl_lvm as lvm  # noqa: E402
from ppl_lvm import constraints, dist, plots  # noqa: E402
from ppl_lvm.diagnostics import diagnose  # noqa: E402
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences  # noqa: E402
from ppl_lvm.models.mixtures import gaussian_mixture  # noqa: E402
from ppl_lvm.posterior.arviz_compat import az as _az  # noqa: E402
from ppl_lvm.posterior.draws import importance_log_weights  # noqa: E402
from ppl_lvm.posterior.stats import psis_khat  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    """pyplot keeps every figure; more than 20 open ones raise a RuntimeWarning (an error here)."""
    yield
    plt.close("all")


@lvm.model
def mixture(x, K=2):
    """The README's mixture: parameters only, z summed out exactly."""
    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(lambda: torch.stack([x.min(0).values, x.max(0).values])[:K])
    scales = lvm.param(torch.ones(K, x.shape[1]), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)


@pytest.fixture(scope="module")
def fits():
    """Tiny fits of every kind, in float64: EM and SVI mixtures, PPCA (early stop), gmm_map, an amortised PPCA."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = two_clusters()
        close = two_clusters(shift=1.0)  # overlapping clusters: uncertain assignments
        xp = ppca_data()
        smoothed = []
        out = {
            "x": x,
            "close": close,
            "xp": xp,
            "em": lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em", seed=0),
            "svi": lvm.infer(mixture, close, method="svi", steps=30, lr=0.05, seed=0),
            "ppca": lvm.infer(ppca, xp, method="svi", steps=2000, lr=0.05, seed=0, patience=10, tol=1e-3,
                              callbacks=[lambda state: smoothed.append(state.smoothed_loss)]),
            "gmm_map": lvm.infer(gmm_map, {"x": x, "K": 2}, method="svi", guide="normal", steps=30, lr=0.05,
                                 seed=0),
        }
        torch.manual_seed(0)
        out["amortised"] = lvm.infer(ppca, {"x": xp, "q": 3}, method="meanfield",
                                     guide=lvm.AmortizedNormal(Encoder(q=3).double(), site="z"), steps=40, lr=0.05,
                                     seed=0)
        out["smoothed"] = np.array(smoothed)
        return out
    finally:
        torch.set_default_dtype(dtype)


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------------------------------- plot_loss
def test_plot_loss_draws_the_losses_and_the_fit_loops_own_moving_average(fits, tmp_path):
    fit = fits["ppca"]
    path = tmp_path / "loss.png"
    fig = plots.plot_loss(fit, path=path)
    assert isinstance(fig, Figure) and _is_png(path)
    assert plt.imread(path).shape[:2] == (400, 600)  # 6 x 4 inches at dpi 100
    ax = fig.axes[0]
    raw, smooth = ax.lines[0], ax.lines[1]
    np.testing.assert_array_equal(raw.get_ydata(), fit.losses)
    # the bold line is the smoothed loss the fit loop computed (recorded by a callback): same EMA, same window
    np.testing.assert_allclose(smooth.get_ydata(), fits["smoothed"], rtol=1e-12)
    assert smooth.get_linewidth() > raw.get_linewidth()
    # stopped early (patience=10) at fit.steps < 2000: a vertical line there, named in the legend
    assert fit.steps < 2000
    stop = ax.lines[2]
    assert list(stop.get_xdata()) == [fit.steps, fit.steps]
    assert any(f"early stop at step {fit.steps} of 2000" in t.get_text() for t in ax.get_legend().get_texts())
    assert ax.get_xlabel() == "step" and ax.get_ylabel().startswith("loss (negative ELBO, nats)")


def test_plot_loss_uses_a_log_axis_only_for_positive_losses_spanning_a_decade(fits):
    fit = fits["ppca"]
    assert fit.losses.max() / fit.losses.min() < 10  # measured: 2.2
    assert plots.plot_loss(fit).axes[0].get_yscale() == "linear"
    steps = np.arange(1, 201)
    decaying = dataclasses.replace(fit, losses=1e4 / steps + 5.0, steps=200)  # from 1e4 down to 55
    ax = plots.plot_loss(decaying).axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss (negative ELBO, nats), log scale"
    broken = dataclasses.replace(fit, losses=np.r_[fit.losses[:20], np.nan], steps=21)  # a fit that hit NaN
    ax = plots.plot_loss(broken).axes[0]
    assert any(t.get_text() == "loss not finite from step 21" for t in ax.get_legend().get_texts())
    negative = dataclasses.replace(fit, losses=1e4 / steps - 500.0, steps=200)  # crosses zero: no log axis
    ax = plots.plot_loss(negative).axes[0]
    assert ax.get_yscale() == "linear"
    # the first steps' huge losses do not flatten the rest: the view spans the bulk of the curve
    low, high = ax.get_ylim()
    assert low < -450 and high < 1e4


def test_plot_loss_draws_the_other_restarts_behind_the_kept_fit(float64):
    x = two_clusters(n=6)
    fit = lvm.infer(mixture, x, method="svi", steps=15, lr=0.05, seed=0, n_init=3, smoothing=5)
    ax = plots.plot_loss(fit).axes[0]
    others = [r for r in fit.restarts if r is not fit]
    assert len(others) == 2
    grey = [line for line in ax.lines if line.get_color() == "0.6"]
    for line, other in zip(grey, others, strict=True):
        alpha = 2 / (5 + 1)  # the fit loop's EMA with smoothing=5
        expected = [other.losses[0]]
        for v in other.losses[1:]:
            expected.append((1 - alpha) * expected[-1] + alpha * v)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    assert ax.get_legend().get_texts()[0].get_text() == "2 other restarts (moving average)"
    np.testing.assert_array_equal(ax.lines[2].get_ydata(), fit.losses)  # the kept fit, drawn last


def test_plot_loss_of_em_is_the_log_likelihood_per_iteration(fits, tmp_path):
    em = fits["em"]
    fig, ax = plt.subplots()
    assert plots.plot_loss(em, ax=ax, path=tmp_path / "em.png") is fig
    assert _is_png(tmp_path / "em.png")
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, em.n_iter + 1))
    np.testing.assert_allclose(line.get_ydata(), em.history * em.n_samples, rtol=1e-12)
    assert line.get_ydata()[-1] == pytest.approx(em.log_likelihood, rel=1e-9)
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "total log-likelihood (nats)"


def test_plot_loss_refuses_bad_input(fits):
    with pytest.raises(TypeError, match="takes a fit result"):
        plots.plot_loss(fits["ppca"].losses)
    with pytest.raises(ValueError, match="smoothing must be a positive integer"):
        plots.plot_loss(fits["ppca"], smoothing=0)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plots.plot_loss(fits["ppca"], ax="left")


# ---------------------------------------------------------------------------------------------------- ladder
def test_plot_bound_ladder_draws_the_diagnosis_and_the_exact_line(fits, tmp_path, float64):
    fit, x = fits["ppca"], fits["xp"]
    exact = ppca_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["sigma"])
    d = diagnose(fit, num_samples=50, ladder=(1, 10), seed=0, exact=exact, warn=False)
    path = tmp_path / "ladder.png"
    fig = plots.plot_bound_ladder(d, path=path)
    assert _is_png(path)
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets()
    expected = [v for label, v in d.ladder if not label.startswith("exact")]
    np.testing.assert_allclose(points[:, 1], expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ELBO", "IWAE_1", "IWAE_10", "IS (50 draws)"]
    assert ax.lines[0].get_ydata()[0] == pytest.approx(exact)
    # the same numbers when the plot runs diagnose itself (here on the enumerated mixture: exact log p(x) known)
    ax2 = plt.subplots()[1]
    plots.plot_bound_ladder(fits["svi"], ax=ax2, num_samples=5, seed=0)
    d2 = diagnose(fits["svi"], num_samples=5, seed=0)
    np.testing.assert_allclose(ax2.collections[0].get_offsets()[:, 1], [v for _, v in d2.ladder[:-1]])
    assert ax2.lines[0].get_ydata()[0] == pytest.approx(fits["svi"].log_evidence(), rel=1e-12)


def test_plot_bound_ladder_refuses_em_and_options_with_a_diagnosis(fits):
    with pytest.raises(ValueError, match="EM fit's log_likelihood is exact"):
        plots.plot_bound_ladder(fits["em"])
    d = diagnose(fits["svi"], num_samples=5)
    with pytest.raises(ValueError, match="already computed"):
        plots.plot_bound_ladder(d, num_samples=10)
    with pytest.raises(TypeError, match="takes a fit result"):
        plots.plot_bound_ladder({"ELBO": -3.0})


# ---------------------------------------------------------------------------------------------------- k-hat
def test_plot_khat_is_psis_on_batches_of_the_exported_log_weights(fits, tmp_path, float64):
    fit = fits["ppca"]
    path = tmp_path / "khat.png"
    fig = plots.plot_khat(fit, num_batches=4, num_samples=100, seed=1, path=path)
    assert _is_png(path)
    ax = fig.axes[0]
    log_w = importance_log_weights(fit, 100, 1)
    expected = np.array([psis_khat(b) for b in np.array_split(log_w, 4)])
    drawn = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    drawn = drawn[np.argsort(drawn[:, 0])]
    np.testing.assert_array_equal(drawn[:, 0], [1, 2, 3, 4])
    np.testing.assert_allclose(drawn[:, 1], expected, rtol=1e-12)
    hlines = {round(float(line.get_ydata()[0]), 12) for line in ax.lines}
    assert {0.5, 0.7, round(psis_khat(log_w), 12)} <= hlines
    # each point has its verdict's colour, one scatter per verdict present
    verdicts = {"good" if k < 0.5 else ("ok" if k <= 0.7 else "bad") for k in expected}
    assert len(ax.collections) == len(verdicts)
    for c in ax.collections:
        for (_, k), colour in zip(c.get_offsets(), c.get_facecolors(), strict=False):
            verdict = "good" if k < 0.5 else ("ok" if k <= 0.7 else "bad")
            np.testing.assert_allclose(colour, to_rgba(plots.VERDICT_COLOURS[verdict]))


def test_plot_khat_per_point_is_psis_of_each_points_ratios(fits, tmp_path, float64):
    from ppl_lvm.posterior.stats import psis_khat_points

    path = tmp_path / "khat_points.png"
    fig = plots.plot_khat(fits["ppca"], num_samples=100, seed=1, per_point=True, path=path)
    assert _is_png(path)
    point_w = importance_log_weights(fits["ppca"], 100, 1, pointwise=True)
    expected = np.sort(psis_khat_points(point_w))
    drawn = np.concatenate([c.get_offsets() for c in fig.axes[0].collections if len(c.get_offsets())])
    drawn = drawn[np.argsort(drawn[:, 0])]
    np.testing.assert_array_equal(drawn[:, 0], np.arange(1, len(expected) + 1))
    np.testing.assert_allclose(drawn[:, 1], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="do not factorise over the data points"):  # gmm_map has global latents
        plots.plot_khat(fits["gmm_map"], num_samples=100, per_point=True)


def test_plot_khat_draws_into_a_given_axes_and_refuses_what_has_no_ratios(fits):
    fig, ax = plt.subplots()
    assert plots.plot_khat(fits["amortised"], num_batches=2, num_samples=50, ax=ax) is fig
    assert ax.get_ylabel() == "Pareto k-hat"
    with pytest.raises(ValueError, match="an EM fit samples nothing"):
        plots.plot_khat(fits["em"])
    with pytest.raises(ValueError, match="every latent of this model is enumerated"):
        plots.plot_khat(fits["svi"])
    with pytest.raises(ValueError, match="at least 25 draws per batch"):
        plots.plot_khat(fits["ppca"], num_batches=5, num_samples=120)
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        plots.plot_khat(fits["ppca"], num_batches=0)


def test_plot_khat_refuses_a_guide_without_density():
    x = ppca_data()
    fit = lvm.infer(ppca, x, method="svi", guide="delta", steps=3, seed=0)
    with pytest.raises(ValueError, match="has no density for its draws"):
        plots.plot_khat(fit, num_batches=1, num_samples=25)


# ---------------------------------------------------------------------------------------------------- responsibilities
def assert_points_match_responsibilities(ax, resp, data_xy):
    points = ax.collections[0]
    np.testing.assert_allclose(points.get_offsets(), data_xy)
    colours = points.get_facecolors()
    best, certainty = resp.argmax(1), resp.max(1)
    for j in range(resp.shape[1]):
        np.testing.assert_allclose(colours[best == j, :3], np.tile(to_rgba(f"C{j}")[:3], ((best == j).sum(), 1)))
    k = resp.shape[1]
    np.testing.assert_allclose(colours[:, 3], 0.15 + 0.85 * (certainty - 1 / k) / (1 - 1 / k), atol=1e-12)
    np.testing.assert_allclose(points.get_sizes(), 8 + 32 * certainty)


def test_plot_responsibilities_of_em_colours_by_map_component(fits, tmp_path):
    em, x = fits["em"], fits["x"].numpy()
    path = tmp_path / "resp.png"
    fig = plots.plot_responsibilities(em, dims=(1, 0), path=path)
    assert _is_png(path)
    ax = fig.axes[0]
    assert_points_match_responsibilities(ax, em.responsibilities["z"].numpy(), x[:, [1, 0]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x[1]", "x[0]")
    # new data go through predict_proba
    new = x[:5] + 0.1
    fig, ax = plt.subplots()
    assert plots.plot_responsibilities(em, x=new, ax=ax) is fig
    assert_points_match_responsibilities(ax, em.predict_proba(torch.from_numpy(new)).numpy(), new)


def test_plot_responsibilities_of_svi_is_the_exact_posterior_of_z(fits, float64):
    fit, x = fits["svi"], fits["close"].numpy()
    w, locs, scales = (fit.params[k].numpy() for k in ("weights", "locs", "scales"))

    def resp_of(data):
        joint = np.log(w) + norm.logpdf(data[:, None, :], locs, scales).sum(-1)  # (N, K)
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    resp = resp_of(x)
    ax = plots.plot_responsibilities(fit).axes[0]
    assert_points_match_responsibilities(ax, resp, x)
    # overlapping clusters: some points are uncertain, so the alphas really vary (measured: min max_k p = 0.71)
    assert resp.max(1).min() < 0.8
    # new rows: the same parameters, the new data's posterior
    ax = plots.plot_responsibilities(fit, x=x[:6] * 0.5).axes[0]
    assert_points_match_responsibilities(ax, resp_of(x[:6] * 0.5), x[:6] * 0.5)


def test_plot_responsibilities_with_global_latents_averages_over_q(fits, float64):
    """gmm_map: p(z | x) = E_q[p(z | x, theta)]; by hand with scipy over the same draws of theta."""
    fit, x = fits["gmm_map"], fits["x"].numpy()
    draws = fit.sample_posterior(8, seed=4)
    w, locs, scales = (draws[k].numpy() for k in ("weights", "locs", "scales"))
    joint = np.log(w)[:, None, :] + norm.logpdf(x[None, :, None, :], locs[:, None], scales[:, None]).sum(-1)
    resp = np.exp(joint - logsumexp(joint, axis=2, keepdims=True)).mean(0)
    ax = plots.plot_responsibilities(fit, num_samples=8, seed=4).axes[0]
    assert_points_match_responsibilities(ax, resp, x)


def test_plot_responsibilities_of_one_column_plots_value_against_certainty(float64):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(15, generator=g) - 2, torch.randn(15, generator=g) + 2])[:, None]
    em = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em", seed=0)
    ax = plots.plot_responsibilities(em).axes[0]
    resp = em.responsibilities["z"].numpy()
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.stack([x[:, 0].numpy(), resp.max(1)], 1))
    assert ax.get_ylabel() == "max_k p(z = k | x)"


def test_plot_responsibilities_refuses_what_it_cannot_show(fits):
    with pytest.raises(ValueError, match="needs a discrete latent"):
        plots.plot_responsibilities(fits["ppca"])
    with pytest.raises(ValueError, match="dims must be two different column indices"):
        plots.plot_responsibilities(fits["em"], dims=(0, 0))
    with pytest.raises(ValueError, match="dims must be two different column indices"):
        plots.plot_responsibilities(fits["em"], dims=(0, 2))
    with pytest.raises(ValueError, match="not a discrete latent"):
        plots.plot_responsibilities(fits["em"], site="w")
    g = torch.Generator().manual_seed(0)
    padded, lengths = pad_sequences([torch.randn(n, 2, generator=g) for n in (6, 5)])
    chain = lvm.infer(gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, method="em", max_iter=5, tol=1.0)
    with pytest.raises(ValueError, match=r"one point per data row, but .z. is a hidden Markov chain.*map_assignments"):
        plots.plot_responsibilities(chain)


# ---------------------------------------------------------------------------------------------------- posterior
def test_plot_posterior_has_one_panel_per_coordinate_of_the_global_latents(fits, tmp_path, float64):
    fit = fits["gmm_map"]
    path = tmp_path / "posterior.png"
    fig = plots.plot_posterior(fit, num_samples=20, seed=2, path=path, max_panels=4)
    assert _is_png(path)
    visible = [a for a in fig.axes if a.get_visible()]
    titles = [a.get_title().split("\n")[0] for a in visible]
    assert titles == ["weights[0]", "weights[1]", "locs[0, 0]", "locs[0, 1]"]
    # 2 weights + 4 locs + 4 scales: z (one per data point) is left out of the default selection
    assert "first 4 of 10 coordinates" in fig._suptitle.get_text()
    draws = fit.sample_posterior(20, seed=2)
    # the dashed line of each panel is the mean of the same draws from q
    assert visible[3].lines[-1].get_xdata()[0] == pytest.approx(float(draws["locs"][:, 0, 1].mean()), rel=1e-12)
    assert f"mean {float(draws['weights'][:, 0].mean()):.3g}" in visible[0].get_title()


def test_plot_posterior_into_given_axes_and_errors(fits):
    fig, axes = plt.subplots(1, 2)
    assert plots.plot_posterior(fits["gmm_map"], var_names=["weights"], ax=axes, num_samples=20) is fig
    assert [a.get_title().split("\n")[0] for a in axes] == ["weights[0]", "weights[1]"]
    with pytest.raises(ValueError, match="at least one matplotlib Axes per coordinate shown"):
        plots.plot_posterior(fits["gmm_map"], var_names="locs", ax=axes[0], num_samples=20)
    with pytest.raises(ValueError, match="no global latent sites"):
        plots.plot_posterior(fits["ppca"])
    with pytest.raises(ValueError, match="not latent sites of the model"):
        plots.plot_posterior(fits["gmm_map"], var_names=["W"])
    with pytest.raises(ValueError, match="an EM fit has point estimates"):
        plots.plot_posterior(fits["em"])


# ---------------------------------------------------------------------------------------------------- latent space
def test_plot_latent_space_draws_the_guide_means(fits, tmp_path, float64):
    fit = fits["ppca"]
    path = tmp_path / "latent.png"
    labels = np.arange(20) % 3
    fig = plots.plot_latent_space(fit, labels=labels, path=path)
    assert _is_png(path)
    ax = fig.axes[0]
    # MeanFieldNormal keeps loc per data point: E_q[z_i] is its 'z' location parameter
    loc = fit.params["MeanFieldNormal.locs.z"].numpy()
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    order = np.concatenate([np.flatnonzero(labels == c) for c in range(3)])
    np.testing.assert_allclose(drawn, loc[order], rtol=1e-12)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    assert ax.get_xlabel() == "E_q[z_0 | x]"


def test_plot_latent_space_projects_more_than_two_dimensions_by_pca(fits, float64):
    fit, x = fits["amortised"], fits["xp"]
    fig, ax = plt.subplots()
    labels = np.linspace(0, 1, 20)  # floats: a colour bar
    assert plots.plot_latent_space(fit, labels=labels, ax=ax) is fig
    encoder = fit.guide.encoder
    with fit.activated(), torch.no_grad():
        means = encoder(x)[0].numpy()
    expected = PCA(n_components=2).fit_transform(means)
    drawn = ax.collections[0].get_offsets()
    signs = np.sign((drawn * expected).sum(0))  # principal axes are defined up to sign
    np.testing.assert_allclose(drawn * signs, expected, atol=1e-10)
    share = PCA(n_components=2).fit(means).explained_variance_ratio_
    assert ax.get_xlabel() == f"PC 1 of E_q[z | x] ({100 * share[0]:.0f}% of variance, latent_dim 3)"
    assert len(fig.axes) == 2  # the colour bar
    # new data through the encoder
    new = x[:7] + 0.3
    ax_new = plots.plot_latent_space(fit, x=new).axes[0]
    with fit.activated(), torch.no_grad():
        new_means = encoder(new)[0].numpy()
    centred = new_means - new_means.mean(0)
    drawn = ax_new.collections[0].get_offsets()
    np.testing.assert_allclose(np.abs(drawn), np.abs(PCA(n_components=2).fit_transform(new_means)), atol=1e-10)
    assert drawn.shape == (7, 2) and np.allclose(centred.mean(0), 0)


def test_plot_latent_space_refuses_what_it_cannot_show(fits, float64):
    with pytest.raises(ValueError, match="not a local continuous latent"):
        plots.plot_latent_space(fits["gmm_map"], site="locs")
    with pytest.raises(ValueError, match="needs a continuous local latent from a variational fit"):
        plots.plot_latent_space(fits["em"])
    with pytest.raises(ValueError, match="labels must hold one value per data point"):
        plots.plot_latent_space(fits["ppca"], labels=[0, 1])
    with pytest.raises(ValueError, match="cannot encode new rows"):
        plots.plot_latent_space(fits["ppca"], x=fits["xp"])
    x = ppca_data(n=10)
    one_dim = lvm.infer(ppca, {"x": x, "q": 1}, method="svi", steps=2, seed=0)
    with pytest.raises(ValueError, match="latent_dim 1: a 2-D latent space needs at least two dimensions"):
        plots.plot_latent_space(one_dim)


# ---------------------------------------------------------------------------------------------------- matplotlib
def test_a_clear_import_error_without_matplotlib(fits, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # "import matplotlib.pyplot" now fails
    with pytest.raises(ImportError, match=r"needs matplotlib.*pip install matplotlib"):
        plots.plot_loss(fits["em"])


# ArviZ 0.23's plot_trace calls matplotlib's normalize_kwargs with a dict alias_mapping, deprecated in matplotlib 3.11
# (a MatplotlibDeprecationWarning, which the test run turns into an error); the figure itself is fine, so exactly that
# warning is ignored here.
@pytest.mark.filterwarnings(
    "ignore:Passing a dict or None as alias_mapping to normalize_kwargs:matplotlib.MatplotlibDeprecationWarning")
@pytest.mark.arviz
def test_arviz_plots_work_on_the_export_as_it_is(fits, float64):
    az = _az()
    if not hasattr(az, "plot_trace"):
        pytest.skip("the ArviZ 1.x design without arviz-plots installed has no plot_trace")
    for fit in (fits["gmm_map"], lvm.infer(ppca, fits["xp"][:8], method="iwae", steps=5, seed=0)):
        idata = fit.to_arviz(num_samples=10, seed=0)
        names = ["weights", "locs"] if fit is fits["gmm_map"] else ["z"]
        axes = az.plot_trace(idata, var_names=names, coords=None if names != ["z"] else {"n": [0, 1]})
        assert axes.shape[0] == len(names) and isinstance(axes[0, 0].figure, Figure)
        axes = np.atleast_1d(az.plot_posterior(idata, var_names=names,
                                               coords=None if names != ["z"] else {"n": [0, 1]}))
        assert axes.size >= 1 and all(a.has_data() for a in axes.ravel() if a.get_visible())
        plt.close("all")
