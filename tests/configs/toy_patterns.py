# toy_small as one explicit part whose `trainable` patterns train only the first block and the output layer, with
# a parameter group at a tenth of the lr: the rest of the network is frozen before the strategy wraps it.
_base_ = ["./toy_small.py"]
model = None  # a config derived from a one-part config switches to `parts` by clearing the shorthand
optimizer = None
lr_schedule = None
parts = dict(
    model=dict(
        model=dict(type="EDMPrecond", sigma_data=0.5, label_dim=2,
                   net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=64, num_layers=4)),
        optimizer=dict(type="Adam", lr=3e-3, betas=(0.9, 0.99),
                       param_groups=[dict(params="net.out.*", lr_mult=0.1)]),  # the output layer at lr / 10
        lr_schedule=dict(type="InvSqrtLR", ref_iters=512, rampup_iters=0),
        trainable=["net.blocks.0.*", "net.out.*"],
    ),
)
