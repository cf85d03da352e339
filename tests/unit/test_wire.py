"""Unit tests for the DA-ITN v3 fast-path codec (nodes/wire.py) against docs/protocol.md."""
import hashlib
import hmac
import math
import socket
import struct
import threading

import pytest

from nodes import wire as W
from nodes.wire import (AUTH, DCC_NODE, HEADER_LEN, LAST, MAX_TLV_BYTES, REPLY, TRAILER_LEN, Ack,
                        AckStatus, AuthError, Chunk, EndReason, Error, EvalVerdict, Feasibility,
                        InferenceQuery, InferenceResult, Itinerary, ItineraryBody,
                        KnowledgeReport, Message, MsgType, Parties, Privacy, ReplayWindow, Role,
                        Tlv, TrainRequest, WireError, decode, encode, node_id, node_name,
                        peek_length, read_message, write_message)

KEY = hashlib.sha256(b"run-42").digest()
DIGEST = hashlib.sha256(b"model state").digest()


# --- representative messages, one per type -----------------------------------------

def sample(mtype: MsgType) -> Message:
    """A realistic message of ``mtype`` with the TLVs docs/protocol.md puts on it."""
    hdr = dict(hop_count=2, hop_limit=16, task_id=7, model_id=3, model_version=5, src=12,
               dst=DCC_NODE, seq=1001, ack=1000)
    M = MsgType
    if mtype is M.KNOWLEDGE_REPORT:
        return Message(mtype, **hdr, body=KnowledgeReport(
            Role.DATA | Role.MPVU | Role.INFERENCE, 6000, 1000,
            [600, 590, 610, 605, 598, 602, 599, 601, 597, 598], capacity=1.5, load=0.25,
            queue_len=3, service_ms=4.75, noise_epsilon=0.5, report_seq=41, models=[3, 70]))
    if mtype is M.TRAIN_REQUEST:
        return Message(mtype, **hdr, tlvs={
            Tlv.TARGET_ACCURACY: 0.85, Tlv.DEADLINE: 1_764_000_000_123, Tlv.PRIVACY_LEVEL:
            Privacy.TRUSTED, Tlv.REQUIRED_LABELS: [0, 3, 9], Tlv.MAX_HOPS: 12,
            Tlv.BYTE_BUDGET: 5 * 2**30}, body=TrainRequest(1_234_567))
    if mtype is M.FEASIBILITY:
        return Message(mtype, **hdr, flags=REPLY, body=Feasibility(
            False, 12.5, 98_765_432, ["label 9 held by no node", "délai trop court ✓"]))
    if mtype is M.ITINERARY:
        return Message(mtype, **hdr, flags=REPLY, tlvs={
            Tlv.ITINERARY: Itinerary(0, 0, 3, [4, 7, 2, 9]), Tlv.TRANSPORT: 46,
            Tlv.PARTIES: Parties(1, 5)}, body=ItineraryBody("mtrce-greedy"))
    if mtype in (M.MODEL_CHUNK, M.EVAL_REQUEST, M.TASK_RESULT, M.DATA_SHARD):
        tlvs = {Tlv.MODEL_DIGEST: DIGEST, Tlv.CHUNK: Chunk(262144, 1_000_000)}
        if mtype is M.MODEL_CHUNK:
            tlvs.update({Tlv.TARGET_ACCURACY: 0.9, Tlv.DEADLINE: 2**63,
                         Tlv.ITINERARY: Itinerary(1, 0, 2, [3, 4]), Tlv.PARTIES: Parties(1, 5)})
        if mtype is M.TASK_RESULT:
            tlvs.update({Tlv.END_REASON: EndReason.TARGET_REACHED, Tlv.ACCURACY: 0.9123})
        return Message(mtype, **hdr, flags=LAST, tlvs=tlvs, body=bytes(range(256)) * 16)
    if mtype is M.ACK:
        return Message(mtype, **hdr, body=Ack(1_000_000, AckStatus.DIGEST_MISMATCH))
    if mtype is M.EVAL_VERDICT:
        return Message(mtype, **hdr, body=EvalVerdict(0.875, 0.40625, 1000,
                                                      [0.5, None, 1.0, 0.25]))
    if mtype is M.INFERENCE_QUERY:
        return Message(mtype, **hdr, tlvs={Tlv.MAX_LATENCY: 250, Tlv.MIN_ACCURACY: 0.8,
                                           Tlv.PRIVACY_LEVEL: Privacy.LOCAL},
                       body=InferenceQuery([0.5, -1.25, 3.0, 1e-3 * 0 + 0.125]))
    if mtype is M.INFERENCE_RESULT:
        return Message(mtype, **hdr, flags=REPLY, body=InferenceResult(7, 0.75, 3.5))
    if mtype is M.ERROR:
        return Message(mtype, **hdr, body=Error(404, "no route to h9 — réessayez"))
    raise AssertionError(mtype)


ALL = list(MsgType)


def with_header(b: bytes, **fields) -> bytes:
    """Rewrite fixed-header fields of an encoded message (no re-signing)."""
    off = {"magic": (0, "!H"), "version": (2, "!B"), "type": (3, "!B"), "flags": (4, "!B"),
           "hdr_len": (5, "!B"), "length": (32, "!I")}
    b = bytearray(b)
    for k, v in fields.items():
        o, f = off[k]
        struct.pack_into(f, b, o, v)
    return bytes(b)


def raw_message(mtype: int, tlv_area: bytes = b"", payload: bytes = b"", flags: int = 0,
                hdr_len: int | None = None, length: int | None = None) -> bytes:
    """Hand-assemble a message (to build what encode refuses to)."""
    words = hdr_len if hdr_len is not None else (HEADER_LEN + len(tlv_area) + 3) // 4
    tlv_area = tlv_area + b"\0" * (words * 4 - HEADER_LEN - len(tlv_area))
    head = struct.pack("!HBBBBBBIIIHHIII", 0x4441, 3, mtype, flags, words, 0, 0, 0, 0, 0,
                       1, 2, 0, 0, len(payload) if length is None else length)
    return head + tlv_area + payload


# --- constants and layout ------------------------------------------------------------

def test_constants_match_the_doc():
    assert (W.MAGIC, W.VERSION, W.HEADER_LEN) == (b"DA", 3, 36)
    assert (AUTH, LAST, REPLY) == (1, 2, 4)
    assert DCC_NODE == 0xFFFE and W.BROADCAST == 0xFFFF
    assert (W.DCC_IP, W.DCC_MAC, W.DCC_UDP_PORT, W.NODE_TCP_PORT) == (
        "10.255.255.254", "02:dc:c0:00:00:01", 7070, 7000)
    assert TRAILER_LEN == 40 and MAX_TLV_BYTES == 984


def test_enum_values_are_the_wire_contract():
    assert {m.name: m.value for m in MsgType} == {
        "KNOWLEDGE_REPORT": 1, "TRAIN_REQUEST": 2, "FEASIBILITY": 3, "ITINERARY": 4,
        "MODEL_CHUNK": 5, "ACK": 6, "EVAL_REQUEST": 7, "EVAL_VERDICT": 8, "TASK_RESULT": 9,
        "INFERENCE_QUERY": 10, "INFERENCE_RESULT": 11, "ERROR": 12, "DATA_SHARD": 13}
    assert {t.name: t.value for t in Tlv} == {
        "PAD": 0, "TARGET_ACCURACY": 1, "DEADLINE": 2, "MAX_LATENCY": 3, "MIN_ACCURACY": 4,
        "PRIVACY_LEVEL": 5, "REQUIRED_LABELS": 6, "MAX_HOPS": 7, "BYTE_BUDGET": 8, "EPOCHS": 9,
        "ITINERARY": 16, "MODEL_DIGEST": 17, "CHUNK": 18, "TRANSPORT": 19, "PARTIES": 20,
        "END_REASON": 21, "ACCURACY": 22}
    assert [int(r) for r in Role] == [1, 2, 4, 8, 16]
    assert [int(e) for e in EndReason] == [1, 2, 3, 4, 5, 6]
    assert [int(s) for s in AckStatus] == [0, 1, 2]
    assert [int(p) for p in Privacy] == [0, 1, 2]


def test_fixed_header_offsets_are_big_endian_as_documented():
    m = Message(MsgType.ACK, flags=REPLY, hop_count=0x11, hop_limit=0x22, task_id=0x01020304,
                model_id=0x05060708, model_version=0x090A0B0C, src=0x0D0E, dst=0x0F10,
                seq=0x11121314, ack=0x15161718, body=Ack(0x2122232425262728, AckStatus.OK))
    b = encode(m)
    assert len(b) == 36 + 9
    assert b[0:2] == b"DA" and b[2] == 3 and b[3] == 6 and b[4] == REPLY
    assert b[5] == 9                                   # words: no TLVs
    assert (b[6], b[7]) == (0x11, 0x22)
    assert b[8:12] == bytes([1, 2, 3, 4])
    assert b[12:16] == bytes([5, 6, 7, 8])
    assert b[16:20] == bytes([9, 10, 11, 12])
    assert b[20:22] == bytes([13, 14]) and b[22:24] == bytes([15, 16])
    assert b[24:28] == bytes([0x11, 0x12, 0x13, 0x14])
    assert b[28:32] == bytes([0x15, 0x16, 0x17, 0x18])
    assert b[32:36] == (9).to_bytes(4, "big")
    assert b[36:] == bytes(range(0x21, 0x29)) + b"\x00"


def test_knowledge_report_layout_is_aligned_as_documented():
    kr = KnowledgeReport(Role.COMPUTE | Role.INFERENCE, 0x01020304, 0x05060708, [0x0A0B0C0D, 9],
                         capacity=2.0, load=0.75, queue_len=0x11121314, service_ms=12.5,
                         noise_epsilon=0.25, report_seq=0x21222324, models=[0x31323334])
    p = encode(Message(MsgType.KNOWLEDGE_REPORT, body=kr))[HEADER_LEN:]
    assert len(p) == 36 + 4 * 3
    assert p[0:4] == bytes([0x18, 2, 1, 0])            # roles, n, n_models, reserved
    assert p[4:8] == bytes([1, 2, 3, 4]) and p[8:12] == bytes([5, 6, 7, 8])
    assert p[12:16] == bytes([0x21, 0x22, 0x23, 0x24])  # report_seq
    assert p[16:20] == bytes([0x11, 0x12, 0x13, 0x14])  # queue_len
    assert struct.unpack_from("!4f", p, 20) == (2.0, 0.75, 12.5, 0.25)
    assert p[36:44] == bytes([0x0A, 0x0B, 0x0C, 0x0D, 0, 0, 0, 9])   # label_hist
    assert p[44:48] == bytes([0x31, 0x32, 0x33, 0x34])                # models
    # defaults: a 36-byte, all-zero fixed part
    empty = encode(Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport()))
    assert empty[HEADER_LEN:] == bytes(36)


def test_knowledge_report_positional_fields_keep_their_order():
    # callers build it with the first four positionally: the new fields only have defaults
    kr = KnowledgeReport(Role.DATA, 10, 2, [4, 6])
    assert (kr.capacity, kr.load, kr.queue_len, kr.service_ms, kr.noise_epsilon,
            kr.report_seq, kr.models) == (0.0, 0.0, 0, 0.0, 0.0, 0, [])
    assert decode(encode(Message(MsgType.KNOWLEDGE_REPORT, body=kr))).body == kr


def test_knowledge_report_at_its_largest_round_trips():
    kr = KnowledgeReport(0x1F, 2**32 - 1, 2**32 - 1, [2**32 - 1] * 255, capacity=3.4028234e38,
                         load=1e-45, queue_len=2**32 - 1, service_ms=65504.0,
                         noise_epsilon=0.0, report_seq=2**32 - 1, models=list(range(255)))
    m = Message(MsgType.KNOWLEDGE_REPORT, src=4, dst=DCC_NODE, body=kr)
    b = encode(m)
    assert len(b) == HEADER_LEN + 36 + 4 * 510
    d = decode(b)
    assert d.body.models == list(range(255)) and d.body.label_hist == [2**32 - 1] * 255
    assert d.body.capacity == struct.unpack("!f", struct.pack("!f", 3.4028234e38))[0]
    assert encode(d) == b


def test_knowledge_report_reserved_byte_is_ignored_on_receipt():
    b = bytearray(encode(sample(MsgType.KNOWLEDGE_REPORT)))
    b[HEADER_LEN + 3] = 0xEE
    assert decode(bytes(b)) == sample(MsgType.KNOWLEDGE_REPORT)


def test_tlvs_are_encoded_ascending_and_padded_to_words():
    m = Message(MsgType.TRAIN_REQUEST, body=TrainRequest(1),
                tlvs={Tlv.MAX_HOPS: 3, Tlv.TARGET_ACCURACY: 0.85})   # dict order: 7 then 1
    b = encode(m)
    # TARGET_ACCURACY(1, 2, 8500), MAX_HOPS(7, 1, 3), one PAD: 7 bytes + 1 = 2 words
    assert b[36:44] == bytes([1, 2]) + (8500).to_bytes(2, "big") + bytes([7, 1, 3, 0])
    assert b[5] == 11
    assert decode(b).tlvs == {Tlv.TARGET_ACCURACY: 0.85, Tlv.MAX_HOPS: 3}


def test_every_tlv_at_its_largest_still_fits_the_header():
    tlvs = {Tlv.TARGET_ACCURACY: 1.0, Tlv.DEADLINE: 2**64 - 1, Tlv.MAX_LATENCY: 2**32 - 1,
            Tlv.MIN_ACCURACY: 0.0, Tlv.PRIVACY_LEVEL: Privacy.LOCAL,
            Tlv.REQUIRED_LABELS: list(range(255)), Tlv.MAX_HOPS: 255, Tlv.BYTE_BUDGET: 1,
            Tlv.ITINERARY: Itinerary(124, 255, 255, list(range(1, 126))),
            Tlv.MODEL_DIGEST: DIGEST, Tlv.CHUNK: (2**64 - 1, 2**64 - 1), Tlv.TRANSPORT: 63,
            Tlv.PARTIES: (65535, 65534), Tlv.END_REASON: EndReason.ERROR, Tlv.ACCURACY: 0.0001}
    m = Message(MsgType.MODEL_CHUNK, tlvs=tlvs, body=b"x")
    b = encode(m)
    assert (b[5] * 4 - HEADER_LEN) == 624 + 0   # 624 is a multiple of 4: no PAD
    assert decode(b) == m


def test_node_names():
    assert node_id("h12") == 12 and node_name(12) == "h12"
    assert node_id("h65533") == 65533 and node_name(65533) == "h65533"
    assert node_id("dcc") == DCC_NODE and node_name(DCC_NODE) == "dcc"
    assert node_name(0xFFFF) == "broadcast"
    for bad in ("h0", "h65534", "h012", "s1", "h", "H3", "h1x", 12):
        with pytest.raises(WireError, match="node name"):
            node_id(bad)
    for bad in (0, -1, 70000, "h1"):
        with pytest.raises(WireError, match="node id"):
            node_name(bad)


# --- round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
def test_roundtrip_every_type(mtype):
    m = sample(mtype)
    b = encode(m)
    d = decode(b)
    assert d == m
    assert d.type is mtype and d.nonce is None
    assert encode(d) == b
    assert peek_length(b[:36]) == len(b)
    assert len(b) % 1 == 0 and b[5] * 4 + struct.unpack_from("!I", b, 32)[0] == len(b)


@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
def test_roundtrip_every_type_authenticated(mtype):
    m = sample(mtype)
    b = encode(m, KEY, nonce=77)
    assert b[4] & AUTH and len(b) == len(encode(m)) + TRAILER_LEN
    assert b[-40:-32] == (77).to_bytes(8, "big")
    assert b[-32:] == hmac.new(KEY, b[:-32], "sha256").digest()
    d = decode(b, KEY)
    assert d.nonce == 77 and d.flags == m.flags | AUTH
    d.flags, d.nonce = m.flags, None
    assert d == m


@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
def test_decode_accepts_bytearray_and_memoryview(mtype):
    b = encode(sample(mtype), KEY, 1)
    assert decode(bytearray(b), KEY) == decode(memoryview(b), KEY) == decode(b, KEY)
    assert decode(memoryview(b"xx" + b)[2:], KEY) == decode(b, KEY)


def test_decoded_values_are_typed():
    d = decode(encode(sample(MsgType.TASK_RESULT)))
    assert isinstance(d.tlvs[Tlv.CHUNK], Chunk) and d.tlvs[Tlv.CHUNK].total == 1_000_000
    assert d.tlvs[Tlv.END_REASON] is EndReason.TARGET_REACHED
    assert isinstance(d.body, bytes)
    d = decode(encode(sample(MsgType.ITINERARY)))
    assert d.tlvs[Tlv.ITINERARY] == Itinerary(0, 0, 3, [4, 7, 2, 9])
    assert d.tlvs[Tlv.PARTIES].mpvu == 5 and d.tlvs[Tlv.TRANSPORT] == 46
    d = decode(encode(sample(MsgType.KNOWLEDGE_REPORT)))
    assert d.body.roles == Role.DATA | Role.MPVU | Role.INFERENCE
    assert isinstance(d.body.roles, Role) and d.body.models == [3, 70]
    assert isinstance(d.body.queue_len, int) and isinstance(d.body.load, float)
    assert decode(encode(sample(MsgType.ACK))).body.status is AckStatus.DIGEST_MISMATCH
    assert decode(encode(sample(MsgType.FEASIBILITY))).body.feasible is False


def test_fixed_point_accuracies_round_trip_exactly():
    for k in (0, 1, 8500, 9999, 10000, 1234):
        m = Message(MsgType.TASK_RESULT, tlvs={Tlv.ACCURACY: k / 10000}, body=b"")
        b = encode(m)
        assert b[38:40] == k.to_bytes(2, "big")
        assert decode(b).tlvs[Tlv.ACCURACY] == k / 10000


def test_per_class_none_is_nan_on_the_wire():
    m = Message(MsgType.EVAL_VERDICT, body=EvalVerdict(0.5, 1.0, 10, [None, 0.5, math.nan]))
    b = encode(m)
    assert math.isnan(struct.unpack_from("!f", b, 36 + 13)[0])
    assert decode(b).body.per_class == [None, 0.5, None]


def test_empty_bodies_and_lists():
    for m in (Message(MsgType.MODEL_CHUNK, tlvs={Tlv.CHUNK: (0, 10), Tlv.MODEL_DIGEST: DIGEST},
                      body=b""),   # the resume probe
              Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport()),
              Message(MsgType.FEASIBILITY, body=Feasibility(True, 0.0, 0, [])),
              Message(MsgType.ITINERARY, body=ItineraryBody(""),
                      tlvs={Tlv.ITINERARY: Itinerary(0, 0, 0, []), Tlv.REQUIRED_LABELS: []}),
              Message(MsgType.EVAL_VERDICT, body=EvalVerdict()),
              Message(MsgType.INFERENCE_QUERY, body=InferenceQuery([])),
              Message(MsgType.ERROR, body=Error(0, ""))):
        assert decode(encode(m)) == m


def test_require_names_the_missing_tlv():
    m = decode(encode(sample(MsgType.MODEL_CHUNK)))
    assert m.require(Tlv.CHUNK) == (262144, 1_000_000)
    with pytest.raises(WireError, match="MODEL_CHUNK message lacks TLV END_REASON"):
        m.require(Tlv.END_REASON)


# --- decode errors: header --------------------------------------------------------------

GOOD = encode(sample(MsgType.TRAIN_REQUEST))


@pytest.mark.parametrize("data, match", [
    (b"", "at least 36 header bytes, got 0"),
    (GOOD[:35], "at least 36 header bytes, got 35"),
    (with_header(GOOD, magic=0x4442), "bad magic b'DB'"),
    (with_header(GOOD, version=1), "unsupported version 1"),
    (with_header(GOOD, version=2), "unsupported version 2, this node speaks 3"),
    (with_header(GOOD, type=0), "unknown message type 0"),
    (with_header(GOOD, type=14), "unknown message type 14"),
    (with_header(GOOD, type=255), "unknown message type 255"),
    (with_header(GOOD, hdr_len=8), "hdr_len 8 words is below the minimum 9"),
    (with_header(GOOD, hdr_len=0), "hdr_len 0 words"),
    (with_header(GOOD, hdr_len=200), "hdr_len 200 words .800 bytes. runs past"),
    (with_header(GOOD, length=9), "length says 9 payload bytes, only 8"),
    (with_header(GOOD, length=7), "1 trailing bytes after the message"),
    (GOOD + b"\0", "1 trailing bytes after the message"),
    (GOOD[:-1], "length says 8 payload bytes, only 7"),
    (with_header(GOOD, flags=AUTH), "AUTH trailer, only 8"),
])
def test_decode_rejects_bad_header(data, match):
    with pytest.raises(WireError, match=match):
        decode(data)


def test_peek_length_validates_and_limits():
    assert peek_length(GOOD) == len(GOOD)
    b = encode(sample(MsgType.ACK), KEY, 1)
    assert peek_length(b[:36]) == len(b)
    with pytest.raises(WireError, match="header needs 36 bytes, got 10"):
        peek_length(GOOD[:10])
    with pytest.raises(WireError, match="bad magic"):
        peek_length(b"XX" + GOOD[2:36])
    with pytest.raises(WireError, match="exceeds the 100-byte payload limit"):
        peek_length(with_header(GOOD, length=101), max_payload=100)
    with pytest.raises(WireError, match="exceeds"):
        peek_length(with_header(GOOD, length=2**32 - 1))


# --- decode errors: TLVs ---------------------------------------------------------------

TR = TrainRequest(1)
TRP = struct.pack("!Q", 1)


@pytest.mark.parametrize("area, match", [
    (bytes([10, 1, 0, 0]), "unknown TLV type 10 at offset 36"),
    (bytes([200, 0, 0, 0]), "unknown TLV type 200"),
    (bytes([1, 2, 0, 1, 7, 9, 0, 0]), "TLV MAX_HOPS at offset 40: value of 9 bytes overruns"),
    (bytes([7, 1, 3, 1]), "TLV TARGET_ACCURACY at offset 39: its length byte lies past"),
    (bytes([7, 1, 3, 7, 1, 4, 0, 0]), "TLV MAX_HOPS at offset 39 is repeated"),
    (bytes([7, 1, 3, 1, 2, 0, 1, 0]),
     "TARGET_ACCURACY at offset 39 is out of order .after MAX_HOPS"),
    (bytes([0, 0, 0, 0, 7, 1, 3, 0]), "PAD at offset 36: 8 bytes of padding, at most 3"),
    (bytes([7, 1, 3, 0, 0, 0, 0, 0]), "PAD at offset 39: 5 bytes of padding"),
    (bytes([8, 8]) + bytes(8) + bytes([0, 7]), "TLV type 7 at offset 47 follows a PAD"),
    (bytes([1, 3, 0, 0, 0, 0, 0, 0]), "TLV TARGET_ACCURACY has length 3, must be 2"),
    (bytes([1, 2, 0x27, 0x11]), r"TLV TARGET_ACCURACY = 10001/10000 is above 1.0"),
    (bytes([4, 2, 0xFF, 0xFF]), "TLV MIN_ACCURACY = 65535/10000"),
    (bytes([22, 2, 0x27, 0x11]), "TLV ACCURACY = 10001"),
    (bytes([2, 4, 0, 0, 0, 0, 0, 0]), "TLV DEADLINE has length 4, must be 8"),
    (bytes([3, 8]) + bytes(8) + bytes(2), "TLV MAX_LATENCY has length 8, must be 4"),
    (bytes([5, 1, 3, 0]), r"TLV PRIVACY_LEVEL = 3 is not one of \[0, 1, 2\]"),
    (bytes([5, 2, 0, 0]), "TLV PRIVACY_LEVEL has length 2, must be 1"),
    (bytes([7, 0, 0, 0]), "TLV MAX_HOPS has length 0, must be 1"),
    (bytes([8, 7]) + bytes(10), "TLV BYTE_BUDGET has length 7, must be 8"),
    (bytes([16, 3, 0, 0, 0, 0]), "TLV ITINERARY has length 3, must be 4 \\+ 2"),
    (bytes([16, 5, 0, 0, 0, 0, 0, 0]), "TLV ITINERARY has length 5"),
    (bytes([17, 31]) + bytes(34), "TLV MODEL_DIGEST has length 31, must be 32"),
    (bytes([18, 15]) + bytes(18), "TLV CHUNK has length 15, must be 16"),
    (bytes([19, 4, 64, 0, 0, 0]), "TLV TRANSPORT dscp = 64: a DSCP is 0..63"),
    (bytes([19, 1, 0, 0]), "TLV TRANSPORT has length 1, must be 4"),
    (bytes([20, 2, 0, 1, 0, 0]), "TLV PARTIES has length 2, must be 4"),
    (bytes([21, 1, 0, 0]), r"TLV END_REASON = 0 is not one of \[1, 2, 3, 4, 5, 6\]"),
    (bytes([21, 1, 7, 0]), "TLV END_REASON = 7"),
    (bytes([22, 1, 0, 0]), "TLV ACCURACY has length 1, must be 2"),
])
def test_decode_rejects_bad_tlvs(area, match):
    with pytest.raises(WireError, match=match):
        decode(raw_message(2, area, TRP))


def test_reserved_tlv_bytes_are_ignored_on_receipt():
    b = raw_message(4, bytes([16, 6, 0, 1, 2, 0xEE, 0, 9, 19, 4, 46, 0xAA, 0xBB, 0xCC]),
                    b"\x00")
    d = decode(b)
    assert d.tlvs == {Tlv.ITINERARY: Itinerary(0, 1, 2, [9]), Tlv.TRANSPORT: 46}


# --- decode errors: payloads ------------------------------------------------------------

@pytest.mark.parametrize("mtype, payload, match", [
    (1, b"", "KNOWLEDGE_REPORT payload is 0 bytes, shorter than the 36"),
    (1, b"\x01" * 35, "KNOWLEDGE_REPORT payload is 35 bytes, shorter than the 36"),
    # the v2 layout (roles, samples, verification_samples, n, hist): too short for v3
    (1, bytes([1, 0, 0, 0, 5, 0, 0, 0, 1, 0]), "payload is 10 bytes, shorter than the 36"),
    (1, bytes([1, 2, 0, 0]) + bytes(32) + bytes(4),
     r"payload is 40 bytes, shorter than the 44 .*label_hist n = 2, n_models = 0"),
    (1, bytes([1, 1, 3, 0]) + bytes(32) + bytes(4 + 8),
     r"payload is 48 bytes, shorter than the 52 .*label_hist n = 1, n_models = 3"),
    (1, bytes([1, 0, 1, 0]) + bytes(32) + bytes(4) + b"\0",
     "KNOWLEDGE_REPORT payload has 1 trailing bytes after its 40-byte body"),
    (1, bytes(20) + struct.pack("!f", math.nan) + bytes(12),
     "KNOWLEDGE_REPORT.capacity = nan must be finite and >= 0"),
    (1, bytes(24) + struct.pack("!f", -0.5) + bytes(8),
     r"KNOWLEDGE_REPORT.load = -0.5 must be finite and >= 0"),
    (1, bytes(28) + struct.pack("!f", math.inf) + bytes(4),
     "KNOWLEDGE_REPORT.service_ms = inf must be finite"),
    (1, bytes(32) + struct.pack("!f", -math.inf), "KNOWLEDGE_REPORT.noise_epsilon = -inf"),
    (2, bytes(7), "TRAIN_REQUEST payload is 7 bytes, shorter than the 8"),
    (2, bytes(9), "TRAIN_REQUEST payload has 1 trailing bytes"),
    (3, bytes(13), "FEASIBILITY payload is 13 bytes, shorter than the 14"),
    (3, bytes([2]) + bytes(13), "FEASIBILITY.feasible = 2, must be 0 or 1"),
    (3, bytes(13) + b"\x01", r"shorter than the 16 .*length of reasons\[0\] of 1"),
    (3, bytes(13) + b"\x01\x00\x05ab", r"shorter than the 21 .*reasons\[0\] of 5 bytes"),
    (3, bytes(13) + b"\x01\x00\x01\xff", r"FEASIBILITY.reasons\[0\] is not UTF-8"),
    (3, bytes(14) + b"x", "FEASIBILITY payload has 1 trailing bytes after its 0 reasons"),
    (4, b"", "ITINERARY payload is 0 bytes, shorter than the 1"),
    (4, b"\x05abc", r"ITINERARY payload is 4 bytes, shorter than the 6 .*policy_len = 5"),
    (4, b"\x01ab", "ITINERARY payload has 1 trailing bytes"),
    (4, b"\x02\xc3\x28", "ITINERARY.policy is not UTF-8"),
    (6, bytes(8), "ACK payload is 8 bytes, shorter than the 9"),
    (6, bytes(10), "ACK payload has 1 trailing bytes"),
    (6, bytes(8) + b"\x03", r"ACK.status = 3 is not one of \[0, 1, 2\]"),
    (8, bytes(12), "EVAL_VERDICT payload is 12 bytes, shorter than the 13"),
    (8, bytes(12) + b"\x02" + bytes(4), r"shorter than the 21 .*per_class n = 2"),
    (8, bytes(13) + b"\0", "EVAL_VERDICT payload has 1 trailing bytes"),
    (10, b"\x00", "INFERENCE_QUERY payload is 1 bytes, shorter than the 2"),
    (10, b"\x00\x02" + bytes(4), r"shorter than the 10 .*features n = 2"),
    (10, b"\x00\x00\x00", "INFERENCE_QUERY payload has 1 trailing bytes"),
    (11, bytes(8), "INFERENCE_RESULT payload is 8 bytes, shorter than the 9"),
    (11, bytes(10), "INFERENCE_RESULT payload has 1 trailing bytes"),
    (12, bytes(3), "ERROR payload is 3 bytes, shorter than the 4"),
    (12, b"\x00\x01\x00\x03ab", r"ERROR payload is 6 bytes, shorter than the 7 .*text len = 3"),
    (12, b"\x00\x01\x00\x01ab", "ERROR payload has 1 trailing bytes"),
    (12, b"\x00\x01\x00\x01\x80", "ERROR.text is not UTF-8"),
])
def test_decode_rejects_bad_payloads(mtype, payload, match):
    with pytest.raises(WireError, match=match):
        decode(raw_message(mtype, b"", payload))


def _mutations(b: bytes):
    yield from (b[:k] for k in range(len(b)))
    for i in range(len(b)):
        for v in {0x00, 0xFF, b[i] ^ 0x80, b[i] ^ 0x01} - {b[i]}:
            yield b[:i] + bytes([v]) + b[i + 1:]


@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
def test_mangled_messages_raise_only_wire_error(mtype):
    # Every truncation and many single-byte corruptions: decode either returns a Message or
    # raises WireError; no IndexError, struct.error or UnicodeDecodeError escapes.
    m = sample(mtype)
    if isinstance(m.body, bytes):
        m.body = m.body[:24]
    for key, b in ((None, encode(m)), (KEY, encode(m, KEY, 5))):
        for bad in _mutations(b):
            try:
                got = decode(bad, key)
            except WireError:
                continue
            assert isinstance(got, Message)
            assert key is None, "a corrupted signed message verified"


# --- encode errors ---------------------------------------------------------------------

@pytest.mark.parametrize("msg, match", [
    (Message(MsgType.ACK, src=70000, body=Ack()), r"Message.src = 70000 does not fit u16"),
    (Message(MsgType.ACK, seq=-1, body=Ack()), r"Message.seq = -1 does not fit u32"),
    (Message(MsgType.ACK, hop_count="3", body=Ack()), "Message.hop_count must be an int"),
    (Message(MsgType.ACK, flags=256, body=Ack()), r"Message.flags = 256"),
    (Message(MsgType.ACK, body=None), "ACK body must be a Ack, got NoneType"),
    (Message(MsgType.ACK, body=TrainRequest()), "ACK body must be a Ack, got TrainRequest"),
    (Message(MsgType.MODEL_CHUNK, body="abc"), "MODEL_CHUNK body must be bytes"),
    (Message(99, body=b""), "Message.type 99 is not a MsgType"),
    (Message(MsgType.ACK, flags=AUTH, body=Ack()), "AUTH set but no key"),
    (Message(MsgType.ACK, body=Ack(status=3)), r"ACK.status = 3 is not one of"),
    (Message(MsgType.ACK, body=Ack(next_offset=2**64)), r"ACK.next_offset = 18446744073709551616"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(label_hist=[0] * 256)),
     "label_hist has 256 entries, at most 255"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(label_hist=[1, -2])),
     r"KNOWLEDGE_REPORT.label_hist\[1\] = -2 does not fit u32"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(roles=256)), "roles = 256"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(models=[0] * 256)),
     "models has 256 entries, at most 255"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(models=[7, 2**32])),
     r"KNOWLEDGE_REPORT.models\[1\] = 4294967296 does not fit u32"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(models=None)),
     "label_hist and .models must be lists of ints, got list and NoneType"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(queue_len=-1)),
     "KNOWLEDGE_REPORT.queue_len = -1 does not fit u32"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(report_seq=2**32)),
     "KNOWLEDGE_REPORT.report_seq = 4294967296 does not fit u32"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(capacity="fast")),
     "KNOWLEDGE_REPORT.capacity must be a float, got str"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(load=-0.1)),
     r"KNOWLEDGE_REPORT.load = -0.1 must be finite and >= 0"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(service_ms=math.nan)),
     "KNOWLEDGE_REPORT.service_ms = nan must be finite"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(noise_epsilon=math.inf)),
     "KNOWLEDGE_REPORT.noise_epsilon = inf must be finite"),
    (Message(MsgType.KNOWLEDGE_REPORT, body=KnowledgeReport(capacity=1e39)),
     r"KNOWLEDGE_REPORT.capacity = 1e\+39 is too large for binary32"),
    (Message(MsgType.TRAIN_REQUEST, body=TrainRequest(-1)), "TRAIN_REQUEST.model_bytes = -1"),
    (Message(MsgType.FEASIBILITY, body=Feasibility(est_seconds=1e39)),
     "FEASIBILITY.est_seconds = 1e.39 is too large for binary32"),
    (Message(MsgType.FEASIBILITY, body=Feasibility(feasible=2)), "FEASIBILITY.feasible = 2"),
    (Message(MsgType.FEASIBILITY, body=Feasibility(reasons=["x"] * 256)), "256 reasons"),
    (Message(MsgType.FEASIBILITY, body=Feasibility(reasons=[b"x"])), r"reasons\[0\] must be a str"),
    (Message(MsgType.FEASIBILITY, body=Feasibility(reasons=["x" * 65536])), "65536 UTF-8 bytes"),
    (Message(MsgType.ITINERARY, body=ItineraryBody("é" * 128)), "policy is 256 UTF-8 bytes"),
    (Message(MsgType.EVAL_VERDICT, body=EvalVerdict(per_class=[0.0] * 256)), "256 classes"),
    (Message(MsgType.EVAL_VERDICT, body=EvalVerdict(loss="x")),
     "EVAL_VERDICT.loss must be a float"),
    (Message(MsgType.INFERENCE_QUERY, body=InferenceQuery([0.0, 1e40])),
     r"INFERENCE_QUERY.features\[1\] = 1e\+40"),
    (Message(MsgType.INFERENCE_RESULT, body=InferenceResult(label=256)), "label = 256"),
    (Message(MsgType.ERROR, body=Error(code=65536)), "ERROR.code = 65536"),
    (Message(MsgType.ERROR, body=Error(text=b"x")), "ERROR.text must be a str"),
    (Message(MsgType.ACK, body=Ack(), tlvs={99: 1}), "TLV key 99 is not a known Tlv"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.PAD: 0}), "TLV key .*PAD"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.TARGET_ACCURACY: 1.5}),
     "TLV TARGET_ACCURACY = 1.5: an accuracy must be a number in 0..1"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.ACCURACY: -0.1}), "TLV ACCURACY = -0.1"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.DEADLINE: -5}),
     "TLV DEADLINE = -5 does not fit u64"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.MAX_HOPS: 256}), "TLV MAX_HOPS = 256"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.MAX_LATENCY: True}),
     "TLV MAX_LATENCY must be an int"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.PRIVACY_LEVEL: 3}), "TLV PRIVACY_LEVEL = 3"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.END_REASON: 0}), "TLV END_REASON = 0"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.REQUIRED_LABELS: [256]}), "REQUIRED_LABELS"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.REQUIRED_LABELS: 5}), "give a list of label ids"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.REQUIRED_LABELS: [0] * 256}), "256 labels"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.ITINERARY: Itinerary(segments=[1] * 126)}),
     "126 segments, at most 125"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.ITINERARY: Itinerary(ptr=-1)}),
     "TLV ITINERARY.ptr = -1"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.ITINERARY: Itinerary(segments=[0, 65536])}),
     r"TLV ITINERARY.segments\[1\] = 65536"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.ITINERARY: [1, 2]}), "must be an Itinerary"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.MODEL_DIGEST: b"short"}),
     "MODEL_DIGEST must be 32 bytes"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.CHUNK: (1, 2, 3)}),
     r"CHUNK must be \(offset, total\)"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.CHUNK: (-1, 2)}), "TLV CHUNK.offset = -1"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.TRANSPORT: 64}), "TLV TRANSPORT dscp = 64"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.PARTIES: (1, 65536)}), "TLV PARTIES.mpvu = 65536"),
    (Message(MsgType.ACK, body=Ack(), tlvs={Tlv.PARTIES: 1}), "PARTIES must be"),
])
def test_encode_rejects_values_that_do_not_fit(msg, match):
    with pytest.raises(WireError, match=match):
        encode(msg)


def test_encode_with_key_needs_a_nonce_that_fits():
    m = sample(MsgType.ACK)
    with pytest.raises(WireError, match="needs a nonce"):
        encode(m, KEY)
    with pytest.raises(WireError, match="encode.nonce = 18446744073709551616 does not fit u64"):
        encode(m, KEY, 2**64)
    m.nonce = 9
    assert decode(encode(m, KEY), KEY).nonce == 9        # Message.nonce is the default
    assert decode(encode(m, KEY, 10), KEY).nonce == 10   # the argument wins


# --- authentication -------------------------------------------------------------------

@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
def test_any_tampered_byte_is_refused(mtype):
    m = sample(mtype)
    if isinstance(m.body, bytes):
        m.body = m.body[:40]
    b = encode(m, KEY, 123)
    for i in range(len(b)):
        bad = bytearray(b)
        bad[i] ^= 0x04
        with pytest.raises(WireError):
            decode(bytes(bad), KEY)


def test_wrong_key_missing_trailer_and_unverified_decode():
    b = encode(sample(MsgType.KNOWLEDGE_REPORT), KEY, 5)
    with pytest.raises(AuthError, match="bad HMAC tag on KNOWLEDGE_REPORT from node 12"):
        decode(b, b"another key")
    with pytest.raises(AuthError, match="unauthenticated KNOWLEDGE_REPORT from node 12 refused"):
        decode(encode(sample(MsgType.KNOWLEDGE_REPORT)), KEY)
    # without a key the trailer is parsed but not checked (pcap analysis, tools)
    assert decode(b[:-1] + bytes([b[-1] ^ 1])).nonce == 5
    assert issubclass(AuthError, WireError) and issubclass(WireError, ValueError)


@pytest.mark.parametrize("key", [b"", b"k", KEY, bytes(range(64)), bytes(range(65)) * 3,
                                 bytearray(b"mutable key")], ids=len)
def test_tag_is_standard_hmac_sha256_for_any_key_length(key):
    b = encode(sample(MsgType.ACK), key, 2**64 - 1)
    assert b[-32:] == hmac.new(bytes(key), b[:-32], hashlib.sha256).digest()
    assert decode(b, key).nonce == 2**64 - 1
    assert decode(b, bytes(key)).nonce == 2**64 - 1


# --- anti-replay ----------------------------------------------------------------------

def test_replay_window_semantics():
    w = ReplayWindow()
    assert w.check_and_update(1, 100)
    assert not w.check_and_update(1, 100)              # replay
    assert w.check_and_update(1, 105)                  # ahead: window slides
    assert w.check_and_update(1, 103)                  # out of order, within window: once
    assert not w.check_and_update(1, 103)
    assert w.check_and_update(1, 101)
    assert not w.check_and_update(1, 105)
    assert w.check_and_update(1, 105 - 63)             # oldest slot of the window
    assert not w.check_and_update(1, 105 - 63)
    assert not w.check_and_update(1, 105 - 64)         # too old
    assert not w.check_and_update(1, 0)
    assert w.highest(1) == 105 and w.highest(2) is None
    assert (w.accepted, w.replayed, w.too_old) == (5, 4, 2)


def test_replay_window_slides_and_sources_are_independent():
    w = ReplayWindow()
    assert w.check_and_update(1, 10) and w.check_and_update(2, 10)   # other source, same nonce
    assert w.check_and_update(1, 12)
    assert w.check_and_update(1, 1000)                 # jump past the window: bitmap resets
    assert not w.check_and_update(1, 12)               # too old now
    assert w.check_and_update(1, 999) and w.check_and_update(1, 937)
    assert not w.check_and_update(1, 936)
    assert not w.check_and_update(1, 999)
    assert w.check_and_update(1, 1064)                 # slide by exactly 64
    assert w.check_and_update(1, 1001) and not w.check_and_update(1, 1000)
    assert not w.check_and_update(1, 1064)
    # every nonce in a shuffled block is accepted exactly once
    import random
    r = random.Random(7)
    nonces = list(range(2000, 2064))
    r.shuffle(nonces)
    w2 = ReplayWindow()
    w2.check_and_update(5, 2063)
    assert [w2.check_and_update(5, n) for n in nonces].count(True) == 63
    assert not any(w2.check_and_update(5, n) for n in nonces)


# --- TCP streams ----------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_stream_roundtrip_back_to_back(pair):
    a, b = pair
    msgs = [sample(t) for t in ALL]
    sent = 0
    for i, m in enumerate(msgs):
        sent += write_message(a, m, KEY if i % 2 else None, nonce=i if i % 2 else None)
    a.shutdown(socket.SHUT_WR)
    got = []
    while (m := read_message(b)) is not None:
        got.append(m)
    assert len(got) == len(msgs)
    for i, (m, g) in enumerate(zip(msgs, got)):
        if i % 2:
            assert g.nonce == i and g.flags & AUTH
            g.nonce, g.flags = None, g.flags & ~AUTH
        assert g == m


def test_stream_with_key_verifies(pair):
    a, b = pair
    write_message(a, sample(MsgType.ACK), KEY, 1)
    write_message(a, sample(MsgType.ACK))
    assert read_message(b, KEY).nonce == 1
    with pytest.raises(AuthError, match="unauthenticated ACK"):
        read_message(b, KEY)


def test_stream_large_chunk_in_small_pieces(pair):
    a, b = pair
    state = bytes(range(256)) * 4096                   # 1 MiB
    m = Message(MsgType.MODEL_CHUNK, flags=LAST, body=state,
                tlvs={Tlv.MODEL_DIGEST: hashlib.sha256(state).digest(),
                      Tlv.CHUNK: (0, len(state))})
    data = encode(m, KEY, 3)

    def dribble():
        for i in range(0, len(data), 7919):
            a.sendall(data[i:i + 7919])
    t = threading.Thread(target=dribble)
    t.start()
    got = read_message(b, KEY)
    t.join()
    assert got.body == state and got.tlvs[Tlv.CHUNK] == (0, len(state))


def test_stream_eof_and_errors(pair):
    a, b = pair
    data = encode(sample(MsgType.ACK))
    a.sendall(data[:20])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match="after 20 of 36 bytes of a message header"):
        read_message(b)


def test_stream_eof_inside_body(pair):
    a, b = pair
    data = encode(sample(MsgType.KNOWLEDGE_REPORT))
    a.sendall(data[:-3])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError, match=f"after {len(data) - 3} of {len(data)} bytes"):
        read_message(b)


def test_stream_refuses_bad_header_and_huge_length_before_reading_on(pair):
    a, b = pair
    a.sendall(with_header(GOOD, version=9))
    with pytest.raises(WireError, match="unsupported version 9"):
        read_message(b)
    a2, b2 = socket.socketpair()
    with a2, b2:
        a2.sendall(with_header(GOOD, length=2**31)[:36])
        with pytest.raises(WireError, match="exceeds the 536870912-byte payload limit"):
            read_message(b2)
