"""alexnet: a faithful reproduction of Krizhevsky, Sutskever & Hinton (NIPS 2012).

The public API is loaded lazily, so `python -m alexnet.<module>` and `import alexnet` do no
work beyond what they use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["AlexNet", "Config", "ConfigError", "__version__", "build_model", "load_config"]

_EXPORTS = {
    "AlexNet": "alexnet.model",
    "build_model": "alexnet.model",
    "Config": "alexnet.config",
    "ConfigError": "alexnet.config",
    "load_config": "alexnet.config",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
