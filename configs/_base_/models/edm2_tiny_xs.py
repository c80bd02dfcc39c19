# EDM2-XS (Karras et al. 2024) for Tiny ImageNet 64x64 (3 channels, 200 classes): 124.30M parameters.
# Every architecture key is listed so that --cfg-options can set it; None keeps the preset's value.
model = dict(
    type="EDM2Precond",
    sigma_data=0.5,  # std of the data scaled to [-1, 1]
    net=dict(
        type="EDM2UNet",
        preset="tiny-xs",  # img512-{xxs..xxl}, img64-{xs..xl}, tiny-{xxs,xs}: fixes size, channels and classes
        channels=None,  # base width (xxs 64, xs 128, s 192, ...)
        img_resolution=None,  # input side (64)
        label_dim=None,  # classes (tiny: 200)
        num_blocks=None,  # encoder blocks per resolution (3)
        channels_per_head=None,  # attention head width (64)
        dropout=None,  # residual-branch dropout (0 for xxs-s, 0.10 for m and larger)
    ),
)
# EDM2 loss (eq. 21): per-element (weight / exp(u)) ||D - y||^2 + u summed over the image, learned u(sigma);
# the noise of the AJEST Tiny ImageNet presets: ln(sigma) ~ N(-0.4, 1.0^2).
objective = dict(type="EDMLoss", P_mean=-0.4, P_std=1.0, sigma_data=0.5, learned_logvar=True, reduction="sum")
