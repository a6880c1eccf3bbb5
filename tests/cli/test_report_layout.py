"""The report's layout in headless Chromium: no text runs over other text, and the page is never wider than the window.

Three pages: a Gaussian mixture on the 30 columns of the (standardised) breast-cancer data, a Gaussian HMM on two
sequences and a VAE on binarised digits trained with the IWAE bound. A copy of each page gets a probe script that,
after load, opens every <details>, takes the client rectangles of every text node (clipped to the boxes of scrolling
ancestors, so text scrolled out of sight does not count) and of every image, and writes the pairs that overlap by
more than one pixel each way, with the page's scroll width, into the DOM; ``--dump-dom`` returns it.
"""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.models.vae import VAE
from ppl_lvm.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")

PROBE = """<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const clip = (el, r) => {
    let x0 = r.left, y0 = r.top, x1 = r.right, y1 = r.bottom;
    for (let a = el; a && a !== document.documentElement; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
        const c = a.getBoundingClientRect();
        x0 = Math.max(x0, c.left); y0 = Math.max(y0, c.top); x1 = Math.min(x1, c.right); y1 = Math.min(y1, c.bottom);
      }
    }
    return [x0, y0, x1, y1];
  };
  const boxes = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let node, id = 0;
  while ((node = walker.nextNode())) {
    const text = node.textContent.trim();
    if (!text || node.parentElement.closest('style,script')) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const r of range.getClientRects()) {
      const b = clip(node.parentElement, r);
      if (b[2] - b[0] > 0.5 && b[3] - b[1] > 0.5) boxes.push({id: id, b: b, text: text.slice(0, 60)});
    }
    id++;
  }
  for (const img of document.images) {
    const b = clip(img, img.getBoundingClientRect());
    if (b[2] - b[0] > 0.5 && b[3] - b[1] > 0.5) boxes.push({id: id, b: b, text: 'image: ' + img.alt.slice(0, 50)});
    id++;
  }
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const p = boxes[i], q = boxes[j];
      if (p.id === q.id) continue;
      const w = Math.min(p.b[2], q.b[2]) - Math.max(p.b[0], q.b[0]);
      const h = Math.min(p.b[3], q.b[3]) - Math.max(p.b[1], q.b[1]);
      if (w > 1 && h > 1) overlaps.push([p.text, q.text, Math.round(w), Math.round(h)]);
    }
  }
  const out = document.createElement('pre');
  out.id = 'layout-probe';
  out.style.display = 'none';
  out.textContent = JSON.stringify({texts: boxes.length, images: document.images.length, overlaps: overlaps,
    scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth});
  document.body.appendChild(out);
});
</script>"""


def _layout(page, tmp_path, width):
    probe = tmp_path / f"probe_{width}.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / f'profile_{width}'}",
            f"--window-size={width},2000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = re.search(r'<pre id="layout-probe"[^>]*>([^<]*)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _check(layout, images):
    assert layout["images"] == images
    assert layout["texts"] > 50, "the probe found (nearly) no text"
    assert layout["overlaps"] == [], f"text running over text: {layout['overlaps'][:5]}"
    assert layout["scrollWidth"] <= layout["clientWidth"], f"the page is wider than the window: {layout}"


@pytest.fixture(scope="module")
def cancer_page(tmp_path_factory):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    frame = pd.DataFrame(x, columns=data.feature_names)
    torch.set_default_dtype(torch.float64)
    try:
        fit = lvm.infer(gaussian_mixture, {"x": frame, "K": 2, "covariance_type": "diag"}, method="em", seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    return fit, x, build_report(fit, tmp_path_factory.mktemp("cancer"), title="30 columns")


@pytest.fixture(scope="module")
def hmm_page(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    sequences = []
    for n in (60, 40):
        state = (torch.arange(n) // 10) % 2
        sequences.append(torch.randn(n, 2, generator=generator, dtype=torch.float64) + 3.0 * state[:, None].double())
    x, lengths = pad_sequences(sequences)
    fit = lvm.infer(gaussian_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em", max_iter=50, seed=0)
    return fit, build_report(fit, tmp_path_factory.mktemp("hmm"), title="two regimes")


@pytest.fixture(scope="module")
def vae_page(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:200] > 7, dtype=torch.float32)
    torch.manual_seed(0)
    vae = VAE(64, latent_dim=2, hidden=32)
    fit = lvm.infer(
        vae.model, x, method="iwae", guide=vae.guide, batch_size=100, lr=1e-2, steps=40, num_particles=5, seed=0
    )
    return fit, build_report(
        fit, tmp_path_factory.mktemp("vae"), title="digits", labels=digits.target[:200], diagnose_samples=50
    )


# the layouts were checked over the seeds 0..4 of each fit (and of the VAE's initialisation): no overlap, no page wider
# than the window at 1280 and 800 pixels on any of them
def test_thirty_columns_wrap_and_the_page_fits_the_window(cancer_page, tmp_path):
    _, _, page = cancer_page
    for width in (1280, 800):
        _check(_layout(page, tmp_path, width), images=2)


def test_hmm_page_layout(hmm_page, tmp_path):
    _check(_layout(hmm_page[1], tmp_path, 1280), images=4)  # history, two Viterbi paths, transition matrix


def test_vae_page_layout(vae_page, tmp_path):
    _check(_layout(vae_page[1], tmp_path, 1280), images=3)  # loss, bound ladder, latent space


def test_thirty_columns_are_drawn_on_their_principal_components(cancer_page):
    from sklearn.decomposition import PCA

    fit, x, page = cancer_page
    text = page.read_text()
    share = PCA(2).fit(x).explained_variance_ratio_ * 100  # an independent PCA of the same data
    assert (
        f"The 30 standardised data columns on their first two principal components, which explain "
        f"{share[0]:.1f}% and {share[1]:.1f}% of the variance ({share.sum():.1f}% together)"
    ) in text
    assert "columns of x (30)" in text and "worst fractal dimension" in text
    assert "white-space: nowrap" not in text.split("table.facts", 1)[1].split("}", 1)[0]


def test_hmm_page_names_its_parts(hmm_page):
    fit, page = hmm_page
    text = page.read_text()
    assert "Viterbi path" in text and "Transition matrix" in text and "Hidden Markov chain" in text
    assert "the emission mean of each state" in text
    # both sequences start in the same state, so the start probabilities sit on the boundary: the summary's warning
    # about their standard errors is shown in words, not lost
    assert "While summarising the fit:" in text
    assert "Total log-likelihood (summed over the 100 data points) per EM iteration" in text


def test_vae_page_is_honest_about_its_bound(vae_page):
    fit, page = vae_page
    text = page.read_text()
    assert "negative IWAE bound (K=5)" in text and "negative ELBO" not in text
    assert "model of VAE (ppl_lvm.models.vae)" in text and "user guide guide" not in text
    assert "the user&#39;s guide() of VAE: q(z | x) = N(encoder(x))" in text
    assert "model: model" not in text
    assert np.isfinite(fit.elbo)
