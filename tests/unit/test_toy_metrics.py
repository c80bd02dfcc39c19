"""Toy metrics: the exact denoiser scores near-perfectly, a collapsed or wrong denoiser does not."""

import torch

from diffscale.data.toy import tree_mixture
from diffscale.evaluation.toy_metrics import exact_denoiser, support_share, toy_metrics


def test_exact_denoiser_is_near_perfect_and_a_constant_one_is_not():
    mixture = tree_mixture()
    exact = exact_denoiser(mixture)
    good = toy_metrics(exact, mixture, num_samples=600, grid=64)
    assert all(good[k] < 1e-4 for k in good if k.startswith("denoise_l2"))
    assert good["class_accuracy"] > 0.97
    true, _ = mixture.sample(600, torch.Generator().manual_seed(7))
    assert abs(good["support_share"] - support_share(true, mixture, grid=64)) < 0.1  # as spread as true data
    zero = lambda x, s, c: torch.zeros_like(x)  # denoises everything to the origin: collapse
    bad = toy_metrics(zero, mixture, num_samples=600, grid=64)
    assert bad["support_share"] < 0.01
    assert all(bad[k] > good[k] for k in good if k.startswith("loss_sigma"))
    assert bad["outer_loss"] > 10 * good["outer_loss"]


def test_support_share_counts_cells_not_samples():
    mixture = tree_mixture()
    true, _ = mixture.sample(2000, torch.Generator().manual_seed(0))
    spread = support_share(true, mixture, grid=64)
    collapsed = support_share(true[:1].repeat(2000, 1), mixture, grid=64)  # every sample on one true point
    assert spread > 0.5 and collapsed < 0.002


def test_guidance_weight_one_is_the_plain_denoiser():
    mixture = tree_mixture()
    exact = exact_denoiser(mixture)
    zero = lambda x, s, c: torch.zeros_like(x)
    plain = toy_metrics(exact, mixture, num_samples=200, grid=32, sigmas=(0.1,))
    same = toy_metrics(exact, mixture, guide=zero, weight=1.0, num_samples=200, grid=32, sigmas=(0.1,))
    assert plain == same
    other = toy_metrics(exact, mixture, guide=zero, weight=3.0, num_samples=200, grid=32, sigmas=(0.1,))
    assert other["denoise_l2_sigma_0.1"] > plain["denoise_l2_sigma_0.1"]
