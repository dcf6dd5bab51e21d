"""A ppo-core reward plugin in one module: score responses by how close their length is to a target."""

from pydantic import BaseModel, ConfigDict, Field

from ppo_core import Reward, hookimpl


class LengthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: int = Field(8, ge=0, description="The response length (in characters) that scores 1.0.")
    per_char: float = Field(0.1, gt=0, description="Reward lost per character away from the target.")


class TargetLength(Reward):
    """1 - per_char * |len(response) - target|, floored at -1."""

    name = "target_length"
    Options = LengthOptions

    def __call__(self, samples):
        target, per_char = self.options.target, self.options.per_char
        return [max(-1.0, 1.0 - per_char * abs(len(sample.response) - target)) for sample in samples]


@hookimpl
def register_rewards(register):
    register(TargetLength)
