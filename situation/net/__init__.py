"""Packet and protocol code for active discovery: no database code lives here.

Modules in :mod:`situation.modules` pick targets from the store, call these
functions and write what they return. Everything here honours a shared
:class:`~situation.net.rate.RateLimiter`, and the caller (see
:mod:`situation.discovery`) has already removed excluded addresses.
"""

import asyncio
import contextlib


class ProbeUnavailable(Exception):
    """This process may not send the probe: the message says which capability or sysctl would allow it."""


async def set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``.

    Not ``asyncio.wait_for``: on Python 3.11 it drops a cancellation that
    arrives with the event, and the module would go on past its deadline.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    return event.is_set()
