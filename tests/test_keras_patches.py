"""The saving workaround of :mod:`cnnbuild.keras_patches`, on real saves: Keras' own
``get_attr_skipset`` builds a throwaway layer for every layer it walks, on every save;
patched, the second save builds none and writes the same model."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbuild.builder import keras_module
from cnnbuild.keras_patches import EVERYWHERE, apply


def _model(keras):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i in range(6):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 8, 8, 3)), np.zeros(4), verbose=0)  # the optimizer's state too
    return model


def _layers_built_by_save(keras, model, path) -> int:
    """How many Layer objects one ``model.save`` constructs (the model's own: none)."""
    from keras.src.layers.layer import Layer

    built = []
    original = Layer.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    Layer.__init__ = counting
    try:
        model.save(path)
    finally:
        Layer.__init__ = original
    return len(built)


def test_the_skipset_patch_makes_saves_build_no_throwaway_layers(tmp_path):
    keras = keras_module()
    from keras.src.saving import saving_lib

    patch = EVERYWHERE[0]
    if not patch.applies_to(keras.__version__):
        pytest.skip(f"Keras {keras.__version__} is not one the patch was checked against")
    assert "saving-skipset-cache" in apply(patches=EVERYWHERE)
    model = _model(keras)
    patched = saving_lib.get_attr_skipset
    original = patched.__wrapped__  # Keras' own function, kept by the patch
    assert getattr(original, "__module__", "") == saving_lib.__name__
    try:
        saving_lib.get_attr_skipset = original
        before = [_layers_built_by_save(keras, model, tmp_path / f"own{i}.keras") for i in (1, 2)]
    finally:
        saving_lib.get_attr_skipset = patched
    _layers_built_by_save(keras, model, tmp_path / "warm.keras")
    after = _layers_built_by_save(keras, model, tmp_path / "patched.keras")
    # the bug: every save builds a throwaway Layer for each of the 9 layers it walks
    assert before[1] >= len(model.layers) and before[0] == before[1]
    assert after == 0
    own = keras.saving.load_model(tmp_path / "own2.keras")
    ours = keras.saving.load_model(tmp_path / "patched.keras")
    assert own.get_config() == ours.get_config()
    for a, b in zip(own.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(own.optimizer.variables, ours.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
