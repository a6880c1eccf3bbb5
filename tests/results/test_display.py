"""How fits are named in words (objective, model, guide) and their compact HTML table in Jupyter (``_repr_html_``)."""

import warnings
from html.parser import HTMLParser

import torch
from demo_models import normal_normal, one_way_random_effects

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.errors import ConvergenceWarning
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.models.vae import VAE
from ppl_lvm.results.display import bound_name, guide_description, loss_name, model_label


class _Cells(HTMLParser):
    """The text of every <th>/<td>, in order, and whether the tags balance."""

    def __init__(self):
        super().__init__()
        self.cells, self.open, self.depth = [], None, 0

    def handle_starttag(self, tag, attrs):
        self.depth += tag in ("div", "table", "tr", "td", "th")
        if tag in ("td", "th"):
            self.open = ""

    def handle_endtag(self, tag):
        self.depth -= tag in ("div", "table", "tr", "td", "th")
        if tag in ("td", "th"):
            self.cells.append(self.open)
            self.open = None

    def handle_data(self, data):
        if self.open is not None:
            self.open += data


def _cells(markup):
    parser = _Cells()
    parser.feed(markup)
    assert parser.depth == 0, "unbalanced tags"
    return dict(zip(parser.cells[0:-1:2], parser.cells[1::2], strict=False)), parser.cells


def _two_clusters():
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(30, 2, generator=g) - 3, torch.randn(30, 2, generator=g) + 3]).double()


def test_an_em_fit_shows_its_exact_numbers_in_jupyter(float64):
    fit = lvm.infer(gaussian_mixture, {"x": _two_clusters(), "K": 2}, method="em", seed=0)
    markup = fit._repr_html_()
    facts, cells = _cells(markup)
    assert markup.startswith("<div") and "<strong>EMResult</strong>" in markup
    assert facts["method"] == "em"
    assert facts["log-likelihood (exact)"] == f"{fit.log_likelihood:.6g}"
    assert facts["BIC"] == f"{fit.bic():.6g}" and facts["AIC"] == f"{fit.aic():.6g}"
    assert facts["iterations"] == str(fit.n_iter) and facts["converged"] == ("yes" if fit.converged else "no")
    assert facts["model"].startswith("gaussian_mixture (ppl_lvm.models.mixtures): A mixture of K multivariate normals")
    # the parameter table: name, shape, first values
    weights = fit.params["weights"]
    assert "weights" in cells and cells[cells.index("weights") + 1] == "2"
    assert cells[cells.index("weights") + 2] == ", ".join(f"{float(v):.4g}" for v in weights)


def test_a_variational_fit_names_its_bound_and_guide():
    fit = lvm.infer(normal_normal, torch.randn(20), method="svi", steps=20, seed=0)
    facts, _ = _cells(fit._repr_html_())
    assert facts["ELBO"] == f"{fit.elbo:.6g}"
    assert facts["guide"].startswith("mean-field normal")
    assert facts["steps"] == "20"


def test_every_method_names_its_own_objective():
    x = torch.randn(20)
    iwae = lvm.infer(normal_normal, x, method="iwae", num_particles=3, steps=5, seed=0)
    assert bound_name(iwae) == "IWAE bound (K=3)" and loss_name(iwae) == "negative IWAE bound (K=3)"
    assert "IWAE bound (K=3)" in _cells(iwae._repr_html_())[0]
    renyi = lvm.infer(normal_normal, x, method="renyi", num_particles=3, steps=5, seed=0)
    assert bound_name(renyi) == "Renyi bound (alpha=0.5, K=3)"
    svi = lvm.infer(normal_normal, x, method="svi", steps=5, seed=0, beta=0.5)
    assert bound_name(svi) == "ELBO with the KL term weighted by beta=0.5"
    delta = lvm.infer(normal_normal, x, method="svi", steps=5, seed=0, guide="delta")
    assert guide_description(delta).startswith("point mass at the MAP estimate")


def test_em_and_stochastic_em_results_render(float64):
    g = torch.Generator().manual_seed(1)
    y = 2.0 + torch.randn(30, 1, generator=g) + 0.7 * torch.randn(30, 8, generator=g)
    vem = lvm.infer(one_way_random_effects, {"y": y}, method="vem", tol=None, max_iter=2)
    facts, _ = _cells(vem._repr_html_())
    assert facts["iterations"] == "2" and facts["ELBO"] == f"{vem.elbo:.6g}"
    mcem = lvm.infer(one_way_random_effects, {"y": y}, method="mcem", proposal="prior", tol=None, max_iter=2)
    facts, _ = _cells(mcem._repr_html_())
    assert facts["Monte Carlo estimate of log p(x)"] == f"{mcem.elbo:.6g}"
    assert facts["guide"] == "prior (no guide)"


def test_models_and_guides_built_inside_a_class_are_named_by_it():
    vae = VAE(6, latent_dim=2, hidden=4)
    assert (
        model_label(vae.model)
        == "model of VAE (ppl_lvm.models.vae): p(x, z) = N(z; 0, I) p(x | decoder(z)), one z per row of x."
    )
    fit = lvm.infer(vae.model, torch.zeros(10, 6).bernoulli_(0.5), method="svi", guide=vae.guide, steps=2, seed=0)
    assert (
        guide_description(fit) == "the user's guide() of VAE: q(z | x) = N(encoder(x)), amortised over the rows of x."
    )


@lvm.model
def tagged(x):
    """A <b>bold</b> & tagged model."""
    mu = lvm.latent(dist.Normal(0.0, 1.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0), x)


def test_the_table_escapes_what_it_shows():
    fit = lvm.infer(tagged, torch.randn(5), method="svi", steps=2, seed=0)
    markup = fit._repr_html_()
    assert "<b>" not in markup and "&lt;b&gt;bold&lt;/b&gt; &amp; tagged" in markup
    assert _cells(markup)[0]["model"].endswith("A <b>bold</b> & tagged model.")


def test_a_model_without_its_function_says_so():
    assert model_label(None) == "not available (a result loaded without its model)"


def test_an_mcmc_fit_renders_its_chains(float64):
    x = torch.randn(20, dtype=torch.float64)
    with warnings.catch_warnings():  # 20 warm-up steps leave divergences: the table shows them, whatever they are
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = lvm.infer(normal_normal, x, method="nuts", num_samples=20, warmup_steps=20, num_chains=1, seed=0)
    facts, _ = _cells(fit._repr_html_())
    assert facts["chains x draws"] == "1 x 20" and facts["divergences"] == str(fit.divergences)
    assert facts["guide"] == "none (MCMC draws from the posterior itself)"
    assert bound_name(fit) == "none (MCMC draws)"
