"""Hook events (DESIGN.md §3). A hook observes the loop or changes one named thing; hooks never call
each other. `before_step` runs on every micro-batch before its forward."""

import torch


class Hook:
    trainer = None  # set in before_run
    # Parameter-shaped tensors ({key: {param name: local tensor}}) the strategy must shard and save.
    param_mirrors: dict[str, dict[str, torch.Tensor]] = {}

    def before_run(self, trainer) -> None:
        self.trainer = trainer

    def before_step(self, batch: dict) -> dict:
        return batch

    def after_step(self, metrics: dict) -> None:
        pass

    def after_run(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
