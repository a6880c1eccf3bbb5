"""Label switching: fits whose components (mixtures) or states (hidden Markov chains) come out permuted align."""

import numpy as np
import pandas as pd
import pytest
import torch
from demo_data import THREE_CENTERS, clusters
from demo_models import ppca

import ppl_lvm as lvm
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.posterior.alignment import (
    align_draws,
    align_result,
    component_axes,
    component_count,
    match_components,
    permute,
    relabel,
)


def test_match_components_recovers_a_permutation_of_noisy_components():
    rng = np.random.default_rng(0)
    k = 5
    reference = {"locs": rng.normal(size=(k, 3)) * 5, "weights": rng.dirichlet(np.ones(k)),
                 "scales": rng.uniform(0.5, 2.0, size=(k, 3)), "noise_sd": np.array(0.3)}
    perm = rng.permutation(k)
    other = {n: permute(v, perm, component_axes(v, k)) + 0.01 * rng.normal(size=np.shape(v))
             for n, v in reference.items()}
    found = match_components(reference, other, k)
    # other[i] is reference[perm[i]], so reference component i sits at position argsort(perm)[i] of `other`
    np.testing.assert_array_equal(found, np.argsort(perm))
    np.testing.assert_allclose(permute(other["locs"], found, (0,)), reference["locs"], atol=0.05)


def test_component_axes_of_parameters_and_transition_matrices():
    assert component_axes(np.zeros((3, 2)), 3) == (0,)
    assert component_axes(np.zeros((2, 3)), 3) == ()  # leading size is not K
    assert component_axes(np.full((3, 3), 1 / 3), 3) == (0, 1)  # rows sum to one: a transition matrix
    assert component_axes(np.ones((3, 3)), 3) == (0,)
    assert component_axes(np.array(1.0), 3) == ()
    trans = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]])
    perm = np.array([2, 0, 1])
    moved = permute(torch.tensor(trans), perm, (0, 1)).numpy()
    # state i of the permuted chain is state perm[i] of the original: transitions follow both indices
    for i in range(3):
        for j in range(3):
            assert moved[i, j] == trans[perm[i], perm[j]]


def test_relabel_maps_assignments_and_keeps_padding():
    perm = np.array([2, 0, 1])  # reference component 0 is old label 2, ...
    labels = torch.tensor([[2, 0, 1, -1]])
    np.testing.assert_array_equal(relabel(labels, perm).numpy(), [[0, 1, 2, -1]])
    np.testing.assert_array_equal(relabel(np.array([1, 1, 2]), perm), [2, 2, 0])


def _three_clusters(seed=0, n=30):
    return clusters(THREE_CENTERS, n, seed=seed)


def test_em_fits_with_permuted_components_give_identical_aligned_summaries(float64):
    x = _three_clusters()
    start = {"weights": torch.ones(3) / 3, "locs": x[[0, 30, 60]].clone(), "scale_trils": torch.eye(2).repeat(3, 1, 1)}
    perm = [2, 0, 1]
    permuted = {n: v[perm] for n, v in start.items()}
    a = lvm.infer(gaussian_mixture, {"x": x, "K": 3}, method="em", init_params=start)
    b = lvm.infer(gaussian_mixture, {"x": x, "K": 3}, method="em", init_params=permuted)
    assert not torch.allclose(a.params["locs"], b.params["locs"], atol=1.0)  # the components came out permuted
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-12)
    aligned = align_result(b, a)
    pd.testing.assert_frame_equal(aligned.summary(), a.summary(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(aligned.responsibilities["z"], a.responsibilities["z"], rtol=0, atol=1e-9)
    torch.testing.assert_close(aligned.map_assignments()["z"], a.map_assignments()["z"])
    # the parameter store state is permuted too: the aligned fit scores the data as before
    torch.testing.assert_close(aligned.predict_proba(x), a.predict_proba(x), rtol=0, atol=1e-9)
    assert aligned.log_evidence() == b.log_evidence()
    # b itself is unchanged
    assert not torch.allclose(b.params["locs"], a.params["locs"], atol=1.0)


def test_hmm_states_of_permuted_em_fits_align_transitions_included(float64):
    g = torch.Generator().manual_seed(3)
    # two regimes (means -2 and +2) that persist: simulate a sticky chain
    sequences = []
    for n in (40, 35):
        state, rows = 0, []
        for _ in range(n):
            if torch.rand(1, generator=g) < 0.1:
                state = 1 - state
            rows.append(torch.randn(2, generator=g, dtype=torch.float64) + (4.0 * state - 2.0))
        sequences.append(torch.stack(rows))
    padded, lengths = pad_sequences(sequences)
    start = {"start": torch.tensor([0.6, 0.4]), "trans": torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
             "locs": torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), "scales": torch.ones(2, 2)}
    flipped = {"start": start["start"].flip(0), "trans": start["trans"].flip(0).flip(1),
               "locs": start["locs"].flip(0), "scales": start["scales"]}
    data = {"x": padded, "lengths": lengths, "K": 2}
    a = lvm.infer(gaussian_hmm, data, method="em", init_params=start, max_iter=50)
    b = lvm.infer(gaussian_hmm, data, method="em", init_params=flipped, max_iter=50)
    assert component_count(a) == 2
    assert a.params["locs"][0, 0] < 0 < b.params["locs"][0, 0]  # the states came out swapped
    aligned = align_result(b, a)
    pd.testing.assert_frame_equal(aligned.summary(), a.summary(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(aligned.params["trans"], a.params["trans"], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(aligned.map_assignments()["z"], a.map_assignments()["z"])


def test_component_count_of_variational_fits(float64):
    x = _three_clusters(n=5)
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 3, "covariance_type": "diag"}, method="svi", steps=2)
    assert component_count(fit) == 3
    g = torch.Generator().manual_seed(0)
    pca = lvm.infer(ppca, torch.randn(10, 3, generator=g, dtype=torch.float64), method="svi", steps=2)
    assert component_count(pca) is None
    with pytest.raises(ValueError, match="same number K"):
        align_result(pca, fit)


def test_align_draws_undoes_label_switching_within_draws():
    rng = np.random.default_rng(1)
    k, s = 3, 200
    locs = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    weights = np.array([0.2, 0.3, 0.5])
    draws = {"locs": locs + 0.3 * rng.normal(size=(s, k, 2)),
             "weights": weights + 0.02 * rng.normal(size=(s, k)),
             "noise": rng.normal(size=(s,))}
    switches = np.stack([rng.permutation(k) for _ in range(s)])
    switched = {"locs": np.stack([draws["locs"][i][switches[i]] for i in range(s)]),
                "weights": np.stack([draws["weights"][i][switches[i]] for i in range(s)]),
                "noise": draws["noise"]}
    # the switched draws' means are a blur of the three components
    assert np.abs(switched["locs"].mean(0) - locs).max() > 1.0
    aligned, perms = align_draws(switched, k)
    # every draw ends in one common labelling (the first draw's, up to one overall relabelling)
    overall = match_components({"locs": aligned["locs"].mean(0)}, {"locs": locs}, k)  # locs[overall[i]] ~ aligned i
    np.testing.assert_allclose(aligned["locs"], permute(draws["locs"], overall, (1,)), atol=0)
    np.testing.assert_allclose(aligned["weights"], permute(draws["weights"], overall, (1,)), atol=0)
    np.testing.assert_array_equal(aligned["noise"], draws["noise"])  # no component axis: untouched
    assert perms.shape == (s, k)
