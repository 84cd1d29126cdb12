"""Locust users that behave like a search ranking stack calling the scoring service.

Each user loops: draw a query from the data, take its retrieved candidates (20-200 by
default), and ask ``/score`` or ``/rerank`` (TEI shape), sometimes the teacher's
``/shadow/score``. Configuration is by environment (see ``loadtest.workload.Mix``):

    LOADTEST_DATA           data file (default ../shared/data/homedepot/train.csv;
                            synthetic text when absent)
    LOADTEST_ITEMS          candidates per request, "MIN-MAX" (default 20-200)
    LOADTEST_RERANK_SHARE   share of /rerank requests (default 0.3; the rest is /score)
    LOADTEST_SHADOW_SHARE   share of /shadow/score requests (default 0)
    LOADTEST_WAIT_MS        think time between a user's requests, "MIN-MAX" (default 0: closed loop)
    LOADTEST_MAX_REQUESTS   stop all users after this many requests in this process (default 1e6)
    LOADTEST_SEED           base seed; user k draws with seed + k

Run it with ``python -m loadtest.run`` (headless, SLO verdict) or plain locust:
``locust -f loadtest/locustfile.py --host http://127.0.0.1:8000``.
"""

from __future__ import annotations

import itertools
import os
import sys
from functools import cache
from pathlib import Path

from locust import FastHttpUser, between, constant, task
from locust.exception import StopUser

try:
    from loadtest.workload import Catalogue, Mix, RequestFactory, parse_range
except ModuleNotFoundError:  # `locust -f loadtest/locustfile.py` puts only loadtest/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from loadtest.workload import Catalogue, Mix, RequestFactory, parse_range

_user_ids = itertools.count()
_sent = itertools.count(1)


@cache
def catalogue() -> Catalogue:
    """Loaded once per locust process, on the first user's start."""
    return Catalogue.load()


def _wait_time():  # type: ignore[no-untyped-def]  # locust's wait-time callables are untyped
    low, high = parse_range(os.environ.get("LOADTEST_WAIT_MS", "0"))
    return constant(0) if high == 0 else between(low / 1000, high / 1000)


class RankingStackUser(FastHttpUser):
    """One search front-end worker sending scoring requests back to back."""

    wait_time = _wait_time()
    # Large candidate lists take a while on CPU; fail a request only after this long.
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        mix = Mix.from_env()
        self.factory = RequestFactory(catalogue(), mix, seed=mix.seed + next(_user_ids))
        self.max_requests = int(float(os.environ.get("LOADTEST_MAX_REQUESTS", "1e6")))

    @task
    def score(self) -> None:
        if next(_sent) > self.max_requests:
            raise StopUser()
        request = self.factory.next()
        with self.client.post(
            request.path,
            data=request.json_bytes(),
            headers={"Content-Type": "application/json"},
            name=request.path,
            context={"items": len(request.texts), "endpoint": request.endpoint},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            body = response.json()
            scores = body if request.endpoint == "rerank" else body.get("scores", [])
            if len(scores) != len(request.texts):
                response.failure(f"{len(scores)} scores for {len(request.texts)} items")
