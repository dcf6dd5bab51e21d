"""The sections that choose plugins and set their options: rewards, the environment, loggers, which load."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from .base import MAX_TOKENS, MAX_TURNS, Section


class RewardConfig(Section):
    name: str = Field(description="Name of a registered reward (see `ppo-core plugins`).")
    weight: float = Field(1.0, description="Weight w_i in total = sum_i w_i * r_i.")
    options: dict[str, Any] = Field(default_factory=dict, description="The reward's own options.")
    normalize: bool = Field(False, description="Standardise this reward with running mean/std before weighting.")
    on_abstain: Union[Literal["skip"], float] = Field(
        "skip", description="A sample the reward abstains on (None): `skip` leaves the term out of that sample's "
        "total; a number is used as the reward instead.")
    on_error: Union[Literal["raise", "skip"], float] = Field(
        "raise", description="A failing call: `raise` stops the run naming the plugin and sample; `skip` treats "
        "the batch as abstained; a number is used for every sample. Events are counted in metrics.")
    timeout_s: Optional[float] = Field(60.0, gt=0, description="Per-batch time limit for this reward, in seconds; "
                                       "a late call is a fault (its worker process is killed and restarted). "
                                       "`null`: no limit.")
    isolation: Literal["process", "none"] = Field(
        "process", description="`process`: the reward runs in its own worker process, fed copies of the samples: "
        "a hang, crash or exit there is a fault of this reward, never the run's. `none`: in the main process "
        "(no pickling; a crash or `os._exit` there ends the run).")


class EnvironmentConfig(Section):
    """Multi-turn episodes (docs/design.md, "Environments"): the policy answers, the environment observes."""

    name: str = Field(description="Name of a registered environment (see `ppo-core plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The environment's own options.")
    max_turns: int = Field(1, gt=0, le=MAX_TURNS, description="Turns (model answers) per episode at most; an "
                           "episode still running then is truncated.")
    max_turn_tokens: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="Longest answer of one turn "
                                           "in tokens; defaults to `generation.max_new_tokens`.")
    max_episode_tokens: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="Tokens after the first "
                                              "prompt (answers + observations) per episode at most; an episode "
                                              "reaching it is truncated. `data.max_prompt_tokens` + this must "
                                              "fit the model's context; unset: `max_turns` x the turn limit, "
                                              "shrunk to fit the context.")
    stop_strings: list[str] = Field(default_factory=list, description="A turn also ends after any of these "
                                    "strings (kept in the answer), e.g. the closing tag of a tool call.")
    on_error: Union[Literal["raise", "skip"], float] = Field(
        "raise", description="A failing `reset`/`step`: `raise` stops the run naming the plugin, environment and "
        "episode; `skip` ends the batch's running episodes there (truncated, no turn reward); a number ends them "
        "with that turn reward. Events are counted in metrics.")
    timeout_s: Optional[float] = Field(60.0, gt=0, description="Per-call time limit of `reset`/`step`, in "
                                       "seconds; a late call is a fault (its worker is killed and restarted). "
                                       "`null`: no limit.")
    isolation: Literal["process", "none"] = Field(
        "process", description="`process`: the environment runs in its own worker process (as rewards do): a "
        "hang, crash or exit there is a fault of the environment, never the run's. `none`: in the main process.")

    @field_validator("stop_strings")
    @classmethod
    def _stop_strings_not_empty(cls, stop_strings: list[str]) -> list[str]:
        if any(not stop for stop in stop_strings):
            raise ValueError("a stop string must not be empty")
        return stop_strings


class LoggerConfig(Section):
    name: str = Field(description="Name of a registered logger: `tensorboard`, `wandb`, `mlflow` (the "
                      "ppo-core-loggers plugin) or a plugin's own.")
    options: dict[str, Any] = Field(default_factory=dict, description="The logger's own options.")


class PluginsConfig(Section):
    allow: Optional[list[str]] = Field(None, description="Load only these plugins (entry-point or distribution "
                                       "names); unset loads all. PPO_CORE_PLUGINS narrows it further.")
    block: list[str] = Field(default_factory=list, description="Never load these. PPO_CORE_BLOCK_PLUGINS adds more.")
