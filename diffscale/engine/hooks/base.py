"""Hook events (docs/architecture.md, "Hooks"). A hook observes the loop or changes one named thing; hooks never
call each other. `before_step` runs on every micro-batch before its forward.

Every hook has a `name`, unique in a run (a config entry's `name=`, else the hook's default): its state in a
checkpoint and its EMA averages are keyed by it, so inserting or reordering hooks loads nothing into the wrong one.
"""

import torch


def every(step: int, interval: int, max_iters: int | None = None) -> bool:
    """True at steps interval, 2 interval, ... (`interval` <= 0: never) and, when `max_iters` is given, at the last
    step. The one schedule rule of every periodic hook (steps count from 1 after the first optimizer step)."""
    return (interval > 0 and step % interval == 0) or (max_iters is not None and step == max_iters)


class Hook:
    trainer = None  # set in before_run
    # Parameter-shaped tensors ({average name: {param name: local tensor}}) of part `mirror_part`, which the
    # strategy shards, saves and gathers like that part's parameters.
    param_mirrors: dict[str, dict[str, torch.Tensor]] = {}
    mirror_part: str | None = None

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.default_name()

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def default_name(self) -> str:
        return type(self).__name__

    def before_run(self, trainer) -> None:
        self.trainer = trainer

    def before_step(self, batch: dict) -> dict:
        return batch

    def after_step(self, metrics: dict) -> None:
        pass

    def after_run(self) -> None:
        pass

    def after_interrupt(self) -> None:
        """Instead of after_run when the run stopped on SIGTERM (after its save): only what must not be lost and
        takes well under a second (flush logs, publish a finished best checkpoint); no sampling, plots or
        evaluation, so the process exits inside a cluster's grace period (torchrun and SLURM: 30 s)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
