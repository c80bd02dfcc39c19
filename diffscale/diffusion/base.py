"""The objective protocol (docs/architecture.md, "Parts, phases and objectives").

An objective names the parts (networks) it needs, says which update phases an iteration has, and turns a
batch into per-example losses for one phase. The trainer runs the phases in order; each phase steps only the
parts it names. The per-example noise of a diffusion loss (EDM: sigma and noise; flow and DDPM: t and noise)
is drawn by `sample_condition`, apart from its scoring by `per_example`, so that curation and validation can
score any objective's model on fixed noise.
"""

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn


class Phase(NamedTuple):
    """One update of an iteration: its name (TensorBoard `loss/<name>`) and the parts it steps."""

    name: str
    parts: tuple[str, ...]


class LossOutput(NamedTuple):
    loss: torch.Tensor  # [B] per-example losses (float32); the trainer back-propagates their mean
    logs: dict[str, torch.Tensor]  # scalar tensors, averaged over micro-batches and ranks, logged as `<phase>/<name>`


Cond = dict[str, torch.Tensor]  # per-example noise of one batch, each tensor [B, ...]


class Objective:
    """Base class and interface. `parts`: the part names it needs (a config's `parts` keys, or 'model' for the
    one-part shorthand); `score_part`: the part `per_example` scores (curation, validation).

    A single-model diffusion loss implements `sample_condition` and `per_example` and inherits the rest: one
    phase `train` stepping `model`, whose loss is `per_example` at the batch's own condition (a curated batch
    carries the one it was scored at) or at a fresh one.
    """

    parts: tuple[str, ...] = ("model",)
    score_part: str = "model"

    def phases(self, step: int) -> list[Phase]:
        """The update phases of iteration `step` (0-based), in order."""
        return [Phase("train", self.parts)]

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        """The noise of each example of `x` [B, ...], drawn from `generator` on x's device."""
        raise NotImplementedError

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """Loss [B] (float32) of `model` on `batch` ('x', optional 'label') at `cond`."""
        raise NotImplementedError

    def __call__(self, phase: Phase, models: Mapping[str, nn.Module], batch: dict,
                 generator: torch.Generator) -> LossOutput:
        cond = batch.get("cond")
        if cond is None:
            cond = self.sample_condition(batch["x"], generator)
        return LossOutput(self.per_example(models[self.score_part], batch, cond), self.condition_logs(cond))

    def condition_logs(self, cond: Cond) -> dict[str, torch.Tensor]:
        """Scalar tensors the single-model `__call__` logs about a batch's condition (none by default)."""
        return {}

    def after_step(self, phase: Phase, out: LossOutput) -> None:
        """Called after each phase's optimizer step with its last micro-batch's output (e.g. to update a
        loss-aware timestep sampler). Must be identical on every rank (use reduced values)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def index_batch(batch: dict, idx: torch.Tensor) -> dict:
    """The examples `idx` of a batch whose values are tensors [B, ...] or dicts of them (the condition)."""
    return {k: index_batch(v, idx) if isinstance(v, dict) else v[idx] for k, v in batch.items()}
