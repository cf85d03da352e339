"""Receiver side of bench/bench_transport.py: runs in h2's namespace until killed.

``--mode daitn``: a one-thread server like tests/unit/test_transport.py's Server (and
NodeRuntime.serve): ``Endpoint.read`` -> ``ModelReceiver.on_chunk`` -> ``ack_for``,
with the same 32-byte key as the sender (``--key-file``). ``--mode raw``: reads an
8-byte length and that many bytes, answers one byte ``K``.

One connection at a time. After each completed transfer it appends one JSON line
to ``--out``: bytes read, messages, ``first_to_ack_s`` (first message read to ACK
written), ``last_chunk_s`` (from the last chunk read and decoded to ACK written:
``on_chunk``'s copy of the whole state and its SHA-256, then the ACK), CPU seconds, ``recv_wait_s``
(wall time blocked in ``recv``; the rest is decode + HMAC + reassembly + digest),
and errors or drops if any.
``--rcvbuf`` sets SO_RCVBUF on the listening socket (inherited by connections).

``--incremental`` (a what-if for the investigation, not the library's behaviour):
:class:`IncrementalReceiver` is ModelReceiver with the change bench_transport's
analysis recommends - SHA-256 updated chunk by chunk as the data arrives (chunks
are accepted strictly in order, ``offset == have``, so a running hash is exact,
also across a resume) and the reassembly buffer handed over without a final
``bytes()`` copy - so the ACK no longer waits for a whole-state hash and copy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodes import wire  # noqa: E402
from nodes.transport import Endpoint, ModelReceiver, _ack, _Partial, ack_for  # noqa: E402
from nodes.wire import AckStatus, Tlv, WireError  # noqa: E402


class IncrementalReceiver(ModelReceiver):
    """ModelReceiver._on_chunk with a running SHA-256 and no final copy (see the module doc)."""

    def _on_chunk(self, m):
        c = m.require(Tlv.CHUNK)
        digest = m.require(Tlv.MODEL_DIGEST)
        key = (m.src, m.type, m.task_id, m.model_version, digest)
        now = time.time()
        for k in [k for k, p in self.partial.items() if now - p.t > self.KEEP_S]:
            del self.partial[k]
        p = self.partial.get(key)
        data = m.body
        if p is None:
            if c.offset != 0:
                raise WireError(f"chunk at offset {c.offset} but no transfer of this model is "
                                f"in progress (resume with an empty chunk at offset 0)")
            if c.total > wire.MAX_PAYLOAD:
                raise WireError(f"model of {c.total} bytes exceeds the {wire.MAX_PAYLOAD}-byte limit")
            if len(self.partial) >= self.MAX_PARTIAL:
                del self.partial[min(self.partial, key=lambda k: self.partial[k].t)]
            p = self.partial[key] = _Partial(m, bytearray(c.total))
            p.sha = hashlib.sha256()                       # change 1: running digest
        p.t = now
        if not data and not m.flags & wire.LAST:
            return _ack(m, p.have), None, None
        if c.offset != p.have or c.offset + len(data) > len(p.buf):
            raise WireError(f"chunk at offset {c.offset} (+{len(data)}) does not continue the "
                            f"{p.have} bytes held of {len(p.buf)}")
        if c.offset == 0:
            p.first = m
        p.buf[c.offset:c.offset + len(data)] = data
        p.sha.update(data)
        p.have += len(data)
        if not m.flags & wire.LAST:
            return None, None, None
        del self.partial[key]
        if p.have != len(p.buf) or p.sha.digest() != digest:
            return _ack(m, 0, AckStatus.DIGEST_MISMATCH), None, None
        return None, p.first, p.buf                        # change 2: no bytes() copy


class CountingSocket:
    """Wraps a connection: counts bytes and the wall time spent blocked in recv_into."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.bytes = 0
        self.recv_s = 0.0

    def recv_into(self, buf, n=0):
        t = time.perf_counter()
        k = self.sock.recv_into(buf, n)
        self.recv_s += time.perf_counter() - t
        self.bytes += k
        return k

    def sendall(self, data):
        return self.sock.sendall(data)


def serve_daitn(conn: socket.socket, ep: Endpoint, rx: ModelReceiver) -> dict | None:
    cs = CountingSocket(conn)
    t_first = None
    cpu0 = time.process_time()
    msgs = 0
    while True:
        m = ep.read(cs)
        if m is None:
            return None
        msgs += 1
        if t_first is None:
            t_first = time.perf_counter()
            cs.recv_s = 0.0  # from the first message on
        t_chunk = time.perf_counter()
        reply, first, state = rx.on_chunk(m)
        if first is not None:
            ep.write(conn, ack_for(first))
            t_ack = time.perf_counter()
            return {"state_bytes": len(state), "wire_bytes": cs.bytes, "messages": msgs,
                    "first_to_ack_s": t_ack - t_first, "last_chunk_s": t_ack - t_chunk,
                    "recv_wait_s": cs.recv_s, "cpu_s": time.process_time() - cpu0,
                    "rcvbuf": conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    "dropped": dict(ep.dropped)}
        if reply is not None:
            ep.write(conn, reply)


def _recv_exact(cs: CountingSocket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = cs.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return buf


def serve_raw(conn: socket.socket) -> dict | None:
    cs = CountingSocket(conn)
    cpu0 = time.process_time()
    head = _recv_exact(cs, 8)
    t_first = time.perf_counter()
    n = struct.unpack("!Q", head)[0]
    cs.recv_s = 0.0
    data = _recv_exact(cs, n)
    conn.sendall(b"K")
    t_ack = time.perf_counter()
    return {"state_bytes": len(data), "wire_bytes": cs.bytes, "messages": 1,
            "first_to_ack_s": t_ack - t_first, "recv_wait_s": cs.recv_s,
            "cpu_s": time.process_time() - cpu0,
            "rcvbuf": conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=wire.NODE_TCP_PORT)
    ap.add_argument("--mode", choices=("daitn", "raw"), default="daitn")
    ap.add_argument("--key-file")
    ap.add_argument("--out", required=True, help="JSONL file, one line per transfer")
    ap.add_argument("--rcvbuf", type=int, default=0)
    ap.add_argument("--incremental", action="store_true",
                    help="what-if: IncrementalReceiver instead of ModelReceiver")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ep = rx = None
    if args.mode == "daitn":
        key = Path(args.key_file).read_bytes()
        if len(key) != 32:
            raise SystemExit(f"key file holds {len(key)} bytes, want 32")
        ep = Endpoint(2, key)
        rx = IncrementalReceiver() if args.incremental else ModelReceiver()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.rcvbuf:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    srv.bind(("0.0.0.0", args.port))
    srv.listen(4)
    with srv, open(args.out, "a") as out:
        while True:
            conn, peer = srv.accept()
            with conn:
                try:
                    rec = serve_daitn(conn, ep, rx) if args.mode == "daitn" else serve_raw(conn)
                except (wire.WireError, ConnectionError, OSError) as e:
                    rec = {"error": f"{type(e).__name__}: {e}"}
                if rec is not None:
                    rec.update(mode=args.mode, peer=peer[0], incremental=args.incremental)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()


if __name__ == "__main__":
    sys.exit(main())
