"""The built-in ``shapes`` dataset (cnnbuild/data/synthetic.py)."""

from __future__ import annotations

import numpy as np

from cnnbuild.data.synthetic import CLASSES, generate, load_shapes


def test_shapes_is_deterministic_balanced_and_varied():
    x1, y1 = generate(500, seed=5)
    x2, y2 = generate(500, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, generate(500, seed=6)[0])
    assert np.bincount(y1).tolist() == [50] * len(CLASSES)
    data = load_shapes(train=200, test=50)
    assert data.image_shape == (32, 32, 3) and data.class_names == CLASSES
    # shapes sit at many positions: the per-image brightest-pixel location varies widely
    centres = np.array(
        [
            np.unravel_index(
                np.argmax(np.abs(x.astype(int) - np.median(x, (0, 1))).sum(-1)), (32, 32)
            )
            for x in x1[:100]
        ]
    )
    assert centres[:, 0].std() > 4 and centres[:, 1].std() > 4
