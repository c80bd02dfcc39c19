"""Importance sampling of timesteps by the loss's second moment (Nichol & Dhariwal 2021, Sec. 3.3, eq. 18).

Keep the last K losses of each of the T timesteps. Until every t has K, draw t uniformly; then draw t with
p_t proportional to sqrt(E[L_t^2]) over its history, mixed with `uniform_prob` of the uniform distribution, and
weight each example's loss by 1 / (T p_t) so that the expected loss is still the uniform-t loss.

Every step the (t, loss) pairs of every rank are gathered, so every rank holds the same history and draws from
the same p. The history is a ring buffer per t updated with tensor ops on the device: no host sync, no loop over
examples. Within one update the pairs count in gather order (rank 0's first); when a t gets more than K
new pairs, only its last K are kept, as appending them one by one would.
"""

import torch

from diffscale.errors import ConfigError
from diffscale.utils.dist import all_gather_rows


class LossSecondMomentResampler:
    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        if not isinstance(history_per_term, int) or history_per_term < 1:
            raise ConfigError(f"objective.history_per_term: expected a positive integer, got {history_per_term!r}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ConfigError(f"objective.uniform_prob: expected a probability in [0, 1], got {uniform_prob!r}")
        self.num_timesteps, self.history_per_term, self.uniform_prob = num_timesteps, history_per_term, uniform_prob
        T, K = num_timesteps, history_per_term
        # Row T is a bin for pairs that are not kept (non-finite, or older than the last K): writing there
        # instead of selecting keeps every shape static (no host sync). It is never read and never saved.
        self.history = torch.zeros(T + 1, K, dtype=torch.float64)
        self.count = torch.zeros(T + 1, dtype=torch.int64)  # losses held per t (at most K)
        self.ptr = torch.zeros(T + 1, dtype=torch.int64)  # next ring slot per t

    def _to(self, device: torch.device) -> None:
        if self.history.device != device:
            self.history, self.count, self.ptr = (x.to(device) for x in (self.history, self.count, self.ptr))

    def warmed_up(self) -> torch.Tensor:
        """A bool tensor: every t holds K losses."""
        return (self.count[:-1] == self.history_per_term).all()

    def weights(self, device: torch.device | None = None) -> torch.Tensor:
        """p [T] float64: uniform before warm-up, else sqrt(E[L_t^2]) normalised and mixed with uniform."""
        if device is not None:
            self._to(device)
        T = self.num_timesteps
        second = self.history[:-1].pow(2).mean(1).sqrt()
        p = second / second.sum().clamp(min=torch.finfo(torch.float64).tiny)
        p = p * (1 - self.uniform_prob) + self.uniform_prob / T
        uniform = torch.full_like(p, 1.0 / T)
        return torch.where(self.warmed_up(), p, uniform)

    def sample(self, batch: int, device: torch.device, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """t [batch] int64 drawn from p with `generator`, and the loss weights 1 / (T p_t) [batch] float32."""
        p = self.weights(device)
        t = torch.multinomial(p.float(), batch, replacement=True, generator=generator)
        return t, (1.0 / (self.num_timesteps * p[t])).float()

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor, gather: bool = True) -> None:
        """Add this rank's (t [n], unweighted loss [n]) pairs, and (gather=True) every other rank's: collective."""
        if gather:
            t, losses = all_gather_rows(t.long(), same_size=True), all_gather_rows(losses.double(), same_size=True)
        self._to(t.device)
        T, K = self.num_timesteps, self.history_per_term
        t = torch.where(losses.isfinite(), t.long(), T)  # non-finite losses go to the bin row
        order = torch.sort(t, stable=True).indices  # pairs of one t together, in gather order
        t_sorted, loss_sorted = t[order], losses.double()[order]
        n = t_sorted.shape[0]
        pos = torch.arange(n, device=t.device)
        starts = torch.where(torch.cat([t_sorted.new_ones(1, dtype=torch.bool), t_sorted[1:] != t_sorted[:-1]]),
                             pos, 0)
        occurrence = pos - torch.cummax(starts, 0).values  # j: index of the pair among those of its t
        new = torch.zeros(T + 1, dtype=torch.int64, device=t.device).scatter_add_(0, t_sorted, torch.ones_like(pos))
        keep = occurrence >= new[t_sorted] - K  # only the last K pairs of a t survive
        slot = (self.ptr[t_sorted] + occurrence) % K
        row = torch.where(keep, t_sorted, T)
        self.history.index_put_((row, torch.where(keep, slot, occurrence % K)), loss_sorted)
        self.ptr = (self.ptr + new) % K
        self.count = torch.clamp(self.count + new, max=K)

    def state_dict(self) -> dict:
        return {"history": self.history[:-1].cpu().clone(), "count": self.count[:-1].cpu().clone(),
                "ptr": self.ptr[:-1].cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        T, K = self.num_timesteps, self.history_per_term
        if tuple(state["history"].shape) != (T, K):
            raise ConfigError(f"objective: the checkpoint's timestep history is {tuple(state['history'].shape)}, "
                              f"this config's is ({T}, {K}) (num_timesteps, history_per_term)")
        device = self.history.device
        zero_row = torch.zeros(1, dtype=torch.int64)
        self.history = torch.cat([state["history"].double(), torch.zeros(1, K, dtype=torch.float64)]).to(device)
        self.count = torch.cat([state["count"].long(), zero_row]).to(device)
        self.ptr = torch.cat([state["ptr"].long(), zero_row]).to(device)
