"""Model transfer over real loopback TCP: verified, authenticated, resumable."""
import hashlib
import os
import socket
import threading

import pytest

from nodes import wire
from nodes.transport import (Endpoint, ModelReceiver, ReplayError, TransferError, ack_for,
                             send_model)
from nodes.wire import AuthError, Message, MsgType, Tlv

KEY = b"k" * 32


class Server:
    """A one-thread receiver like NodeRuntime.serve; ``break_after`` bytes of
    model data on the first connection, it drops the connection (a link cut)."""

    def __init__(self, key=KEY, break_after=None):
        self.ep = Endpoint(2, key)
        self.rx = ModelReceiver()
        self.got = []
        self.errors = []
        self.break_after = break_after
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.conns = 0
        self.data_bytes = 0  # model bytes that reached the receiver, all connections
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns += 1
            with c:
                seen = 0
                while True:
                    try:
                        m = self.ep.read(c)
                    except (wire.WireError, ConnectionError, OSError) as e:
                        self.errors.append(e)
                        break
                    if m is None:
                        break
                    seen += len(m.body)
                    self.data_bytes += len(m.body)
                    if self.break_after and self.conns == 1 and seen >= self.break_after:
                        break  # cut: the partial transfer stays with the receiver
                    reply, first, state = self.rx.on_chunk(m)
                    if first is not None:
                        self.got.append((first, state))
                        reply = ack_for(first)
                    if reply is not None:
                        self.ep.write(c, reply)

    def close(self):
        self.srv.close()


def first_msg():
    return Message(MsgType.MODEL_CHUNK, task_id=3, model_id=3, model_version=1,
                   tlvs={Tlv.TARGET_ACCURACY: 0.85, Tlv.TRANSPORT: 12,
                         Tlv.ITINERARY: wire.Itinerary(0, 0, 2, [2, 4])})


def test_large_model_arrives_whole_and_verified():
    srv = Server()
    state = os.urandom(3 * 1024 * 1024 + 17)
    sent = send_model(Endpoint(1, KEY), "127.0.0.1", first_msg(), state, dscp=12, port=srv.port)
    assert sent.reply.type == MsgType.ACK and sent.reply.body.next_offset == len(state)
    (first, got), = srv.got
    assert got == state
    assert first.tlvs[Tlv.MODEL_DIGEST] == hashlib.sha256(state).digest()
    assert first.tlvs[Tlv.ITINERARY].segments == [2, 4]  # first chunk's TLVs kept
    assert sent.attempts == 1 and sent.bytes > len(state)
    srv.close()


def test_transfer_resumes_after_a_cut_instead_of_restarting():
    srv = Server(break_after=1024 * 1024)
    state = os.urandom(3 * 1024 * 1024)
    sent = send_model(Endpoint(1, KEY), "127.0.0.1", first_msg(), state, port=srv.port, chunk=256 * 1024)
    (_, got), = srv.got
    assert got == state
    assert sent.attempts == 2
    assert sent.resumed_from and sent.resumed_from[0] >= 1024 * 1024 - 256 * 1024
    # the receiver got the model about once, not once plus a restart from zero
    # (the sender's own count includes what sat in socket buffers at the cut)
    assert srv.data_bytes <= len(state) + 256 * 1024  # at most the chunk in flight again
    srv.close()


def test_wrong_key_is_refused_and_counted():
    srv = Server()
    with pytest.raises(TransferError):
        send_model(Endpoint(9, b"x" * 32), "127.0.0.1", first_msg(), b"abc" * 1000, port=srv.port,
                   attempts=1)
    assert srv.got == []
    assert srv.ep.dropped["AuthError"] >= 1
    srv.close()


def test_corrupted_model_fails_loudly():
    rx = ModelReceiver()
    m = first_msg()
    m.src = 1
    state = b"model" * 100
    m.tlvs[Tlv.MODEL_DIGEST] = hashlib.sha256(b"something else").digest()
    m.tlvs[Tlv.CHUNK] = wire.Chunk(0, len(state))
    m.flags = wire.LAST
    m.body = state
    reply, first, got = rx.on_chunk(m)
    assert first is None and got is None
    assert reply.body.status == wire.AckStatus.DIGEST_MISMATCH


def test_replayed_message_is_dropped():
    a, b = Endpoint(1, KEY), Endpoint(2, KEY)
    data = a.seal(Message(MsgType.KNOWLEDGE_REPORT, body=wire.KnowledgeReport(1, 10, 0, [1, 2])))
    assert b.open(data).body.samples == 10
    with pytest.raises(ReplayError):
        b.open(data)
    assert b.dropped["ReplayError"] == 1


def test_forged_message_without_key_is_dropped():
    b = Endpoint(2, KEY)
    forged = wire.encode(Message(MsgType.KNOWLEDGE_REPORT, src=1, body=wire.KnowledgeReport(1, 10, 0, [])))
    with pytest.raises(AuthError):
        b.open(forged)
    assert b.dropped["AuthError"] == 1
