"""alexnet: a faithful reproduction of Krizhevsky, Sutskever & Hinton (NIPS 2012)."""

from alexnet.config import Config, ConfigError, load_config
from alexnet.model import AlexNet, build_model

__version__ = "0.1.0"
__all__ = ["AlexNet", "Config", "ConfigError", "__version__", "build_model", "load_config"]
