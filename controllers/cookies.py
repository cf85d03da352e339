"""OpenFlow cookies: the top byte names the DCC function that installed a flow.

A flow dump then says who put each entry there (``cookie=0x0200000000000003``
is forwarding towards host h3). Pure constants, no os_ken import.

Bit layout (64 bits, bit 63 first)::

    63..56  function  DISCOVERY 0x01, FORWARDING 0x02, DCC_SERVICE 0x03, AI_TASK_HOP 0x04,
                      AI_QUERY 0x05
    55..0   detail    per function:
              FORWARDING   destination host number (h3 -> 3)
              AI_QUERY     model id whose queries and results the flow steers (QIRCE)
              AI_TASK_HOP  55..24 task id (32 bits, the wire's task_id)
                           23..8  hop    (16 bits; the wire's hop_count is 8)
                           7..0   reserved, 0

so ``cookie=0x0400000007000300`` is task 7, hop 3 (both directions of that hop),
and a cookie mask of ``0xFFFFFFFFFF000000`` selects every flow of one task.
"""
from __future__ import annotations

DISCOVERY = 0x01     # LLDP punt for topology discovery
FORWARDING = 0x02    # proactive shortest-path forwarding (ARP + IPv4) per host
DCC_SERVICE = 0x03   # punt DA-ITN control traffic (and ARP) for the DCC address
AI_TASK_HOP = 0x04   # one hop of an AI task's model, steered by its DSCP (controllers.aiflows)
AI_QUERY = 0x05      # a client's inference queries to the replica QIRCE chose (and the results)

FUNCTION_NAMES = {DISCOVERY: "discovery", FORWARDING: "forwarding",
                  DCC_SERVICE: "dcc-service", AI_TASK_HOP: "ai-task-hop", AI_QUERY: "ai-query"}

TASK_BITS, HOP_BITS, HOP_SHIFT = 32, 16, 8
TASK_SHIFT = HOP_SHIFT + HOP_BITS
TASK_MASK = ((1 << 64) - 1) ^ ((1 << TASK_SHIFT) - 1)  # function + task: all flows of a task


def make(function: int, detail: int = 0) -> int:
    """Cookie for ``function`` with a 56-bit ``detail`` (e.g. destination host number)."""
    return (function << 56) | (detail & ((1 << 56) - 1))


def function_of(cookie: int) -> str | None:
    """Name of the DCC function that owns ``cookie``, or None if not ours."""
    return FUNCTION_NAMES.get(cookie >> 56)


def task_hop_cookie(task: int, hop: int) -> int:
    """Cookie of the flows that carry ``hop`` of ``task`` (ValueError if either does not fit:
    masking would silently give another task's cookie)."""
    if not 0 <= task < 1 << TASK_BITS:
        raise ValueError(f"task id {task} does not fit the cookie's {TASK_BITS} task bits")
    if not 0 <= hop < 1 << HOP_BITS:
        raise ValueError(f"hop {hop} does not fit the cookie's {HOP_BITS} hop bits")
    return make(AI_TASK_HOP, (task << TASK_SHIFT) | (hop << HOP_SHIFT))


def task_hop_of(cookie: int) -> tuple[int, int] | None:
    """(task, hop) of an AI task-hop cookie, or None for any other cookie."""
    if cookie >> 56 != AI_TASK_HOP:
        return None
    return (cookie >> TASK_SHIFT) & ((1 << TASK_BITS) - 1), (cookie >> HOP_SHIFT) & ((1 << HOP_BITS) - 1)
