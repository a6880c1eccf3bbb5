"""On Pyro's path (``fast_path=False``) a fit takes the steps of the same model hand-written in Pyro: the same
losses to the bit, with minibatches, and the fit loop's own work per step leaves Pyro's numbers alone.

Measured over seeds 0-4: the largest difference of the two loss curves is 0.0 for every seed."""

import copy

import pyro
import pyro.distributions as pdist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import ppl_lvm as lvm
from ppl_lvm import dist

N, D, L, BATCH, STEPS = 60, 6, 2, 20, 12


def _nets(seed):
    torch.manual_seed(100 + seed)
    encoder = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 2 * L))
    decoder = nn.Sequential(nn.Linear(L, 8), nn.Tanh(), nn.Linear(8, D))
    return encoder, decoder


def _dsl(x, encoder, decoder, seed):
    @lvm.model
    def model(x):
        lvm.module(decoder, name="decoder")
        with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
            z = lvm.latent(dist.Normal(x.new_zeros(L), x.new_ones(L)).to_event(1))
            lvm.observe(dist.Bernoulli(logits=decoder(z)).to_event(1), x)

    @model.guide
    def guide(x):
        lvm.module(encoder, name="encoder")
        loc, log_scale = encoder(x).chunk(2, -1)
        with lvm.plate(len(x)) as data:  # noqa: F841
            z = lvm.latent(dist.Normal(loc, log_scale.exp()).to_event(1))  # noqa: F841

    fit = lvm.infer(model, x, method="svi", estimator="standard", fast_path=False, batch_size=BATCH, lr=1e-2,
                    steps=STEPS, seed=seed, anneal=0, progress=False, callbacks=[lambda state: False])
    assert fit.options["fast_path"] is False
    return list(fit.losses)


def _pyro(x, encoder, decoder, seed):
    def model(x_batch, idx):
        pyro.module("decoder", decoder)
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", pdist.Normal(x_batch.new_zeros(L), x_batch.new_ones(L)).to_event(1))
            pyro.sample("x", pdist.Bernoulli(logits=decoder(z)).to_event(1), obs=x_batch)

    def guide(x_batch, idx):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x_batch).chunk(2, -1)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("z", pdist.Normal(loc, log_scale.exp()).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(max_plate_nesting=1))
    generator, order, cursor, losses = torch.Generator().manual_seed(seed), None, 0, []
    for _ in range(STEPS):  # the fit loop's minibatches: a seeded permutation per pass, the last partial one dropped
        if order is None or cursor + BATCH > N:
            order, cursor = torch.randperm(N, generator=generator), 0
        idx = order[cursor:cursor + BATCH]
        cursor += BATCH
        losses.append(svi.step(x.index_select(0, idx), idx))
    pyro.clear_param_store()
    return losses


@pytest.mark.parametrize("seed", range(5))
def test_pyros_path_takes_the_steps_of_the_model_hand_written_in_pyro(seed):
    x = torch.bernoulli(torch.full((N, D), 0.4), generator=torch.Generator().manual_seed(seed))
    encoder, decoder = _nets(seed)
    state = copy.deepcopy((encoder.state_dict(), decoder.state_dict()))
    dsl = _dsl(x, encoder, decoder, seed)
    encoder.load_state_dict(state[0])
    decoder.load_state_dict(state[1])
    hand = _pyro(x, encoder, decoder, seed)
    assert dsl == hand  # to the bit


OPTIMIZERS = {"adam": pyro.optim.Adam, "clippedadam": pyro.optim.ClippedAdam, "adamw": pyro.optim.AdamW,
              "sgd": pyro.optim.SGD, "rmsprop": pyro.optim.RMSprop, "adagrad": pyro.optim.Adagrad}


@lvm.model
def _late(x):
    loc = lvm.param(lambda: torch.zeros(()))
    shift = lvm.param(lambda: torch.zeros(()), name="shift") if float(loc.detach()) > 0.05 else 0.0  # joins from step 2
    with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
        z = lvm.latent(dist.Normal(loc, 1.0))
        lvm.observe(dist.Normal(z + shift, 1.0), x)


@_late.guide
def _late_guide(x):
    q_loc = lvm.param(lambda: torch.zeros(len(x)))
    q_scale = lvm.param(lambda: torch.ones(len(x)), constraint=lvm.constraints.positive)
    with lvm.plate(len(x)) as data:  # noqa: F841
        z = lvm.latent(dist.Normal(q_loc, q_scale))  # noqa: F841


def _late_by_pyro(x, optimizer, clip_norm, steps):
    def model(x):
        loc = pyro.param("loc", lambda: torch.zeros(()))
        shift = pyro.param("shift", lambda: torch.zeros(())) if float(loc.detach()) > 0.05 else 0.0
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pdist.Normal(loc, 1.0))
            pyro.sample("x", pdist.Normal(z + shift, 1.0), obs=x)

    def guide(x):
        q_loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
        q_scale = pyro.param("q_scale", lambda: torch.ones(len(x)), constraint=pdist.constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", pdist.Normal(q_loc, q_scale))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if clip_norm is None:
        optim = OPTIMIZERS[optimizer]({"lr": 0.05})
    elif optimizer == "clippedadam":
        optim = OPTIMIZERS[optimizer]({"lr": 0.05, "clip_norm": clip_norm})
    else:
        optim = OPTIMIZERS[optimizer]({"lr": 0.05}, clip_args={"clip_norm": clip_norm})
    svi = SVI(model, guide, optim, Trace_ELBO())
    losses = [svi.step(x) for _ in range(steps)]
    shift = float(pyro.param("shift").detach())
    pyro.clear_param_store()
    return losses, shift


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_one_optimiser_over_every_parameter_takes_pyros_per_parameter_steps(optimizer, clip_norm, float64):
    # Pyro's path steps all the parameters with one torch optimiser after the first step, and a parameter the model
    # first makes at a later step joins it: the losses of Pyro's SVI with its per-parameter optimisers, to the bit
    x = torch.randn(40, generator=torch.Generator().manual_seed(0)) + 2.0
    fit = lvm.infer(_late, x, method="svi", estimator="standard", fast_path=False, lr=0.05, steps=25, seed=0,
                    anneal=0, optimizer=optimizer, clip_norm=clip_norm, progress=False, callbacks=[lambda s: False])
    losses, shift = _late_by_pyro(x, optimizer, clip_norm, 25)
    assert "shift" in fit.params and shift != 0.0  # it joined and was stepped
    assert list(fit.losses) == losses
    assert float(fit.params["shift"]) == shift
