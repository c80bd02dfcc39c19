"""Selectors: the contract for every registered one; JEST against a direct implementation of the
conditional-logit formula on the full score matrix."""

import pytest
import torch

from diffscale import registry as R
from diffscale.registry import SELECTORS, build
from diffscale.selection.jest import chunk_sizes
from diffscale.selection.jest_direct import direct_jest

NAMES = R.names(SELECTORS)


def losses(B: int, seed: int = 0, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, generator=gen) * scale, torch.rand(B, generator=gen) * scale


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    selector = build(SELECTORS, dict(type=name), "selector")
    learner, ref = losses(100)
    idx = selector(learner, ref if selector.needs_ref else None, 30, torch.Generator().manual_seed(1))
    assert idx.dtype == torch.long and idx.shape == (30,) and idx.device == learner.device
    assert idx.unique().numel() == 30 and 0 <= idx.min() and idx.max() < 100
    again = selector(learner, ref if selector.needs_ref else None, 30, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)  # deterministic under a seeded generator
    assert selector(learner, ref, 100, torch.Generator().manual_seed(2)).sort().values.tolist() == list(range(100))


@pytest.mark.parametrize("name", NAMES)
def test_contract_errors(name):
    selector = build(SELECTORS, dict(type=name), "selector")
    learner, ref = losses(10)
    with pytest.raises(ValueError, match="n_select"):
        selector(learner, ref, 11)
    if selector.needs_ref:
        with pytest.raises(ValueError, match="needs ref_loss"):
            selector(learner, None, 3)


@pytest.mark.parametrize("score", ["learnability", "easy_reference", "inverted"])
def test_jest_frequencies_match_direct_formula(score):
    """Each example's selection frequency over 8,000 draws (B = 10, 5 kept in 3 chunks) matches the direct
    implementation. Tolerance: 5 standard errors of a difference of two frequencies, 5 * sqrt(2 * 0.25 / N)."""
    B, n, chunks, trials = 10, 5, 3, 8_000
    learner, ref = torch.tensor([0.1, 2.0, 0.5, 1.5, 3.0, 0.2, 1.0, 2.5, 0.8, 1.2]), torch.linspace(0.2, 2.0, B)
    selector = build(SELECTORS, dict(type="jest", n_chunks=chunks, score=score), "selector")
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    ours, direct = torch.zeros(B), torch.zeros(B)
    for _ in range(trials):
        ours[selector(learner, ref, n, gen_a)] += 1
        direct[direct_jest(learner, ref, n, chunks, score, gen_b)] += 1
    tolerance = 5 * (2 * 0.25 / trials) ** 0.5
    assert (ours / trials - direct / trials).abs().max().item() < tolerance
    assert (ours / trials).std() > 0.05  # scores matter: frequencies are far from uniform (all 0.5)


def test_jest_is_stable_for_huge_losses():
    learner, ref = losses(1000, scale=1e30)
    idx = build(SELECTORS, dict(type="jest"), "selector")(learner, ref, 200, torch.Generator().manual_seed(0))
    assert idx.unique().numel() == 200


@pytest.mark.parametrize("name", ["jest", "learnability_topk"])
def test_selected_learnability_beats_random(name):
    selector = build(SELECTORS, dict(type=name), "selector")
    rand = build(SELECTORS, dict(type="random"), "selector")
    gain = []
    for seed in range(50):
        learner, ref = losses(512, seed)
        gen = torch.Generator().manual_seed(seed)
        learnability = learner - ref
        gain.append(learnability[selector(learner, ref, 102, gen)].mean()
                    - learnability[rand(learner, ref, 102, gen)].mean())
    gain = torch.stack(gain)
    # Positive by more than 4 standard errors over 50 independent super-batches.
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5


def test_chunk_sizes_cover_n_select():
    assert chunk_sizes(10, 3) == [4, 3, 3] and chunk_sizes(2, 8) == [1, 1] and sum(chunk_sizes(2048, 8)) == 2048
