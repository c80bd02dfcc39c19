"""fp16 dynamic loss scaling."""

from diffscale.engine.precision import DynamicLossScaler


def test_scaler_halves_on_overflow_and_grows_after_clean_steps():
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=3)
    scaler.update(overflow=True)
    assert scaler.scale == 512.0
    for _ in range(2):
        scaler.update(overflow=False)
    assert scaler.scale == 512.0
    scaler.update(overflow=False)
    assert scaler.scale == 1024.0
    restored = DynamicLossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.scale == 1024.0 and restored.clean_steps == 3


def test_scaler_never_goes_below_its_minimum():
    scaler = DynamicLossScaler(init_scale=4.0, min_scale=1.0)
    for _ in range(10):
        scaler.update(overflow=True)
    assert scaler.scale == 1.0
