"""DMD2: distribution matching distillation of a diffusion teacher into a one-step generator
(Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

Three parts: the one-step `generator` G (initialised from the teacher), the frozen teacher `real_score` D_real and
a `fake_score` D_fake (also initialised from the teacher) that tracks the generator's current distribution.
An iteration has up to two phases (DMD2's two time-scale rule, Sec. 4.2): every `gen_update_every`-th step the
generator takes one distribution-matching step; every step the fake score takes one denoising step on fresh
generator samples.

Generator phase (DMD eq. 7 with DMD2's normalisation): for x_g = G(sigma_gen z) and x_t = x_g + sigma eps,
    g = ((x_g - D_real(x_t)) - (x_g - D_fake(x_t))) / mean|x_g - D_real(x_t)|,
the approximate KL gradient between the fake and real distributions diffused to level sigma; the loss
0.5 * mean (x_g - sg(x_g - g))^2 has gradient g / numel with respect to x_g, so descending it moves each sample
towards the teacher's denoised estimate and away from the fake score's.

Fake-score phase: the EDM denoising loss (weight (sigma^2 + sd^2) / (sigma sd)^2) of D_fake on detached generator
samples, at a level uniform over the grid. Without the GAN term the data batch supplies only the shape, device and
class labels of what the generator makes; there is no regression loss.

GAN term (DMD2 Sec. 4.3, `gan_classifier=True`): the fake score carries a classifier head on its bottleneck
features (`FakeScoreWithHead` below, the head models/gan_head.py), logit l(x) at a noise level sigma.
Non-saturating logistic losses, per example: the generator phase adds gen_cls_loss_weight * softplus(-l(x_g)); the
fake-score phase adds guidance_cls_loss_weight * (softplus(l(sg(x_g))) + softplus(-l(x_real))), x_real the batch's
images and labels.
The head sees clean images at sigma_min (DMD2: grid index 0) or, with `diffusion_gan=True`, images noised at
sigma = grid[k], k uniform in [0, diffusion_gan_max_timestep).

The generator-phase GAN term back-propagates through the fake score and its head, a part this phase does not step.
Its forward runs under `no_parameter_grads`: the part's parameters do not require grad while autograd records the
graph, so the graph has no edge to them; the backward reaches the samples x_g (and through them the generator)
and never writes a .grad of the fake score nor fires a hook on its parameters (DDP's reducer, ZeRO's reduction
hooks; FSDP2's unsharded parameters take their requires_grad from the sharded ones when gathered; ZeRO-3 keeps the
parameter objects and swaps their data). Gradients with respect to the inputs still need the weights: every
strategy gathers them for the backward as it does for a trained part.
"""

import contextlib
import inspect
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.functional import softplus

from diffscale.diffusion.base import Cond, LossOutput, Objective, Phase
from diffscale.diffusion.edm import EDMPrecond
from diffscale.errors import ConfigError, closest
from diffscale.models.gan_head import GANHead  # noqa: F401  (registers GANHead, FakeScoreWithHead's default head)
from diffscale.registry import MODELS, OBJECTIVES, build, lookup


def karras_grid(num_levels: int, sigma_min: float, sigma_max: float, rho: float,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The EDM discretisation (Karras et al. 2022, eq. 5) in ascending order: [num_levels] float32 noise levels,
    index 0 = sigma_min, index num_levels - 1 = sigma_max (same units as the data)."""
    i = torch.arange(num_levels, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((lo + i / (num_levels - 1) * (hi - lo)) ** rho).float()


def _per_example_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the non-batch dims: [B, ...] -> [B]."""
    return t.flatten(1).mean(1)


def expand_batch(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ...] broadcastable against a [B, ...] tensor of `ndim` dims."""
    return v.reshape(-1, *([1] * (ndim - 1)))


@contextlib.contextmanager
def no_parameter_grads(module: nn.Module) -> Iterator[None]:
    """Inside: no parameter of `module` requires grad, so a forward records no autograd edge to them (gradients
    still flow to the inputs). On exit every parameter gets its own flag back, by name: both the objects registered
    at entry and those registered at exit (FSDP2 swaps sharded and unsharded parameters in and out), so a frozen
    one stays frozen."""
    entry = list(module.named_parameters())
    flags = {name: p.requires_grad for name, p in entry}
    for _, p in entry:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in (*entry, *module.named_parameters()):
            p.requires_grad_(flags.get(name, p.requires_grad))


@MODELS.register_module()
class FakeScoreWithHead(EDMPrecond):
    """DMD2's fake score with its GAN head. It *is* the EDMPrecond that `score` configures (the teacher's `model`;
    its `net` must have bottleneck features, e.g. SongUNet), so its state dict holds the teacher's keys unchanged
    (`net.*`, and a log-variance head where the score has one) plus `head.*`: the part starts from the teacher with
    the head fresh, `init=dict(checkpoint=<teacher>, missing=['head.*'])`. `head`: a GANHead config (default
    `dict(type='GANHead')`); in_channels and resolution default to the bottleneck's.

    forward(x, sigma, labels) -> D(x) as the score's; forward(..., return_logits=True) -> the head's realism logit
    [B] float32 of the preconditioned input. The logits go through forward, so DDP, FSDP2 and DeepSpeed see the
    call like any other."""

    has_gan_head = True  # what DMD2Loss(gan_classifier=True) checks its fake score for

    def __init__(self, score: dict, head: dict | None = None):
        args = dict(score)
        kind = args.pop("type", "EDMPrecond")
        if lookup(MODELS, kind, "model.score") is not EDMPrecond:
            raise ConfigError(f"model.score.type: FakeScoreWithHead wraps an EDMPrecond score, got {kind!r}")
        params = [p for p in inspect.signature(EDMPrecond).parameters if p != "self"]
        for name in args:
            if name not in params:
                raise ConfigError(f"model.score.{name}: EDMPrecond takes no argument '{name}'; closest: "
                                  f"{closest(name, params)}")
        super().__init__(**args)
        if not hasattr(self.net, "feature_shape"):
            raise ConfigError(f"model.score.net: {type(self.net).__name__} has no bottleneck features for the GAN "
                              f"head (no feature_shape() / return_features); use a U-Net such as SongUNet, or "
                              f"objective.gan_classifier=False with a plain EDMPrecond fake score")
        channels, height, width = self.net.feature_shape()
        if height != width:
            raise ConfigError(f"model.score.net: a {height}x{width} bottleneck; the GAN head needs a square one")
        self.head = build(MODELS, dict(head or {"type": "GANHead"}), "model.head", in_channels=channels,
                          resolution=height)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                return_logvar: bool = False, return_logits: bool = False):
        if not return_logits:
            return super().forward(x, sigma, class_labels, return_logvar=return_logvar)
        return self.head(super().forward(x, sigma, class_labels, return_features=True))


def _bare(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper or a DeepSpeed engine (both hold it as .module); FSDP2 modules are it."""
    return getattr(model, "module", model)


@OBJECTIVES.register_module()
class DMD2Loss(Objective):
    """DMD2 objective over the parts ('generator', 'fake_score', 'real_score'); validation and curation score the
    fake score's denoising loss (`score_part`). Every random draw comes from the trainer's generator, in the order
    documented in each method, so a resumed run draws the same numbers."""

    parts = ("generator", "fake_score", "real_score")
    score_part = "fake_score"

    def __init__(
        self,
        gen_update_every: int = 5,  # generator steps on iterations step % gen_update_every == 0 (DMD2: 5)
        num_levels: int = 1000,  # noise levels of the Karras grid the losses draw from
        sigma_min: float = 0.002,  # lowest grid level (index 0)
        sigma_max: float = 80.0,  # highest grid level (index num_levels - 1)
        rho: float = 7.0,  # grid curvature (EDM eq. 5)
        min_level: int = 20,  # generator loss: level index uniform in [min_level, max_level] (DMD2: 2%..98%)
        max_level: int = 980,  # inclusive
        sigma_gen: float | None = None,  # the generator's input noise level; None: sigma_max
        sigma_data: float = 0.5,  # std of the data (EDM loss weighting)
        gan_classifier: bool = False,  # DMD2's GAN term; parts.fake_score.model must be a FakeScoreWithHead
        gen_cls_loss_weight: float = 3e-3,  # generator phase: weight of softplus(-l(x_g)) (DMD2: 3e-3)
        guidance_cls_loss_weight: float = 1e-2,  # fake-score phase: weight of the head's loss (DMD2 cls_loss_weight)
        diffusion_gan: bool = False,  # the head sees real and fake noised at a random grid level (else sigma_min)
        diffusion_gan_max_timestep: int | None = None,  # level index uniform in [0, this); None: num_levels
    ):
        if not isinstance(gen_update_every, int) or gen_update_every < 1:
            raise ConfigError(f"objective.gen_update_every: expected an int >= 1, got {gen_update_every!r}")
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ConfigError(f"objective.num_levels: expected an int >= 2, got {num_levels!r}")
        if not 0 < sigma_min:
            raise ConfigError(f"objective.sigma_min: expected > 0, got {sigma_min!r}")
        if not sigma_max > sigma_min:
            raise ConfigError(f"objective.sigma_max: expected > sigma_min ({sigma_min}), got {sigma_max!r}")
        if not rho > 0:
            raise ConfigError(f"objective.rho: expected > 0, got {rho!r}")
        if not isinstance(min_level, int) or not 0 <= min_level < num_levels:
            raise ConfigError(f"objective.min_level: expected an int in [0, {num_levels}), got {min_level!r}")
        if not isinstance(max_level, int) or not min_level <= max_level < num_levels:
            raise ConfigError(f"objective.max_level: expected an int in [min_level ({min_level}), {num_levels}), "
                             f"got {max_level!r}")
        if sigma_gen is not None and not sigma_gen > 0:
            raise ConfigError(f"objective.sigma_gen: expected > 0 or None, got {sigma_gen!r}")
        if not sigma_data > 0:
            raise ConfigError(f"objective.sigma_data: expected > 0, got {sigma_data!r}")
        self.gen_update_every, self.num_levels = gen_update_every, num_levels
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.min_level, self.max_level = min_level, max_level
        self.sigma_gen = float(sigma_max if sigma_gen is None else sigma_gen)
        self.sigma_data = sigma_data
        for key, value in (("gen_cls_loss_weight", gen_cls_loss_weight),
                           ("guidance_cls_loss_weight", guidance_cls_loss_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"objective.{key}: expected a number >= 0, got {value!r}")
        max_t = num_levels if diffusion_gan_max_timestep is None else diffusion_gan_max_timestep
        if isinstance(max_t, bool) or not isinstance(max_t, int) or not 1 <= max_t <= num_levels:
            raise ConfigError(f"objective.diffusion_gan_max_timestep: expected an int in [1, {num_levels}] or None, "
                             f"got {diffusion_gan_max_timestep!r}")
        self.gan_classifier, self.diffusion_gan = bool(gan_classifier), bool(diffusion_gan)
        self.gen_cls_loss_weight, self.guidance_cls_loss_weight = float(gen_cls_loss_weight), \
            float(guidance_cls_loss_weight)
        self.diffusion_gan_max_timestep = max_t

    def phases(self, step: int) -> list[Phase]:
        gen = [Phase("generator", ("generator",))] if step % self.gen_update_every == 0 else []
        return gen + [Phase("fake_score", ("fake_score",))]

    def grid(self, device: torch.device) -> torch.Tensor:
        """The noise levels [num_levels] float32 on `device`, ascending."""
        return karras_grid(self.num_levels, self.sigma_min, self.sigma_max, self.rho, device)

    def generate(self, G: nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """One-step samples [B, ...] like `x`: G(sigma_gen z, sigma_gen, labels), z ~ N(0, I) (draw 1: z)."""
        z = torch.randn(x.shape, device=x.device, generator=generator)
        sigma = torch.full((x.shape[0],), self.sigma_gen, device=x.device)
        return G(z * self.sigma_gen, sigma, labels).float()

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        """sigma [B] uniform over the grid's levels and unit noise like `x` (draws: level index, then noise)."""
        idx = torch.randint(0, self.num_levels, (x.shape[0],), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return {"sigma": self.grid(x.device)[idx], "noise": noise}

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """EDM weighted denoising loss [B] (float32, mean over elements) of `model` on batch['x'] at `cond`:
        lambda(sigma) mean (D(x + sigma n, sigma) - x)^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2."""
        x = batch["x"].float()
        s = expand_batch(cond["sigma"], x.ndim)
        D_x = model(x + s * cond["noise"], cond["sigma"], batch.get("label")).float()
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return _per_example_mean(weight * (D_x - x) ** 2)

    def __call__(self, phase: Phase, models: Mapping[str, nn.Module], batch: dict,
                 generator: torch.Generator) -> LossOutput:
        if phase.name == "generator":
            return self.generator_loss(models, batch, generator)
        if phase.name == "fake_score":
            return self.fake_score_loss(models, batch, generator)
        raise ValueError(f"DMD2Loss: unknown phase '{phase.name}' (expected 'generator' or 'fake_score')")

    def generator_loss(self, models: Mapping[str, nn.Module], batch: dict,
                       generator: torch.Generator) -> LossOutput:
        """Distribution-matching loss [B] of the generator, plus with the GAN term w * softplus(-l(x_g)); gradients
        reach only the generator. Draws: z [B, ...], level index [B] in [min_level, max_level], noise eps [B, ...],
        then with the GAN term (diffusion_gan only) the head's level index [B] and noise [B, ...]."""
        x, labels = batch["x"], batch.get("label")
        x_g = self.generate(models["generator"], x, labels, generator)
        idx = torch.randint(self.min_level, self.max_level + 1, (x.shape[0],), device=x.device, generator=generator)
        sigma = self.grid(x.device)[idx]
        eps = torch.randn(x.shape, device=x.device, generator=generator)
        with torch.no_grad():  # the scores are targets here: neither is updated by this phase
            x_t = x_g.detach() + expand_batch(sigma, x.ndim) * eps
            p_real = x_g.detach() - models["real_score"](x_t, sigma, labels).float()
            p_fake = x_g.detach() - models["fake_score"](x_t, sigma, labels).float()
            # DMD's per-example normaliser: the mean absolute distance to the teacher's denoised estimate.
            w = p_real.abs().flatten(1).mean(1)
            # A zero normaliser (the teacher reproduces x_g exactly) gives 0/0 or x/0: no usable direction, so every
            # non-finite entry becomes 0 rather than float max, which would overflow the squared loss to inf.
            g = torch.nan_to_num((p_real - p_fake) / expand_batch(w, x.ndim), nan=0.0, posinf=0.0, neginf=0.0)
            target = x_g.detach() - g
        loss = 0.5 * _per_example_mean((x_g - target) ** 2)
        logs = {"dmd_weight": w.mean(), "grad_norm_dm": g.abs().mean()}
        if self.gan_classifier:
            with no_parameter_grads(models["fake_score"]):  # through the fake score into x_g only (module doc)
                logit = self.logits(models["fake_score"], x_g, labels, generator)
            gen_cls = softplus(-logit)  # non-saturating: the generator wants its samples called real
            loss = loss + self.gen_cls_loss_weight * gen_cls
            logs.update(gen_cls_loss=gen_cls.mean(), logit_fake=logit.mean())
        return LossOutput(loss, logs)

    def fake_score_loss(self, models: Mapping[str, nn.Module], batch: dict,
                        generator: torch.Generator) -> LossOutput:
        """EDM denoising loss [B] of the fake score on fresh, detached generator samples, plus with the GAN term the
        head's logistic loss on the batch's images (real) and those samples (fake); gradients reach only the fake
        score and its head. Draws: z [B, ...], then those of `sample_condition` (level index [B] over the grid,
        noise), then with the GAN term (diffusion_gan only) the head's level index [2B] and noise of [real; fake]."""
        x, labels = batch["x"], batch.get("label")
        with torch.no_grad():  # the generator is not updated by this phase
            x_g = self.generate(models["generator"], x, labels, generator)
        fake = {"x": x_g, "label": labels}
        loss = self.per_example(models["fake_score"], fake, self.sample_condition(x_g, generator))
        if not self.gan_classifier:
            return LossOutput(loss, {})
        both = torch.cat([x.float(), x_g])  # one forward of the head for real and fake
        logit_real, logit_fake = self.logits(models["fake_score"], both, None if labels is None else
                                             torch.cat([labels, labels]), generator).chunk(2)
        cls = softplus(logit_fake) + softplus(-logit_real)
        logs = {"denoising_loss": loss.mean(), "guidance_cls_loss": cls.mean(), "logit_real": logit_real.mean(),
                "logit_fake": logit_fake.mean()}
        return LossOutput(loss + self.guidance_cls_loss_weight * cls, logs)

    def logits(self, fake_score: nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
               generator: torch.Generator) -> torch.Tensor:
        """The head's realism logits [B] float32 of images x [B, ...]: at sigma_min on x itself (DMD2's grid index 0),
        or with diffusion_gan at sigma = grid[k] on x + sigma eps (draws: k [B] uniform in [0,
        diffusion_gan_max_timestep), then eps like x)."""
        if not getattr(_bare(fake_score), "has_gan_head", False):
            raise ConfigError(f"objective.gan_classifier=True needs a fake score with a GAN head: "
                              f"parts.fake_score.model must be a FakeScoreWithHead, got "
                              f"{type(_bare(fake_score)).__name__}")
        grid = self.grid(x.device)
        if self.diffusion_gan:
            k = torch.randint(0, self.diffusion_gan_max_timestep, (x.shape[0],), device=x.device, generator=generator)
            sigma = grid[k]
            x = x + expand_batch(sigma, x.ndim) * torch.randn(x.shape, device=x.device, generator=generator)
        else:
            sigma = grid[:1].expand(x.shape[0])
        return fake_score(x, sigma, labels, return_logits=True).float()
