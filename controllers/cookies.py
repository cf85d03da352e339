"""OpenFlow cookies: the top byte names the DCC function that installed a flow.

A flow dump then says who put each entry there (``cookie=0x0200000000000003``
is forwarding towards host h3). Pure constants, no os_ken import.
"""
from __future__ import annotations

DISCOVERY = 0x01     # LLDP punt for topology discovery
FORWARDING = 0x02    # proactive shortest-path forwarding (ARP + IPv4) per host
DCC_SERVICE = 0x03   # punt DA-ITN control traffic (and ARP) for the DCC address

FUNCTION_NAMES = {DISCOVERY: "discovery", FORWARDING: "forwarding",
                  DCC_SERVICE: "dcc-service"}


def make(function: int, detail: int = 0) -> int:
    """Cookie for ``function`` with a 56-bit ``detail`` (e.g. destination host number)."""
    return (function << 56) | (detail & ((1 << 56) - 1))


def function_of(cookie: int) -> str | None:
    """Name of the DCC function that owns ``cookie``, or None if not ours."""
    return FUNCTION_NAMES.get(cookie >> 56)
