"""Job functions for the real RQ workers the tests start."""

import time

import redis


def block_until(url: str, key: str, limit: float = 60.0) -> str:
    """Run until ``key`` exists in Redis (so a test controls how long the job is "started")."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + limit
    while not client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def noop() -> None:
    return None
