"""cnnbuild: describe a CNN in YAML, check it in CI, see every shape, train it.

``import cnnbuild`` loads nothing heavy: the names below are imported on first use
(PEP 562), so ``cnnbuild --help`` starts without pydantic, the layer registry or
TensorFlow. :func:`build_model` imports TensorFlow when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ModelConfig", "__version__", "build_model", "load_config"]

if TYPE_CHECKING:
    from cnnbuild.config import ModelConfig
    from cnnbuild.validate import load_config


def __getattr__(name: str) -> Any:
    if name == "ModelConfig":
        from cnnbuild.config import ModelConfig

        return ModelConfig
    if name == "load_config":
        from cnnbuild.validate import load_config

        return load_config
    raise AttributeError(f"module 'cnnbuild' has no attribute {name!r}")


def build_model(config: ModelConfig | str, **kwargs: Any) -> Any:
    """Build and compile the Keras model of a config (a :class:`ModelConfig` or a path).

    See :func:`cnnbuild.builder.build_model` for the keyword arguments.
    """
    from cnnbuild.builder import build_model as _build
    from cnnbuild.config import ModelConfig
    from cnnbuild.validate import load_config

    if not isinstance(config, ModelConfig):
        config = load_config(config)
    return _build(config, **kwargs)
