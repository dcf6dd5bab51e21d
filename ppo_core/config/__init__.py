"""The run config: sections, loading with ``--set`` overrides, and the generated reference."""

from .loading import (
    apply_override,
    config_schema,
    load_config,
    read_config_file,
    save_config,
    validate_config,
)
from .sections import (
    DataConfig,
    EnvironmentConfig,
    GenerationConfig,
    KLConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    PluginsConfig,
    PPOConfig,
    RewardConfig,
    RunConfig,
    Section,
    SFTConfig,
    TrainConfig,
)

__all__ = [
    "DataConfig", "EnvironmentConfig", "GenerationConfig", "KLConfig", "LoggerConfig", "ModelConfig", "OptimConfig",
    "PluginsConfig", "PPOConfig", "RewardConfig", "RunConfig", "SFTConfig", "Section", "TrainConfig", "apply_override",
    "config_schema",
    "load_config", "read_config_file", "save_config", "validate_config",
]
