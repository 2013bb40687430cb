"""tf.data input pipelines (cnnbuild/data/pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("shuffle_buffer", [None, 4])
def test_training_order_depends_on_seed_and_epoch_only(shuffle_buffer):
    import tensorflow as tf

    from cnnbuild.data.pipeline import make_pipeline

    epoch = tf.Variable(0, dtype=tf.int64)
    x, y = np.zeros((10, 1, 1, 1), np.uint8), np.arange(10)
    ds = make_pipeline(
        x, y, batch_size=4, training=True, seed=3, shuffle_buffer=shuffle_buffer, epoch=epoch
    )
    orders = []
    for e in (0, 1, 0):
        epoch.assign(e)
        orders.append([int(v) for _, labels in ds for v in labels.numpy()])
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[1]) == list(range(10))
