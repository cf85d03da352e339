"""`daitn trace`: decode the DA-ITN messages in captures and summarise them.

UDP datagrams (control, port 7070) decode one message each. TCP streams
(models, port 7000) are reassembled per direction by sequence number
(retransmitted segments are counted, not decoded twice) and cut into
messages by their header lengths. With the run's key (``auth.key`` in the run
directory) every tag is verified too.

Broken input is said, not guessed around: a missing or unreadable file, a file that is
not a capture, a corrupted record in the middle of a capture or a damaged key raise
:class:`TraceError` naming the file, what is wrong and what to do (`daitn trace` exits
2). A capture whose last record is cut off (tcpdump stopped while writing: a killed
run) is read up to it, with a warning (``warnings`` in the summary), as
testbed/rundir.py does for a cut-off last line of ``events.jsonl``.
"""
from __future__ import annotations

import json
import logging
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from nodes import wire
from nodes.wire import MsgType, Tlv, WireError


class TraceError(ValueError):
    """The input is not a capture or run directory we can read; says which and why."""


KEY_BYTES = 32               # the run key the runner writes (testbed/runner.py, auth.key)
MAX_RECORD = 16 << 20        # no capture record is larger (tcpdump's snaplen is 256 KiB)
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",      # microseconds
               b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}      # nanoseconds
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_WHAT = ("daitn trace reads pcap or pcapng captures (tcpdump -w); pass a run directory "
         "or one of its pcaps/*.pcap")


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
    from testbed.rundir import RUN_FILES
    if path.is_dir():
        run = path
        if path.name == "pcaps" and not (path / "pcaps").is_dir():
            run = path.parent       # RUN/pcaps given: its captures, the run's key
        pcap_dir = run / "pcaps"
        if not pcap_dir.is_dir():
            if not any((run / f).exists() for f in RUN_FILES):
                raise TraceError(f"{path}: not a run directory (no pcaps/ folder, none of "
                                 f"{', '.join(RUN_FILES)}); {_WHAT}")
            raise TraceError(f"{pcap_dir}: missing - this run captured nothing (list interfaces under "
                             f"`capture:` in the spec) or was stopped before its captures started")
        pcaps = sorted(p for p in pcap_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))
        if not pcaps:
            raise TraceError(f"{pcap_dir}: no captures in it; list interfaces under `capture:` in the spec")
        return pcaps, _read_key(run / "auth.key")
    if not path.exists():
        raise TraceError(f"{path}: no such capture file or run directory")
    if not path.is_file():
        raise TraceError(f"{path}: not a regular file; {_WHAT}")
    return [path], None


def _read_key(path: Path) -> bytes | None:
    """The run key, or None if the run directory has none (tags are then not verified)."""
    if not path.exists():
        return None
    try:
        key = path.read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot be read ({e.strerror}); run daitn trace as the user who "
                         f"ran the experiment (the key is 0600)") from None
    if len(key) != KEY_BYTES:
        raise TraceError(f"{path}: {len(key)} bytes, a run key has {KEY_BYTES}: the file is corrupted; "
                         f"move it away to decode without verifying tags")
    return key


def check_capture(pcap: Path) -> tuple[int | None, list[str]]:
    """Walk a classic pcap's record headers without decoding: (complete records, warnings).

    scapy stops silently at the first damaged record (a capture corrupted in the middle
    would just look short), so the structure is checked here first. A cut-off last
    record is a warning; a record whose length cannot be right is a TraceError.
    pcapng is left to scapy (None records)."""
    try:
        size = pcap.stat().st_size
        with open(pcap, "rb") as f:
            head = f.read(24)
            if size == 0:
                raise TraceError(f"{pcap}: empty file - the capture never started writing "
                                 f"(see the run's logs/); {_WHAT}")
            if head[:4] == _PCAPNG_MAGIC:
                return None, []
            order = _PCAP_MAGIC.get(head[:4])
            if order is None:
                raise TraceError(f"{pcap}: not a readable pcap (it starts with {head[:8]!r}, no capture "
                                 f"file does); {_WHAT}")
            if len(head) < 24:
                raise TraceError(f"{pcap}: cut off inside its 24-byte file header ({size} bytes): "
                                 f"the capture was stopped as it started; nothing to decode")
            snaplen = struct.unpack(order + "I", head[16:20])[0] or MAX_RECORD
            limit = min(max(snaplen, 65535), MAX_RECORD)
            n, off, warnings = 0, 24, []
            rec = struct.Struct(order + "IIII")
            while off < size:
                f.seek(off)
                hdr = f.read(16)
                if len(hdr) < 16:
                    warnings.append(f"{pcap}: last record (packet {n + 1}, byte {off}) is cut off inside its "
                                    f"header - ignored; the capture was probably stopped while writing")
                    break
                _, _, caplen, wirelen = rec.unpack(hdr)
                if caplen > limit:
                    raise TraceError(f"{pcap}: packet {n + 1} (byte {off}) claims {caplen} captured bytes, more "
                                     f"than the capture's snaplen {snaplen}: the file is corrupted after "
                                     f"{n} good packets; keep those with `editcap -r {pcap} OUT.pcap 1-{n}`"
                                     if n else f"{pcap}: its first packet (byte {off}) claims {caplen} captured "
                                     f"bytes, more than the snaplen {snaplen}: the file is corrupted")
                if off + 16 + caplen > size:
                    warnings.append(f"{pcap}: last record (packet {n + 1}, byte {off}) is cut off "
                                    f"({size - off - 16} of {caplen} bytes) - ignored; the capture was "
                                    f"probably stopped while writing")
                    break
                n += 1
                off += 16 + caplen
            return n, warnings
    except OSError as e:
        raise TraceError(f"{pcap}: cannot be read ({e.strerror})") from None


def decode_pcap(pcap: Path, key: bytes | None = None, warnings: list | None = None) -> tuple[list[Decoded], dict]:
    from scapy.all import IP, TCP, UDP, rdpcap
    from scapy.error import Scapy_Exception

    link = pcap.stem
    records, found = check_capture(pcap)
    if warnings is not None:
        warnings += found
    scapy_log = logging.getLogger("scapy.runtime")
    level = scapy_log.level
    scapy_log.setLevel(logging.ERROR)   # "packet has been truncated": said above, for people
    try:
        pkts = rdpcap(str(pcap), count=-1 if records is None else records)
    except (Scapy_Exception, OSError, EOFError, ValueError, struct.error) as e:
        raise TraceError(f"{pcap}: not a readable pcap ({e}); {_WHAT}") from None
    finally:
        scapy_log.setLevel(level)
    if records is not None and len(pkts) != records:
        raise TraceError(f"{pcap}: {records} packets in the file but scapy read {len(pkts)}: the file "
                         f"is corrupted; re-capture it")
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
    warnings: list[str] = []
    for pcap in pcaps:
        msgs, stats = decode_pcap(pcap, key, warnings)
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
            "models": models, "stats": dict(stats_all), "warnings": warnings}


def render(s: dict) -> str:
    lines = [f"DA-ITN trace of {s['input']} ({len(s['captures'])} capture(s); "
             f"tags {'verified' if s['authenticated'] else 'not verified (no key)'})"]
    lines += [f"warning: {w}" for w in s.get("warnings", [])] + [""]
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
