"""cnnbuild: describe a CNN in YAML, check it in CI, see every shape, train it.

The package imports no TensorFlow; :func:`build_model` imports it when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from cnnbuild.config import ModelConfig  # noqa: E402
from cnnbuild.validate import load_config  # noqa: E402

__all__ = ["ModelConfig", "__version__", "build_model", "load_config"]


def build_model(config: ModelConfig | str, **kwargs: Any) -> Any:
    """Build and compile the Keras model of a config (a :class:`ModelConfig` or a path).

    See :func:`cnnbuild.builder.build_model` for the keyword arguments.
    """
    from cnnbuild.builder import build_model as _build

    if not isinstance(config, ModelConfig):
        config = load_config(config)
    return _build(config, **kwargs)
