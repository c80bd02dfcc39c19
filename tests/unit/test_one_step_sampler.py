"""OneStepSampler (sampling/one_step.py): one call of the generator at sigma_max; no guide."""

import pytest
import torch

from diffscale.diffusion.edm import EDMPrecond
from diffscale.registry import SAMPLERS, build
from diffscale.sampling.one_step import OneStepSampler


def toy_net() -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=16, num_layers=2),
                      sigma_data=0.5, label_dim=2).eval()


@pytest.mark.parametrize("sigma_max", [80.0, 5.0])
def test_samples_are_one_generator_call_at_sigma_max(sigma_max):
    net, z = toy_net(), torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(64) % 2
    samples = OneStepSampler(sigma_max=sigma_max)(net, z, labels)
    with torch.no_grad():
        expected = net(z * sigma_max, torch.full((64,), sigma_max), labels)
    assert samples.shape == (64, 2) and samples.dtype == torch.float32 and not samples.requires_grad
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)
    # Different labels give different samples: the labels reach the generator.
    assert not torch.equal(samples, OneStepSampler(sigma_max=sigma_max)(net, z, 1 - labels))


def test_rejects_a_guide_and_reports_no_guidance():
    sampler = build(SAMPLERS, dict(type="OneStepSampler", sigma_max=5.0), "test_cfg.sampler")
    assert isinstance(sampler, OneStepSampler) and sampler.guidance == 1.0
    net = toy_net()
    with pytest.raises(ValueError, match="no guide"):
        sampler(net, torch.zeros(4, 2), guide=net)
