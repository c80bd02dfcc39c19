"""Early-exit sampling (DeeDiff, Tang et al. 2023) for a DeeDiffUViT (models/deediff.py): at every sampling step
each sample runs the network layer by layer and leaves at the first exit whose probe says its uncertainty is at or
below `threshold`; the DDPM / DDIM update is sampling/ddpm.py's, unchanged.

Exits. Exit i (0..depth-1) reads the input of layer i: its probe u_i and its head g_i see the tokens before layer
i runs. A sample takes exit i at the first i with u_i <= threshold; if there is none it takes exit `depth`, the
network's own head. So threshold 1 leaves every sample at exit 0 (u is in [0, 1]) and threshold 0 runs the full
network unless a probe outputs exactly 0 (a sigmoid reaches 0 in float32 only below a logit of about -104).

Two modes give the same samples and the same exit indices:
- real (`simulate=False`): rows that exit are removed from the batch. At layer i the probe runs on the active rows,
  the leaving rows' exit head runs on them alone and is scattered into the output, and the staying rows (tokens,
  timesteps and the U-ViT long-skip stack in lockstep) are gathered for layer i. No loop over examples. Deciding
  the active set's size needs one host sync per layer per step (`.sum()` of the exit mask; the partition itself
  is a stable argsort, without a sync), inherent in removing rows; a step with every row gone stops early.
- simulated (`simulate=True`): the seed's way. forward_exits runs the whole network with every head and probe on
  the whole batch, then each sample's output is picked at its first exit below the threshold. No saving; a check.

Record. After each call `last_exits` is an int64 tensor [B, num_steps] on the samples' device: last_exits[b, i]
is the exit sample b took at sampler step i (timestep tau[i] = `self.tau[i]`; steps run from i = num_steps - 1
down to 0). evaluation/flops.py turns it into GFLOPs per sample and the layer ratio.
"""

import torch

from diffscale.errors import ConfigError
from diffscale.registry import SAMPLERS
from diffscale.sampling.ddpm import DDIMSampler, DDPMSampler
from diffscale.sampling.guidance import Denoiser

REAL_EXIT_METHODS = ("embed", "run_layer", "head", "exit_output", "uncertainty")


def early_exit_forward(net, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                       threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Real early exit: (output [B, C', H, W], exit index [B] int64 in 0..depth) of x [B, C, H, W] at model
    time t [B] (or one value). Rows leave the batch at their exit (module docstring)."""
    B, depth = x.shape[0], net.depth
    tokens, skips = net.embed(x, t, labels), []
    t = t.reshape(-1).expand(B) if t.numel() == 1 else t
    rows = torch.arange(B, device=x.device)  # the full-batch index of each active row
    exits = torch.full((B,), depth, dtype=torch.long, device=x.device)
    out = None
    for i in range(depth):
        stop = net.uncertainty(i, tokens, t) <= threshold
        n_stop = int(stop.sum())  # the one host sync of the layer: how many rows leave
        if n_stop:
            n_keep = rows.numel() - n_stop
            order = torch.argsort(stop.to(torch.uint8), stable=True)  # staying rows first, leaving rows last
            keep, leave = order[:n_keep], order[n_keep:]
            y = net.exit_output(i, tokens[leave])
            if out is None:
                out = y.new_empty((B, *y.shape[1:]))
            out[rows[leave]] = y
            exits[rows[leave]] = i
            if n_keep == 0:
                return out, exits
            rows, tokens, t = rows[keep], tokens[keep], t[keep]
            skips[:] = [s[keep] for s in skips]  # the long-skip stack follows its rows
        tokens = net.run_layer(i, tokens, skips)
    y = net.head(tokens)
    if out is None:
        return y, exits
    out[rows] = y
    return out, exits


def simulated_exit_forward(net, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                           threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's simulated exit: every exit on the whole batch, then each sample's first exit with u <= threshold
    (exit depth if none). Same returns as early_exit_forward."""
    final, outs, u = net.forward_exits(x, t, labels)  # [B, ...], [depth, B, ...], [depth, B]
    B = x.shape[0]
    # A row of True at index depth: argmax (first maximum) then gives depth where no probe is below the threshold.
    below = torch.cat([u <= threshold, torch.ones((1, B), dtype=torch.bool, device=u.device)])
    exits = below.to(torch.uint8).argmax(dim=0)
    return torch.cat([outs, final[None]])[exits, torch.arange(B, device=x.device)], exits


class _EarlyExit:
    """What both early-exit samplers add to their DDPM / DDIM base: the exit rule and the record."""

    def __init__(self, threshold: float, simulate: bool = False, variance: str = "fixed_small", **kw):
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"sampler.threshold: expected an uncertainty in [0, 1] (exit when u <= threshold), "
                              f"got {threshold!r}")
        super().__init__(variance=variance, **kw)
        self.threshold, self.simulate = float(threshold), bool(simulate)
        self.last_exits: torch.Tensor | None = None  # [B, num_steps] int64 after each call (module docstring)

    @torch.no_grad()
    def __call__(self, net: Denoiser, noise: torch.Tensor, labels: torch.Tensor | None = None,
                 guide: Denoiser | None = None, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Samples [B, C, H, W] float32 from unit `noise` and `labels`, as the base sampler's; records last_exits."""
        name = type(self).__name__
        if guide is not None:
            raise ValueError(f"{name}: guidance is not supported with early exit (got a guide); pass guide=None")
        needed = ("forward_exits",) if self.simulate else REAL_EXIT_METHODS
        missing = [m for m in needed if not hasattr(net, m)]
        if missing:
            raise TypeError(f"{name}: the network must be a DeeDiffUViT (models/deediff.py); "
                            f"{type(net).__name__} has no {', '.join(missing)}")
        exit_forward = simulated_exit_forward if self.simulate else early_exit_forward
        record: list[torch.Tensor] = []

        def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            out, exits = exit_forward(net, x, t, y, self.threshold)
            record.append(exits)
            return out

        x = super().__call__(denoise, noise, labels, None, seeds)
        self.last_exits = torch.stack(record[::-1], dim=1)  # called at steps S-1..0: column i is step i
        return x


@SAMPLERS.register_module()
class EarlyExitDDPMSampler(_EarlyExit, DDPMSampler):
    """DDPMSampler (ancestral, all T steps by default, as the DeeDiff seed samples) with DeeDiff's early exit.

    threshold: exit at the first probe with u <= threshold (0: never early, 1: exit 0 at once); simulate: run the
    whole network and pick exits afterwards. The variance defaults to fixed_small (DeeDiffLoss trains C channels);
    the other arguments are DDPMSampler's. Guidance is not supported.
    """


@SAMPLERS.register_module()
class EarlyExitDDIMSampler(_EarlyExit, DDIMSampler):
    """DDIMSampler (num_steps strided steps, eta) with DeeDiff's early exit; arguments as EarlyExitDDPMSampler's
    plus DDIMSampler's."""
