"""Tasks and queries submitted through the DCC's API (controllers/submissions.py):
validation, the hand-off messages on the wire, their life cycle, and the API routes."""
import pytest

from controllers.northbound import NorthboundAPI
from controllers.submissions import (MAX_PENDING, QUERY_SEQ_BASE, SubmissionError, Submissions,
                                     task_from_handoff)
from nodes import wire
from nodes.wire import MsgType, Tlv
from testbed.api import ApiClient, ApiError

ROLES = {"h1": ["client"], "h2": ["data"], "h3": ["inference"], "h4": ["client"], "h9": ["mpvu"]}


@pytest.fixture
def book():
    return Submissions(ROLES, task_ids=[1, 2], features=4)


def test_task_gets_the_next_free_id_and_the_first_client(book):
    s = book.add_task({"target_accuracy": 0.8, "deadline_s": 30}, now=100.0)
    assert (s.id, s.client, s.status, s.deadline_at) == (3, "h1", "queued", 130.0)
    assert s.task["max_laps"] == 10  # the spec's default
    s2 = book.add_task({"target_accuracy": 0.8, "deadline_s": 30, "client": "h4"}, now=100.0)
    assert (s2.id, s2.client) == (4, "h4")


@pytest.mark.parametrize("body, why", [
    ([], "JSON object"),
    ({"deadline_s": 30}, "target_accuracy"),
    ({"target_accuracy": 1.5, "deadline_s": 30}, "target_accuracy.*less than or equal to 1"),
    ({"target_accuracy": 0.8, "deadline_s": -1}, "deadline_s"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "colour": "red"}, "colour"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "client": "h2"}, "h2.*role 'client'"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "client": "h77"}, "no host 'h77'"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "id": 2}, "task 2 exists"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "deploy_to": ["h2"]}, "h2.*inference"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "deploy_to": ["h3"], "replicas": 1}, "either deploy_to"),
    ({"target_accuracy": 0.8, "deadline_s": 30, "replicas": 300}, "at most 255"),
])
def test_bad_tasks_are_refused_naming_the_field(book, body, why):
    with pytest.raises(SubmissionError, match=why):
        book.add_task(body)
    assert book.tasks == {}


@pytest.mark.parametrize("body, why", [
    ({"model": 1}, "features"),
    ({"model": 1, "features": [1, 2, 3]}, "takes 4 inputs"),
    ({"model": 1, "features": [1, 2, "x", 4]}, "features"),
    ({"model": 9, "features": [1, 2, 3, 4]}, "no task 9"),
    ({"model": True, "features": [1, 2, 3, 4]}, "model"),
    ({"model": 1, "features": [1, 2, 3, 4], "min_accuracy": 2}, "min_accuracy"),
    ({"model": 1, "features": [1, 2, 3, 4], "max_latency_ms": 0}, "max_latency_ms"),
    ({"model": 1, "features": [1, 2, 3, 4], "privacy": "secret"}, "privacy"),
    ({"model": 1, "features": [1, 2, 3, 4], "input": 1}, "unknown field"),
])
def test_bad_queries_are_refused_naming_the_field(book, body, why):
    with pytest.raises(SubmissionError, match=why):
        book.add_query(body, models={1, 2})
    assert book.queries == {}


def test_task_handoff_round_trips_through_the_wire(book):
    s = book.add_task({"target_accuracy": 0.75, "deadline_s": 40, "required_labels": [1, 7],
                       "byte_budget": 10**6, "max_laps": 3, "deploy_to": ["h3"]}, now=1000.0)
    [m] = book.handoffs_for("h1", 1000.5)
    assert book.handoffs_for("h4", 1000.5) == []  # only its own client gets it
    ep_dcc, ep_client = wire_endpoints()
    got = ep_client.open(ep_dcc.seal(m))
    assert got.type == MsgType.TRAIN_REQUEST and got.flags & wire.REPLY and got.task_id == s.id
    t = task_from_handoff(got, now=1010.0)
    assert t == {"id": s.id, "target_accuracy": pytest.approx(0.75), "deadline_s": pytest.approx(30.0),
                 "max_laps": 3, "required_labels": [1, 7], "byte_budget": 10**6, "deploy_to": ["h3"],
                 "replicas": None, "submitted": True}
    r = book.add_task({"target_accuracy": 0.75, "deadline_s": 40, "replicas": 2}, now=1000.0)
    m2 = [x for x in book.handoffs_for("h1", 1001) if x.task_id == r.id][0]
    assert task_from_handoff(ep_client.open(ep_dcc.seal(m2)), now=1000.0)["replicas"] == 2


def test_query_handoff_carries_input_and_limits(book):
    q = book.add_query({"model": 1, "features": [0.5, 1, 2, 3], "max_latency_ms": 200, "min_accuracy": 0.6,
                        "privacy": "trusted"}, models={1})
    [m] = book.handoffs_for("h1", 0)
    ep_dcc, ep_client = wire_endpoints()
    got = ep_client.open(ep_dcc.seal(m))
    assert got.type == MsgType.INFERENCE_QUERY and got.flags & wire.REPLY
    assert got.seq == QUERY_SEQ_BASE | q.id and got.model_id == 1
    assert got.body.features == pytest.approx([0.5, 1, 2, 3])
    assert got.tlvs[Tlv.MAX_LATENCY] == 200 and got.tlvs[Tlv.MIN_ACCURACY] == pytest.approx(0.6)
    assert got.tlvs[Tlv.PRIVACY_LEVEL] == wire.Privacy.TRUSTED


def test_life_cycle_handoffs_repeat_until_taken(book):
    s = book.add_task({"target_accuracy": 0.8, "deadline_s": 30}, now=0)
    q = book.add_query({"model": 1, "features": [1, 2, 3, 4]}, models={1}, now=0)
    assert len(book.handoffs_for("h1", 1)) == 2 and len(book.handoffs_for("h1", 2)) == 2  # lost? sent again
    assert book.task_taken(s.id, 3) and not book.task_taken(s.id, 4)
    book.query_routed(q.seq, "h3", True, [], 3.5)
    assert book.handoffs_for("h1", 5) == []
    assert (s.handoffs, q.handoffs) == (2, 2)
    assert book.task_ended(s.id, "target_reached", 0.83, 9) and not book.task_ended(s.id, "again", 0.1, 10)
    assert book.query_ended(q.seq, 4.0, label=3, confidence=0.9, service_ms=2.0)
    v = book.view()
    assert v["tasks"][str(s.id)]["status"] == "ended" and v["tasks"][str(s.id)]["accuracy"] == 0.83
    vq = v["queries"][str(q.id)]
    assert (vq["status"], vq["server"], vq["label"], vq["latency_ms"]) == ("answered", "h3", 3, 4000.0)
    assert book.query_of_seq(q.id) is None  # a workload's seq is not a submission's
    q2 = book.add_query({"model": 1, "features": [1, 2, 3, 4]}, models={1}, now=0)
    assert book.query_ended(q2.seq, 1.0, error="refused: no replica")
    assert book.view()["queries"][str(q2.id)]["status"] == "failed"


def test_pending_submissions_are_bounded(book):
    for _ in range(MAX_PENDING):
        book.add_query({"model": 1, "features": [1, 2, 3, 4]}, models={1})
    with pytest.raises(OverflowError, match="waiting"):
        book.add_task({"target_accuracy": 0.8, "deadline_s": 30})


def wire_endpoints():
    from nodes.transport import Endpoint
    key = b"k" * 32
    return Endpoint(wire.DCC_NODE, key), Endpoint(wire.node_id("h1"), key)


@pytest.fixture
def api():
    book = Submissions(ROLES, task_ids=[1], features=4)

    def post(fn):
        def handler(req):
            return 202, fn(req).view()
        return handler
    srv = NorthboundAPI("127.0.0.1", 0, "tok", {"submissions": book.view}, lambda k, a: None,
                        posts={"tasks": post(book.add_task),
                               "queries": post(lambda r: book.add_query(r, models={1}))}).start()
    yield ApiClient(srv.port, "tok"), book
    srv.stop()


def test_api_accepts_and_refuses_submissions(api):
    c, book = api
    got = c.post("tasks", {"target_accuracy": 0.8, "deadline_s": 30})
    assert got["id"] == 2 and got["status"] == "queued"
    assert c.get("submissions")["tasks"]["2"]["client"] == "h1"
    with pytest.raises(ApiError, match="400.*target_accuracy"):
        c.post("tasks", {"deadline_s": 30})
    with pytest.raises(ApiError, match="400.*features"):
        c.post("queries", {"model": 1, "features": []})
    with pytest.raises(ApiError, match="404"):
        c.post("nothing", {})
    with pytest.raises(ApiError, match="401"):
        ApiClient(c.base.split(":")[2].split("/")[0], "wrong").post("tasks", {"target_accuracy": 0.8,
                                                                                "deadline_s": 30})
    assert list(book.tasks) == [2]
