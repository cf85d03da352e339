"""`daitn trace`: decode the DA-ITN messages in captures and summarise them.

UDP datagrams (control, port 7070) decode one message each. TCP streams
(models, port 7000) are reassembled per direction by sequence number
(retransmitted segments are counted, not decoded twice) and cut into
messages by their header lengths. With the run's key (``auth.key`` in the run
directory) every tag is verified too.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from nodes import wire
from nodes.wire import MsgType, Tlv, WireError


class TraceError(ValueError):
    """The input is not a capture or run directory we can read; says which and why."""


@dataclass
class Decoded:
    t: float
    link: str
    proto: str
    src: str
    dst: str
    size: int
    msg: wire.Message


@dataclass
class Stream:
    segs: dict[int, bytes] = field(default_factory=dict)  # seq -> payload
    first_t: dict[int, float] = field(default_factory=dict)
    retransmissions: int = 0
    isn: int | None = None


def _inputs(path: Path) -> tuple[list[Path], bytes | None]:
    if path.is_dir():
        pcaps = sorted((path / "pcaps").glob("*.pcap"))
        if not (path / "pcaps").is_dir():
            raise TraceError(f"{path}: not a run directory (no pcaps/ folder)")
        if not pcaps:
            raise TraceError(f"{path}/pcaps: no captures; list interfaces under `capture:` in the spec")
        key = path / "auth.key"
        return pcaps, key.read_bytes() if key.is_file() else None
    if not path.is_file():
        raise TraceError(f"{path}: no such capture file or run directory")
    return [path], None


def decode_pcap(pcap: Path, key: bytes | None = None) -> tuple[list[Decoded], dict]:
    from scapy.all import IP, TCP, UDP, rdpcap
    from scapy.error import Scapy_Exception

    link = pcap.stem
    try:
        pkts = rdpcap(str(pcap))
    except (Scapy_Exception, OSError, EOFError, ValueError) as e:
        raise TraceError(f"{pcap}: not a readable pcap ({e})") from None
    out: list[Decoded] = []
    stats = defaultdict(int)
    streams: dict[tuple, Stream] = defaultdict(Stream)
    for p in pkts:
        if IP not in p:
            continue
        ip = p[IP]
        if UDP in p and wire.DCC_UDP_PORT in (p[UDP].sport, p[UDP].dport):
            data = bytes(p[UDP].payload)
            try:
                m = wire.decode(data, key)
            except WireError as e:
                stats["undecodable_udp"] += 1
                stats["auth_failures"] += "tag" in str(e) or "unauthenticated" in str(e)
                continue
            out.append(Decoded(float(p.time), link, "udp", ip.src, ip.dst, len(data), m))
        elif TCP in p and wire.NODE_TCP_PORT in (p[TCP].sport, p[TCP].dport):
            t = p[TCP]
            payload = bytes(t.payload)
            k = (ip.src, t.sport, ip.dst, t.dport)
            st = streams[k]
            if t.flags & 0x02:  # SYN
                st.isn = t.seq + 1
            if not payload:
                continue
            if t.seq in st.segs:
                st.retransmissions += 1
                continue
            st.segs[t.seq] = payload
            st.first_t[t.seq] = float(p.time)
    for (src, sport, dst, dport), st in streams.items():
        stats["tcp_retransmissions"] += st.retransmissions
        out += _cut_stream(st, link, src, dst, key, stats)
    out.sort(key=lambda d: d.t)
    return out, dict(stats)


def _cut_stream(st: Stream, link, src, dst, key, stats) -> list[Decoded]:
    """Concatenate contiguous segments and cut them into messages."""
    seqs = sorted(st.segs)
    if not seqs:
        return []
    start = st.isn if st.isn is not None else seqs[0]
    buf = bytearray()
    times = []  # (offset in buf, time)
    pos = start
    for s in seqs:
        seg = st.segs[s]
        if s + len(seg) <= pos:
            continue
        if s > pos:
            stats["tcp_gaps"] += 1  # bytes missing from the capture: stop here
            break
        times.append((len(buf), st.first_t[s]))
        buf += seg[pos - s:]
        pos = s + len(seg)
    out = []
    off = 0
    ti = 0
    while off + wire.HEADER_LEN <= len(buf):
        try:
            n = wire.peek_length(bytes(buf[off:off + wire.HEADER_LEN]))
        except WireError:
            stats["undecodable_tcp"] += 1
            break
        if off + n > len(buf):
            stats["truncated_tcp"] += 1
            break
        try:
            m = wire.decode(bytes(buf[off:off + n]), key)
        except WireError as e:
            stats["undecodable_tcp"] += 1
            stats["auth_failures"] += "tag" in str(e)
            off += n
            continue
        while ti + 1 < len(times) and times[ti + 1][0] <= off:
            ti += 1
        out.append(Decoded(times[ti][1] if times else 0.0, link, "tcp", src, dst, n, m))
        off += n
    return out


def _node(nid: int, ip: str) -> str:
    """The node the header names (hN, dcc), else the IP address seen."""
    try:
        return "dcc" if nid == wire.DCC_NODE else wire.node_name(nid)
    except WireError:
        return ip


def summarize(path: str | Path) -> dict:
    path = Path(path)
    pcaps, key = _inputs(path)
    by_type = defaultdict(lambda: {"messages": 0, "bytes": 0})
    by_task = defaultdict(lambda: {"messages": 0, "bytes": 0})
    by_link = defaultdict(lambda: {"messages": 0, "bytes": 0})
    journeys = defaultdict(list)
    stats_all = defaultdict(int)
    for pcap in pcaps:
        msgs, stats = decode_pcap(pcap, key)
        for k, v in stats.items():
            stats_all[k] += v
        for d in msgs:
            name = MsgType(d.msg.type).name
            for table, k in ((by_type, name), (by_task, str(d.msg.task_id)), (by_link, d.link)):
                table[k]["messages"] += 1
                table[k]["bytes"] += d.size
            if d.msg.type in (MsgType.MODEL_CHUNK, MsgType.EVAL_REQUEST, MsgType.TASK_RESULT, MsgType.DATA_SHARD):
                chunk = d.msg.tlvs.get(Tlv.CHUNK)
                journeys[(d.msg.task_id, d.msg.model_version, name)].append(
                    {"t": d.t, "link": d.link, "from": _node(d.msg.src, d.src),
                     "to": _node(d.msg.dst, d.dst), "bytes": d.size,
                     "offset": chunk.offset if chunk else None, "total": chunk.total if chunk else None})
    models = []
    for (task, version, kind), hops in sorted(journeys.items()):
        links = {}
        for h in hops:
            e = links.setdefault(h["link"], {"link": h["link"], "from": h["from"], "to": h["to"],
                                             "first_t": h["t"], "last_t": h["t"], "bytes": 0, "chunks": 0})
            e["bytes"] += h["bytes"]
            e["chunks"] += 1
            e["last_t"] = max(e["last_t"], h["t"])
        models.append({"task": task, "model_version": version, "message": kind,
                       "links": sorted(links.values(), key=lambda e: e["first_t"])})
    return {"input": str(path), "captures": [p.name for p in pcaps], "authenticated": key is not None,
            "by_type": dict(by_type), "by_task": dict(by_task), "by_link": dict(by_link),
            "models": models, "stats": dict(stats_all)}


def render(s: dict) -> str:
    lines = [f"DA-ITN trace of {s['input']} ({len(s['captures'])} capture(s); "
             f"tags {'verified' if s['authenticated'] else 'not verified (no key)'})", ""]
    for title, key in (("message type", "by_type"), ("task", "by_task"), ("link (capture)", "by_link")):
        lines.append(f"{title:24s} {'messages':>9s} {'bytes':>12s}")
        for k, v in sorted(s[key].items()):
            lines.append(f"  {k:22s} {v['messages']:9d} {v['bytes']:12d}")
        lines.append("")
    lines.append("model journeys (task, version, message: link from -> to, bytes, chunks)")
    for m in s["models"]:
        hops = "; ".join(f"{e['link']} {e['from']}->{e['to']} {e['bytes']} B/{e['chunks']} ch "
                         f"@{e['first_t']:.3f}" for e in m["links"])
        lines.append(f"  task {m['task']} v{m['model_version']} {m['message']}: {hops}")
    if s["stats"]:
        lines.append("")
        lines.append("capture stats: " + ", ".join(f"{k}={v}" for k, v in sorted(s["stats"].items())))
    return "\n".join(lines)


def main_json(path) -> str:
    return json.dumps(summarize(path), indent=1, default=str)
