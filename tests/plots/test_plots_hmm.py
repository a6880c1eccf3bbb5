"""Figures of hidden Markov models (Viterbi path on the data, transition matrix), principal-component scatters and
the honest labels of the loss and the bound ladder, each checked against the fit's own numbers."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from demo_data import two_clusters  # noqa: E402
from demo_models import normal_normal  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

import ppl_lvm as lvm  # noqa: E402
from ppl_lvm import plots  # noqa: E402
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm, pad_sequences  # noqa: E402
from ppl_lvm.models.mixtures import gaussian_mixture  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _regimes(dims, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in (50, 30):
        state = (torch.arange(n) // 10) % 2
        out.append(torch.randn(n, dims, generator=generator, dtype=torch.float64) + 4.0 * state[:, None].double())
    return pad_sequences(out)


@pytest.fixture(scope="module")
def hmm3():
    x, lengths = _regimes(3)
    return lvm.infer(gaussian_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em", max_iter=50, seed=0)


def test_the_state_path_is_the_viterbi_path_on_the_data(hmm3):
    fig = plots.plot_state_path(hmm3, sequence=1)
    ax = fig.axes[0]
    path = hmm3.map_assignments()["z"][1, :30].numpy()
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array())[0], path)
    # three columns: the data and the state means on the data's first principal component
    x = hmm3.data.kwargs["x"]
    concatenated = torch.cat([x[0, :50], x[1, :30]]).numpy()
    pca = PCA(1).fit(concatenated)  # an independent principal component of all the sequences' steps
    data_line, means_line = ax.lines[0], ax.lines[1]
    expected = pca.transform(x[1, :30].numpy())[:, 0]
    sign = np.sign(data_line.get_ydata() @ expected)  # a component's sign is arbitrary
    np.testing.assert_allclose(data_line.get_ydata(), sign * expected, rtol=1e-5, atol=1e-5)  # float32 data
    means = hmm3.params["locs"].numpy()[path]
    np.testing.assert_allclose(means_line.get_ydata(), sign * pca.transform(means)[:, 0], rtol=1e-5, atol=1e-5)
    assert f"({100 * pca.explained_variance_ratio_[0]:.0f}% of variance, 3 columns)" in ax.get_ylabel()
    assert ax.get_title() == "Viterbi path of sequence 1 (30 steps, 2 states)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"z = 0 ({int((path == 0).sum())} steps)" in labels


def test_one_column_is_drawn_as_it_is_with_its_state_means():
    x, lengths = _regimes(1, seed=1)
    fit = lvm.infer(gaussian_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em", max_iter=50, seed=0)
    ax = plots.plot_state_path(fit).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), x[0, :, 0].numpy(), rtol=1e-6)  # EM holds float32 data
    path = fit.map_assignments()["z"][0].numpy()
    np.testing.assert_allclose(ax.lines[1].get_ydata(), fit.params["locs"][path, 0].numpy(), rtol=1e-12)
    assert ax.get_ylabel() == "x"


def test_categorical_symbols_are_points_coloured_by_their_state():
    x = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]] * 3)
    fit = lvm.infer(categorical_hmm, {"x": x, "K": 2}, method="em", max_iter=50, seed=0)
    ax = plots.plot_state_path(fit, sequence=2).axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 1], x[2].numpy())
    assert ax.get_ylabel() == "symbol"


def test_the_transition_heatmap_holds_the_fitted_matrix(hmm3):
    ax = plots.plot_transition_matrix(hmm3).axes[0]
    trans = hmm3.params["trans"].numpy()
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), trans, rtol=1e-12)
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in trans.ravel())
    assert ax.get_xlabel() == "to state (z_t)" and ax.get_ylabel() == "from state (z_t-1)"


def test_hmm_figures_refuse_other_fits_and_bad_sequences(hmm3, float64):
    mixture = lvm.infer(gaussian_mixture, {"x": two_clusters(), "K": 2}, method="em")
    with pytest.raises(ValueError, match="no recognised hidden Markov chain"):
        plots.plot_state_path(mixture)
    with pytest.raises(ValueError, match="no recognised hidden Markov chain"):
        plots.plot_transition_matrix(mixture)
    with pytest.raises(ValueError, match=r"sequence must be an integer in \[0, 1\]"):
        plots.plot_state_path(hmm3, sequence=2)


def test_many_columns_are_drawn_on_their_principal_components(float64):
    from sklearn.datasets import load_iris

    iris = load_iris()
    x = (iris.data - iris.data.mean(0)) / iris.data.std(0)
    frame = pd.DataFrame(x, columns=iris.feature_names)
    fit = lvm.infer(gaussian_mixture, {"x": frame, "K": 3}, method="em", seed=0)
    ax = plots.plot_responsibilities(fit, x=frame, projection="pca").axes[0]
    share = PCA(2).fit(x).explained_variance_ratio_
    assert ax.get_xlabel() == f"PC 1 of the standardised data ({100 * share[0]:.0f}% of variance, 4 columns)"
    assert ax.get_ylabel() == f"PC 2 ({100 * share[1]:.0f}% of variance)"
    coords = PCA(2).fit_transform(x)
    drawn = ax.collections[0].get_offsets()
    np.testing.assert_allclose(np.abs(drawn), np.abs(coords), rtol=1e-7, atol=1e-9)  # components agree up to sign
    # two columns of standardised data: named without their unit
    ax = plots.plot_responsibilities(fit, x=frame).axes[0]
    assert ax.get_xlabel() == "sepal length (standardised)" and "(cm)" not in ax.get_ylabel()
    with pytest.raises(ValueError, match="projection must be None"):
        plots.plot_responsibilities(fit, projection="tsne")


def test_losses_and_ladders_carry_their_own_names(float64):
    x = torch.randn(30, dtype=torch.float64)
    iwae = lvm.infer(normal_normal, x, method="iwae", num_particles=3, steps=30, seed=0)
    ax = plots.plot_loss(iwae).axes[0]
    assert ax.get_ylabel() == "loss (negative IWAE bound (K=3), nats)"
    assert "final IWAE bound (K=3)" in ax.get_title()
    # every latent summed out: the rungs are log p(x) itself, no gap is drawn
    mixture = lvm.infer(gaussian_mixture, {"x": two_clusters(), "K": 2}, method="svi", steps=20, seed=0)
    d = mixture.diagnose(num_samples=20, warn=False)
    assert d.exact_source == "enumeration"
    ax = plots.plot_bound_ladder(d).axes[0]
    notes = [t.get_text() for t in ax.texts]
    assert notes and all(n.endswith("= log p(x)") for n in notes) and not any("gap" in n for n in notes)
    assert "k-hat" not in ax.get_title()
