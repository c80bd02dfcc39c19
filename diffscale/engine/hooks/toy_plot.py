"""ToyPlotHook: sample the 2D toy with the EDM Heun sampler and plot over the ground truth (PNG + TensorBoard)."""

import json

import torch

from diffscale.data.toy import tree_mixture
from diffscale.engine.hooks.base import Hook, every
from diffscale.engine.hooks.nets import part_copy
from diffscale.evaluation.pipeline import build_guide, sampling_parts, test_settings
from diffscale.evaluation.toy_metrics import toy_metrics
from diffscale.evaluation.toy_plot import plot_samples
from diffscale.registry import HOOKS, SAMPLERS, build


@HOOKS.register_module()
class ToyPlotHook(Hook):
    """Every `interval` steps (0: only at the end) plot `num_samples` samples of the raw weights and of
    the average `ema` (a key such as 'pf_0.100', None for none). With `guide` (dict(model, checkpoint, ema),
    e.g. the AJEST reference) and `sampler.guidance` w != 1, samples are autoguided:
    D = D_guide + w (D - D_guide).

    `metrics=True` also computes the toy metrics (evaluation/toy_metrics.py) of each variant, without
    guidance and, with a guide, at the sampler's guidance weight; they go to TensorBoard (`toy/<variant>/...`)
    and to work_dir/toy_metrics.json. `part`: the part that samples (None: test_cfg.part, else the only part;
    a DMD2 run plots its one-step generator with sampler OneStepSampler). `with_denoiser=False` leaves out the
    metrics that read the network as an EDM denoiser D(x; sigma) (a DDPM network takes timesteps)."""

    def __init__(self, interval: int = 0, num_samples: int = 4096, sampler: dict | None = None,
                 ema: str | None = "pf_0.100", seed: int = 0, guide: dict | None = None, metrics: bool = False,
                 part: str | None = None, with_denoiser: bool = True):
        self.with_denoiser = with_denoiser
        self.interval, self.num_samples, self.ema, self.seed = interval, num_samples, ema, seed
        self.part_name = part
        self.sampler_cfg = sampler or dict(type="EDMHeunSampler", num_steps=32, sigma_max=5.0)
        self.guide_cfg, self.metrics = guide, metrics

    def before_run(self, trainer) -> None:
        super().before_run(trainer)
        self.mixture = tree_mixture()
        self.sampler = build(SAMPLERS, self.sampler_cfg, "ToyPlotHook.sampler")
        self.part = sampling_parts(trainer.cfg, test_settings(trainer.cfg, part=self.part_name))[0]
        self.guide = None
        if self.guide_cfg is not None and trainer.dist.is_main:
            self.guide = build_guide(self.guide_cfg, None, torch.device("cpu"), "ToyPlotHook.guide")

    def after_step(self, metrics: dict) -> None:
        step = self.trainer.step
        if every(step, self.interval) and step != self.trainer.max_iters:  # the last plot comes from after_run
            self.plot()

    def after_run(self) -> None:
        self.plot()

    def plot(self) -> None:
        trainer = self.trainer
        cpu = torch.device("cpu")
        variants = {"raw": part_copy(trainer, self.part, None, cpu)}  # collective: every rank takes part
        if self.ema is not None:
            variants[self.ema] = part_copy(trainer, self.part, self.ema, cpu)
        if not trainer.dist.is_main:
            return
        gen = torch.Generator().manual_seed(self.seed)
        labels = torch.arange(self.num_samples) % 2
        noise = torch.randn(self.num_samples, 2, generator=gen)
        for name, net in variants.items():
            samples = self.sampler(net, noise, labels, guide=self.guide)
            path = trainer.work_dir / "samples" / f"toy_{name}_iter_{trainer.step:07d}.png"
            image = plot_samples(self.mixture, samples, labels, path, title=f"{name}, step {trainer.step}")
            trainer.writer.add_image(f"samples/{name}", image, trainer.step, dataformats="HWC")
            if self.metrics:
                self.evaluate(name, net)

    def evaluate(self, name: str, net: torch.nn.Module) -> None:
        trainer = self.trainer
        weights = [1.0] + ([self.sampler.guidance] if self.guide is not None and self.sampler.guidance != 1 else [])
        path = trainer.work_dir / "toy_metrics.json"
        results = json.loads(path.read_text()) if path.is_file() else {}
        for w in weights:
            key = f"{name}" if w == 1 else f"{name}_guided_w{w:g}"
            values = toy_metrics(net, self.mixture, guide=self.guide, weight=w, num_samples=self.num_samples,
                                 sampler=self.sampler, seed=self.seed, with_denoiser=self.with_denoiser)
            results.setdefault(str(trainer.step), {})[key] = values
            for metric, value in values.items():
                trainer.writer.add_scalar(f"toy/{key}/{metric}", value, trainer.step)
        path.write_text(json.dumps(results, indent=1) + "\n")
