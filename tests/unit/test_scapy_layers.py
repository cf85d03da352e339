"""Property tests: the scapy layers (nodes/scapy_layers.py) and the fast path (nodes/wire.py)
write and read the same bytes, for random messages of every type."""
import hashlib
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Padding, Raw
from scapy.utils import rdpcap, wrpcap

from nodes import wire as W
from nodes.scapy_layers import (BODY_LAYERS, DAITN, TLV_CLASSES, DAITNAck, DAITNAuth,
                                DAITNError, DAITNFeasibility, DAITNItinerary,
                                DAITNKnowledgeReport, DAITNModelChunk, DAITNPad, DAITNReason,
                                DAITNTLVRaw, DAITNTrainRequest, dissect_stream, sign, verify)
from nodes.wire import AUTH, Message, MsgType, Tlv

KEY = hashlib.sha256(b"hypothesis-run").digest()
PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies ------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
f32 = st.floats(width=32, allow_nan=False)           # exactly representable: exact round trip
f32_nonneg = st.floats(min_value=0.0, width=32, allow_nan=False, allow_infinity=False)
accuracy = st.integers(0, 10000).map(lambda k: k / 10000)
text = st.text(max_size=40)

TLV_VALUES = {
    Tlv.TARGET_ACCURACY: accuracy,
    Tlv.DEADLINE: u64,
    Tlv.MAX_LATENCY: u32,
    Tlv.MIN_ACCURACY: accuracy,
    Tlv.PRIVACY_LEVEL: st.sampled_from(W.Privacy),
    Tlv.REQUIRED_LABELS: st.lists(u8, max_size=255),
    Tlv.MAX_HOPS: u8,
    Tlv.BYTE_BUDGET: u64,
    Tlv.ITINERARY: st.builds(W.Itinerary, u8, u8, u8, st.lists(u16, max_size=125)),
    Tlv.MODEL_DIGEST: st.binary(min_size=32, max_size=32),
    Tlv.CHUNK: st.builds(W.Chunk, u64, u64),
    Tlv.TRANSPORT: st.integers(0, 63),
    Tlv.PARTIES: st.builds(W.Parties, u16, u16),
    Tlv.END_REASON: st.sampled_from(W.EndReason),
    Tlv.ACCURACY: accuracy,
}
tlv_sets = st.fixed_dictionaries({}, optional=TLV_VALUES)

model_bytes = st.binary(max_size=3000)
BODIES = {
    MsgType.KNOWLEDGE_REPORT: st.builds(W.KnowledgeReport, u8, u32, u32,
                                        st.lists(u32, max_size=255),
                                        capacity=f32_nonneg, load=f32_nonneg, queue_len=u32,
                                        service_ms=f32_nonneg, noise_epsilon=f32_nonneg,
                                        report_seq=u32, models=st.lists(u32, max_size=255)),
    MsgType.TRAIN_REQUEST: st.builds(W.TrainRequest, u64),
    MsgType.FEASIBILITY: st.builds(W.Feasibility, st.booleans(), f32, u64,
                                   st.lists(text, max_size=6)),
    MsgType.ITINERARY: st.builds(W.ItineraryBody, st.text(max_size=63)),
    MsgType.MODEL_CHUNK: model_bytes,
    MsgType.ACK: st.builds(W.Ack, u64, st.sampled_from(W.AckStatus)),
    MsgType.EVAL_REQUEST: model_bytes,
    MsgType.EVAL_VERDICT: st.builds(W.EvalVerdict, f32, f32, u32,
                                    st.lists(st.none() | f32, max_size=255)),
    MsgType.TASK_RESULT: model_bytes,
    MsgType.INFERENCE_QUERY: st.builds(W.InferenceQuery, st.lists(f32, max_size=300)),
    MsgType.INFERENCE_RESULT: st.builds(W.InferenceResult, u8, f32, f32),
    MsgType.ERROR: st.builds(W.Error, u16, st.text(max_size=200)),
    MsgType.DATA_SHARD: model_bytes,
}
assert set(BODIES) == set(MsgType)


def messages(mtype: MsgType):
    return st.builds(Message, st.just(mtype),
                     flags=u8.map(lambda f: f & ~AUTH), hop_count=u8, hop_limit=u8,
                     task_id=u32, model_id=u32, model_version=u32, src=u16, dst=u16, seq=u32,
                     ack=u32, tlvs=tlv_sets, body=BODIES[mtype])


signing = st.none() | u64       # None: unauthenticated; else the nonce


# --- Message -> scapy, written out by hand (independent of wire.py's code) ---------------

def tlv_layer(t: Tlv, v):
    C = TLV_CLASSES[t]
    return {
        Tlv.TARGET_ACCURACY: lambda: C(accuracy=v),
        Tlv.DEADLINE: lambda: C(deadline_ms=v),
        Tlv.MAX_LATENCY: lambda: C(max_latency_ms=v),
        Tlv.MIN_ACCURACY: lambda: C(accuracy=v),
        Tlv.PRIVACY_LEVEL: lambda: C(level=int(v)),
        Tlv.REQUIRED_LABELS: lambda: C(labels=list(v)),
        Tlv.MAX_HOPS: lambda: C(max_hops=v),
        Tlv.BYTE_BUDGET: lambda: C(byte_budget=v),
        Tlv.ITINERARY: lambda: C(ptr=v.ptr, lap=v.lap, max_laps=v.max_laps,
                                 segments=list(v.segments)),
        Tlv.MODEL_DIGEST: lambda: C(digest=v),
        Tlv.CHUNK: lambda: C(offset=v[0], total=v[1]),
        Tlv.TRANSPORT: lambda: C(dscp=v),
        Tlv.PARTIES: lambda: C(client=v[0], mpvu=v[1]),
        Tlv.END_REASON: lambda: C(reason=int(v)),
        Tlv.ACCURACY: lambda: C(accuracy=v),
    }[t]()


def body_layer(m: Message):
    b = m.body
    L = BODY_LAYERS[m.type]
    if isinstance(b, bytes):
        return L(data=b)
    if isinstance(b, W.KnowledgeReport):
        return L(roles=int(b.roles), samples=b.samples,
                 verification_samples=b.verification_samples, label_hist=list(b.label_hist),
                 capacity=b.capacity, load=b.load, queue_len=b.queue_len,
                 service_ms=b.service_ms, noise_epsilon=b.noise_epsilon,
                 report_seq=b.report_seq, models=list(b.models))
    if isinstance(b, W.TrainRequest):
        return L(model_bytes=b.model_bytes)
    if isinstance(b, W.Feasibility):
        return L(feasible=int(b.feasible), est_seconds=b.est_seconds, est_bytes=b.est_bytes,
                 reasons=[DAITNReason(text=r.encode()) for r in b.reasons])
    if isinstance(b, W.ItineraryBody):
        return L(policy=b.policy.encode())
    if isinstance(b, W.Ack):
        return L(next_offset=b.next_offset, status=int(b.status))
    if isinstance(b, W.EvalVerdict):
        return L(accuracy=b.accuracy, loss=b.loss, samples=b.samples,
                 per_class=[math.nan if x is None else x for x in b.per_class])
    if isinstance(b, W.InferenceQuery):
        return L(features=list(b.features))
    if isinstance(b, W.InferenceResult):
        return L(label=b.label, confidence=b.confidence, service_ms=b.service_ms)
    if isinstance(b, W.Error):
        return L(code=b.code, text=b.text.encode())
    raise AssertionError(type(b))


def to_scapy(m: Message, nonce=None):
    p = DAITN(flags=m.flags, hop_count=m.hop_count, hop_limit=m.hop_limit, task_id=m.task_id,
              model_id=m.model_id, model_version=m.model_version, src=m.src, dst=m.dst,
              seq=m.seq, ack=m.ack,
              tlvs=[tlv_layer(t, v) for t, v in sorted(m.tlvs.items())]) / body_layer(m)
    return sign(p, KEY, nonce) if nonce is not None else p


# --- scapy -> comparable values -------------------------------------------------------------

def tlv_value(layer):
    t = Tlv(layer.type)
    f = {Tlv.TARGET_ACCURACY: "accuracy", Tlv.MIN_ACCURACY: "accuracy", Tlv.ACCURACY: "accuracy",
         Tlv.DEADLINE: "deadline_ms", Tlv.MAX_LATENCY: "max_latency_ms",
         Tlv.PRIVACY_LEVEL: "level", Tlv.REQUIRED_LABELS: "labels", Tlv.MAX_HOPS: "max_hops",
         Tlv.BYTE_BUDGET: "byte_budget", Tlv.MODEL_DIGEST: "digest", Tlv.TRANSPORT: "dscp",
         Tlv.END_REASON: "reason"}.get(t)
    if f:
        return t, getattr(layer, f)
    if t is Tlv.ITINERARY:
        return t, W.Itinerary(layer.ptr, layer.lap, layer.max_laps, list(layer.segments))
    if t is Tlv.CHUNK:
        return t, (layer.offset, layer.total)
    if t is Tlv.PARTIES:
        return t, (layer.client, layer.mpvu)
    raise AssertionError(t)


def body_value(m: MsgType, p):
    b = p[BODY_LAYERS[m]]
    if m in (MsgType.MODEL_CHUNK, MsgType.EVAL_REQUEST, MsgType.TASK_RESULT, MsgType.DATA_SHARD):
        return b.data
    if m is MsgType.KNOWLEDGE_REPORT:
        return W.KnowledgeReport(int(b.roles), b.samples, b.verification_samples, b.label_hist,
                                 capacity=b.capacity, load=b.load, queue_len=b.queue_len,
                                 service_ms=b.service_ms, noise_epsilon=b.noise_epsilon,
                                 report_seq=b.report_seq, models=b.models)
    if m is MsgType.TRAIN_REQUEST:
        return W.TrainRequest(b.model_bytes)
    if m is MsgType.FEASIBILITY:
        return W.Feasibility(bool(b.feasible), b.est_seconds, b.est_bytes,
                             [r.text.decode() for r in b.reasons])
    if m is MsgType.ITINERARY:
        return W.ItineraryBody(b.policy.decode())
    if m is MsgType.ACK:
        return W.Ack(b.next_offset, b.status)
    if m is MsgType.EVAL_VERDICT:
        return W.EvalVerdict(b.accuracy, b.loss, b.samples,
                             [None if math.isnan(x) else x for x in b.per_class])
    if m is MsgType.INFERENCE_QUERY:
        return W.InferenceQuery(list(b.features))
    if m is MsgType.INFERENCE_RESULT:
        return W.InferenceResult(b.label, b.confidence, b.service_ms)
    if m is MsgType.ERROR:
        return W.Error(b.code, b.text.decode())
    raise AssertionError(m)


def assert_dissection_matches(p, data: bytes, d: Message):
    """Scapy's dissection ``p`` of ``data`` says what wire.decode said (``d``), leaving nothing
    undecoded."""
    h = p[DAITN]
    assert (h.magic, h.version, h.type, int(h.flags)) == (b"DA", 3, int(d.type), d.flags)
    assert h.hdr_len == data[5] and h.length == len(data) - h.hdr_len * 4 - (
        40 if d.flags & AUTH else 0)
    assert ((h.hop_count, h.hop_limit, h.task_id, h.model_id, h.model_version, h.src, h.dst,
             h.seq, h.ack) == (d.hop_count, d.hop_limit, d.task_id, d.model_id,
                               d.model_version, d.src, d.dst, d.seq, d.ack))
    real = [t for t in h.tlvs if not isinstance(t, DAITNPad)]
    assert len(h.tlvs) - len(real) <= 3
    assert not any(isinstance(t, DAITNTLVRaw) for t in real)
    assert [tlv_value(t) for t in real] == list(d.tlvs.items())
    assert body_value(d.type, h) == d.body
    layers = [type(x) for x in h.iterpayloads()]
    expected = [DAITN, BODY_LAYERS[d.type]] + ([DAITNAuth] if d.flags & AUTH else [])
    assert layers == expected, layers                       # no Raw, no Padding
    if d.flags & AUTH:
        assert h[DAITNAuth].nonce == d.nonce and h[DAITNAuth].tag == data[-32:]
        assert verify(h, KEY)
    assert bytes(h) == data                                  # dissect -> build is lossless


# --- the properties ----------------------------------------------------------------------

ALL = list(MsgType)


# One test per type proves both directions on each drawn message (drawing is most of the
# cost: a test per direction would double the run time for no extra coverage).
@pytest.mark.parametrize("mtype", ALL, ids=lambda m: m.name)
@PROPERTY
@given(data=st.data())
def test_scapy_and_wire_agree_both_ways(mtype, data):
    m = data.draw(messages(mtype), label="message")
    nonce = data.draw(signing, label="nonce")
    wire_bytes = W.encode(m, KEY, nonce) if nonce is not None else W.encode(m)
    # build: scapy layers filled from the same values produce the same bytes
    assert bytes(to_scapy(m, nonce)) == wire_bytes
    # dissect: scapy reads the wire bytes into the values wire.decode returns
    d = W.decode(wire_bytes, KEY if nonce is not None else None)
    assert_dissection_matches(DAITN(wire_bytes), wire_bytes, d)


@settings(PROPERTY, max_examples=60)
@given(st.sampled_from(ALL).flatmap(messages), st.binary(min_size=1, max_size=8),
       st.integers(0, 10_000))
def test_scapy_never_raises_on_mangled_bytes(m, junk, where):
    # Captures hold whatever was sent: the layer shows malformed bytes (Raw, DAITNTLVRaw),
    # it does not raise. wire.decode, for its part, raises only WireError.
    b = W.encode(m)
    i = where % len(b)
    bad = b[:i] + junk + b[i + len(junk):]
    DAITN(bad).show2(dump=True)
    try:
        W.decode(bad)
    except W.WireError:
        pass


# --- fixed examples ----------------------------------------------------------------------

def _train_request() -> Message:
    return Message(MsgType.TRAIN_REQUEST, src=1, dst=W.DCC_NODE, seq=4, task_id=0,
                   tlvs={Tlv.TARGET_ACCURACY: 0.85, Tlv.DEADLINE: 1_764_000_000_000,
                         Tlv.REQUIRED_LABELS: [0, 1, 7]},
                   body=W.TrainRequest(431_080))


def test_defaults_fill_lengths_and_pads():
    p = DAITN(tlvs=[TLV_CLASSES[Tlv.MAX_HOPS](max_hops=3)]) / DAITNAck(next_offset=5)
    b = bytes(p)
    assert b[3] == MsgType.ACK                       # bind_layers sets type from the body
    assert b[5] == 10 and b[36:40] == bytes([7, 1, 3, 0])     # TLV len, one PAD, hdr_len
    assert b[32:36] == (9).to_bytes(4, "big")
    assert W.decode(b).tlvs == {Tlv.MAX_HOPS: 3}
    assert bytes(DAITN() / DAITNKnowledgeReport())[5] == 9


def test_knowledge_report_layer_matches_the_documented_layout():
    kr = W.KnowledgeReport(W.Role.INFERENCE, 6000, 0, [5, 6, 7], capacity=1.5, load=0.5,
                           queue_len=2, service_ms=3.25, noise_epsilon=1.0, report_seq=99,
                           models=[42, 43])
    b = W.encode(Message(MsgType.KNOWLEDGE_REPORT, src=6, dst=W.DCC_NODE, body=kr))
    p = DAITN(b)[DAITNKnowledgeReport]
    assert (p.n, p.n_models, p.reserved) == (3, 2, 0)
    assert (p.samples, p.report_seq, p.queue_len) == (6000, 99, 2)
    assert (p.capacity, p.load, p.service_ms, p.noise_epsilon) == (1.5, 0.5, 3.25, 1.0)
    assert p.label_hist == [5, 6, 7] and p.models == [42, 43]
    assert "inference" in str(p.roles)
    # counts are filled at build from the lists; the fixed part is 36 bytes
    built = bytes(DAITN(src=6, dst=W.DCC_NODE)
                  / DAITNKnowledgeReport(roles=16, samples=6000, label_hist=[5, 6, 7],
                                         capacity=1.5, load=0.5, queue_len=2, service_ms=3.25,
                                         noise_epsilon=1.0, report_seq=99, models=[42, 43]))
    assert built == b and len(bytes(DAITNKnowledgeReport())) == 36


def test_explicit_lengths_are_kept_for_forging():
    b = bytes(DAITN(hdr_len=9, length=99) / DAITNTrainRequest(model_bytes=1))
    assert b[5] == 9 and b[32:36] == (99).to_bytes(4, "big")
    with pytest.raises(W.WireError, match="length says 99"):
        W.decode(b)


def test_udp_packet_to_the_dcc_and_back_dissects_fully(tmp_path):
    m = _train_request()
    to_dcc = (Ether(src="00:00:00:00:00:01", dst=W.DCC_MAC)
              / IP(src="10.0.0.1", dst=W.DCC_IP) / UDP(sport=40001, dport=W.DCC_UDP_PORT)
              / to_scapy(m, nonce=17))
    reply = Message(MsgType.FEASIBILITY, flags=W.REPLY, src=W.DCC_NODE, dst=1, ack=4,
                    body=W.Feasibility(True, 42.0, 10**9, ["h3 and h5 hold label 7"]))
    from_dcc = (Ether(src=W.DCC_MAC) / IP(src=W.DCC_IP, dst="10.0.0.1")
                / UDP(sport=W.DCC_UDP_PORT, dport=40001) / Raw(W.encode(reply)))
    pcap = tmp_path / "h1-eth0.pcap"
    wrpcap(str(pcap), [to_dcc, from_dcc])
    a, b = rdpcap(str(pcap))
    assert a[UDP].len == 8 + len(W.encode(m, KEY, 17))
    assert [type(x).__name__ for x in a.iterpayloads()] == [
        "Ether", "IP", "UDP", "DAITN", "DAITNTrainRequest", "DAITNAuth"]
    assert_dissection_matches(a, bytes(a[DAITN]), W.decode(bytes(a[DAITN]), KEY))
    assert [type(x).__name__ for x in b.iterpayloads()] == [
        "Ether", "IP", "UDP", "DAITN", "DAITNFeasibility"]
    assert b[DAITNFeasibility].reasons[0].text == b"h3 and h5 hold label 7"
    assert W.decode(bytes(b[DAITN])) == reply
    assert "TRAIN_REQUEST h1 > dcc" in a.summary()
    assert Raw not in a and Padding not in a and Raw not in b and Padding not in b


def test_short_frame_padding_is_ethernet_fill_not_daitn():
    # Ethernet pads a short frame; IP's total length keeps the fill out of DAITN's fields,
    # and scapy appends it as the usual trailing Padding layer.
    m = Message(MsgType.ACK, body=W.Ack(7, W.AckStatus.REFUSED))
    frame = bytes(Ether() / IP() / UDP(sport=1, dport=7070) / Raw(W.encode(m)))
    pkt = Ether(frame + bytes(60 - len(frame)) if len(frame) < 60 else frame + bytes(6))
    assert pkt[DAITN].length == 9 and pkt[DAITNAck].status == W.AckStatus.REFUSED
    assert [type(x).__name__ for x in pkt.iterpayloads()][-3:] == ["DAITN", "DAITNAck",
                                                                   "Padding"]
    assert bytes(pkt[DAITN])[:-len(pkt[Padding].load)] == W.encode(m)


def test_other_udp_ports_and_tcp_are_not_daitn():
    b = W.encode(_train_request())
    assert DAITN not in Ether(bytes(Ether() / IP() / UDP(sport=1234, dport=5353) / Raw(b)))
    assert DAITN not in Ether(bytes(Ether() / IP() / TCP(sport=1234, dport=7000) / Raw(b)))


def test_tcp_stream_splits_into_messages():
    state = bytes(range(256)) * 40
    digest = hashlib.sha256(state).digest()
    msgs = [Message(MsgType.MODEL_CHUNK, flags=W.LAST if off == 10000 else 0, seq=i,
                    body=state[off:off + 5000],
                    tlvs={Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: (off, len(state))})
            for i, off in enumerate((0, 5000, 10000))]
    stream = b"".join(W.encode(m, KEY, i + 1) for i, m in enumerate(msgs))
    parts = dissect_stream(stream)
    assert [p[DAITNModelChunk].data for p in parts] == [state[:5000], state[5000:10000],
                                                        state[10000:]]
    assert [p[DAITNAuth].nonce for p in parts] == [1, 2, 3] and all(verify(p, KEY) for p in parts)
    with pytest.raises(W.WireError, match="3 bytes short of the message at offset"):
        dissect_stream(stream[:-3])


def test_sign_and_verify():
    p = to_scapy(_train_request())
    assert not verify(p, KEY)
    sign(p, KEY, nonce=9)
    assert verify(p, KEY) and not verify(p, b"other")
    assert W.decode(bytes(p), KEY).nonce == 9
    p[DAITN].seq += 1                                   # any change breaks the tag
    assert not verify(p, KEY)
    sign(p, KEY)                                        # re-sign keeps the nonce
    assert verify(p, KEY) and p[DAITNAuth].nonce == 9


def test_malformed_parts_show_up_as_raw_not_exceptions():
    unknown = bytes([10, 2, 0xAB, 0xCD])                # unknown TLV type 10
    b = W.encode(Message(MsgType.ACK, body=W.Ack()))
    forged = b[:5] + bytes([10]) + b[6:36] + unknown + b[36:] + b"\xee"
    forged = forged[:32] + (10).to_bytes(4, "big") + forged[36:]
    p = DAITN(forged)
    assert isinstance(p.tlvs[0], DAITNTLVRaw) and p.tlvs[0].value == b"\xab\xcd"
    assert p[DAITNAck].next_offset == 0 and p[Raw].load == b"\xee"    # 1 byte past the ACK
    with pytest.raises(W.WireError, match="unknown TLV type 10"):
        W.decode(forged)


def test_every_message_type_has_its_layer():
    assert set(BODY_LAYERS) == set(MsgType)
    names = {m: BODY_LAYERS[m].__name__ for m in MsgType}
    assert names[MsgType.ERROR] == "DAITNError" and names[MsgType.ACK] == "DAITNAck"
    assert {DAITNFeasibility, DAITNItinerary, DAITNError} <= set(BODY_LAYERS.values())
