"""Consistency distillation (CD) of an EDM teacher (Song et al. 2023, "Consistency Models", Sec. 4 and Alg. 2).

Consistency function (Sec. 3 and App. C, EDM parametrisation): f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in x;
c_noise, labels) with c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = (sigma - sigma_min) sd /
sqrt(sigma^2 + sd^2), and EDM's c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 (sd = sigma_data), so
f(x, sigma_min) = x exactly and a teacher's body weights initialise the student.

CD loss (eq. 7): on the ascending Karras grid sigma_0 = sigma_min < ... < sigma_{N-1} = sigma_max (EDM eq. 5), with
n uniform in [0, N - 2], x_{n+1} = x + sigma_{n+1} z and x_hat_n one Heun step of the teacher's probability-flow ODE
dx/dsigma = (x - D(x, sigma)) / sigma from sigma_{n+1} down to sigma_n (the teacher at both ends),
    L = lambda(sigma_n, sigma_{n+1}) d(f_theta(x_{n+1}, sigma_{n+1}), stopgrad f_theta^-(x_hat_n, sigma_n)).
The target theta^- follows the student after every optimizer step, theta^- <- mu theta^- + (1 - mu) theta. With
mu = 0 (the CIFAR-10 recipe of openai/consistency_models_cifar10: jcm/losses.py uses target_params = params) the
target is the student itself under stop-gradient and no `target` part exists; mu > 0 (ImageNet-64 and LSUN: 0.95)
needs a frozen part `target` moved after every step (`follows`, `target_updates`). The objective computes that
update on plain modules (`update_target`), but the trainer does not apply it yet, so it refuses an objective with
mu > 0 at start-up rather than train against a target that never moves.
"""

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from diffscale.diffusion.base import Cond, LossOutput, Objective, Phase
from diffscale.diffusion.dmd2 import expand_batch, karras_grid
from diffscale.diffusion.edm import EDMPrecond, preconditioning
from diffscale.errors import ConfigError
from diffscale.registry import MODELS, OBJECTIVES

DISTANCES = ("l2", "l1", "pseudo_huber", "lpips")
WEIGHTINGS = ("uniform", "icm")  # CD's lambda = 1; iCT's 1 / (sigma_{n+1} - sigma_n)
HUBER_C_PER_SQRT_DIM = 0.00054  # iCT (Song & Dhariwal 2023, Sec. 3.3): c = 0.00054 sqrt(d), d = elements per example
LPIPS_WEIGHTS_HELP = (
    "give objective.lpips_weights one local file: torchvision's ImageNet VGG16 weights (vgg16-397923af.pth, from "
    "https://download.pytorch.org/models/vgg16-397923af.pth; the linear heads then come from the lpips package's own "
    "weights/v0.1/vgg.pth) or a whole LPIPS state dict written where downloads work by "
    "`torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pth')`")


def boundary_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float,
                      ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out [B, 1, ...] float32 of the consistency function at noise levels sigma [B]. At sigma ==
    float32(sigma_min) the difference is exactly 0, so c_skip == 1 and c_out == 0 bitwise."""
    s = expand_batch(sigma.float(), ndim)
    sd = sigma_data
    c_skip = sd**2 / ((s - sigma_min) ** 2 + sd**2)
    c_out = (s - sigma_min) * sd / (s**2 + sd**2).sqrt()
    return c_skip, c_out


@MODELS.register_module()
class ConsistencyPrecond(EDMPrecond):
    """The consistency model f(x[B, ...], sigma[B], class_labels) -> [B, ...] around a denoiser body `net` (the same
    config as the teacher's EDMPrecond, `logvar_channels` included). It keeps EDMPrecond's entries, the log-variance
    head included, so a teacher checkpoint loads strictly; that head is frozen (requires_grad False): the CD loss has
    no uncertainty term, and a frozen head is never an unused trainable parameter under DDP."""

    def __init__(self, net: dict | nn.Module, sigma_data: float = 0.5, label_dim: int = 0,
                 sigma_min: float = 0.002, logvar_channels: int = 128):
        super().__init__(net, sigma_data=sigma_data, label_dim=label_dim, logvar_channels=logvar_channels)
        if not sigma_min > 0:
            raise ConfigError(f"model.sigma_min: expected > 0, got {sigma_min!r}")
        self.sigma_min = float(sigma_min)
        if self.logvar_linear is not None:  # None with logvar_channels=0 (EDM's own EDMPrecond has no head)
            self.logvar_linear.requires_grad_(False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        _, _, c_in, c_noise = preconditioning(sigma, self.sigma_data, x.ndim)  # EDM's c_in and c_noise
        c_skip, c_out = boundary_scalings(sigma, self.sigma_data, self.sigma_min, x.ndim)
        labels = self.one_hot(class_labels, x.shape[0], x.device)
        F_x = self.net(c_in * x, c_noise, labels)
        return c_skip * x.float() + c_out * F_x.float()


def heun_step(teacher: nn.Module, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
              labels: torch.Tensor | None) -> torch.Tensor:
    """One Heun step (EDM Alg. 1 without churn) of dx/dsigma = (x - D(x, sigma)) / sigma from sigma_from [B] to
    sigma_to [B] (both > 0), the teacher evaluated at both ends. float32 [B, ...]."""
    h = expand_batch(sigma_to - sigma_from, x.ndim)
    d_from = (x - teacher(x, sigma_from, labels).float()) / expand_batch(sigma_from, x.ndim)
    x_euler = x + h * d_from
    d_to = (x_euler - teacher(x_euler, sigma_to, labels).float()) / expand_batch(sigma_to, x.ndim)
    return x + h * (0.5 * d_from + 0.5 * d_to)


@torch.no_grad()
def lerp_target_(target: nn.Module, online: nn.Module, decay: float) -> None:
    """theta^- <- decay theta^- + (1 - decay) theta for every parameter of `target`, from the same-named parameter
    of `online`, in place on plain (unsharded) modules."""
    src = dict(online.named_parameters())
    names = [n for n, _ in target.named_parameters()]
    if sorted(names) != sorted(src):
        raise ValueError("lerp_target_: the target and the online network have different parameters")
    dst = [p for _, p in target.named_parameters()]
    torch._foreach_lerp_(dst, [src[n].detach().to(p.dtype) for n, p in zip(names, dst, strict=True)], 1.0 - decay)


VGG_SLICE_OF = {i: s + 1 for s, (lo, hi) in enumerate([(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)])
                for i in range(lo, hi)}  # torchvision features index -> lpips trunk slice (relu1_2 .. relu5_3)


def _lpips_state(lpips_pkg, net: nn.Module, weights: str) -> dict[str, torch.Tensor]:
    """A whole state dict for `net` from `weights`: a whole LPIPS state dict as it is, or torchvision's VGG16 mapped
    onto lpips' trunk slices with the linear heads from the package's own weights/v0.1/vgg.pth."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not any(k.startswith("features.") for k in state):
        return state
    trunk = {}
    for k, v in state.items():
        if k.startswith("features.") and k.count(".") == 2 and int(k.split(".")[1]) in VGG_SLICE_OF:
            _, index, name = k.split(".")
            trunk[f"net.slice{VGG_SLICE_OF[int(index)]}.{index}.{name}"] = v
    heads = torch.load(Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                       weights_only=True)
    heads = {**heads, **{f"lins.{k[3]}.{k.split('.', 1)[1]}": v for k, v in heads.items()}}  # lin0.* is lins.0.*
    scaling = {k: v for k, v in net.state_dict().items() if k.startswith("scaling_layer.")}
    return {**scaling, **trunk, **heads}


def build_lpips(weights: str | None, random_init: bool, key: str = "objective") -> nn.Module:
    """LPIPS (Zhang et al. 2018, VGG trunk, v0.1) in eval mode without gradients, built without any download.
    `weights`: torchvision's VGG16 state dict (features.*) or a whole LPIPS state dict; None with `random_init`:
    random trunk and heads (tests only)."""
    try:
        import lpips
    except ImportError:
        raise ConfigError(f"{key}.distance='lpips' needs the lpips package (pip install lpips)") from None
    if weights is None and not random_init:
        raise ConfigError(f"{key}.lpips_weights: distance 'lpips' needs weights; {LPIPS_WEIGHTS_HELP} "
                          f"(or set {key}.lpips_random_init=True for tests)")
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"{key}.lpips_weights: no file '{weights}'; {LPIPS_WEIGHTS_HELP}")
    # Built on the meta device: torchvision's whole VGG16 (a 120M-parameter classifier lpips drops) costs no time
    # or memory, and nothing is downloaded (pnet_rand: no ImageNet trunk; pretrained=False: no head file read).
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note on the `pretrained` argument lpips passes
        net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    net.to_empty(device="cpu")
    net.scaling_layer = lpips.ScalingLayer()  # its constant shift and scale, which to_empty left undefined
    if weights is None:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):  # every parameter of LPIPS-VGG is a convolution's (trunk and heads)
                m.reset_parameters()
        return net.eval().requires_grad_(False)
    try:  # an unreadable file, a non-dict or mismatched entries: one error naming the file
        net.load_state_dict(_lpips_state(lpips, net, weights), strict=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{key}.lpips_weights: '{weights}' is not an LPIPS VGG or torchvision VGG16 state dict "
                          f"({detail}); {LPIPS_WEIGHTS_HELP}") from None
    return net.eval().requires_grad_(False)


class TargetUpdate(NamedTuple):
    """After a successful optimizer step of `source`: part <- decay part + (1 - decay) source (parameters)."""

    part: str  # a frozen part with the same parameters as `source`
    source: str  # the trainable part it follows
    decay: float  # mu


@OBJECTIVES.register_module()
class ConsistencyDistillationLoss(Objective):
    """CD of the frozen part `teacher` (an EDM denoiser D(x, sigma, labels)) into the part `model` (a
    ConsistencyPrecond, initialised from the teacher by its part `init`); with target_decay > 0 also the frozen part
    `target`, a copy of `model` the engine moves towards it after each step (`target_updates`).

    One phase `train` stepping `model` only: the teacher and the target are evaluated under no_grad and are in no
    phase, so neither ever changes through an optimizer. Random draws, all from the trainer's `generator`, in this
    order per micro-batch: the pair index n [B] (torch.randint), then the noise z [B, ...] (torch.randn); nothing
    else is random (LPIPS is in eval mode), so a resumed run redraws the same numbers."""

    score_part = "model"

    def __init__(
        self,
        num_scales: int = 18,  # N: grid points sigma_0..sigma_{N-1} (CIFAR-10: 18; ImageNet-64 / LSUN: 40)
        sigma_min: float = 0.002,  # sigma_0; must equal the model's sigma_min (the boundary f(x, sigma_min) = x)
        sigma_max: float = 80.0,  # sigma_{N-1}
        rho: float = 7.0,  # grid curvature (EDM eq. 5)
        distance: str = "l2",  # d: 'l2' | 'l1' (means over elements) | 'pseudo_huber' | 'lpips'
        weighting: str = "uniform",  # lambda: 'uniform' (CD) | 'icm' (iCT: 1 / (sigma_{n+1} - sigma_n))
        huber_c: float | None = None,  # pseudo-Huber c; None: 0.00054 sqrt(elements per example) (iCT)
        lpips_weights: str | None = None,  # local VGG16 / LPIPS weights file (see build_lpips)
        lpips_random_init: bool = False,  # lpips_weights=None: random LPIPS weights (tests only)
        lpips_resize: int = 224,  # LPIPS input side: smaller images are upsampled bilinearly to it (the paper)
        target_decay: float = 0.0,  # mu; 0: the target is the student under stop-gradient (no `target` part)
    ):
        if not isinstance(num_scales, int) or isinstance(num_scales, bool) or num_scales < 2:
            raise ConfigError(f"objective.num_scales: expected an int >= 2, got {num_scales!r}")
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"objective: expected 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
        if not rho > 0:
            raise ConfigError(f"objective.rho: expected > 0, got {rho!r}")
        if distance not in DISTANCES:
            raise ConfigError(f"objective.distance: expected one of {DISTANCES}, got {distance!r}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"objective.weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
        if huber_c is not None and not huber_c > 0:
            raise ConfigError(f"objective.huber_c: expected > 0 or None, got {huber_c!r}")
        if not 0.0 <= target_decay < 1.0:
            raise ConfigError(f"objective.target_decay: expected 0 <= mu < 1, got {target_decay!r}")
        self.num_scales, self.sigma_min, self.sigma_max, self.rho = num_scales, sigma_min, sigma_max, rho
        self.distance, self.weighting, self.huber_c = distance, weighting, huber_c
        self.lpips_resize, self.target_decay = int(lpips_resize), float(target_decay)
        self.lpips = build_lpips(lpips_weights, lpips_random_init) if distance == "lpips" else None
        self.target_part = "target" if self.target_decay > 0 else "model"
        self.parts = ("model", "teacher", "target") if self.target_decay > 0 else ("model", "teacher")
        # {frozen part: trainable part it follows}. The trainer refuses a non-empty one: it does not move frozen
        # parts yet (the module doc).
        self.follows = {"target": "model"} if self.target_decay > 0 else {}

    def phases(self, step: int) -> list[Phase]:
        return [Phase("train", ("model",))]

    def grid(self, device: torch.device | str) -> torch.Tensor:
        """sigma_0 < ... < sigma_{N-1}: [num_scales] float32 on `device`."""
        return karras_grid(self.num_scales, self.sigma_min, self.sigma_max, self.rho, device)

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        """The pair index n [B] uniform in [0, N - 2] (the pair sigma_n < sigma_{n+1}; never N - 1), then unit
        noise z like `x`, both from `generator` on x's device."""
        index = torch.randint(0, self.num_scales - 1, (x.shape[0],), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        return {"index": index, "noise": noise}

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        raise ConfigError("ConsistencyDistillationLoss: the CD loss needs the teacher and the target besides the "
                          "scored model, so curation and ValidationHook cannot score it with one model; evaluate "
                          "samples (evaluators) instead")

    def __call__(self, phase: Phase, models: Mapping[str, nn.Module], batch: dict,
                 generator: torch.Generator) -> LossOutput:
        if phase.name != "train":
            raise ValueError(f"ConsistencyDistillationLoss: unknown phase '{phase.name}' (expected 'train')")
        cond = batch.get("cond")
        if cond is None:
            cond = self.sample_condition(batch["x"], generator)
        return LossOutput(self.loss(models, batch, cond), {})

    def loss(self, models: Mapping[str, nn.Module], batch: dict, cond: Cond) -> torch.Tensor:
        """Per-example CD loss [B] float32 at `cond`; gradients reach only models['model']."""
        x, labels = batch["x"].float(), batch.get("label")
        grid = self.grid(x.device)
        sigma_lo, sigma_hi = grid[cond["index"]], grid[cond["index"] + 1]
        x_hi = x + expand_batch(sigma_hi, x.ndim) * cond["noise"].float()
        with torch.no_grad():  # the ODE step and the target are the regression target (stop-gradient)
            x_lo = heun_step(models["teacher"], x_hi, sigma_hi, sigma_lo, labels)
            target = models[self.target_part](x_lo, sigma_lo, labels).float()
        online = models["model"](x_hi, sigma_hi, labels).float()
        weight = torch.ones_like(sigma_hi) if self.weighting == "uniform" else 1.0 / (sigma_hi - sigma_lo)
        return weight * self.metric(online, target)

    def metric(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d(a, b) per example [B] float32 for [B, ...] tensors."""
        diff = (a - b).flatten(1)
        if self.distance == "l2":
            return diff.square().mean(1)
        if self.distance == "l1":
            return diff.abs().mean(1)
        if self.distance == "pseudo_huber":
            c = self.huber_c if self.huber_c is not None else HUBER_C_PER_SQRT_DIM * math.sqrt(diff.shape[1])
            return (diff.square().sum(1) + c**2).sqrt() - c
        return self.lpips_distance(a, b)

    def lpips_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS [B] of images [B, 3, H, W] in [-1, 1], upsampled bilinearly to lpips_resize when smaller."""
        if a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"ConsistencyDistillationLoss: distance 'lpips' needs RGB images [B, 3, H, W], got "
                             f"{tuple(a.shape)}")
        if next(self.lpips.parameters()).device != a.device:
            self.lpips = self.lpips.to(a.device)
        if a.shape[-1] < self.lpips_resize:
            size = (self.lpips_resize, self.lpips_resize)
            a = nn.functional.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = nn.functional.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return self.lpips(a, b).reshape(-1).float()

    # ------------------------------------------------------------------ the target network
    def target_updates(self, phase: Phase) -> list[TargetUpdate]:
        """The target updates due after a successful optimizer step of `phase` (none after a skipped one, as
        openai/consistency_models updates only when the step was taken). Empty for mu = 0, where the target is the
        student itself. Not applied by the trainer yet (the module doc)."""
        if self.target_decay == 0 or "model" not in phase.parts:
            return []
        return [TargetUpdate("target", "model", self.target_decay)]

    def update_target(self, models: Mapping[str, nn.Module]) -> None:
        """The updates of `target_updates` on plain modules (one process, or a test driving the objective)."""
        for u in self.target_updates(Phase("train", ("model",))):
            lerp_target_(models[u.part], models[u.source], u.decay)
