# The 2D tree toy's denoiser: EDM preconditioning around a residual MLP (Karras et al. 2024 toy sizes).
model = dict(
    type="EDMPrecond",
    sigma_data=0.5,  # std of the toy data
    label_dim=2,  # two classes; integer labels are one-hot encoded
    net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=64, num_layers=4),
)
# EDM2 loss with learned log-variance; the toy's noise distribution ln(sigma) ~ N(-2.3, 1.5^2).
objective = dict(type="EDMLoss", P_mean=-2.3, P_std=1.5, sigma_data=0.5, learned_logvar=True)
