"""NodeRuntime over the in-process network: authenticated, replay-safe, lossy links, chunked models."""
import hashlib
import json
import os
import socket
import threading
from dataclasses import replace

import pytest

from nodes import wire
from nodes.memnet import MemoryNetwork, MemoryTransport
from nodes.runtime import NodeConfig, NodeRuntime, SocketTransport, TransferError
from nodes.transport import CHUNK_BYTES
from nodes.wire import Message, MsgType, Tlv
from testbed.wait import wait_for

KEY = b"k" * 32


def config(name, run_dir, key=KEY, **kw):
    return NodeConfig(name=name, ip="", roles=[], run_dir=run_dir, seed=0, hosts={}, data={},
                      model={}, training={}, tasks=[], mpvu="", data_nodes=[], key=key, **kw)


class Dcc:
    """A DCC handler that records what it verified and answers TRAIN_REQUEST."""

    def __init__(self):
        self.seen: list[tuple[Message, str]] = []

    def __call__(self, msg, src):
        self.seen.append((msg, src))
        if msg.type == MsgType.TRAIN_REQUEST:
            return [Message(MsgType.FEASIBILITY, task_id=msg.task_id, dst=msg.src,
                            body=wire.Feasibility(True, 1.5, 100, ["ok"]))]
        return []


@pytest.fixture
def net():
    return MemoryNetwork(Dcc(), key=KEY)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["memory"])
def kind(request):
    """Which transport the runtimes get; model tests run over both (the same node code)."""
    return request.param


@pytest.fixture
def nodes(net, tmp_path, kind):
    """Start runtimes: ``nodes("h1", serve=on_model[, control=on_control])``; all closed at the end.
    "socket": loopback TCP, node hN at 127.0.0.N on one free port."""
    made = []
    port = free_port()
    hosts = {f"h{i}": f"127.0.0.{i}" for i in range(1, 6)}

    def make(name, key=KEY, serve=None, control=None, **kw):
        if kind == "memory":
            transport = MemoryTransport(net, name)
        else:
            transport = SocketTransport(hosts[name], hosts, port=port)
        rt = NodeRuntime(config(name, tmp_path, key, **kw), transport)
        t = None
        if serve is not None:
            t = threading.Thread(target=rt.serve, args=(serve, control), daemon=True)
            t.start()
            wait_for(lambda: serving(rt, port), 5, f"{name} to serve")
        made.append((rt, t))
        return rt

    yield make
    for rt, t in made:
        rt.close()
        if t is not None:
            t.join(5)
            assert not t.is_alive(), f"{rt.name}'s serve did not return after stopping"
    assert net.errors == []


def serving(rt, port):
    if isinstance(rt.transport, MemoryTransport):
        return rt.transport.inbox is not None
    try:
        socket.create_connection((rt.transport.ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def raw_exchange(h1, to, data):
    """Send raw bytes on a fresh model connection from h1 to ``to``; the reply, opened."""
    if isinstance(h1.transport, MemoryTransport):
        conn = h1.transport.net.connect(h1.name, to)
        return h1.ep.open(conn.exchange(data))
    with socket.create_connection((h1.transport.hosts[to], h1.transport.port), timeout=5) as s:
        s.sendall(data)
        return h1.ep.read(s)


def events(rt):
    return [json.loads(line) for line in
            (rt.cfg.run_dir / "events" / f"{rt.name}.jsonl").read_text().splitlines()]


def feasible(answers):
    return MsgType.FEASIBILITY in answers


def train_request(task=7):
    return Message(MsgType.TRAIN_REQUEST, task_id=task, body=wire.TrainRequest(1234))


# ---- the DCC channel ---------------------------------------------------------

def test_dcc_request_is_sealed_verified_and_answered(net, nodes):
    h1 = nodes("h1")
    ans = h1.dcc_request(train_request(), feasible, timeout=1, tries=1)
    (msg, src), = net.dcc_handler.seen
    assert src == "h1" and msg.src == 1 and msg.dst == wire.DCC_NODE
    assert msg.flags & wire.AUTH and msg.nonce is not None  # it went sealed
    assert msg.body == wire.TrainRequest(1234)
    f = ans[MsgType.FEASIBILITY]
    assert f.flags & wire.REPLY and f.src == wire.DCC_NODE and f.body.reasons == ["ok"]
    assert net.links["h1", "dcc"].messages == 1 and net.links["dcc", "h1"].messages == 1


def test_wrong_key_is_refused_both_ways(net, nodes):
    h1 = nodes("h1", key=b"x" * 32)
    with pytest.raises(TransferError, match="did not answer TRAIN_REQUEST after 2 tries"):
        h1.dcc_request(train_request(), feasible, timeout=0.05, tries=2)
    assert net.dcc_handler.seen == []                   # never reached the DCC's policy
    assert net.dcc_ep.dropped["AuthError"] == 2
    # The DCC's ERROR answers are signed with the run key, so h1 cannot trust them either.
    assert h1.ep.dropped["AuthError"] == 2
    assert [e["kind"] for e in events(h1)] == ["message_dropped"] * 2


def test_replayed_datagram_is_refused(net, nodes):
    h1 = nodes("h1")
    captured = []
    net.link("h1", "dcc").drop = lambda data: captured.append(data) and False
    h1.dcc_send(Message(MsgType.KNOWLEDGE_REPORT, body=wire.KnowledgeReport(samples=5)))
    with h1.transport.dcc_channel() as ch:
        ch.send(captured[0])                              # the same bytes again
        err = h1.ep.open(ch.recv(timeout=1))
    assert len(net.dcc_handler.seen) == 1
    assert net.dcc_ep.dropped["ReplayError"] == 1
    assert err.type == MsgType.ERROR and "replayed" in err.body.text


def test_dcc_request_retransmits_over_a_lossy_link(net, nodes):
    h1 = nodes("h1")
    lost = iter([True, True])                           # the first two requests are lost
    net.link("h1", "dcc").drop = lambda data: next(lost, False)
    answer_lost = iter([True])                          # and the first answer that gets through
    net.link("dcc", "h1").drop = lambda data: next(answer_lost, False)
    ans = h1.dcc_request(train_request(), feasible, timeout=0.05, tries=5)
    assert MsgType.FEASIBILITY in ans
    assert net.links["h1", "dcc"].messages == 4 and net.links["h1", "dcc"].dropped == 2
    assert net.links["dcc", "h1"].dropped == 1
    assert len(net.dcc_handler.seen) == 2               # each retransmit freshly sealed, accepted


def test_dcc_request_gives_up_and_says_where(net, nodes):
    h1 = nodes("h1")
    net.link("h1", "dcc").loss = 1.0
    with pytest.raises(TransferError, match="the DCC at memory:dcc did not answer"):
        h1.dcc_request(train_request(), feasible, timeout=0.02, tries=3)
    assert net.links["h1", "dcc"].dropped == 3


def test_report_now_wakes_the_report_loop_and_stopping_ends_it(net, nodes):
    h1 = nodes("h1", report_interval_s=60)
    samples = iter(range(100))
    t = threading.Thread(target=h1.report_loop,
                         args=(lambda: wire.KnowledgeReport(samples=next(samples)),), daemon=True)
    t.start()
    wait_for(lambda: h1.reports_sent == 1, 5, "the first report", last=lambda: h1.reports_sent)
    h1.report_now()
    wait_for(lambda: h1.reports_sent == 2, 5, "the report asked for", last=lambda: h1.reports_sent)
    assert [m.body.samples for m, _ in net.dcc_handler.seen] == [0, 1]
    h1.stopping.set()
    t.join(5)
    assert not t.is_alive(), "report loop still waiting its 60 s interval after stopping"


# ---- model connections -------------------------------------------------------

both = pytest.mark.parametrize("kind", ["memory", "socket"], indirect=True)

def model_msg(task=3):
    return Message(MsgType.MODEL_CHUNK, task_id=task, model_id=task, model_version=1,
                   tlvs={Tlv.TARGET_ACCURACY: 0.85, Tlv.TRANSPORT: 12,
                         Tlv.ITINERARY: wire.Itinerary(0, 0, 2, [2, 4])})


class Receiver:
    def __init__(self):
        self.got = []

    def __call__(self, first, state, peer):
        self.got.append((first, state, peer))
        return None


@both
def test_multi_chunk_model_arrives_whole_with_its_digest(net, nodes, kind):
    rx = Receiver()
    nodes("h2", serve=rx)
    h1 = nodes("h1")
    state = os.urandom(3 * CHUNK_BYTES + 17)
    reply = h1.send_model(2, model_msg(), state)
    assert reply.type == MsgType.ACK and reply.body.next_offset == len(state)
    (first, got, peer), = rx.got
    assert got == state and peer == {"memory": "h1", "socket": "127.0.0.1"}[kind]
    assert first.tlvs[Tlv.MODEL_DIGEST] == hashlib.sha256(state).digest()
    assert first.tlvs[Tlv.ITINERARY] == wire.Itinerary(0, 0, 2, [2, 4])  # the TLVs ride the first chunk
    ev, = [e for e in events(h1) if e["kind"] == "transfer"]
    assert ev["sha256"] == hashlib.sha256(state).hexdigest() and ev["attempts"] == 1
    if kind == "memory":
        chunks = [p for p in net.trace if p.type == "MODEL_CHUNK"]
        assert len(chunks) == 4 and {p.dscp for p in chunks} == {12}
        assert sum(p.bytes for p in chunks) > len(state)      # real encoded sizes, headers included
        assert ev["bytes"] == sum(p.bytes for p in chunks)


@both
def test_malformed_message_is_answered_with_an_error_and_recorded(nodes):
    rx = Receiver()
    h2 = nodes("h2", serve=rx)
    h1 = nodes("h1")
    sealed = h1.ep.seal(replace(model_msg(), body=b"w"))  # no CHUNK TLV: no transfer to take
    err = raw_exchange(h1, "h2", sealed)
    assert err.type == MsgType.ERROR and "lacks TLV" in err.body.text
    assert rx.got == []
    wait_for(lambda: h2.wait_idle(0), 5, "h2 to finish with the connection")
    drop, = [e for e in events(h2) if e["kind"] == "message_dropped"]
    assert drop["kind_of"] == "WireError" and "lacks TLV" in drop["reason"]


def test_a_lost_chunk_breaks_the_connection_and_the_sender_resumes(net, nodes):
    rx = Receiver()
    nodes("h2", serve=rx)
    h1 = nodes("h1")
    state = os.urandom(3 * CHUNK_BYTES + 17)
    chunks = iter(range(100))
    net.link("h1", "h2").drop = lambda data: next(chunks) == 2  # the third chunk
    h1.send_model(2, model_msg(), state)
    (_, got, _), = rx.got
    assert got == state
    ev, = [e for e in events(h1) if e["kind"] == "transfer"]
    assert ev["attempts"] == 2 and ev["resumed_from"] == [2 * CHUNK_BYTES]


def test_replayed_chunk_is_refused_with_an_error(net, nodes):
    rx = Receiver()
    h2 = nodes("h2", serve=rx)
    h1 = nodes("h1")
    captured = []
    net.link("h1", "h2").drop = lambda data: captured.append(data) and False
    h1.send_model(2, model_msg(), b"w" * 100)
    conn = net.connect("h1", "h2")
    err = h1.ep.open(conn.exchange(captured[0]))
    assert err.type == MsgType.ERROR and "replayed" in err.body.text
    assert conn.closed and len(rx.got) == 1
    assert h2.ep.dropped["ReplayError"] == 1
    assert [e["kind_of"] for e in events(h2) if e["kind"] == "message_dropped"] == ["ReplayError"]


def test_model_from_a_node_with_the_wrong_key_is_refused(net, nodes):
    rx = Receiver()
    h2 = nodes("h2", serve=rx)
    h1 = nodes("h1", key=b"x" * 32)
    with pytest.raises(TransferError, match="to h2 failed after 4 attempts"):
        h1.send_model(2, model_msg(), b"w" * 100)
    assert rx.got == [] and h2.ep.dropped["AuthError"] == 4
    assert h1.ep.dropped["AuthError"] == 4  # h2's ERROR answers, which h1 cannot verify
    assert any(e["kind"] == "transfer_failed" for e in events(h1))


def test_sending_to_a_node_that_does_not_serve_fails_with_its_name(net, nodes):
    h1 = nodes("h1")
    with pytest.raises(TransferError, match="h5 is not serving"):
        h1.send_model(5, model_msg(), b"w" * 100)


@both
def test_reply_is_returned_and_wait_idle_sees_the_delivery_end(nodes):
    entered, release = threading.Event(), threading.Event()

    def verdict(first, state, peer):
        entered.set()
        release.wait(5)
        return Message(MsgType.EVAL_VERDICT, flags=wire.REPLY, task_id=first.task_id,
                       body=wire.EvalVerdict(0.75, 0.5, 10, [None] * 10))

    h2 = nodes("h2", serve=verdict)
    h1 = nodes("h1")
    out = []
    t = threading.Thread(target=lambda: out.append(h1.send_model(2, Message(MsgType.EVAL_REQUEST, task_id=4),
                                                                 b"m" * 10)))
    t.start()
    assert entered.wait(5)
    assert not h2.wait_idle(0.05)        # a delivery is being served
    release.set()
    assert h2.wait_idle(5)
    t.join(5)
    assert out[0].type == MsgType.EVAL_VERDICT and out[0].body.accuracy == pytest.approx(0.75)


@both
def test_request_gets_the_reply_or_the_refusal(nodes):
    def on_control(m, peer):
        if m.type != MsgType.INFERENCE_QUERY:
            raise wire.WireError(f"takes no {MsgType(m.type).name}")
        return Message(MsgType.INFERENCE_RESULT, flags=wire.REPLY, seq=m.seq,
                       body=wire.InferenceResult(int(sum(m.body.features)), 0.5, 1.0))

    nodes("h2", serve=Receiver(), control=on_control)
    h1 = nodes("h1")
    ans = h1.request(2, Message(MsgType.INFERENCE_QUERY, seq=9, body=wire.InferenceQuery([1.0, 2.0])),
                     timeout=5)
    assert ans.type == MsgType.INFERENCE_RESULT and ans.seq == 9 and ans.body.label == 3
    assert ans.src == 2 and ans.dst == 1
    err = h1.request(2, Message(MsgType.TRAIN_REQUEST, body=wire.TrainRequest(1)), timeout=5)
    assert err.type == MsgType.ERROR and "takes no TRAIN_REQUEST" in err.body.text


def test_request_to_nobody_is_a_transfer_error(nodes):
    h1 = nodes("h1")
    with pytest.raises(TransferError, match="INFERENCE_QUERY to h4 failed: h4 is not serving"):
        h1.request(4, Message(MsgType.INFERENCE_QUERY, body=wire.InferenceQuery([1.0])), timeout=1)
