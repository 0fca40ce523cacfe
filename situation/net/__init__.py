"""Packet and protocol code for active discovery: no database code lives here.

Modules in :mod:`situation.modules` pick targets from the store, call these
functions and write what they return. Everything here honours a shared
:class:`~situation.net.rate.RateLimiter`, and the caller (see
:mod:`situation.discovery`) has already removed excluded addresses.
"""


class ProbeUnavailable(Exception):
    """This process may not send the probe: the message says which capability or sysctl would allow it."""
