"""Unit tests for the DA-ITN wire format (nodes/protocol.py) and its scapy layer."""
import json
import socket
import struct
import threading

import pytest

from nodes import protocol as P
from nodes.protocol import (DCC_UDP_PORT, HEADER, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION,
                            Message, MsgType, ProtocolError, decode, parse_header, recv_msg,
                            send_msg)


def raw_header(magic=MAGIC, ver=VERSION, typ=1, flags=0, hlen=HEADER_LEN, res=0, task=0, seq=0,
               length=0) -> bytes:
    return HEADER.pack(magic, ver, typ, flags, hlen, res, task, seq, length)


# --- header layout -------------------------------------------------------------

def test_header_is_20_bytes_big_endian_with_documented_offsets():
    assert HEADER_LEN == 20
    b = Message(MsgType.EVAL_VERDICT, task_id=0x01020304, seq=0x0A0B0C0D, flags=0x5A,
                payload=b"abc").encode()
    assert len(b) == 23
    assert b[0:2] == b"DA"
    assert b[2] == VERSION == 1
    assert b[3] == 6  # EVAL_VERDICT
    assert b[4] == 0x5A
    assert b[5] == 20
    assert b[6:8] == b"\x00\x00"
    assert b[8:12] == bytes([1, 2, 3, 4])
    assert b[12:16] == bytes([0x0A, 0x0B, 0x0C, 0x0D])
    assert b[16:20] == (3).to_bytes(4, "big")
    assert b[20:] == b"abc"


def test_msgtype_values_are_stable():
    # The wire values are a protocol contract: renumbering breaks mixed-version captures.
    assert {m.name: m.value for m in MsgType} == {
        "KNOWLEDGE_REPORT": 1, "TRAIN_REQUEST": 2, "ITINERARY": 3, "MODEL": 4,
        "EVAL_REQUEST": 5, "EVAL_VERDICT": 6, "TASK_RESULT": 7, "ACK": 8, "ERROR": 9}


# --- round trips ---------------------------------------------------------------

@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda m: m.name)
def test_roundtrip_every_type(mtype):
    payload = bytes(range(256)) * 3 + mtype.name.encode()
    m = Message(mtype, task_id=2**32 - 1 - mtype.value, seq=mtype.value * 1000 + 7,
                flags=mtype.value ^ 0xFF, payload=payload)
    d = decode(m.encode())
    assert d == m
    assert isinstance(d.type, MsgType) and d.type is mtype
    assert isinstance(d.payload, bytes)


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda m: m.name)
def test_roundtrip_empty_payload(mtype):
    m = Message(mtype, task_id=3, seq=4)
    b = m.encode()
    assert len(b) == HEADER_LEN
    assert decode(b) == m
    assert parse_header(b) == (mtype, 0, 3, 4, 0)


def test_decode_accepts_bytearray_and_memoryview():
    m = Message(MsgType.ACK, 1, 2, 0, b"ok")
    assert decode(bytearray(m.encode())) == m
    assert decode(memoryview(m.encode())) == m


def test_control_body_is_sorted_json_and_roundtrips():
    body = {"z": 1, "a": [1, 2, {"k": "v"}], "unicode": "µ-ü"}
    m = Message.control(MsgType.TRAIN_REQUEST, body, task_id=9, seq=2)
    assert m.type is MsgType.TRAIN_REQUEST and m.task_id == 9 and m.seq == 2 and m.flags == 0
    assert m.payload == json.dumps(body, sort_keys=True).encode()
    assert m.payload.index(b'"a"') < m.payload.index(b'"z"')
    d = decode(m.encode())
    assert d.body() == body


def test_body_not_json_raises_protocol_error_naming_type():
    m = Message(MsgType.KNOWLEDGE_REPORT, payload=b"{not json")
    with pytest.raises(ProtocolError, match="KNOWLEDGE_REPORT payload is not JSON"):
        m.body()
    with pytest.raises(ProtocolError, match="not JSON"):
        Message(MsgType.ACK, payload=b"\xff\xfe").body()


@pytest.mark.parametrize("mtype", [MsgType.MODEL, MsgType.EVAL_REQUEST, MsgType.TASK_RESULT],
                         ids=lambda m: m.name)
def test_with_model_roundtrip(mtype):
    meta = {"itinerary": ["h2", "h4", "h6"], "ptr": 1, "sha256": "ab" * 32, "version": 3}
    state = bytes(range(256)) * 40 + b"\x00\x00"
    m = Message.with_model(mtype, meta, state, task_id=5, seq=11)
    (n,) = struct.unpack_from("!I", m.payload)
    assert m.payload[4:4 + n] == json.dumps(meta, sort_keys=True).encode()
    d = decode(m.encode())
    assert (d.type, d.task_id, d.seq) == (mtype, 5, 11)
    got_meta, got_state = d.model_parts()
    assert got_meta == meta
    assert got_state == state


def test_with_model_empty_state():
    m = Message.with_model(MsgType.MODEL, {}, b"")
    assert m.model_parts() == ({}, b"")


def test_model_parts_errors():
    with pytest.raises(ProtocolError, match="MODEL payload too short for meta length"):
        Message(MsgType.MODEL, payload=b"\x00\x00").model_parts()
    with pytest.raises(ProtocolError, match="meta length 100 exceeds payload"):
        Message(MsgType.MODEL, payload=struct.pack("!I", 100) + b"{}").model_parts()
    with pytest.raises(ProtocolError, match="TASK_RESULT meta is not JSON"):
        Message(MsgType.TASK_RESULT, payload=struct.pack("!I", 3) + b"{{{rest").model_parts()


# --- header errors -------------------------------------------------------------

def test_parse_header_short_data():
    with pytest.raises(ProtocolError, match="header needs 20 bytes, got 19"):
        parse_header(raw_header()[:19])
    with pytest.raises(ProtocolError, match="got 0"):
        parse_header(b"")


def test_parse_header_bad_magic():
    with pytest.raises(ProtocolError, match=r"bad magic b'XY', expected b'DA'"):
        parse_header(raw_header(magic=b"XY"))


def test_parse_header_bad_version():
    with pytest.raises(ProtocolError, match="unsupported version 2, this node speaks 1"):
        parse_header(raw_header(ver=2))
    with pytest.raises(ProtocolError, match="unsupported version 0"):
        parse_header(raw_header(ver=0))


def test_parse_header_bad_hdrlen():
    with pytest.raises(ProtocolError, match="header length 24, expected 20"):
        parse_header(raw_header(hlen=24))


@pytest.mark.parametrize("typ", [0, 10, 255])
def test_parse_header_unknown_type(typ):
    with pytest.raises(ProtocolError, match=f"unknown message type {typ}$"):
        parse_header(raw_header(typ=typ))


def test_parse_header_oversize_length():
    with pytest.raises(ProtocolError, match=f"payload length {MAX_PAYLOAD + 1} exceeds limit {MAX_PAYLOAD}"):
        parse_header(raw_header(length=MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="exceeds limit"):
        parse_header(raw_header(length=2**32 - 1))
    # exactly the limit is still a valid header
    assert parse_header(raw_header(length=MAX_PAYLOAD))[4] == MAX_PAYLOAD


def test_parse_header_returns_fields_and_ignores_trailing_bytes():
    h = raw_header(typ=3, flags=7, task=123456, seq=654321, length=99)
    assert parse_header(h + b"extra") == (MsgType.ITINERARY, 7, 123456, 654321, 99)


def test_protocol_error_is_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_decode_length_mismatch_both_ways():
    b = Message(MsgType.ACK, payload=b"hello").encode()
    with pytest.raises(ProtocolError, match="length field says 5 payload bytes, datagram has 4"):
        decode(b[:-1])
    with pytest.raises(ProtocolError, match="length field says 5 payload bytes, datagram has 6"):
        decode(b + b"!")


def test_decode_propagates_header_errors():
    b = bytearray(Message(MsgType.ACK).encode())
    b[0:2] = b"da"
    with pytest.raises(ProtocolError, match="bad magic"):
        decode(bytes(b))


# --- stream transport ----------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


def test_send_recv_small_messages_back_to_back(pair):
    a, b = pair
    msgs = [Message.control(MsgType.KNOWLEDGE_REPORT, {"samples": 3}, task_id=1, seq=1),
            Message(MsgType.ACK, 1, 2),
            Message.with_model(MsgType.MODEL, {"ptr": 0}, b"\x01\x02", task_id=1, seq=3)]
    for m in msgs:
        assert send_msg(a, m) == HEADER_LEN + len(m.payload)
    for m in msgs:
        assert recv_msg(b) == m


def test_send_recv_large_payload(pair):
    a, b = pair
    state = (bytes(range(251)) * (5 * 1024 * 1024 // 251 + 1))[:5 * 1024 * 1024 + 13]
    m = Message.with_model(MsgType.TASK_RESULT, {"sha": "x"}, state, task_id=77, seq=9)
    sent = {}
    # the payload is far larger than the socket buffer: the sender must run concurrently
    t = threading.Thread(target=lambda: sent.setdefault("n", send_msg(a, m)))
    t.start()
    got = recv_msg(b)
    t.join(10)
    assert not t.is_alive()
    assert sent["n"] == HEADER_LEN + len(m.payload)
    assert got.type is MsgType.TASK_RESULT and got.task_id == 77 and got.seq == 9
    meta, st = got.model_parts()
    assert meta == {"sha": "x"}
    assert len(st) == len(state) and st == state


def test_recv_msg_peer_closed_mid_payload(pair):
    a, b = pair
    data = Message(MsgType.MODEL, payload=b"x" * 100).encode()
    a.sendall(data[:HEADER_LEN + 40])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match="peer closed after 40 of 100 bytes"):
        recv_msg(b)


def test_recv_msg_peer_closed_mid_header(pair):
    a, b = pair
    a.sendall(Message(MsgType.ACK).encode()[:7])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match="after 7 of 20 bytes"):
        recv_msg(b)


def test_recv_msg_bad_header_raises_protocol_error(pair):
    a, b = pair
    a.sendall(raw_header(ver=9, length=5) + b"12345")
    with pytest.raises(ProtocolError, match="unsupported version 9"):
        recv_msg(b)


# --- scapy layer ---------------------------------------------------------------

scapy_layers = pytest.importorskip("nodes.scapy_layers")
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

DAITN = scapy_layers.DAITN

SCAPY_CASES = [
    Message(MsgType.KNOWLEDGE_REPORT, task_id=0, seq=0, payload=b""),
    Message.control(MsgType.TRAIN_REQUEST, {"client": "h1", "target": 0.85}, task_id=1, seq=2),
    Message.with_model(MsgType.MODEL, {"ptr": 2}, b"\x00\x01\xff" * 50, task_id=2**32 - 1,
                       seq=2**31 + 5),
    Message(MsgType.ERROR, task_id=42, seq=7, flags=3, payload=b"boom"),
]


def _scapy_of(m: Message):
    p = DAITN(type=int(m.type), task_id=m.task_id, seq=m.seq, flags=m.flags)
    return p / Raw(m.payload) if m.payload else p


@pytest.mark.parametrize("m", SCAPY_CASES, ids=lambda m: m.type.name)
def test_scapy_build_matches_struct_encode(m):
    assert bytes(_scapy_of(m)) == m.encode()


@pytest.mark.parametrize("m", SCAPY_CASES, ids=lambda m: m.type.name)
def test_scapy_dissects_struct_encode(m):
    p = DAITN(m.encode())
    assert p.magic == MAGIC
    assert p.version == VERSION
    assert p.type == int(m.type)
    assert p.flags == m.flags
    assert p.hdrlen == HEADER_LEN
    assert p.reserved == 0
    assert p.task_id == m.task_id
    assert p.seq == m.seq
    assert p.length == len(m.payload)
    assert bytes(p.payload) == m.payload
    if m.payload:
        assert p[Raw].load == m.payload


def test_scapy_explicit_length_is_kept():
    # a forged length must not be silently "fixed" (captures must show what was sent)
    b = bytes(DAITN(type=8, length=99))
    assert b[16:20] == (99).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="length field says 99"):
        decode(b)


def test_scapy_trailing_bytes_are_padding_not_payload():
    m = Message(MsgType.ACK, payload=b"abc")
    p = DAITN(m.encode() + b"\x00" * 10)
    assert p[Raw].load == b"abc"
    from scapy.packet import Padding
    assert p[Padding].load == b"\x00" * 10
    assert p.length == 3


def test_scapy_udp_packet_dissects_daitn_both_directions():
    m = Message.control(MsgType.KNOWLEDGE_REPORT, {"samples": 12, "label_hist": [1, 2]},
                        task_id=3, seq=4)
    to_dcc = (Ether() / IP(src="10.0.0.1", dst=P.DCC_IP) / UDP(sport=40000, dport=DCC_UDP_PORT)
              / DAITN(type=1, task_id=3, seq=4) / Raw(m.payload))
    wire = bytes(to_dcc)
    pkt = Ether(wire)
    assert DAITN in pkt
    d = pkt[DAITN]
    assert (d.type, d.task_id, d.seq, d.length) == (1, 3, 4, len(m.payload))
    assert bytes(d) == m.encode()
    assert decode(bytes(d)) == m
    assert pkt[UDP].len == 8 + len(m.encode())

    from_dcc = bytes(Ether() / IP() / UDP(sport=DCC_UDP_PORT, dport=5555) / DAITN(type=3))
    assert DAITN in Ether(from_dcc)


def test_scapy_other_udp_port_is_not_daitn():
    wire = bytes(Ether() / IP() / UDP(sport=1234, dport=5353) / Raw(Message(MsgType.ACK).encode()))
    assert DAITN not in Ether(wire)
