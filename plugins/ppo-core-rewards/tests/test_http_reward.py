"""The reward ``http_reward`` against a real HTTP server (``http.server`` in a thread on 127.0.0.1, an ephemeral
port): the protocol, batching, headers, retries after a 500, and the faults (time-out, malformed JSON, wrong
length) as the composer reports them."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest
from ppo_core_rewards import HttpReward

from ppo_core import RunContext, Sample
from ppo_core.config import RewardConfig
from ppo_core.errors import RewardError
from ppo_core.plugin.loading import load_plugins
from ppo_core.rewards.composer import build_composer

# an answer: (status, body) for the request's JSON, possibly after a delay
Answer = Callable[[dict], tuple[int, bytes]]


def by_length(request: dict) -> tuple[int, bytes]:
    """The reward of each sample is its response's length; an empty response abstains."""
    rewards = [len(s["response"]) or None for s in request["samples"]]
    return 200, json.dumps({"rewards": rewards}).encode()


class Server:
    """A local server answering each POST with the next of ``answers`` (the last one repeats)."""

    def __init__(self, *answers: Answer, delay_s: float = 0.0):
        self.answers, self.delay_s = list(answers), delay_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(request)
                server.headers.append(dict(self.headers))
                answer = server.answers[min(len(server.requests), len(server.answers)) - 1]
                time.sleep(server.delay_s)
                status, body = answer(request)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(*answers: Answer, delay_s: float = 0.0) -> Server:
        servers.append(Server(*answers, delay_s=delay_s))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def samples(n: int) -> list[Sample]:
    return [Sample(prompt=f"p{i}", response="x" * i, response_ids=(), solution=["a", "b"] if i == 1 else "s",
                   stop_reason="eos", fields={"id": i}) for i in range(n)]


def reward(url: str, **options) -> HttpReward:
    return HttpReward(HttpReward.Options(url=url, **options), RunContext())


def composer(url: str, isolation: str = "process", on_error: str = "raise", **options):
    registry = load_plugins(allow=["ppo-core-rewards"]).registry
    config = RewardConfig(name="http_reward", options={"url": url, **options}, isolation=isolation, on_error=on_error)
    return build_composer([config], registry, RunContext(), "test.yaml")


def test_batches_are_posted_as_the_protocol_says_and_the_rewards_come_back_in_order(serve):
    server = serve(by_length)
    scores = reward(server.url, batch_size=2, headers={"Authorization": "Bearer t0ken"})(samples(5))
    assert scores == [None, 1, 2, 3, 4]
    assert [len(r["samples"]) for r in server.requests] == [2, 2, 1]
    assert server.requests[0]["samples"][1] == {"prompt": "p1", "response": "x", "solutions": ["a", "b"],
                                                "fields": {"id": 1}}
    assert server.requests[2]["samples"][0]["solutions"] == ["s"]
    assert {h["Authorization"] for h in server.headers} == {"Bearer t0ken"}
    assert {h["Content-Type"] for h in server.headers} == {"application/json"}


def test_a_500_is_retried_after_a_backoff(serve):
    server = serve(lambda request: (500, b"busy"), by_length)
    started = time.perf_counter()
    assert reward(server.url, retries=2, backoff_s=0.05)(samples(3)) == [None, 1, 2]
    assert len(server.requests) == 2 and time.perf_counter() - started >= 0.05
    failing = serve(lambda request: (500, b"busy"))
    with pytest.raises(RewardError, match=r"reward 'http_reward' POST .*: status 500: 'busy'.*3 tries"):
        reward(failing.url, retries=2, backoff_s=0.01)(samples(3))
    assert len(failing.requests) == 3


def test_a_client_error_is_not_retried(serve):
    server = serve(lambda request: (401, b"no token"))
    with pytest.raises(RewardError, match=r"status 401: 'no token' \(samples 0-2\)"):
        reward(server.url, retries=3, backoff_s=0.01)(samples(3))
    assert len(server.requests) == 1


def test_a_time_out_is_a_named_reward_fault(serve):
    server = serve(by_length, delay_s=1.0)
    with composer(server.url, timeout_s=0.2, retries=1, backoff_s=0.01) as rewards:
        with pytest.raises(RewardError, match=r"reward 'http_reward' POST http://127\.0\.0\.1:\d+/score: no answer "
                                              r"within timeout_s \(0\.2 s\) \(samples 0-2; 2 tries\)"):
            rewards(samples(3))


def test_malformed_json_is_a_named_reward_fault(serve):
    server = serve(lambda request: (200, b"<html>oops</html>"))
    with composer(server.url, isolation="none") as rewards:
        with pytest.raises(RewardError, match=r"reward 'http_reward' POST .*: the answer is not the JSON object "
                                              r"\{\"rewards\": \[\.\.\.\]\}: '<html>oops</html>'"):
            rewards(samples(3))


def test_a_wrong_length_is_a_named_fault_and_on_error_skip_counts_it(serve):
    server = serve(lambda request: (200, json.dumps({"rewards": [1.0, 2.0]}).encode()))
    with composer(server.url) as rewards:
        with pytest.raises(RewardError, match=r"the server returned 2 rewards for 3 samples \(samples 0-2\)"):
            rewards(samples(3))
    with composer(server.url, isolation="none", on_error="skip") as rewards:
        result = rewards(samples(3))
    assert result.values["http_reward"] == [None, None, None] and result.stats["reward/http_reward/errors"] == 1.0


def test_the_url_must_be_http():
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        HttpReward.Options(url="ftp://example.org/score")
