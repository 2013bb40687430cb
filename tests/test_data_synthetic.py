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


def test_a_process_draws_the_set_once_and_no_caller_can_change_it():
    first = load_shapes(train=200, test=50)
    again = load_shapes(train=200, test=50)
    assert again.x_train.base is first.x_train.base is not None  # the same drawing
    assert again is not first  # each caller gets its own Data
    first.limited(10)
    assert len(again.x_train) == 200
    assert not first.x_train.flags.writeable and not first.x_test.flags.writeable
    try:
        first.x_train[0, 0, 0, 0] = 1
    except ValueError as exc:
        assert "read-only" in str(exc)
    else:
        raise AssertionError("the cached images could be written")
    x, y = generate(250, seed=2026)
    assert np.array_equal(np.concatenate([again.x_train, again.x_test]), x)
    assert np.array_equal(np.concatenate([again.y_train, again.y_test]), y)
