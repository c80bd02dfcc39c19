"""Seeding and RNG state capture, so that a resumed run draws the same numbers as an uninterrupted one."""

import random

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG the loop draws from, as tensors (loadable with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def load_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


PER_EXAMPLE_CHUNK_FLOATS = 1 << 20  # floats drawn per example per call (4 MiB): steps come in chunks of this size


class PerExampleNoise:
    """Unit noise [B, *shape] for each of `num_draws` steps, example i's from its own CPU generator.

    Example i's draws depend only on its generator, `shape` and `num_draws`: one call draws a chunk of
    `chunk_steps(shape)` steps [m, *shape] per example (never one call per step), and the chunk length does not
    depend on the batch, so the same example gets the same noise at any batch size, world size and device.
    """

    def __init__(self, generators: list[torch.Generator], shape: tuple[int, ...], num_draws: int,
                 device: torch.device | str = "cpu"):
        self.generators, self.shape, self.device, self.left = generators, tuple(shape), device, num_draws
        numel = 1
        for s in self.shape:
            numel *= int(s)
        self.chunk = max(1, PER_EXAMPLE_CHUNK_FLOATS // max(numel, 1))
        self.buffer: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        """The next step's noise [B, *shape] on `device`."""
        if not self.buffer:
            if self.left <= 0:
                raise RuntimeError("PerExampleNoise: every draw was taken")
            m = min(self.chunk, self.left)
            chunk = torch.stack([torch.randn((m, *self.shape), generator=g) for g in self.generators], dim=1)
            self.buffer = list(chunk.to(self.device, non_blocking=True).unbind(0))[::-1]
            self.left -= m
        return self.buffer.pop()
