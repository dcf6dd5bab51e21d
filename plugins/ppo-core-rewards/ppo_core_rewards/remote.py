"""The reward ``http_reward``: samples scored by a server, over HTTP, JSON in and out.

Protocol (one POST per batch of at most ``batch_size`` samples, ``Content-Type: application/json``)::

    request:  {"samples": [{"prompt": str, "response": str, "solutions": [str, ...], "fields": {...}}, ...]}
    response: {"rewards": [float | null, ...]}     # one per sample, in order; null abstains

A status 5xx or 429, a refused or dropped connection and a time-out are retried (``retries`` times, waiting
``backoff_s``, then twice as long each time); any other failure, a body that is not that JSON object or a list of
the wrong length is a :class:`ppo_core.errors.RewardError` naming the reward, the URL and what went wrong.
Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ppo_core import Reward, Sample
from ppo_core.errors import RewardError

__all__ = ["HttpReward", "HttpRewardOptions"]

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class HttpRewardOptions(BaseModel):
    """Options of the reward ``http_reward``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="The endpoint the batches are POSTed to (http:// or https://).")
    timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False, description="Seconds to wait for one answer.")
    retries: int = Field(2, ge=0, le=20, description="Further tries after a 5xx/429 status, a connection error or "
                         "a time-out.")
    backoff_s: float = Field(0.5, ge=0, allow_inf_nan=False, description="Wait before the first retry; doubled "
                             "before each next one.")
    batch_size: int = Field(64, gt=0, description="Samples per request.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (e.g. Authorization).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


class HttpReward(Reward):
    """Rewards from a server (see the module docstring for the protocol)."""

    name = "http_reward"
    Options = HttpRewardOptions

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        size = self.options.batch_size
        rewards: list[Optional[float]] = []
        for start in range(0, len(samples), size):
            rewards.extend(self._score_batch(samples[start:start + size], start))
        return rewards

    def _score_batch(self, samples: Sequence[Sample], start: int) -> list[Any]:
        body = json.dumps({"samples": [sample_json(sample) for sample in samples]}, default=str).encode("utf-8")
        answer = self._post(body, f"samples {start}-{start + len(samples) - 1}")
        try:
            rewards = json.loads(answer)["rewards"]
        except (ValueError, TypeError, KeyError):
            shown = answer[:80].decode("utf-8", "replace")
            raise RewardError(f"{self._where()}: the answer is not the JSON object {{\"rewards\": [...]}}: "
                              f"{shown!r}") from None
        if not isinstance(rewards, list) or len(rewards) != len(samples):
            count = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
            raise RewardError(f"{self._where()}: the server returned {count} rewards for {len(samples)} samples "
                              f"(samples {start}-{start + len(samples) - 1})")
        return rewards

    def _post(self, body: bytes, which: str) -> bytes:
        """The answer's body, after as many tries as ``retries`` allows for the failures worth retrying."""
        options = self.options
        headers = {"Content-Type": "application/json", "Accept": "application/json", **options.headers}
        for attempt in range(options.retries + 1):
            request = urllib.request.Request(options.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=options.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                detail = f"status {error.code}: {error.read()[:200].decode('utf-8', 'replace')!r}"
                if error.code not in RETRIED_STATUSES:
                    raise RewardError(f"{self._where()}: {detail} ({which})") from None
            except TimeoutError:
                detail = f"no answer within timeout_s ({options.timeout_s} s)"
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError):
                    detail = f"no answer within timeout_s ({options.timeout_s} s)"
                else:
                    detail = f"cannot connect: {error.reason}"
            except OSError as error:  # a connection reset or dropped mid-answer
                detail = f"connection failed: {error}"
            if attempt < options.retries:
                time.sleep(options.backoff_s * 2**attempt)
        tries = options.retries + 1
        raise RewardError(f"{self._where()}: {detail} ({which}; {tries} {'try' if tries == 1 else 'tries'})")

    def _where(self) -> str:
        return f"reward '{self.name}' POST {self.options.url}"


def sample_json(sample: Sample) -> dict[str, Any]:
    """What the server gets of a sample: prompt, response, accepted solutions and the record's other fields."""
    return {"prompt": sample.prompt, "response": sample.response, "solutions": sample.solutions,
            "fields": dict(sample.fields)}
