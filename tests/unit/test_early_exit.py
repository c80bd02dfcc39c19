"""DeeDiff early exit (sampling/early_exit.py) and its cost accounting (evaluation/flops.py): real exit (rows leave
the batch) against the seed's simulated exit, the thresholds' limits against the plain samplers, batch
independence, the exit record's layout, and the per-exit FLOP table against a count from module shapes."""

import pytest
import torch

from diffscale import registry as R
from diffscale.errors import ConfigError
from diffscale.evaluation.flops import deediff_piece_flops, exit_cost_summary, exit_gflops_table, forward_flops
from diffscale.models.deediff import DeeDiffUViT
from diffscale.sampling.ddpm import DDIMSampler, DDPMSampler
from diffscale.sampling.early_exit import EarlyExitDDIMSampler, EarlyExitDDPMSampler

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

B = 8
MIXED = 0.5  # the threshold at which the shaped probes below send samples out at different layers
KINDS = {  # (early-exit sampler, plain sampler, arguments): respaced ancestral DDPM and stochastic DDIM
    "ddpm": (EarlyExitDDPMSampler, DDPMSampler, dict(num_timesteps=1000, num_steps=6)),
    "ddim": (EarlyExitDDIMSampler, DDIMSampler, dict(num_timesteps=1000, num_steps=6, eta=1.0)),
}


def batch(n: int = B) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    noise = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return noise, torch.arange(n) % 10, torch.arange(100, 100 + n)  # noise, labels, seeds


@torch.no_grad()
def shaped_net() -> DeeDiffUViT:
    """The tiny preset with attention probes whose logit, on `batch()` at t = 800, has mean 3 - 1.5 i at exit i and
    std 1.5 over the samples: at threshold 0.5 (logit 0) samples leave at different layers and steps."""
    torch.manual_seed(0)
    net = DeeDiffUViT("tiny", classifier_type="attention_probe").eval()
    noise, labels, _ = batch()
    seen = {}
    hooks = [p.classification[-1].register_forward_hook(
        lambda m, inputs, out, i=i: seen.__setitem__(i, out[:, 0] - m.bias)) for i, p in enumerate(net.probes)]
    net.forward_exits(noise, torch.full((B,), 800.0), labels)
    for h in hooks:
        h.remove()
    for i, p in enumerate(net.probes):
        scale = 1.5 / seen[i].std()
        p.classification[-1].weight.mul_(scale)
        p.classification[-1].bias.fill_(3.0 - 1.5 * i - float(scale * seen[i].mean()))
    return net


@torch.no_grad()
def bank_net() -> DeeDiffUViT:
    """The tiny preset with a probe per (layer, timestep) (10 timestep bins), weights x3: u varies between samples
    around 0.35..0.75, so threshold 0.45 mixes exits, and each active row must use its own timestep's probe."""
    torch.manual_seed(0)
    net = DeeDiffUViT("tiny", classifier_type="mlp_probe_per_layer_per_timestep", num_timesteps=10).eval()
    net.probes.weight.mul_(3.0)
    return net


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[DeeDiffUViT, float]]:
    """name -> (network, a threshold that mixes exits across samples and layers)."""
    return {"attention": (shaped_net(), MIXED), "bank": (bank_net(), 0.45)}


@pytest.fixture(scope="module")
def net(nets) -> DeeDiffUViT:
    return nets["attention"][0]


def run(sampler, net, noise, labels, seeds, probe_outputs: list | None = None):
    probes = [] if probe_outputs is None else net.probes if isinstance(net.probes, torch.nn.ModuleList) else [
        net.probes]
    hooks = [p.register_forward_hook(lambda m, inputs, out: probe_outputs.append(out)) for p in probes]
    try:
        return sampler(net, noise, labels, seeds=seeds), sampler.last_exits
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("threshold", [0.0, "mixed", 1.0])
@pytest.mark.parametrize("probe", ["attention", "bank"])
def test_real_and_simulated_exit_agree(nets, probe, kind, threshold):
    net, mixed = nets[probe]
    threshold = mixed if threshold == "mixed" else threshold
    cls, _, kw = KINDS[kind]
    noise, labels, seeds = batch()
    seen: list[torch.Tensor] = []
    x_sim, e_sim = run(cls(threshold, simulate=True, **kw), net, noise, labels, seeds, seen)
    x_real, e_real = run(cls(threshold, **kw), net, noise, labels, seeds)
    assert e_real.shape == (B, kw["num_steps"]) and e_real.dtype == torch.long
    assert torch.equal(e_real, e_sim)
    assert (x_real - x_sim).abs().max().item() <= 1e-5
    u = torch.cat(seen)
    assert 0 < u.min() and u.max() < 1  # the probes never say exactly 0 (or 1)
    if threshold == mixed:
        # No probe output within 1e-4 of the threshold: a rounding difference cannot flip an exit.
        assert (u - threshold).abs().min() > 1e-4
        assert len(e_real.unique()) >= 3  # mixed across layers ...
        assert any(len(e_real[:, i].unique()) > 1 for i in range(e_real.shape[1]))  # ... and across samples
        assert (e_real < net.depth).any() and (e_real > 0).any()


def test_threshold_one_exits_at_once(net):
    """Threshold 1: exit 0 everywhere, i.e. DDIM on the first exit head over the embedded tokens."""
    noise, labels, seeds = batch()
    kw = dict(num_timesteps=1000, num_steps=6, eta=1.0, variance="fixed_small")
    x, exits = run(EarlyExitDDIMSampler(1.0, **kw), net, noise, labels, seeds)
    assert (exits == 0).all()

    def first_exit(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net.exit_output(0, net.embed(x, t, y))

    expected = DDIMSampler(**kw)(first_exit, noise, labels, seeds=seeds)
    assert (x - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("kind", list(KINDS))
def test_threshold_zero_is_the_plain_sampler(net, kind):
    """Threshold 0 with probes in (0, 1): every sample runs the full network, as the plain sampler does."""
    cls, plain, kw = KINDS[kind]
    noise, labels, seeds = batch()
    x, exits = run(cls(0.0, **kw), net, noise, labels, seeds)
    assert (exits == net.depth).all()
    expected = plain(**kw, variance="fixed_small")(net, noise, labels, seeds=seeds)
    assert (x - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("probe", ["attention", "bank"])
def test_batch_composition_does_not_change_a_sample(nets, probe):
    """Removing rows leaks nothing: a sample's result and exits are the same alone or in another batch."""
    net, mixed = nets[probe]
    cls, _, kw = KINDS["ddpm"]
    noise, labels, seeds = batch()
    sampler = cls(mixed, **kw)
    x, exits = run(sampler, net, noise, labels, seeds)
    for rows in ([3], [6], [5, 0, 2]):
        x_sub, e_sub = run(sampler, net, noise[rows], labels[rows], seeds[rows])
        assert torch.equal(e_sub, exits[rows])
        assert (x_sub - x[rows]).abs().max().item() <= 1e-5


def test_exit_record_columns_are_sampler_steps():
    """Per-(layer, timestep) probes with zero weights: exit = the layer whose bias is low at that timestep, so the
    record's column i must be step i (timestep tau[i]), with the per-timestep probe of each active row."""
    torch.manual_seed(0)
    net = DeeDiffUViT("tiny", classifier_type="mlp_probe_per_layer_per_timestep", num_timesteps=1000).eval()
    sampler = EarlyExitDDIMSampler(0.5, num_timesteps=1000, num_steps=5)  # tau = 0, 200, 400, 600, 800
    target = {int(t): k for k, t in enumerate(sampler.tau)}  # timestep tau[k] exits at layer k (k = 4: the last)
    with torch.no_grad():
        net.probes.weight.zero_()
        net.probes.bias.fill_(10.0)
        for t, layer in target.items():
            net.probes.bias[layer * 1000 + t] = -10.0
    noise, labels, _ = batch(4)
    for simulate in (False, True):
        sampler.simulate = simulate
        sampler(net, noise, labels)
        assert torch.equal(sampler.last_exits, torch.arange(5).expand(4, 5))


def test_defaults_errors_and_registry(net):
    assert EarlyExitDDPMSampler(0.1).num_steps == 1000  # ancestral over every step, as the seed samples
    assert EarlyExitDDIMSampler(0.1).num_steps == 100
    assert EarlyExitDDPMSampler(0.1).diffusion.variance == "fixed_small"
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ConfigError, match="sampler.threshold"):
            EarlyExitDDIMSampler(bad)
    noise, labels, _ = batch(2)
    with pytest.raises(ValueError, match="guidance is not supported"):
        EarlyExitDDIMSampler(0.1, num_steps=2)(net, noise, labels, guide=net)
    with pytest.raises(TypeError, match="DeeDiffUViT"):
        EarlyExitDDIMSampler(0.1, num_steps=2)(lambda x, t, y: x, noise, labels)
    built = R.build(R.SAMPLERS, dict(type="EarlyExitDDIMSampler", threshold=0.2, num_steps=4, simulate=True),
                    "sampler")
    assert isinstance(built, EarlyExitDDIMSampler) and built.simulate and built.threshold == 0.2


def analytic_piece_macs(net: DeeDiffUViT) -> dict[str, int]:
    """Multiply-adds per sample of each piece from the tiny config's shapes, without fvcore: Linear in * out per
    token it runs on (L = extras + N tokens; an exit head's Linear runs on all L before dropping the extras),
    convs C_in k k per output element, attention L * L * D twice (q k^T, attn v), LayerNorm 5 per element."""
    c = net.config
    C, D, p, img, hidden = c["img_channels"], c["embed_dim"], c["patch_size"], c["img_resolution"], int(
        c["embed_dim"] * c["mlp_ratio"])
    n = (img // p) ** 2
    L = net.extras + n
    layer = L * (3 * D * D + D * D + 2 * D * hidden) + 2 * 5 * L * D + 2 * L * L * D
    head = 5 * L * D + L * D * p * p * C + img * img * C * C * 9
    attention_probe = n * D * 2 * D + 2 * n * D + D * D + D  # kv Linear, one query over N, Linear(D, D), (D, 1)
    return {"embed": n * D * C * p * p + 8 * D * D,  # patch conv, time MLP D -> 4D -> D
            "in": layer, "out": layer + L * 2 * D * D, "head": head, "exit_head": head,
            "attention_probe": attention_probe, "attention_probe_sdpa": 2 * n * D, "layer_sdpa": 2 * L * L * D,
            "mlp_probe": L * D}  # Linear(D, 1) on every token (an einsum)


@pytest.mark.parametrize("probe", ["attention_probe", "mlp_probe_per_layer"])
def test_per_exit_flop_table_matches_the_analytic_count(probe):
    net = DeeDiffUViT("tiny", classifier_type=probe)
    m, depth, half = analytic_piece_macs(net), net.depth, net.depth // 2
    layers = [m["in"]] * (half + 1) + [m["out"]] * half  # in-blocks, the mid-block, out-blocks
    probe_macs = m["attention_probe"] if probe == "attention_probe" else m["mlp_probe"]
    expected = [m["embed"] + sum(layers[:i]) + (i + 1) * probe_macs + m["exit_head"] for i in range(depth)]
    expected.append(m["embed"] + sum(layers) + depth * probe_macs + m["head"])
    table, full = exit_gflops_table(net)
    assert table == pytest.approx([2 * e / 1e9 for e in expected], rel=1e-12)
    assert full * 1e9 == pytest.approx(2 * (m["embed"] + sum(layers) + m["head"]), rel=1e-12)
    x = torch.randn(1, 3, 8, 8)
    assert full * 1e9 == forward_flops(net, (x, torch.tensor([500.0]), torch.tensor([3])))  # the whole forward
    # Without the attention matmuls: the layers' and (attention probes') SDPA dropped, nothing else.
    no_att, full_no_att = exit_gflops_table(net, include_attention=False)
    probe_sdpa = m["attention_probe_sdpa"] if probe == "attention_probe" else 0
    drop = [2 * (i * m["layer_sdpa"] + (i + 1) * probe_sdpa) / 1e9 for i in range(depth)]
    drop.append(2 * depth * (m["layer_sdpa"] + probe_sdpa) / 1e9)
    assert no_att == pytest.approx([a - d for a, d in zip(table, drop, strict=True)], rel=1e-12)
    assert full_no_att == pytest.approx(full - 2 * depth * m["layer_sdpa"] / 1e9, rel=1e-12)
    assert deediff_piece_flops(net)["probes"] == [2 * probe_macs] * depth


def test_cost_summary_of_a_hand_made_record():
    table = [1.0, 2.0, 3.0, 4.0]  # depth 3: exits 0, 1, 2 and the full network
    exits = torch.tensor([[0, 3], [1, 1], [2, 3]])  # [B 3, steps 2]
    summary = exit_cost_summary(exits, table, full_gflops=3.5)
    # per sample over steps: 2.5, 2.0, 3.5 -> 8 / 3; exit indices 1.5, 1.0, 2.5 -> 5 / 3 of 3 layers
    assert summary["gflops_per_sample"] == pytest.approx(8 / 3, rel=1e-12)
    assert summary["layer_ratio"] == pytest.approx(5 / 9, rel=1e-12)
    assert summary["flop_ratio"] == pytest.approx(8 / 3 / 3.5, rel=1e-12)
    assert summary["ideal_saving"] == pytest.approx(1 - 8 / 3 / 3.5, rel=1e-12)
    assert set(exit_cost_summary(exits, table)) == {"gflops_per_sample", "layer_ratio"}
    with pytest.raises(ValueError, match="0..3"):
        exit_cost_summary(torch.tensor([[4]]), table)
    with pytest.raises(ValueError, match=r"\[B, steps\]"):
        exit_cost_summary(torch.tensor([1, 2]), table)
