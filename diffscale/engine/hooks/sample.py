"""SampleHook: a grid of samples during training, as a PNG in work_dir/samples/ and a TensorBoard image.

The weights (raw, or the average `ema`) are consolidated on rank 0 (collective, so it works under FSDP2 and
ZeRO-3), which samples `num` images with the config's sampler from fixed per-sample seeds: the same noise and
classes at every interval, so grids from different steps compare directly.
"""

import logging

import torch

from diffscale.engine.hooks.base import Hook, every
from diffscale.engine.hooks.nets import part_copy
from diffscale.evaluation.pipeline import build_guide, sampling_parts, test_settings
from diffscale.registry import HOOKS, SAMPLERS, build
from diffscale.sampling.generate import generate, sample_shape, unconditional

log = logging.getLogger("diffscale")


def preview(samples: torch.Tensor) -> torch.Tensor:
    """Samples [B, C, H, W] in about [-1, 1] -> something viewable in [0, 1] with 1 or 3 channels: images as
    they are; latents (C = 4) through their first three channels."""
    x = samples.float()
    if x.shape[1] not in (1, 3):
        x = x[:, :3]
    return ((x + 1) / 2).clamp(0, 1)


@HOOKS.register_module()
class SampleHook(Hook):
    def __init__(
        self,
        interval: int = 0,  # steps between grids; 0: only at the end of training
        num: int = 64,  # samples in the grid (classes 0, 1, 2, ... in order)
        ema: str | None = None,  # the average to sample (an EMAHook key such as 'pf_0.100'); None: raw weights
        part: str | None = None,  # the part that samples; None: test_cfg.part, else the run's only part
        sampler: dict | None = None,  # a SAMPLERS config; its `guidance` weights `guide`
        guide: str | dict | None = None,  # None; 'cfg' (the same net without labels); dict(model, checkpoint, ema)
        seed: int = 0,  # sample i starts from noise seeded seed + i
        nrow: int = 8,  # images per grid row
    ):
        self.interval, self.num, self.ema, self.seed, self.nrow = interval, num, ema, seed, nrow
        self.part_name = part
        self.sampler_cfg = sampler or dict(type="EDMHeunSampler", num_steps=32)
        self.guide_cfg = guide

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        self.sampler = build(SAMPLERS, self.sampler_cfg, "SampleHook.sampler")
        settings = test_settings(trainer.cfg, part=self.part_name)
        self.part, decoder = sampling_parts(trainer.cfg, settings)
        self.guide = None
        if isinstance(self.guide_cfg, dict) and trainer.dist.is_main:  # fail at start-up, not at the first grid
            self.guide = build_guide(self.guide_cfg, None, trainer.dist.device, "SampleHook.guide")
        # The decoder is frozen: one copy for the run (collective, so FSDP2 / ZeRO-3 shards are gathered).
        self.decoder = part_copy(trainer, decoder, None, trainer.dist.device) if decoder else None

    def after_step(self, metrics: dict) -> None:
        step = self.trainer.step
        if every(step, self.interval) and step != self.trainer.max_iters:  # the last grid comes from after_run
            self.sample()

    def after_run(self) -> None:
        self.sample()

    def sample(self) -> None:
        trainer = self.trainer
        device = trainer.dist.device
        net = part_copy(trainer, self.part, self.ema, device)  # collective: every rank takes part
        if not trainer.dist.is_main:
            return
        guide = unconditional(net) if self.guide_cfg == "cfg" else self.guide
        batches = generate(net, self.sampler, self.num, self.num, sample_shape(net, None), guide=guide,
                           num_classes=int(getattr(net, "label_dim", 0)), seed=self.seed, device=device,
                           images=False, decoder=self.decoder)
        samples = torch.cat([b.samples for b in batches]).cpu()
        from torchvision.utils import make_grid, save_image  # 1.5 s to import: only when a grid is written

        grid = make_grid(preview(samples), nrow=self.nrow, padding=1)
        path = trainer.work_dir / "samples" / f"grid_{self.ema or 'raw'}_iter_{trainer.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        trainer.writer.add_image(f"samples/{self.ema or 'raw'}", grid, trainer.step)
        log.info("sample grid: %s", path)
