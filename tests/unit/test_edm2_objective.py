"""EDM2Precond (preconditioning, labels, learned log-variance), the EDM2 loss through EDMLoss, and InvSqrtLR,
each against an independent computation of the paper's formulas."""

import math

import pytest
import torch
from torch import nn

from diffscale.diffusion.edm import EDM2Precond, EDMLoss
from diffscale.engine.lr_schedules import InvSqrtLR


class Recorder(nn.Module):
    """F = value everywhere; remembers what the preconditioner passed in."""

    def __init__(self, value: float, label_dim: int = 5):
        super().__init__()
        self.value, self.label_dim, self.seen = value, label_dim, None

    def forward(self, x, c_noise, labels):
        self.seen = (x, c_noise, labels)
        return torch.full_like(x, self.value)


def test_preconditioning_and_labels():
    x, sigma, sd = torch.randn(3, 2, 4, 4), torch.tensor([0.05, 1.0, 20.0]), 0.5
    net0, net1 = Recorder(0.0), Recorder(1.0)
    d0 = EDM2Precond(net0, sigma_data=sd)(x, sigma, torch.tensor([0, 3, 4]))
    d1 = EDM2Precond(net1, sigma_data=sd)(x, sigma, nn.functional.one_hot(torch.tensor([0, 3, 4]), 5).float())
    s = sigma[:, None, None, None]
    assert torch.allclose(d0, sd**2 / (s**2 + sd**2) * x)  # EDM Table 1: c_skip
    assert torch.allclose(d1 - d0, (s * sd / (s**2 + sd**2).sqrt()).expand_as(x))  # c_out
    x_in, c_noise, labels = net0.seen
    assert torch.allclose(x_in, x / (s**2 + sd**2).sqrt()) and torch.allclose(c_noise, sigma.log() / 4)
    assert torch.equal(labels, net1.seen[2]) and labels.argmax(1).tolist() == [0, 3, 4]
    EDM2Precond(net0)(x, sigma, None)
    assert net0.seen[2] is None  # the network substitutes its zero label


def test_logvar_is_mp_linear_of_mp_fourier():
    """u(sigma) = <w / ||w||, sqrt(2) cos(2 pi (f c + p))>, c = ln(sigma) / 4 (EDM2 eq. 21 and App. B.2)."""
    torch.manual_seed(0)
    model = EDM2Precond(Recorder(0.0), logvar_channels=64)
    sigma = torch.tensor([0.002, 0.3, 80.0])
    _, logvar = model(torch.zeros(3, 1, 2, 2), sigma, return_logvar=True)
    f = model.logvar_fourier.freqs.double() / (2 * math.pi)  # stored as 2 pi f and 2 pi p
    p = model.logvar_fourier.phases.double() / (2 * math.pi)
    feats = math.sqrt(2) * torch.cos(2 * math.pi * (torch.outer(sigma.double().log() / 4, f) + p))
    w = model.logvar_linear.weight.double().flatten()
    assert logvar.shape == (3,)
    assert torch.allclose(logvar.double(), feats @ (w / w.norm()), atol=1e-3)  # MPConv's eps = 1e-4


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_edm2_loss_and_its_optimal_logvar(reduction):
    """EDM2 (reference training loop): per element (lambda / e^u) (D - y)^2 + u, summed over an example's elements
    ('sum'), or its mean ('mean' = 'sum' / n). Either way the best u is ln(lambda * mean (D - y)^2)."""
    torch.manual_seed(0)
    model = EDM2Precond(Recorder(0.3))
    x, noise, sigma = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4), torch.tensor([0.1, 0.5, 2.0, 10.0])
    loss = EDMLoss(reduction=reduction).per_example(model, {"x": x}, {"sigma": sigma, "noise": noise})
    D, u = model(x + noise * sigma[:, None, None, None], sigma, None, return_logvar=True)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    per_elem = (lam[:, None] / u.exp()[:, None]) * (D - x).flatten(1) ** 2 + u[:, None]
    expected = per_elem.sum(1) if reduction == "sum" else per_elem.mean(1)
    assert torch.allclose(loss, expected, rtol=1e-5)
    # d/du of the loss vanishes at u* = ln(lambda mean (D - y)^2).
    u_star = (lam * (D - x).flatten(1).square().mean(1)).log().detach().requires_grad_()
    fixed = EDM2Precond(Recorder(0.3))
    fixed.forward = lambda *a, **k: (D.detach(), u_star)
    EDMLoss(reduction=reduction).per_example(fixed, {"x": x}, {"sigma": sigma, "noise": noise}).sum().backward()
    assert u_star.grad.abs().max() < 1e-4


def test_loss_trains_the_logvar_layer():
    model = EDM2Precond(Recorder(0.0))
    objective = EDMLoss(reduction="sum")
    phase = objective.phases(0)[0]
    out = objective(phase, {"model": model}, {"x": torch.randn(4, 2, 4, 4)}, torch.Generator().manual_seed(0))
    out.loss.mean().backward()
    assert model.logvar_linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("ref_iters", "rampup_iters"), [(70_000, 4883), (1000, 0), (50, 200)])
def test_inv_sqrt_lr_matches_edm2(ref_iters, rampup_iters):
    """EDM2 eq. 16: lr_ref / sqrt(max(t / t_ref, 1)), times a linear ramp min(t / t_rampup, 1); t counts the
    optimizer step being taken from 1 (EDM2's code counts images seen before it, so its first step has lr 0)."""
    schedule = InvSqrtLR(ref_iters=ref_iters, rampup_iters=rampup_iters)
    for step in [0, 1, 10, rampup_iters - 1, rampup_iters, ref_iters - 1, ref_iters, 4 * ref_iters - 1, 10**6]:
        if step < 0:
            continue
        t = step + 1
        ramp = min(t / rampup_iters, 1.0) if rampup_iters else 1.0
        assert schedule.factor(step) == pytest.approx(ramp / math.sqrt(max(t / ref_iters, 1.0)), rel=1e-12)
    assert schedule.factor(4 * ref_iters - 1) == pytest.approx(0.5)  # a quarter of the way: half the rate
