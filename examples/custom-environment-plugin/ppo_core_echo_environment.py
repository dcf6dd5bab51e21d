"""A ppo-core environment plugin in one module: the model says back each word it is shown, `rounds` times."""

import random

from pydantic import BaseModel, ConfigDict, Field

from ppo_core import EnvReset, EnvStep, Environment, Record, hookimpl


class EchoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, description="Words per episode (turns).")
    episodes: int = Field(64, ge=1, description="Episodes per split.")


class Echo(Environment):
    """Each turn: 1.0 when the answer is the word shown, else 0.0; success when every word came back."""

    name = "echo"
    Options = EchoOptions

    def records(self, split):  # its own episodes: used when the run config sets no data.dataset
        rng = random.Random(split)
        for _ in range(self.options.episodes):
            words = ["".join(rng.choices("abcdefgh", k=4)) for _ in range(self.options.rounds)]
            yield Record.from_dict({"prompt": f"echo {words[0]}", "words": words})

    def reset(self, records):  # states are plain data: they may cross a process boundary
        return EnvReset(states=[{"words": r.fields["words"], "turn": 0, "right": 0} for r in records],
                        prompts=[r.prompt_text for r in records])

    def step(self, states, responses):  # only the running episodes, in order
        turns = [self.turn(state, response.strip()) for state, response in zip(states, responses)]
        states, observations, rewards, done, success = zip(*turns) if turns else ([],) * 5
        return EnvStep(states, observations, rewards, done, success)

    def turn(self, state, answer):
        words, turn = state["words"], state["turn"] + 1
        said = float(answer == words[turn - 1])
        state = {"words": words, "turn": turn, "right": state["right"] + int(said)}
        if turn == len(words):
            return state, None, said, True, state["right"] == len(words)
        return state, f"echo {words[turn]}", said, False, None


@hookimpl
def register_environments(register):
    register(Echo)
