"""Authenticated DA-ITN messaging and verified, resumable model transfer.

``Endpoint`` is a node's identity on the wire: its node id, the run's HMAC
key, a nonce counter and an anti-replay window. Every message it sends is
signed; every message it accepts has a valid tag and a fresh nonce, or is
dropped and counted by reason.

Model transfer (docs/protocol.md, "Model transfer"): the state goes as
MODEL_CHUNKs on one TCP connection, the receiver checks the SHA-256 of the
whole and acknowledges. If the connection breaks (a link fails, the path
changes), the sender reconnects, asks what the receiver already holds with an
empty chunk, and continues from there instead of from zero. The task's DSCP
(assigned by the DCC) marks every packet so OpenFlow can match the task.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from nodes import wire
from nodes.wire import AckStatus, Message, MsgType, Tlv, WireError

log = logging.getLogger("daitn.transport")
MODEL_TYPES = (MsgType.MODEL_CHUNK, MsgType.EVAL_REQUEST, MsgType.TASK_RESULT, MsgType.DATA_SHARD)
CHUNK_BYTES = 256 * 1024


class TransferError(RuntimeError):
    """A model transfer failed; the message says to whom and why."""


class ReplayError(WireError):
    """A message's nonce was seen before (or is older than the window)."""


class Endpoint:
    def __init__(self, node: int, key: bytes | None):
        self.node = node
        self.key = key
        # Start from the clock so a restarted node never reuses a nonce.
        self._nonce = itertools.count(time.time_ns() // 1000)
        self.replay = wire.ReplayWindow()
        self.dropped: Counter = Counter()
        self._lock = threading.Lock()

    def seal(self, msg: Message) -> bytes:
        msg.src = self.node
        return wire.encode(msg, self.key, next(self._nonce) if self.key else None)

    def _accept(self, m: Message) -> Message:
        if self.key is not None:
            with self._lock:
                fresh = self.replay.check_and_update(m.src, m.nonce)
            if not fresh:
                raise ReplayError(f"replayed or stale nonce {m.nonce} from node {m.src} "
                                  f"({MsgType(m.type).name})")
        return m

    def open(self, data: bytes) -> Message:
        """Decode and authenticate one datagram; WireError (counted) if refused."""
        try:
            return self._accept(wire.decode(data, self.key))
        except WireError as e:
            self.dropped[type(e).__name__] += 1
            raise

    # Largest message a node reads: a chunk plus headers. A header claiming more
    # is refused before anything is allocated (memory stays bounded under attack).
    MAX_MESSAGE = 4 * CHUNK_BYTES

    def read(self, sock: socket.socket) -> Message | None:
        try:
            m = wire.read_message(sock, self.key, self.MAX_MESSAGE)
            return None if m is None else self._accept(m)
        except WireError as e:
            self.dropped[type(e).__name__] += 1
            raise

    def write(self, sock: socket.socket, msg: Message) -> int:
        data = self.seal(msg)
        sock.sendall(data)
        return len(data)


def set_dscp(sock: socket.socket, dscp: int):
    if dscp:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, (dscp & 0x3F) << 2)


@dataclass
class Sent:
    reply: Message
    bytes: int          # bytes written on the wire, all attempts
    attempts: int
    resumed_from: list[int] = field(default_factory=list)


def send_model(ep: Endpoint, ip: str, first: Message, state: bytes, dscp: int = 0,
               chunk: int = CHUNK_BYTES, timeout: float = 120.0, attempts: int = 4,
               port: int = wire.NODE_TCP_PORT, deadline: float | None = None) -> Sent:
    """Send ``state`` as chunks of message ``first`` (its TLVs go on the first
    chunk); return the receiver's reply (ACK, or EVAL_VERDICT for EVAL_REQUEST)."""
    digest = hashlib.sha256(state).digest()
    total = len(state)
    base = dict(first.tlvs)
    base[Tlv.MODEL_DIGEST] = digest
    written = 0
    resumed: list[int] = []
    last_err: Exception | None = None
    for attempt in range(1, attempts + 1):
        if deadline is not None and time.time() > deadline:
            break
        try:
            with socket.create_connection((ip, port), timeout=timeout) as s:
                set_dscp(s, dscp)
                s.settimeout(timeout)
                offset = 0
                if attempt > 1:  # ask what the receiver already holds
                    probe = replace(first, flags=0, body=b"",
                                    tlvs={Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(0, total)})
                    written += ep.write(s, probe)
                    ack = ep.read(s)
                    if ack is None or ack.type != MsgType.ACK:
                        raise ConnectionError("no ACK to the resume probe")
                    offset = ack.body.next_offset
                    resumed.append(offset)
                while True:
                    end = min(total, offset + chunk)
                    tlvs = {Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(offset, total)}
                    if offset == 0:
                        tlvs = {**base, Tlv.CHUNK: wire.Chunk(0, total)}
                    msg = replace(first, flags=wire.LAST if end >= total else 0, body=state[offset:end],
                                  tlvs=tlvs)
                    written += ep.write(s, msg)
                    offset = end
                    if offset >= total:
                        break
                reply = ep.read(s)
                if reply is None:
                    raise ConnectionError("receiver closed without a reply")
                if reply.type == MsgType.ACK and reply.body.status != AckStatus.OK:
                    raise TransferError(f"{ip} refused the model: {AckStatus(reply.body.status).name}")
                if reply.type == MsgType.ERROR:
                    raise TransferError(f"{ip} refused the model: {reply.body.text}")
                return Sent(reply, written, attempt, resumed)
        except TransferError:
            raise
        except (OSError, ConnectionError, WireError) as e:
            last_err = e
            log.warning("transfer to %s broke (attempt %d/%d): %s", ip, attempt, attempts, e)
            time.sleep(min(2.0, 0.25 * attempt))
    raise TransferError(f"transfer of {total} bytes to {ip} failed after {attempts} attempts: {last_err}")


@dataclass
class _Partial:
    first: Message
    buf: bytearray
    have: int = 0
    t: float = field(default_factory=time.time)
    # Running digest: chunks are accepted only in order (offset == have), so the
    # hash is exact and the last chunk's ACK is not held up hashing the whole model.
    sha: object = field(default_factory=hashlib.sha256)


class ModelReceiver:
    """Reassembles model transfers, keeping partial ones so senders can resume."""

    KEEP_S = 300.0

    MAX_PARTIAL = 64  # transfers held at once; the oldest is dropped beyond that

    def __init__(self):
        self.partial: dict[tuple, _Partial] = {}
        self._lock = threading.Lock()

    def on_chunk(self, m: Message) -> tuple[Message | None, Message | None, bytes | None]:
        """Returns (immediate reply or None, first message, whole state) - the last two
        only when the model is complete and verified."""
        with self._lock:
            return self._on_chunk(m)

    def _on_chunk(self, m: Message):
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
        p.t = now
        if not data and not m.flags & wire.LAST:  # resume probe
            return _ack(m, p.have), None, None
        if c.offset != p.have or c.offset + len(data) > len(p.buf):
            raise WireError(f"chunk at offset {c.offset} (+{len(data)}) does not continue the "
                            f"{p.have} bytes held of {len(p.buf)}")
        if c.offset == 0:
            p.first = m  # the first chunk carries the task's TLVs (a probe does not)
        p.buf[c.offset:c.offset + len(data)] = data
        p.sha.update(data)
        p.have += len(data)
        if not m.flags & wire.LAST:
            return None, None, None
        del self.partial[key]
        if p.have != len(p.buf) or p.sha.digest() != digest:
            return _ack(m, 0, AckStatus.DIGEST_MISMATCH), None, None
        return None, p.first, bytes(p.buf)


def _ack(m: Message, next_offset: int, status: int = AckStatus.OK) -> Message:
    return Message(MsgType.ACK, flags=wire.REPLY, task_id=m.task_id, model_id=m.model_id,
                   model_version=m.model_version, dst=m.src, seq=m.seq,
                   body=wire.Ack(next_offset, status))


def ack_for(m: Message) -> Message:
    """The ACK a receiver sends once a whole model arrived verified."""
    return _ack(m, m.require(Tlv.CHUNK).total)
