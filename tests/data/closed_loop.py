"""The stock Locust way to ask for a rate: closed-loop users with `constant_throughput`.

Each user waits for its response before the next request, so once latency exceeds 1 / rate per
user the offered rate silently falls below the target (tests/test_loadtest.py shows it)."""

from __future__ import annotations

import os

from locust import HttpUser, constant_throughput, task

RATE_PER_USER = float(os.environ["CLOSED_LOOP_RATE_PER_USER"])


class ClosedLoopUser(HttpUser):
    wait_time = constant_throughput(RATE_PER_USER)

    @task
    def chat(self) -> None:
        body = {
            "model": os.environ["CLOSED_LOOP_MODEL"],
            "messages": [{"role": "user", "content": "the " * 249}],
            "max_tokens": 64,
            "ignore_eos": True,
        }
        self.client.post("/v1/chat/completions", json=body)
