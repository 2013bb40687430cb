"""The builder: a config's Keras model, and what it leaves behind."""

from __future__ import annotations

import pytest

from cnnbuild.validate import load_config


@pytest.mark.parametrize("caller", ["float32", "mixed_float16"])
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "float32"])
def test_build_model_restores_the_callers_dtype_policy(caller, policy):
    """The model's layers take the policy asked for (the output layer float32); Keras'
    global policy is the caller's again once it is built, compiled or not."""
    from cnnbuild.builder import build_model, keras_module

    keras = keras_module()
    cfg = load_config("configs/shapes_demo.yaml")
    keras.mixed_precision.set_global_policy(caller)
    try:
        for compile in (False, True):
            model = build_model(cfg, compile=compile, mixed_precision=policy)
            assert keras.mixed_precision.global_policy().name == caller
            assert model.layers[1].dtype_policy.name == policy
            assert model.get_layer(cfg.output).dtype_policy.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
