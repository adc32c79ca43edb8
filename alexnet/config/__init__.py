"""Typed configuration: YAML sections mapped onto frozen dataclasses whose defaults are the paper's.

``model`` and ``sections`` define the sections and their checks (helpers in ``checks``);
``loading`` reads YAML files and ``--set`` overrides into them. Everything public is
importable from ``alexnet.config``.
"""

from alexnet.config.checks import ConfigError
from alexnet.config.loading import config_from_dict, dump_yaml, load_config, to_dict
from alexnet.config.model import (
    ALL_LAYERS,
    LAYERS,
    DropoutConfig,
    InitConfig,
    LRNConfig,
    ModelConfig,
    input_size,
)
from alexnet.config.sections import (
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "ALL_LAYERS",
    "LAYERS",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DropoutConfig",
    "EvalConfig",
    "FinetuneConfig",
    "InitConfig",
    "LRNConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "dump_yaml",
    "input_size",
    "load_config",
    "to_dict",
]
