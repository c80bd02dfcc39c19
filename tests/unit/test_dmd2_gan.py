"""DMD2's GAN term (diffusion/dmd2.py, models/gan_head.py): the head's input shape per network, the fake score
initialised from a teacher with the head fresh, the logistic losses against a direct computation, the diffusion-GAN
noise levels, gradients into the stepped part only (the fake score's .grad stays None in the generator phase), a
frozen teacher, a consistency-model generator, and the toy path unchanged."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.functional import softplus

from diffscale.diffusion.base import Phase
from diffscale.diffusion.consistency import ConsistencyPrecond
from diffscale.diffusion.dmd2 import DMD2Loss, FakeScoreWithHead, no_parameter_grads
from diffscale.diffusion.edm import EDMPrecond
from diffscale.engine.parts import build_part
from diffscale.errors import ConfigError
from diffscale.models.gan_head import GANHead

GEN, FAKE = Phase("generator", ("generator",)), Phase("fake_score", ("fake_score",))
TINY = dict(type="SongUNet", img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(), dropout=0.0, label_dim=4)
SCORE = dict(type="EDMPrecond", label_dim=4, logvar_channels=0, net=TINY)
TOY = dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=16, num_layers=2)
pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny convolutions: one thread is several times faster


def tiny_parts(seed: int = 0, consistency: bool = False) -> dict[str, nn.Module]:
    """Generator, fake score with head, frozen real score; the scores share the teacher's weights."""
    torch.manual_seed(seed)
    teacher = EDMPrecond(TINY, label_dim=4, logvar_channels=0)
    with torch.no_grad():  # away from EDM's near-identity init, so every layer matters
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = ConsistencyPrecond(TINY, label_dim=4, logvar_channels=0) if consistency else \
        EDMPrecond(TINY, label_dim=4, logvar_channels=0)
    fake = FakeScoreWithHead(SCORE)
    gen.load_state_dict(teacher.state_dict())
    fake.load_state_dict(teacher.state_dict(), strict=False)
    real = EDMPrecond(TINY, label_dim=4, logvar_channels=0)
    real.load_state_dict(teacher.state_dict())
    real.requires_grad_(False).eval()
    return {"generator": gen, "fake_score": fake, "real_score": real}


def image_batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(11)
    return {"x": torch.rand(b, 3, 8, 8, generator=g) * 2 - 1, "label": torch.arange(b) % 4}


def gan_loss(**kwargs) -> DMD2Loss:
    return DMD2Loss(gan_classifier=True, **kwargs)


# ---------------------------------------------------------------------------------------------------- the head
@pytest.mark.parametrize("preset", ["ddpmpp", "ncsnpp"])
def test_head_input_is_the_real_bottleneck_of_each_preset(preset):
    """EDM's CIFAR-10 networks (32 px, channel_mult (2, 2, 2)): the bottleneck is 256 x 8 x 8 (a forward on the meta
    device measures it), and the head is DMD2's: 4x4 stride 2, GN(32), SiLU, 4x4 stride 4, GN(32), SiLU, 1x1."""
    score = dict(type="EDMPrecond", label_dim=10, logvar_channels=0,
                 net=dict(type="SongUNet", preset=preset, label_dim=10, augment_dim=9))
    with torch.device("meta"):
        model = FakeScoreWithHead(score)
        x, sigma, labels = torch.zeros(2, 3, 32, 32), torch.ones(2), torch.zeros(2, dtype=torch.long)
        features = EDMPrecond.forward(model, x, sigma, labels, return_features=True)
        logits = model(x, sigma, labels, return_logits=True)
    assert tuple(features.shape) == (2, 256, 8, 8) == (2, *model.net.feature_shape())
    assert (model.head.in_channels, model.head.resolution) == (256, 8) and tuple(logits.shape) == (2,)
    kinds = [(type(m).__name__, *(getattr(m, a, None) for a in ("kernel_size", "stride", "padding", "num_groups")))
             for m in model.head.layers]
    assert kinds == [("Conv2d", (4, 4), (2, 2), (1, 1), None), ("GroupNorm", None, None, None, 32),
                     ("SiLU", None, None, None, None), ("Conv2d", (4, 4), (4, 4), (0, 0), None),
                     ("GroupNorm", None, None, None, 32), ("SiLU", None, None, None, None),
                     ("Conv2d", (1, 1), (1, 1), (0, 0), None)]
    assert model.head.layers[0].in_channels == 256 and model.head.layers[-1].out_channels == 1


def test_head_adapts_to_a_smaller_bottleneck():
    model = FakeScoreWithHead(SCORE)  # 8 px, channel_mult (1, 2): 32 x 4 x 4
    feats = EDMPrecond.forward(model, torch.zeros(3, 3, 8, 8), torch.ones(3), None, return_features=True)
    assert tuple(feats.shape) == (3, 32, 4, 4) == (3, *model.net.feature_shape())
    convs = [m for m in model.head.layers if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((4, 4), (4, 4)), ((1, 1), (1, 1))]
    assert GANHead(64, 16).layers[0].stride == (2, 2) and len(GANHead(64, 16).layers) == 10  # 16 -> 8 -> 4 -> 1
    with pytest.raises(ConfigError, match="GANHead.resolution"):
        GANHead(32, 10)  # 10 -> 5: odd and above 4
    with pytest.raises(ValueError, match="expected features"):
        GANHead(32, 4)(torch.zeros(2, 16, 4, 4))


def test_toy_mlp_has_no_head():
    with pytest.raises(ConfigError, match="ToyMLP has no bottleneck features"):
        FakeScoreWithHead(dict(type="EDMPrecond", label_dim=2, net=TOY))
    with pytest.raises(ConfigError, match="model.score.bad_arg"):
        FakeScoreWithHead(dict(SCORE, bad_arg=1))
    parts = tiny_parts()
    parts["fake_score"] = EDMPrecond(TINY, label_dim=4, logvar_channels=0)  # a score without a head
    with pytest.raises(ConfigError, match="parts.fake_score.model must be a FakeScoreWithHead"):
        gan_loss()(GEN, parts, image_batch(), torch.Generator().manual_seed(0))


def test_fake_score_starts_from_the_teacher_with_a_fresh_head(tmp_path):
    """The state dict is the teacher's keys plus head.*: a part init with missing=['head.*'] loads the teacher
    strictly and keeps the head's own initialisation; without `missing` it is refused."""
    teacher = tiny_parts()["real_score"]
    path = tmp_path / "teacher.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    fake = FakeScoreWithHead(SCORE)
    extra = set(fake.state_dict()) - set(teacher.state_dict())
    assert set(teacher.state_dict()) <= set(fake.state_dict()) and extra and all(k.startswith("head.") for k in extra)
    spec = dict(model=dict(type="FakeScoreWithHead", score=SCORE), optimizer=dict(type="AdamW", lr=1e-3),
                lr_schedule=dict(type="ConstantLR"), grad_clip=None, trainable=True,
                init=dict(checkpoint=str(path), missing=["head.*"]))
    torch.manual_seed(3)
    part = build_part("fake_score", spec, "parts.fake_score.")
    torch.manual_seed(3)
    fresh = FakeScoreWithHead(SCORE)
    state = part.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(state[k], fresh.state_dict()[k]) for k in extra)
    with pytest.raises(ConfigError, match="lacks"):
        build_part("fake_score", dict(spec, init=dict(checkpoint=str(path), missing=["nothing.*"])),
                   "parts.fake_score.")


# ---------------------------------------------------------------------------------------------------- the losses
@pytest.mark.parametrize("diffusion_gan", [False, True])
def test_generator_loss_is_dm_plus_weighted_softplus(diffusion_gan):
    """The generator phase: the DM loss of the GAN-free objective (same draws first) plus w * softplus(-l(x_g)),
    l at sigma_min on x_g, or at grid[k] on x_g + grid[k] eps (draws after the DM ones: k, then eps)."""
    parts, batch = tiny_parts(), image_batch()
    loss_fn = gan_loss(gen_cls_loss_weight=0.3, diffusion_gan=diffusion_gan, diffusion_gan_max_timestep=600)
    out = loss_fn(GEN, parts, batch, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    dm = DMD2Loss()(GEN, parts, batch, gen)  # the same draws, then the GAN term's
    with torch.no_grad():
        x_g = DMD2Loss().generate(parts["generator"], batch["x"], batch["label"], torch.Generator().manual_seed(5))
        grid = loss_fn.grid(torch.device("cpu"))
        if diffusion_gan:
            k = torch.randint(0, 600, (4,), generator=gen)
            sigma = grid[k]
            x_in = x_g + sigma[:, None, None, None] * torch.randn(x_g.shape, generator=gen)
        else:
            sigma, x_in = grid[:1].expand(4), x_g
        logit = parts["fake_score"].head(EDMPrecond.forward(parts["fake_score"], x_in, sigma, batch["label"],
                                                            return_features=True))
    expected = dm.loss + 0.3 * torch.log1p(torch.exp(-logit))  # softplus(-l), written out
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    assert out.loss.shape == (4,) and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.logs["gen_cls_loss"], softplus(-logit).mean())
    torch.testing.assert_close(out.logs["logit_fake"], logit.mean())
    assert set(out.logs) == {"dmd_weight", "grad_norm_dm", "gen_cls_loss", "logit_fake"}


@pytest.mark.parametrize("diffusion_gan", [False, True])
def test_fake_score_loss_is_denoising_plus_weighted_logistic(diffusion_gan):
    """The fake-score phase: the GAN-free denoising loss plus w * (softplus(l(fake)) + softplus(-l(real))), real =
    the batch's images, fake = the same generator samples the denoising loss used, one head forward over
    [real; fake] (draws after the denoising ones: k [2B], then eps)."""
    parts, batch = tiny_parts(), image_batch()
    loss_fn = gan_loss(guidance_cls_loss_weight=0.7, diffusion_gan=diffusion_gan)
    out = loss_fn(FAKE, parts, batch, torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    dsm = DMD2Loss()(FAKE, parts, batch, gen)
    with torch.no_grad():
        x_g = DMD2Loss().generate(parts["generator"], batch["x"], batch["label"], torch.Generator().manual_seed(9))
        both, labels = torch.cat([batch["x"], x_g]), torch.cat([batch["label"], batch["label"]])
        grid = loss_fn.grid(torch.device("cpu"))
        if diffusion_gan:  # diffusion_gan_max_timestep None: the whole grid
            sigma = grid[torch.randint(0, 1000, (8,), generator=gen)]
            both = both + sigma[:, None, None, None] * torch.randn(both.shape, generator=gen)
        else:
            sigma = grid[:1].expand(8)
        logits = parts["fake_score"].head(EDMPrecond.forward(parts["fake_score"], both, sigma, labels,
                                                             return_features=True))
    real, fake = logits[:4], logits[4:]
    expected = dsm.loss + 0.7 * (torch.log1p(torch.exp(fake)) + torch.log1p(torch.exp(-real)))
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.logs["guidance_cls_loss"], (softplus(fake) + softplus(-real)).mean())
    torch.testing.assert_close(out.logs["logit_real"], real.mean())
    torch.testing.assert_close(out.logs["logit_fake"], fake.mean())
    torch.testing.assert_close(out.logs["denoising_loss"], dsm.loss.mean())


class RecordingHead(FakeScoreWithHead):
    """Records the (x, sigma) of every logits call."""

    def __init__(self):
        super().__init__(SCORE)
        self.seen = []

    def forward(self, x, sigma, class_labels=None, return_logvar=False, return_logits=False):
        if return_logits:
            self.seen.append((x.detach().clone(), sigma.clone()))
        return super().forward(x, sigma, class_labels, return_logvar, return_logits)


def test_diffusion_gan_levels():
    """diffusion_gan: sigma = grid[k], k uniform over [0, max): every such level drawn and no other; without it the
    head sees the images themselves at sigma_min (DMD2's index 0)."""
    parts, batch = tiny_parts(), {"x": torch.zeros(256, 3, 8, 8), "label": None}
    parts["fake_score"] = RecordingHead()
    grid = DMD2Loss().grid(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        gan_loss(diffusion_gan=True, diffusion_gan_max_timestep=20)(FAKE, parts, batch, gen)
    levels = torch.cat([s for _, s in parts["fake_score"].seen])
    assert set(levels.tolist()) == set(grid[:20].tolist())  # 2048 draws over 20 levels: all of them, nothing else
    x, sigma = parts["fake_score"].seen[0]
    assert x[:256].abs().sum() > 0  # the real images (zeros here) were noised
    parts["fake_score"].seen.clear()
    gan_loss()(FAKE, parts, batch, gen)
    x, sigma = parts["fake_score"].seen[0]
    assert torch.equal(sigma, grid[:1].expand(512)) and torch.equal(x[:256], batch["x"])
    with pytest.raises(ConfigError, match="diffusion_gan_max_timestep"):
        DMD2Loss(diffusion_gan_max_timestep=1001)
    with pytest.raises(ConfigError, match="gen_cls_loss_weight"):
        DMD2Loss(gen_cls_loss_weight=-1.0)


# ---------------------------------------------------------------------------------------------------- gradients
def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("consistency", [False, True])
def test_generator_phase_grads_reach_the_generator_only(consistency):
    """The GAN term back-propagates through the fake score and its head into x_g: the generator's gradient differs
    from the GAN-free one, and every fake-score and teacher parameter keeps .grad None (also with a consistency
    model as the generator)."""
    parts, batch = tiny_parts(consistency=consistency), image_batch()
    flags = {n: p.requires_grad for n, p in parts["fake_score"].named_parameters()}
    gan_loss(gen_cls_loss_weight=10.0)(GEN, parts, batch, torch.Generator().manual_seed(1)).loss.mean().backward()
    with_gan = {n: g.clone() for n, g in _grads(parts["generator"]).items()}
    assert all(g is not None for g in with_gan.values())
    assert all(g is None for g in _grads(parts["fake_score"]).values())
    assert all(g is None for g in _grads(parts["real_score"]).values())
    assert {n: p.requires_grad for n, p in parts["fake_score"].named_parameters()} == flags  # restored
    parts["generator"].zero_grad(set_to_none=True)
    DMD2Loss()(GEN, parts, batch, torch.Generator().manual_seed(1)).loss.mean().backward()
    assert any(not torch.allclose(with_gan[n], g) for n, g in _grads(parts["generator"]).items())


def test_fake_score_phase_grads_reach_the_fake_score_and_head_only():
    parts = tiny_parts()
    gan_loss()(FAKE, parts, image_batch(), torch.Generator().manual_seed(2)).loss.mean().backward()
    grads = _grads(parts["fake_score"])
    assert all(g is not None for g in grads.values())
    assert all(bool(grads[n].abs().sum() > 0) for n in grads if n.startswith("head."))
    assert all(g is None for g in _grads(parts["generator"]).values())
    assert all(g is None for g in _grads(parts["real_score"]).values())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_generator_phase_leaves_no_grad_under_ddp_and_fsdp(strategy, single_rank_group):
    """The crux under the real wrappers (one rank): the fake score wrapped as the strategies wrap it (DDP, whose
    reducer hooks its parameters; FSDP2 per block then the root, the strategy's own `wrap`), one fake-score phase
    through the wrapper, then a generator phase through the bare module: afterwards no fake-score parameter (FSDP2:
    no sharded parameter) holds a gradient, and the next fake-score phase equals one after no generator phase."""
    from torch.nn.parallel import DistributedDataParallel

    from diffscale.engine.parts import Part
    from diffscale.engine.strategies.fsdp import FSDPStrategy
    from diffscale.utils.dist import DistInfo

    parts, batch, loss_fn = tiny_parts(), image_batch(), gan_loss(gen_cls_loss_weight=10.0, diffusion_gan=True)
    fake = parts["fake_score"]
    if strategy == "ddp":
        wrapped = DistributedDataParallel(fake)
    else:
        part = Part("fake_score", fake, dict(type="AdamW"), dict(type="ConstantLR"), None)
        wrapped = FSDPStrategy(DistInfo(0, 1, 0, torch.device("cpu")), "fp32").wrap(fake, part)
    phase_models = {**parts, "fake_score": wrapped}
    loss_fn(FAKE, phase_models, batch, torch.Generator().manual_seed(0)).loss.mean().backward()
    fake.zero_grad(set_to_none=True)
    loss_fn(GEN, parts, batch, torch.Generator().manual_seed(1)).loss.mean().backward()  # bare fake score
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.grad is not None for p in parts["generator"].parameters())
    loss_fn(FAKE, phase_models, batch, torch.Generator().manual_seed(2)).loss.mean().backward()
    after_gen = [p.grad.clone() for p in fake.parameters()]
    fake.zero_grad(set_to_none=True)
    loss_fn(FAKE, phase_models, batch, torch.Generator().manual_seed(2)).loss.mean().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(after_gen, fake.parameters(), strict=True))


def test_no_parameter_grads_restores_each_flag():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)  # a frozen parameter stays frozen
    x = torch.ones(3, 2, requires_grad=True)
    with no_parameter_grads(model):
        assert not any(p.requires_grad for p in model.parameters())
        y = model(x).sum()
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    y.backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())


def test_teacher_never_changes_over_steps():
    """Three iterations of both phases with AdamW on the stepped part: generator and fake score move, the frozen
    teacher stays bitwise what it was."""
    parts, batch = tiny_parts(), image_batch()
    teacher = {k: v.clone() for k, v in parts["real_score"].state_dict().items()}
    start = {n: {k: v.clone() for k, v in parts[n].state_dict().items()} for n in ("generator", "fake_score")}
    optims = {n: torch.optim.AdamW(parts[n].parameters(), lr=1e-3) for n in ("generator", "fake_score")}
    loss_fn, gen = gan_loss(gen_update_every=1, diffusion_gan=True), torch.Generator().manual_seed(0)
    for step in range(3):
        for phase in loss_fn.phases(step):
            loss_fn(phase, parts, batch, gen).loss.mean().backward()
            optims[phase.parts[0]].step()
            for o in optims.values():
                o.zero_grad(set_to_none=True)
    assert all(torch.equal(parts["real_score"].state_dict()[k], v) for k, v in teacher.items())
    for n, state in start.items():
        assert any(not torch.equal(parts[n].state_dict()[k], v) for k, v in state.items()), n


def test_toy_path_unchanged_when_the_gan_is_off():
    """gan_classifier=False ignores every GAN argument: the same losses, logs and draws as the defaults."""
    torch.manual_seed(0)
    toy = {n: EDMPrecond(TOY, label_dim=2) for n in ("generator", "fake_score", "real_score")}
    batch = {"x": torch.randn(8, 2), "label": torch.arange(8) % 2}
    for phase in (GEN, FAKE):
        ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        a = DMD2Loss(sigma_max=5.0)(phase, toy, batch, ga)
        b = DMD2Loss(sigma_max=5.0, diffusion_gan=True, gen_cls_loss_weight=1.0)(phase, toy, batch, gb)
        assert torch.equal(a.loss, b.loss) and a.logs.keys() == b.logs.keys()
        assert set(a.logs) == ({"dmd_weight", "grad_norm_dm"} if phase is GEN else set())
        assert torch.equal(ga.get_state(), gb.get_state())
