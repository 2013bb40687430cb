"""tf.data input pipelines over in-memory uint8 images.

The images stay uint8 in memory (a quarter of float32's size). Each epoch shuffles an
index vector (cheap, a full shuffle) in an order derived from ``(seed, epoch)`` alone, so a
resumed run sees the same order as an uninterrupted one; it batches the indices, gathers
the batch and only then casts it to float32 (no scaling: the model owns it), in parallel,
and prefetches the next batches while the model trains.
Augmentation layers are part of the model, so they run in the training step, on the GPU
when there is one.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def make_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int | None = None,
    one_hot: int | None = None,
    shuffle_buffer: int | None = None,
    epoch: Any = None,
) -> Any:
    """A ``tf.data.Dataset`` of ``(float32 images, labels)`` batches.

    Args:
        x: images (N, H, W, C), uint8 or float32.
        y: integer labels (N,).
        batch_size: images per batch (the last batch may be smaller).
        training: shuffle every epoch.
        seed: shuffle seed (the same seed gives the same order every run).
        one_hot: number of classes, to give one-hot labels (categorical losses).
        shuffle_buffer: shuffle window in images; default the whole set.
        epoch: a ``tf.Variable`` (int64) holding the current epoch; with ``training``, each
            pass over the dataset is ordered by ``(seed, epoch)`` alone.
    """
    import tensorflow as tf

    images = tf.constant(x)
    labels = tf.constant(y)
    ds = tf.data.Dataset.range(len(x))
    if training and epoch is not None:
        n = len(x)
        key = tf.constant(seed or 0, tf.int64)

        def epoch_order(_):
            if shuffle_buffer and shuffle_buffer < n:  # a window, seeded by (seed, epoch)
                return tf.data.Dataset.range(n).shuffle(
                    shuffle_buffer, seed=key * 1_000_003 + epoch.read_value()
                )
            seeds = tf.stack([key, epoch.read_value()])
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seeds)
            return tf.data.Dataset.from_tensor_slices(order)

        ds = tf.data.Dataset.range(1).flat_map(epoch_order)
    elif training:
        ds = ds.shuffle(shuffle_buffer or len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and epoch is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(x) // batch_size)))

    def fetch(idx):
        xb = tf.cast(tf.gather(images, idx), tf.float32)
        yb = tf.gather(labels, idx)
        if one_hot is not None:
            yb = tf.one_hot(yb, one_hot)
        return xb, yb

    ds = ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
