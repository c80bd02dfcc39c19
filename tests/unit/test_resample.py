"""Improved DDPM's loss-second-moment timestep sampler (diffusion/resample.py) against a sequential reference."""

import numpy as np
import pytest
import torch

from diffscale.diffusion.ddpm import DDPMLoss
from diffscale.diffusion.resample import LossSecondMomentResampler
from diffscale.errors import ConfigError


class ListReference:
    """The sampler's rule written the slow, obvious way: a list of the last K losses per t, appended one by one."""

    def __init__(self, T, K, uniform_prob):
        self.T, self.K, self.u = T, K, uniform_prob
        self.hist = [[] for _ in range(T)]

    def update(self, ts, losses):
        for t, loss in zip(ts, losses, strict=True):
            if not np.isfinite(loss):
                continue
            self.hist[t] = (self.hist[t] + [loss])[-self.K:]

    def weights(self):
        if any(len(h) < self.K for h in self.hist):
            return np.full(self.T, 1 / self.T)
        w = np.sqrt(np.mean(np.array(self.hist) ** 2, axis=1))
        return w / w.sum() * (1 - self.u) + self.u / self.T


def test_ring_buffer_matches_the_sequential_rule_with_duplicates_and_nonfinite():
    T, K = 7, 4
    rs = LossSecondMomentResampler(T, K, uniform_prob=0.01)
    ref = ListReference(T, K, 0.01)
    rng = np.random.default_rng(0)
    for step in range(40):
        n = int(rng.integers(1, 30))  # often more than K pairs of one t in a single update
        ts = rng.integers(0, T, n)
        losses = rng.exponential(1.0, n) * (ts + 1)
        if step % 7 == 3:
            losses[0] = np.nan
        rs.update(torch.from_numpy(ts), torch.from_numpy(losses), gather=False)
        ref.update(ts.tolist(), losses.tolist())
        for t in range(T):
            held = rs.history[t, : int(rs.count[t])].numpy()
            assert sorted(held.tolist()) == pytest.approx(sorted(ref.hist[t]))
        assert np.allclose(rs.weights().numpy(), ref.weights(), rtol=1e-12)


def test_uniform_until_every_t_has_K_losses():
    rs = LossSecondMomentResampler(5, 3)
    for t in range(5):
        rs.update(torch.full((3 if t < 4 else 2,), t), torch.full((3 if t < 4 else 2,), float(t + 1)), gather=False)
    assert torch.equal(rs.weights(), torch.full((5,), 0.2, dtype=torch.float64))
    rs.update(torch.tensor([4]), torch.tensor([5.0]), gather=False)
    assert not torch.allclose(rs.weights(), torch.full((5,), 0.2, dtype=torch.float64))


def test_p_converges_to_the_normalised_root_second_moment():
    """Losses with a known law per t (L_t = c_t * lognormal(0, 0.1)): after training-like use (draw t from the
    sampler, feed the losses back) p_t is sqrt(E[L_t^2]) normalised and mixed with uniform, up to the noise of
    a 10-loss history: the root mean square of 10 such losses has a relative std of about 3.2%, so every t is
    within 12% (3.7 std) and the mean deviation under 3.5%. Uniform p is off by up to a factor 20 here.
    The run is seeded: the check is exact to repeat."""
    T, K, u = 50, 10, 0.001
    c = np.linspace(0.05, 1.0, T)  # per-t scale
    rs = LossSecondMomentResampler(T, K, u)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(1)
    for _ in range(400):
        t, w = rs.sample(256, torch.device("cpu"), gen)
        losses = c[t.numpy()] * np.exp(rng.normal(0.0, 0.1, 256))
        rs.update(t, torch.from_numpy(losses), gather=False)
    root_second = c * np.exp(0.1**2)  # sqrt(E[(c e^N(0, .01))^2]) = c e^{0.01}
    expected = root_second / root_second.sum() * (1 - u) + u / T
    p = rs.weights().numpy()
    assert np.abs(p / expected - 1).max() < 0.12 and np.abs(p / expected - 1).mean() < 0.035
    assert np.abs(np.full(T, 1 / T) / expected - 1).max() > 5  # what uniform would give
    # draws follow p, and the weights 1 / (T p_t) keep the uniform-t mean of any per-t quantity
    t, w = rs.sample(400000, torch.device("cpu"), gen)
    freq = np.bincount(t.numpy(), minlength=T) / 400000
    assert np.abs(freq / p - 1).max() < 0.1
    f = np.sin(np.arange(T)) + 2
    assert float((w.double() * torch.from_numpy(f[t.numpy()])).mean()) == pytest.approx(f.mean(), rel=5e-3)


def test_state_round_trip_and_shape_check():
    rs = LossSecondMomentResampler(6, 2)
    rs.update(torch.tensor([0, 1, 1, 2, 5, 5, 5]), torch.arange(7.0), gather=False)
    fresh = LossSecondMomentResampler(6, 2)
    fresh.load_state_dict(rs.state_dict())
    for a, b in zip((rs.history[:-1], rs.count[:-1], rs.ptr[:-1]), (fresh.history[:-1], fresh.count[:-1],
                                                                   fresh.ptr[:-1]), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="history"):
        LossSecondMomentResampler(7, 2).load_state_dict(rs.state_dict())


def test_objective_records_unweighted_losses_and_saves_the_history():
    from diffscale.diffusion.base import Phase

    phase = Phase("train", ("model",))
    obj = DDPMLoss(num_timesteps=8, variance="fixed_small", loss="simple", importance_sampling=True,
                   history_per_term=2)
    model = lambda x_t, t, labels: torch.zeros_like(x_t)  # noqa: E731  the loss is mean(noise^2): known
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the first step fills every history (64 pairs over 8 timesteps); then p is not uniform
        x = torch.randn(64, 2, generator=gen)
        cond = obj.sample_condition(x, gen)
        out = obj(phase, {"model": model}, {"x": x, "cond": cond}, gen)
        obj.after_step(phase, out)
    unweighted = cond["noise"].pow(2).mean(1).double()
    assert not torch.allclose(cond["weight"], torch.ones(64))  # importance weights are in use
    assert torch.allclose(out.loss, unweighted.float() * cond["weight"])
    state = obj.state_dict()["resampler"]
    assert int(state["count"].sum()) == 16
    for t in range(8):  # each history holds the last two unweighted losses of its t
        last_two = unweighted[cond["t"] == t][-2:]
        if len(last_two) == 2:
            assert sorted(state["history"][t].tolist()) == pytest.approx(sorted(last_two.tolist()))
    assert DDPMLoss(num_timesteps=8, variance="fixed_small", loss="simple").state_dict() == {}
    with pytest.raises(ConfigError, match="importance_sampling"):
        obj.load_state_dict({})
