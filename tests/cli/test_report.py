"""The HTML report: one self-contained page whose numbers match the fit, rendered by headless Chromium."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import multivariate_normal

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.report import Report, build_report, selection_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMG = re.compile(r'<img alt="([^"]*)" src="([^"]*)"')


@pytest.fixture(scope="module")
def petals():
    from sklearn.datasets import load_iris

    return torch.tensor(load_iris().data[:, 2:], dtype=torch.float64)


@pytest.fixture(scope="module")
def em_page(petals, tmp_path_factory):
    torch.set_default_dtype(torch.float64)
    try:
        fits = {f"K={k}": lvm.infer(gaussian_mixture, {"x": petals, "K": k}, method="em", n_init=2, seed=0)
                for k in (1, 2, 3)}
    finally:
        torch.set_default_dtype(torch.float32)
    best = min(fits, key=lambda k: fits[k].bic())
    path = build_report(fits[best], tmp_path_factory.mktemp("em_report"), title="petals", candidates=fits)
    return fits, best, path


@lvm.model
def normal_mean(x):
    mu = lvm.latent(dist.Normal(torch.zeros(2), 10.0).to_event(1))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0).to_event(1), x)


def _pngs(page):
    return [(alt, Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
            for alt, src in IMG.findall(page) if src.startswith("data:image/png;base64,")]


def _colours(image):
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def test_page_is_self_contained(em_page):
    page = em_page[2].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(?!data:)', page), "every resource is inline"
    sources = IMG.findall(page)
    # history, BIC/AIC, responsibilities
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for _, src in sources)
    for alt, png in _pngs(page):
        assert png.format == "PNG" and png.width >= 300 and png.height >= 200, alt
        colours = _colours(png)
        assert colours > 50, f"{alt}: {colours} colours, nearly blank"


def test_numbers_on_the_page_match_the_fits(em_page, petals):
    fits, best, path = em_page
    page = path.read_text()
    table = selection_table(fits)
    assert table.loc[best, "BIC"] == table["BIC"].min()
    # K=1 is one Gaussian: its maximum likelihood is the sample mean and the biased covariance (closed form)
    x = petals.numpy()
    exact = multivariate_normal(x.mean(0), np.cov(x.T, bias=True)).logpdf(x).sum()
    assert table.loc["K=1", "log-likelihood"] == pytest.approx(exact, rel=1e-6)
    # BIC = -2 log L + p log N with p = 5 for one 2-D Gaussian
    assert table.loc["K=1", "BIC"] == pytest.approx(-2 * exact + 5 * np.log(150), rel=1e-6)
    assert f"BIC chooses {best} (BIC {fits[best].bic():.1f})" in page
    assert f"Exact log-likelihood {fits[best].log_likelihood:.2f}" in page
    assert '<tr class="best"><td>' + best in page


def test_variational_report_has_ladder_and_posterior(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(100, 2) + torch.tensor([1.0, -2.0])
    fit = lvm.infer(normal_mean, x, method="svi", steps=150, lr=0.05, seed=0)
    page = build_report(fit, tmp_path, title="normal mean", diagnose_samples=50).read_text()
    captions = [alt for alt, _ in IMG.findall(page)]
    assert len(captions) == 3 and any("bound ladder" in c for c in captions)
    assert any("Marginal posteriors" in c for c in captions)
    assert "Pareto k-hat" in page and "IWAE_100" in page and "not drawn" not in page


def test_bad_arguments():
    with pytest.raises(ValueError, match="title"):
        Report("")
    with pytest.raises(TypeError, match="Result"):
        build_report({"not": "a result"}, ".")
    with pytest.raises(ValueError, match="at least one"):
        selection_table({})


def _chromium(tmp_path, *args):
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         *args],
        capture_output=True, text=True, timeout=900,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(em_page, tmp_path):
    # a copy of the page with a probe script that writes, after load, every image's natural size and source prefix
    # into the DOM; the rendering is the page's own. One Chromium run takes the screenshot and dumps the DOM.
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-sizes', "
              "Array.from(document.images).map(i => i.naturalWidth + 'x' + i.naturalHeight + ':' + "
              "i.src.slice(0, 22)).join(' ')));</script>")
    probe.write_text(em_page[2].read_text().replace("</body>", script + "</body>"))
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", "--dump-dom", probe.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    pixels = np.asarray(image)
    # measured: 4.8% of the pixels are not white (text, table rules, thin plot lines)
    assert (pixels < 250).any(axis=2).mean() > 0.02, "the screenshot is (nearly) blank"
    assert _colours(image) > 500, "figures bring many colours; text alone has few"

    sizes = re.search(r'data-sizes="([^"]*)"', proc.stdout)
    assert sizes, proc.stdout[-2000:]
    entries = sizes.group(1).split()
    assert len(entries) == 3
    for entry in entries:
        size, prefix = entry.split(":", 1)
        width, height = map(int, size.split("x"))
        assert width > 0 and height > 0 and prefix == "data:image/png;base64,"


def test_the_report_says_when_em_ran_every_iteration_as_asked():
    from ppl_lvm.models.mixtures import gaussian_mixture
    from ppl_lvm.report import describe_result

    x = torch.cat([torch.randn(30, 2, generator=torch.Generator().manual_seed(0)) + s for s in (-3.0, 3.0)])
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em", max_iter=3, tol=None)
    words = [text for _, text in describe_result(fit)]
    assert "EM ran all max_iter=3 iterations, as asked (tol=None: no convergence test)." in words
