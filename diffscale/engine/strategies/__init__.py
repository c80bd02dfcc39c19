"""Strategies (STRATEGIES): ddp, fsdp, deepspeed; importing the package registers them."""

from diffscale.engine.strategies import ddp, fsdp, deepspeed  # noqa: F401, I001  (registration order: the order error messages list)
