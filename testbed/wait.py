"""Wait for a condition with a timeout; never sleep to synchronise blindly."""
from __future__ import annotations

import time


class WaitTimeout(TimeoutError):
    """A condition did not hold in time; says what was awaited and what was last seen."""


def wait_for(cond, timeout: float, what: str, interval: float = 0.1, last=None):
    """Poll ``cond()`` until truthy and return its value; raise WaitTimeout naming
    ``what`` and, if given, ``last()`` (the last state seen) when it fails."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            seen = f"; last seen: {last()}" if last else ""
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(interval)
