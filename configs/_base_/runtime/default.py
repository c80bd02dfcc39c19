strategy = dict(type="ddp", zero_stage=2)  # ddp | fsdp | deepspeed; zero_stage is read by deepspeed only
checkpoint = dict(interval=1024, keep=3)  # save every `interval` steps and at the end; keep the newest `keep`
hooks = []  # extra hooks, run in this order after the logger and checkpoint hooks
evaluators = []
