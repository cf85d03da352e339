"""An in-process network for node runtimes: the same role code, no sockets.

``MemoryNetwork`` stands in for the fabric and the controller's DCC service:
nodes join it by name with a :class:`MemoryTransport` (given to
``NodeRuntime(cfg, transport=...)``); the DCC is a function the test supplies,
``dcc_handler(msg, src_name) -> list[Message]``. Everything still crosses as
sealed DA-ITN bytes - HMAC with the run key, replay windows, models in
MODEL_CHUNKs reassembled and digest-checked by :class:`nodes.transport.ModelReceiver`
- so authentication and sizes are real. Delivery is synchronous, in the
sender's thread: no sockets and no threads of its own.

Each direction of each pair of names is a :class:`Link` with optional loss
(``loss``, a probability) and a ``drop(data) -> bool`` hook for tests. A lost
datagram to or from the DCC is just lost; a lost message on a model connection
breaks that connection, as a TCP connection that stalls would, and the sender
reconnects and resumes.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, replace

from nodes import wire
from nodes.runtime import DccChannel, Inbox, Transport
from nodes.transport import CHUNK_BYTES, Endpoint, Sent, TransferError
from nodes.wire import AckStatus, Message, MsgType, Tlv, WireError

log = logging.getLogger("daitn.memnet")

__all__ = ["MemoryNetwork", "MemoryTransport", "Link", "Packet"]

DCC = "dcc"


@dataclass
class Packet:
    """One message as it crossed (or failed to cross) a link."""
    t: float
    src: str
    dst: str
    type: str
    bytes: int
    dscp: int
    dropped: bool


@dataclass
class Link:
    """One direction between two names: its impairments and what crossed it."""
    loss: float = 0.0                 # probability that a message is lost
    drop: object = None               # drop(data: bytes) -> bool, True: lose it
    messages: int = 0
    bytes: int = 0
    dropped: int = 0


class MemoryNetwork:
    """Nodes by name, the links between them, and the DCC's endpoint and handler."""

    def __init__(self, dcc_handler=None, key: bytes | None = None, seed: int = 0):
        self.dcc_handler = dcc_handler
        self.dcc_ep = Endpoint(wire.DCC_NODE, key)   # the DCC signs and verifies like dcc_app
        self.nodes: dict[str, MemoryTransport] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.trace: list[Packet] = []
        self.errors: list[str] = []  # exceptions raised by the DCC handler or a node's roles
                                     # on delivery (a test should see none)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._dcc_lock = threading.Lock()  # one message at a time, as dcc_app's event thread

    def transport(self, name: str) -> "MemoryTransport":
        return MemoryTransport(self, name)

    def link(self, src: str, dst: str) -> Link:
        """The link from ``src`` to ``dst`` (names, "dcc" for the DCC)."""
        with self._lock:
            return self.links.setdefault((src, dst), Link())

    # ---- carrying bytes -----------------------------------------------------
    def _carry(self, src: str, dst: str, data: bytes, dscp: int = 0) -> bool:
        """Account for ``data`` on src -> dst; False if the link lost it."""
        ln = self.link(src, dst)
        lost = bool(ln.drop and ln.drop(data))
        with self._lock:
            lost = lost or (ln.loss > 0 and self._rng.random() < ln.loss)
            ln.messages += 1
            ln.bytes += len(data)
            ln.dropped += lost
            try:
                kind = MsgType(data[3]).name
            except (IndexError, ValueError):
                kind = "?"
            self.trace.append(Packet(time.time(), src, dst, kind, len(data), dscp, lost))
        return not lost

    def _to_dcc(self, src: str, chan: "_MemoryDccChannel", data: bytes):
        if not self._carry(src, DCC, data):
            return
        with self._dcc_lock:
            try:
                msg = self.dcc_ep.open(data)
                answers = list(self.dcc_handler(msg, src)) if self.dcc_handler else []
            except WireError as e:  # refused, and told why (as dcc_app does)
                answers = [Message(MsgType.ERROR, body=wire.Error(1, str(e)[:500]))]
            except Exception as e:  # a bug in the test's DCC: record it, answer nothing
                log.exception("DCC handler failed on a message from %s", src)
                self.errors.append(f"dcc: {type(e).__name__}: {e}")
                return
            sealed = []
            for a in answers:
                a.flags |= wire.REPLY
                sealed.append(self.dcc_ep.seal(a))  # a fresh nonce for every answer
        for data in sealed:
            if self._carry(DCC, src, data):
                chan.answers.put(data)

    def connect(self, src: str, dst: str, dscp: int = 0) -> "MemoryConnection":
        """Open a model connection; ConnectionRefusedError if ``dst`` is not serving."""
        peer = self.nodes.get(dst)
        if peer is None or peer.inbox is None:
            raise ConnectionRefusedError(f"{dst} is not serving on the memory network")
        return MemoryConnection(self, src, peer, dscp)


class MemoryConnection:
    """A model connection (a TCP connection's stand-in): one message at a time goes
    to the receiver, whose reply (if any) comes back. Breaks for good on a loss or
    after the receiver refused something."""

    def __init__(self, net: MemoryNetwork, src: str, peer: "MemoryTransport", dscp: int):
        self.net, self.src, self.peer, self.dscp = net, src, peer, dscp
        self.closed = False

    def exchange(self, data: bytes) -> bytes | None:
        if self.closed:
            raise ConnectionResetError(f"connection {self.src} -> {self.peer.name} is closed")
        if not self.net._carry(self.src, self.peer.name, data, self.dscp):
            self.closed = True
            raise ConnectionResetError(f"link {self.src} -> {self.peer.name} lost a message")
        reply = self.peer._deliver(self, data)
        if reply is not None and not self.net._carry(self.peer.name, self.src, reply, self.dscp):
            self.closed = True
            raise ConnectionResetError(f"link {self.peer.name} -> {self.src} lost a reply")
        return reply


class _MemoryDccChannel(DccChannel):
    def __init__(self, net: MemoryNetwork, name: str):
        self.net, self.name = net, name
        self.answers: queue.Queue[bytes] = queue.Queue()

    def send(self, data: bytes) -> None:
        self.net._to_dcc(self.name, self, data)

    def recv(self, timeout: float) -> bytes:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from the DCC within {timeout} s") from None


class MemoryTransport(Transport):
    """A node's attachment to a :class:`MemoryNetwork` (joins it under ``name``)."""

    dcc_address = "memory:dcc"

    def __init__(self, net: MemoryNetwork, name: str):
        if name in net.nodes:
            raise ValueError(f"{name} is already on this memory network")
        self.net, self.name = net, name
        self.ep: Endpoint | None = None
        self.inbox: Inbox | None = None   # set while serving
        net.nodes[name] = self

    def dcc_channel(self) -> DccChannel:
        return _MemoryDccChannel(self.net, self.name)

    def serve(self, ep, inbox, stopping, *, max_connections=0, idle_timeout_s=0.0):
        """Take deliveries until ``stopping`` (they run in the senders' threads).
        Connection limits and idle timeouts have nothing to act on here."""
        self.ep, self.inbox = ep, inbox
        try:
            stopping.wait()
        finally:
            self.inbox = None

    def close(self):
        self.inbox = None
        self.net.nodes.pop(self.name, None)

    def _deliver(self, conn: MemoryConnection, data: bytes) -> bytes | None:
        """One message on ``conn`` into our inbox; our sealed reply or None.
        The ERROR-or-close policy is SocketTransport._serve_conn's."""
        inbox, ep, peer = self.inbox, self.ep, conn.src
        if inbox is None:
            raise ConnectionResetError(f"{self.name} stopped serving")
        with inbox.connection():
            try:
                m = ep.open(data)
                reply = inbox.take(m, peer)
            except WireError as e:  # malformed or unauthenticated: refuse, say why, close
                conn.closed = True
                return ep.seal(inbox.refuse(peer, e))
            except (ConnectionError, OSError) as e:
                conn.closed = True
                inbox.broken(peer, e)
                raise
            except Exception as e:
                # A bug in our roles: it is ours, not the sender's, so record it here
                # (as a dying connection thread would) and break only the connection.
                log.exception("%s failed on a message from %s", self.name, peer)
                self.net.errors.append(f"{self.name}: {type(e).__name__}: {e}")
                conn.closed = True
                raise ConnectionResetError(f"{self.name} failed on the message: {e}") from None
            if reply is None:
                return None
            reply.dst = m.src
            return ep.seal(reply)

    def request(self, ep, to, msg, timeout) -> Message:
        """As over TCP, but the receiver answers in our thread, so ``timeout`` is not
        enforced: a receiver that never answers holds the caller."""
        try:
            conn = self.net.connect(self.name, to, msg.tlvs.get(Tlv.TRANSPORT, 0))
            reply = _open(ep, conn.exchange(ep.seal(msg)))
        except (OSError, WireError) as e:
            raise TransferError(f"{MsgType(msg.type).name} to {to} failed: {e}") from e
        if reply is None:
            raise TransferError(f"{to} closed without answering {MsgType(msg.type).name}")
        return reply

    def send_model(self, ep, to, first, state, *, dscp=0, deadline=None,
                   chunk: int = CHUNK_BYTES, attempts: int = 4) -> Sent:
        # The same chunking, resume probe and reply checks as nodes.transport.send_model,
        # which opens its own TCP socket (it takes no connection to use instead).
        # No back-off between attempts: nothing here recovers with time.
        digest = hashlib.sha256(state).digest()
        total = len(state)
        base = {**first.tlvs, Tlv.MODEL_DIGEST: digest}
        written = 0
        resumed: list[int] = []
        last_err: Exception | None = None
        for attempt in range(1, attempts + 1):
            if deadline is not None and time.time() > deadline:
                break
            try:
                conn = self.net.connect(self.name, to, dscp)
                offset = 0
                if attempt > 1:  # ask what the receiver already holds
                    probe = replace(first, flags=0, body=b"",
                                    tlvs={Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(0, total)})
                    data = ep.seal(probe)
                    written += len(data)
                    ack = _open(ep, conn.exchange(data))
                    if ack is None or ack.type != MsgType.ACK:
                        raise ConnectionError("no ACK to the resume probe")
                    offset = ack.body.next_offset
                    resumed.append(offset)
                reply = None
                while reply is None:
                    end = min(total, offset + chunk)
                    tlvs = {Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(offset, total)}
                    if offset == 0:
                        tlvs = {**base, Tlv.CHUNK: wire.Chunk(0, total)}
                    last = end >= total
                    data = ep.seal(replace(first, flags=wire.LAST if last else 0,
                                           body=state[offset:end], tlvs=tlvs))
                    written += len(data)
                    reply = _open(ep, conn.exchange(data))  # a mid-transfer reply is a refusal
                    offset = end
                    if last and reply is None:
                        raise ConnectionError("receiver closed without a reply")
                if reply.type == MsgType.ACK and reply.body.status != AckStatus.OK:
                    raise TransferError(f"{to} refused the model: {AckStatus(reply.body.status).name}")
                if reply.type == MsgType.ERROR:
                    raise TransferError(f"{to} refused the model: {reply.body.text}")
                return Sent(reply, written, attempt, resumed)
            except TransferError:
                raise
            except (OSError, ConnectionError, WireError) as e:
                last_err = e
                log.warning("transfer to %s broke (attempt %d/%d): %s", to, attempt, attempts, e)
        raise TransferError(f"transfer of {total} bytes to {to} failed after {attempts} attempts: {last_err}")


def _open(ep: Endpoint, data: bytes | None) -> Message | None:
    return None if data is None else ep.open(data)
