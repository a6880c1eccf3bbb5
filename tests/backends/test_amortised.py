import pytest
import torch
from demo_models import Encoder

import ppl_lvm as lvm
from ppl_lvm import dist

decoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
encoder = Encoder(d=8, hidden=16)


@lvm.model
def vae(x):
    lvm.module(decoder)
    with lvm.plate(len(x)) as rows:  # noqa: F841 - names the plate
        z = lvm.latent(dist.Normal(torch.zeros(2), 1.0).to_event(1))
        lvm.observe(dist.Bernoulli(logits=decoder(z)).to_event(1), x)


@vae.guide
def vae_guide(x):
    lvm.module(encoder)
    loc, scale = encoder(x)
    with lvm.plate(len(x)) as rows:  # noqa: F841 - names the plate
        z = lvm.latent(dist.Normal(loc, scale).to_event(1))
    return z


@pytest.fixture(autouse=True)
def fresh_networks():
    """The module's networks are trained in place: each test starts them from the same initialisation, whatever
    ran before it on the same worker."""
    torch.manual_seed(0)
    for net in (decoder, encoder):
        for layer in net.modules():
            if layer is not net and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()


@pytest.fixture
def binary_data():
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(3, 8, generator=g) > 0.5).float()
    rows = prototypes[torch.randint(0, 3, (300,), generator=g)]
    flips = torch.rand(300, 8, generator=g) < 0.05
    return torch.where(flips, 1 - rows, rows)


def test_user_guide_with_an_encoder_trains_and_minibatches(binary_data):
    fit = lvm.infer(vae, binary_data, method="svi", steps=400, lr=0.01, batch_size=50, seed=0)
    assert fit.guide_name.startswith("user guide vae_guide")
    assert "encoder$$$net.0.weight" in fit.params and "decoder$$$0.weight" in fit.params
    early, late = fit.losses[:50].mean(), fit.losses[-50:].mean()
    assert late < 0.8 * early  # measured: ~1080 -> ~780 nats (300 rows x 8 bits from 3 noisy prototypes)
    draws = fit.sample_posterior(7)
    assert draws["z"].shape == (7, 300, 2)


def test_amortized_normal_with_iwae_and_kl_warmup(binary_data):
    def fit(steps):
        torch.manual_seed(0)  # the same encoder and decoder initialisation for both fits
        for layer in decoder:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        return lvm.infer(vae, binary_data, method="iwae", guide=lvm.AmortizedNormal(Encoder(d=8, hidden=16), site="z"),
                         num_particles=5, steps=steps, lr=0.01, batch_size=100, beta=lvm.linear_warmup(100), seed=0)

    start, trained = fit(1), fit(400)
    assert trained.guide_name == "amortised normal over 'z'"
    # the importance-weighted bound on log p(x) (K=50, full data) rises with training
    assert trained.log_evidence(num_particles=50, seed=0) > start.log_evidence(num_particles=50, seed=0) + 100


def test_amortized_normal_names_a_missing_site(binary_data):
    with pytest.raises(ValueError, match=r"no latent site 'w'; its latents: \['z'\]"):
        lvm.infer(vae, binary_data, guide=lvm.AmortizedNormal(Encoder(d=8, hidden=16), site="w"), steps=1)
