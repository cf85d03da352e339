"""Flows for AI traffic: steer one hop of a task's model along a chosen path, with a meter.

Pure policy over :mod:`controllers.fabric` (no os_ken import). The default
forwarding flows send all traffic to a host along one BFS tree; a task's hop
from one node to the next may need another path (the plan's reserved
bandwidth lies elsewhere). Its traffic is told apart by the task's DSCP,
which the sender sets on the model's connection and the receiver on its
replies (``nodes/runtime.py``), so one flow per switch and direction matches
(IPv4, src, dst, DSCP) at :data:`~controllers.fabric.PRIO_AI_HOP`, above
forwarding. Cookies name the task and hop (:func:`controllers.cookies.task_hop_cookie`).

A reservation is enforced by an OpenFlow meter with a drop band (a policer) on
every switch of the path, on the model's direction only: ACKs are tiny, and
dropping them would stall the transfer the meter is there to shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from controllers import cookies
from controllers.fabric import CONTROLLER, ETH_IPV4, PRIO_AI_HOP, PRIO_FORWARDING, Fabric, FlowSpec, _flow, lookup

__all__ = ["MeterSpec", "ports_along", "hop_flows", "hop_meters", "meter_id_for", "burst_kb_for",
           "walk", "DROP", "FRAME_BYTES", "BURST_S"]

DROP = "DROP"          # walk(): no flow matched (the switch drops the packet)
FRAME_BYTES = 1514     # largest Ethernet frame at MTU 1500, as a meter counts it (no FCS)
BURST_S = 0.05         # a meter's bucket holds this long at the reserved rate
OFPM_MAX = 0xFFFF0000  # highest OpenFlow meter id; above it are virtual meters


@dataclass(frozen=True)
class MeterSpec:
    """One OpenFlow 1.3 meter with a single drop band: traffic above ``rate_kbps``
    (kbit/s), beyond a bucket of ``burst_kb`` kilobits, is dropped."""

    dpid: int
    meter_id: int
    rate_kbps: int
    burst_kb: int


def _host_switch_port(fabric: Fabric, host: str) -> tuple[str, int]:
    h = fabric.hosts.get(host)
    if h is None:
        raise ValueError(f"{host!r} is not a host of the fabric (hosts: {sorted(fabric.hosts)})")
    return h.switch, h.port


def _port_towards(fabric: Fabric, sw: str, other: str, path: list[str]) -> int:
    """``sw``'s port on its link to ``other`` (a switch or a host attached to ``sw``)."""
    if other in fabric.hosts:
        hsw, hport = _host_switch_port(fabric, other)
        if hsw != sw:
            raise ValueError(f"no link {sw}-{other}: {other} is attached to {hsw} "
                             f"(path {' -> '.join(path)})")
        return hport
    # the first link listed wins where two switches have parallel links
    for a, ap, b, bp in fabric.links:
        if (a, b) == (sw, other):
            return ap
        if (b, a) == (sw, other):
            return bp
    raise ValueError(f"no link {sw}-{other} in the fabric (path {' -> '.join(path)})")


def ports_along(fabric: Fabric, path: list[str]) -> list[tuple[int, int, int]]:
    """(dpid, in_port, out_port) of every switch on ``path`` (host, switches..., host),
    for a packet going from the first host to the last. ValueError naming the
    missing link, an unknown node or a switch visited twice (a loop)."""
    path = list(path)
    if len(path) < 3:
        raise ValueError(f"a path is host, switches..., host; got {path}")
    for end in (path[0], path[-1]):
        _host_switch_port(fabric, end)
    inner = path[1:-1]
    for s in inner:
        if s not in fabric.switches:
            raise ValueError(f"{s!r} on path {' -> '.join(path)} is not a switch of the fabric")
    if len(set(inner)) != len(inner):
        raise ValueError(f"path {' -> '.join(path)} visits a switch twice: its flows would loop")
    out = []
    for i in range(1, len(path) - 1):
        sw = path[i]
        out.append((fabric.switches[sw], _port_towards(fabric, sw, path[i - 1], path),
                    _port_towards(fabric, sw, path[i + 1], path)))
    return out


def hop_flows(fabric: Fabric, path: list[str], *, task_id: int, hop: int, dscp: int,
              src_ip: str | None = None, dst_ip: str | None = None, meter_id: int | None = None,
              priority: int = PRIO_AI_HOP) -> list[FlowSpec]:
    """Flows that carry ``hop`` of ``task_id`` along ``path``: on every switch one for the
    model's direction (src -> dst, metered if ``meter_id``) and one for the replies
    (dst -> src, back along the same switches). Both match IPv4, the two addresses
    (default: the path's end hosts) and ``dscp``; both carry the task-hop cookie."""
    if not 1 <= dscp <= 63:
        raise ValueError(f"dscp {dscp} out of range 1..63 (0 is best effort: a hop flow on it "
                         f"would capture all traffic between the two hosts)")
    if priority <= PRIO_FORWARDING:
        raise ValueError(f"priority {priority} would not win over forwarding ({PRIO_FORWARDING})")
    hops = ports_along(fabric, path)  # checks the end hosts too
    src_ip = src_ip or fabric.hosts[path[0]].ip
    dst_ip = dst_ip or fabric.hosts[path[-1]].ip
    cookie = cookies.task_hop_cookie(task_id, hop)
    fwd = {"eth_type": ETH_IPV4, "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_dscp": dscp}
    rev = {"eth_type": ETH_IPV4, "ipv4_src": dst_ip, "ipv4_dst": src_ip, "ip_dscp": dscp}
    flows = []
    for dpid, in_port, out_port in hops:
        flows.append(_flow(dpid, priority, cookie, fwd, [("output", out_port)], meter_id))
        flows.append(_flow(dpid, priority, cookie, rev, [("output", in_port)]))
    return flows


def meter_id_for(task_id: int, hop: int) -> int:
    """The meter id of a task's hop, the same on every switch of its path: 1 + 256 *
    ((task - 1) mod 65536) + hop, so ids are distinct for 65536 consecutive tasks
    and the wire's 8-bit hop count, and stay far below OFPM_MAX."""
    if task_id < 1:
        raise ValueError(f"task id {task_id}: tasks are numbered from 1")
    if not 0 <= hop <= 255:
        raise ValueError(f"hop {hop} out of range 0..255 (the wire's hop_count is 8 bits)")
    return 1 + (((task_id - 1) % 65536) << 8) + hop


def burst_kb_for(rate_kbps: int) -> int:
    """A policer's bucket: ``BURST_S`` at the rate, never less than one full frame
    (a smaller bucket drops every full-size packet whatever the rate)."""
    return max(math.ceil(FRAME_BYTES * 8 / 1000), math.ceil(rate_kbps * BURST_S))


def hop_meters(fabric: Fabric, path: list[str], reserve_mbps: float, meter_id: int) -> list[MeterSpec]:
    """One meter per switch of ``path`` policing the hop to ``reserve_mbps``."""
    if not reserve_mbps > 0:
        raise ValueError(f"reserved bandwidth must be > 0 Mbit/s, got {reserve_mbps!r}")
    if not 1 <= meter_id <= OFPM_MAX:
        raise ValueError(f"meter id {meter_id} out of range 1..{OFPM_MAX:#x}")
    rate = max(1, round(reserve_mbps * 1000))
    if rate >= 1 << 32:
        raise ValueError(f"{reserve_mbps} Mbit/s does not fit a meter's 32-bit kbit/s rate")
    return [MeterSpec(dpid, meter_id, rate, burst_kb_for(rate)) for dpid, _, _ in ports_along(fabric, path)]


def walk(flows: list[FlowSpec], fabric: Fabric, src_host: str, pkt: dict) -> list[str]:
    """Follow ``pkt`` through the fake flow tables (:func:`controllers.fabric.lookup`) from
    ``src_host``: the node names it visits, ending with the host it is delivered to,
    ``CONTROLLER`` if punted or ``DROP`` if no flow matched. ValueError on a loop or
    an output port that leads nowhere."""
    port_to: dict[tuple[str, int], str] = {}
    for a, ap, b, bp in fabric.links:
        port_to[(a, ap)], port_to[(b, bp)] = b, a
    for h in fabric.hosts.values():
        port_to[(h.switch, h.port)] = h.name
    sw, _ = _host_switch_port(fabric, src_host)
    out = [src_host]
    while True:
        if sw in out:
            raise ValueError(f"{pkt} loops: {' -> '.join(out + [sw])}")
        out.append(sw)
        f = lookup(flows, fabric.switches[sw], pkt)
        if f is None or not f.actions:
            return out + [DROP]
        port = f.actions[0][1]
        if port == CONTROLLER:
            return out + [CONTROLLER]
        nxt = port_to.get((sw, port))
        if nxt is None:
            raise ValueError(f"{sw} outputs {pkt} to port {port}: no link, no host there ({f})")
        if nxt in fabric.hosts:
            return out + [nxt]
        sw = nxt
