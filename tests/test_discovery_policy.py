"""The shared discovery policy: who may be probed, how wide a sweep is, how fast packets go."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from situation.discovery import Discovery, parse_networks, sweep_network
from situation.net.rate import RateLimiter


@pytest.mark.parametrize(
    ("stored", "swept"),
    [
        ("10.1.0.0/16", None),  # wider than /20: skipped
        ("10.1.0.0/20", "10.1.0.0/20"),
        ("10.1.2.0/24", "10.1.2.0/24"),
        ("10.1.2.16/28", "10.1.2.0/24"),  # private and narrow: its /24
        ("198.51.100.16/28", "198.51.100.0/24"),  # documentation range is not global
        ("8.8.8.0/28", "8.8.8.0/28"),  # public and narrow: as it is
    ],
)
def test_sweep_width_rules(stored, swept):
    result = sweep_network(ipaddress.ip_network(stored))
    assert (str(result) if result else None) == swept


def test_exclusions_and_only():
    policy = Discovery(exclude=parse_networks("192.0.2.7, 192.0.2.128/25", what="x"),
                       only=parse_networks("192.0.2.0/24,2001:db8::/64", what="x"))
    assert policy.allows("192.0.2.1")
    assert not policy.allows("192.0.2.7")
    assert not policy.allows("192.0.2.200")
    assert not policy.allows("198.51.100.1")
    assert policy.allows("2001:db8::1")
    assert Discovery().allows("203.0.113.9")


def test_parse_networks_names_the_bad_item():
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an address or a network"):
        parse_networks("10.0.0.0/8,10.0.0.0/33", what="--discovery-exclude")


def test_rate_limiter_shares_one_budget():
    async def send(limiter, packets):
        for _ in range(packets // 10):
            await limiter.acquire(10)

    async def main():
        limiter = RateLimiter(2000)
        started = time.monotonic()
        await asyncio.gather(send(limiter, 500), send(limiter, 500))
        return time.monotonic() - started

    # 1000 packets at 2000/s: about half a second however many senders share it (a lower bound
    # on behaviour, not a speed target).
    assert asyncio.run(main()) >= 0.45


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)
