"""Import every module that registers a component, so that configs can name any of them."""

import diffscale.data.streaming  # noqa: F401
import diffscale.data.toy  # noqa: F401
import diffscale.diffusion.edm  # noqa: F401
import diffscale.engine.hooks.checkpoint  # noqa: F401
import diffscale.engine.hooks.curation  # noqa: F401
import diffscale.engine.hooks.ema  # noqa: F401
import diffscale.engine.hooks.eval  # noqa: F401
import diffscale.engine.hooks.logger  # noqa: F401
import diffscale.engine.hooks.sample  # noqa: F401
import diffscale.engine.hooks.toy_plot  # noqa: F401
import diffscale.engine.hooks.validation  # noqa: F401
import diffscale.engine.lr_schedules  # noqa: F401
import diffscale.engine.strategies.ddp  # noqa: F401
import diffscale.engine.strategies.deepspeed  # noqa: F401
import diffscale.engine.strategies.fsdp  # noqa: F401
import diffscale.evaluation.classifier  # noqa: F401
import diffscale.evaluation.cmmd  # noqa: F401
import diffscale.evaluation.fd_dinov2  # noqa: F401
import diffscale.evaluation.fid  # noqa: F401
import diffscale.evaluation.toy_metrics  # noqa: F401
import diffscale.models.edm2_unet  # noqa: F401
import diffscale.models.toy_mlp  # noqa: F401
import diffscale.sampling.edm_heun  # noqa: F401
import diffscale.selection.jest  # noqa: F401
import diffscale.selection.simple  # noqa: F401
