"""The model owns its preprocessing, checked on real data nobody on the team made.

scikit-learn's digits are 1,797 real 8x8 handwritten digits (values 0..16), turned here
into uint8 pixels 0..255 as an image file would hold them. The same model must train
with the default scaling (an ``input_scaling`` layer added inside the model) and with
Keras' own idiom (a leading ``Rescaling`` layer), and the saved ``model.keras``, loaded
by plain Keras in a fresh process, must score raw uint8 pixels as ``train`` reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

sklearn_datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")

LAYERS = """
  - Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu}
  - Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Conv2D: {filters: 64, kernel_size: 3, padding: same, activation: relu}
  - Flatten
  - Dense: {units: 64, activation: relu}
  - Dense: {units: 10, activation: softmax}
"""


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    digits = sklearn_datasets.load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        pixels, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _config(write, npz, first: str) -> object:
    return write(
        f"name: digits\ninput: [8, 8, 1]\nlayers:\n{first}{LAYERS}"
        f"train:\n  dataset: {{npz: {npz}}}\n  epochs: 15\n  batch_size: 32\n  seed: 1\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "first",
    ["", "  - Rescaling: {scale: 0.00392156862745098}\n"],
    ids=["default-scaling", "keras-rescaling-first"],
)
def test_digits_train_and_the_saved_model_takes_raw_pixels(cli, write, tmp_path, digits_npz, first):
    run_dir = tmp_path / "run"
    result = cli("train", _config(write, digits_npz, first), "--out", run_dir)
    assert result.exit_code == 0, result.output
    reported = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
    assert reported >= 0.97, result.output
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        data = np.load({str(digits_npz)!r})
        model = keras.saving.load_model({str(run_dir / "model.keras")!r})
        x = data["x_test"]
        assert x.dtype == np.uint8
        probs = model.predict(x, verbose=0)
        print(json.dumps({{"accuracy": float((probs.argmax(1) == data["y_test"]).mean()),
                          "scaling": [l.name for l in model.layers
                                      if type(l).__name__ == "Rescaling"]}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(fresh["accuracy"] - reported) < 1e-3
    assert len(fresh["scaling"]) == 1  # exactly one scaling, inside the model
