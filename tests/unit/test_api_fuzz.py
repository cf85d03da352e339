"""The DCC's northbound API fuzzed from its OpenAPI description (issue #8).

A real :class:`controllers.northbound.NorthboundAPI` on loopback, backed by a real
:class:`controllers.submissions.Submissions` book wired as the DCC wires it, gets:

- requests generated from ``docs/openapi.yaml``: every documented path and method,
  bodies drawn from each operation's schema, and bodies broken against it (a required
  field dropped, an unknown one added, wrong types, numbers out of range);
- arbitrary requests: any method, odd paths, broken JSON, non-UTF-8, NaN and 1e400,
  deep nesting, lying or missing Content-Length, huge and slow bodies, garbage request
  lines, header floods, no token, wrong or malformed tokens.

Properties: no 5xx and no exception in a handler thread; every status is one the
description documents for the operation (404/405/408/413 and 414/431 aside); a body the
schema refuses is refused (400); every 4xx carries a JSON object with an ``error`` text;
whatever was accepted can be handed to its client on the wire (the DCC's next step);
and the server still answers afterwards.

Why not schemathesis: ``pip install schemathesis`` works here, but pulls in nine more
packages (a GraphQL stack, a Rust JSON-schema validator, werkzeug, anyio, click, ...)
for an API of ten routes and three body schemas; the project keeps its dependencies
few and pinned (requirements.txt). The schema subset used by docs/openapi.yaml
(object, integer, number, string enum, array, nullable, $ref) is turned into
hypothesis strategies below.
"""
from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from controllers.northbound import MAX_BODY, NorthboundAPI
from controllers.submissions import SubmissionError, Submissions
from nodes import wire

REPO = Path(__file__).resolve().parents[2]
OPENAPI = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
TOKEN = "fuzz-token-0123456789"
ROLES = {"h1": ["client"], "h2": ["data"], "h3": ["inference"], "h4": ["client", "data"], "h9": ["mpvu"]}
FEATURES = 4
REQUEST_TIMEOUT_S = 2.0   # the server's per-connection read timeout in this test
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "FOO"]


def fuzz(n: int) -> settings:
    """n examples in CI (derandomized: the same every run); 10x with DAITN_HYPOTHESIS=explore."""
    import os
    ci = os.environ.get("DAITN_HYPOTHESIS", "ci") == "ci"
    return settings(deadline=None, database=None, max_examples=n if ci else 10 * n,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---- the server under test, wired as controllers/dcc_app.py wires it ---------------------

class Server:
    def __init__(self):
        self.book = Submissions(ROLES, task_ids=[1], features=FEATURES)
        self.lock = threading.Lock()
        self.links: list[dict] = []
        self.handler_errors: list[str] = []
        views = {name: (lambda name=name: {"view": name, "t": time.time()})
                 for name in ("maps", "drrt", "qrrt", "tasks", "plans", "models", "flows", "state")}
        views["submissions"] = self._submissions
        self.api = NorthboundAPI("127.0.0.1", 0, TOKEN, views, lambda kind, args: self.links.append(args),
                                 posts={"tasks": self._task, "queries": self._query},
                                 request_timeout_s=REQUEST_TIMEOUT_S)
        # a handler that raises is reported by socketserver and the client gets no answer
        self.api.httpd.handle_error = self._handle_error
        self.api.start()
        self.port = self.api.port

    def _handle_error(self, request, client_address):
        import traceback
        self.handler_errors.append(traceback.format_exc())

    def _submissions(self):
        with self.lock:
            return self.book.view()

    def _task(self, req):
        with self.lock:
            return 202, self.book.add_task(req).view()

    def _query(self, req):
        with self.lock:
            return 202, self.book.add_query(req, models={1, *self.book.tasks}).view()

    def hand_off_everything(self):
        """What the DCC does with what the API accepted: seal it into hand-off messages."""
        with self.lock:
            for client in self.book.clients:
                for m in self.book.handoffs_for(client, time.time()):
                    wire.decode(wire.encode(m, b"k" * 32, 1), b"k" * 32)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.api.stop()


@pytest.fixture
def fresh(server):
    """The shared server, checked after the test: no handler raised, and it still answers."""
    yield server
    assert not server.handler_errors, server.handler_errors[0]
    status, _, body = request(server.port, "GET", "/v1/submissions", token=TOKEN)
    assert status == 200 and isinstance(body, dict), (status, body)


# ---- raw HTTP, so that broken requests can be sent as they are ------------------------

def raw(port: int, data: bytes, hold_open: bool = False, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``data`` as it is, read the answer until the server closes (HTTP/1.0)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if not hold_open:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # the server answered and closed before reading everything
        out = bytearray()
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
    head, _, body = bytes(out).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/"), f"no HTTP answer: {bytes(out)[:200]!r}"
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def request(port, method, path, body: bytes | None = None, token: str | None = TOKEN,
            headers: dict | None = None, content_length=None) -> tuple[int, dict, object]:
    hdrs = {"Host": "127.0.0.1"}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body) if content_length is None else content_length)
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    status, rh, data = raw(port, head.encode("utf-8", "surrogateescape") + (body or b""))
    check_answer(method, status, rh, data)
    return status, rh, (json.loads(data) if data else None)


def check_answer(method: str, status: int, headers: dict, data: bytes):
    assert status < 500, f"{status}: {data[:300]!r}"
    if method == "HEAD":
        assert not data
        return
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, data[:200])
    obj = json.loads(data)   # strict JSON: a NaN or Infinity in an answer fails here too
    _assert_strict_json(data)
    if 400 <= status < 500:
        assert isinstance(obj, dict) and isinstance(obj.get("error"), str) and obj["error"], (status, obj)
    else:
        assert isinstance(obj, dict), (status, obj)


def _assert_strict_json(data: bytes):
    def refuse(c):
        raise AssertionError(f"non-JSON constant {c} in an answer: {data[:300]!r}")
    json.loads(data, parse_constant=refuse)


# ---- OpenAPI -> hypothesis ------------------------------------------------------------

def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        node = OPENAPI
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def operations() -> list[tuple[str, str, dict]]:
    """(method, path under /v1, operation) for every documented operation."""
    base = OPENAPI["servers"][0]["url"].split("}", 1)[1]   # "/v1"
    return [(m.upper(), base + p, op) for p, item in OPENAPI["paths"].items() for m, op in item.items()]


def documented(op: dict) -> set[int]:
    return {int(s) for s in op["responses"]}


def body_schema(op: dict) -> dict | None:
    rb = op.get("requestBody")
    return resolve(rb["content"]["application/json"]["schema"]) if rb else None


HOSTS = sorted(ROLES) + ["h5", "s1", ""]


def valid(schema: dict) -> st.SearchStrategy:
    """Values the schema accepts (subset of OpenAPI 3.0 used by docs/openapi.yaml)."""
    schema = resolve(schema)
    strat = _valid(schema)
    return st.one_of(st.none(), strat) if schema.get("nullable") else strat


def _bounds(schema):
    lo, hi = schema.get("minimum"), schema.get("maximum")
    return lo, hi, bool(schema.get("exclusiveMinimum")), bool(schema.get("exclusiveMaximum"))


def _valid(schema: dict) -> st.SearchStrategy:
    t = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if t == "integer":
        lo, hi, xlo, xhi = _bounds(schema)
        lo = None if lo is None else lo + xlo
        hi = None if hi is None else hi - xhi
        return st.integers(min_value=lo, max_value=hi if hi is not None else 2**70)
    if t == "number":
        lo, hi, xlo, xhi = _bounds(schema)
        return st.floats(min_value=lo, max_value=hi, exclude_min=xlo, exclude_max=xhi,
                         allow_nan=False, allow_infinity=False)
    if t == "string":
        return st.one_of(st.sampled_from(HOSTS), st.text(max_size=20))
    if t == "array":
        return st.lists(valid(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 8), 8))
    if t == "object":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        optional = [k for k in props if k not in required]
        extra = (st.dictionaries(st.text(max_size=8), st.integers(), max_size=2)
                 if schema.get("additionalProperties", True) is not False else st.just({}))
        return st.tuples(st.fixed_dictionaries({k: valid(props[k]) for k in required}),
                         st.fixed_dictionaries({}, optional={k: valid(props[k]) for k in optional}),
                         extra).map(lambda t: {**t[2], **t[1], **t[0]} if not set(t[2]) & set(props)
                                    else {**t[1], **t[0]})
    return st.from_type(object) if t is None else st.nothing()


WRONG_TYPES = [None, True, 0, -1, 1.5, "x", "", [], [1], {}, {"a": 1}]


@st.composite
def invalid(draw, schema: dict):
    """(value, why) that the schema refuses: a body the server must answer with 400."""
    schema = resolve(schema)
    props, required = schema.get("properties", {}), schema.get("required", [])
    body = draw(_valid(schema))
    kinds = ["not_object", "extra"] + (["drop"] if required else []) + (["type", "range"] if props else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "not_object":
        return draw(st.sampled_from([None, True, 3, "tasks", [], [body]])), kind
    if kind == "extra":
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in props))
        body[key] = draw(st.sampled_from(WRONG_TYPES))
        return body, f"extra {key!r}"
    if kind == "drop":
        key = draw(st.sampled_from(required))
        body.pop(key)
        return body, f"drop {key}"
    key = draw(st.sampled_from(sorted(props)))
    p = resolve(props[key])
    if kind == "type":
        wrong = [v for v in WRONG_TYPES if not _fits(p, v)]
        body[key] = draw(st.sampled_from(wrong))
        return body, f"type {key}={body[key]!r}"
    out = _out_of_range(p)
    assume(out)
    body[key] = draw(st.sampled_from(out))
    return body, f"range {key}={body[key]!r}"


def _fits(p: dict, v) -> bool:
    if v is None:
        return bool(p.get("nullable"))
    t = p.get("type")
    if "enum" in p:
        return v in p["enum"]
    return {"integer": isinstance(v, int) and not isinstance(v, bool),
            "number": isinstance(v, (int, float)) and not isinstance(v, bool),
            "string": isinstance(v, str), "array": isinstance(v, list), "boolean": isinstance(v, bool),
            "object": isinstance(v, dict)}.get(t, True) and _in_range(p, v)


def _in_range(p, v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return True
    lo, hi, xlo, xhi = _bounds(p)
    return ((lo is None or (v > lo if xlo else v >= lo)) and (hi is None or (v < hi if xhi else v <= hi)))


def _out_of_range(p: dict) -> list:
    lo, hi, xlo, xhi = _bounds(p)
    out = []
    if lo is not None:
        out += [lo if xlo else lo - 1, lo - 0.5, -1e9]
    if hi is not None:
        out += [hi + 1, hi + 0.5, 1e9] if not xhi else [hi]
    if p.get("type") == "integer":
        out += [1.5]
    if p.get("type") == "array" and "maxItems" in p:
        out += [[0.0] * (p["maxItems"] + 1)]
    if p.get("type") == "array" and p.get("minItems"):
        out += [[]]
    return [v for v in out if not _fits(p, v)]


# ---- 1. operations from the description ------------------------------------------------

OPS = operations()
BODY_OPS = [(m, p, op) for m, p, op in OPS if body_schema(op)]


def test_the_description_is_what_the_server_serves(fresh):
    """Every documented operation exists (a wrong description would make the rest moot)."""
    assert len(OPS) >= 12 and len(BODY_OPS) == 3
    for method, path, op in OPS:
        status, _, _ = request(fresh.port, method, path, json.dumps({}).encode() if method == "POST" else None)
        assert status in documented(op) and status != 404, (method, path, status)


@fuzz(120)
@given(data=st.data())
def test_schema_valid_bodies(fresh, data):
    method, path, op = data.draw(st.sampled_from(BODY_OPS))
    body = data.draw(valid(body_schema(op)))
    status, _, obj = request(fresh.port, method, path, json.dumps(body).encode())
    note(f"{method} {path} {body!r} -> {status} {obj}")
    assert status in documented(op), (status, obj)
    assert status in (202, 400, 429), (status, obj)   # 400: refused for what the run holds (hosts, ids)
    if path.endswith("/links") and body["a"] and body["b"]:
        assert status == 202, (status, obj)   # nothing run-dependent here (unknown links: the DCC logs)
    fresh.hand_off_everything()


@fuzz(200)
@given(data=st.data())
def test_schema_invalid_bodies_are_refused(fresh, data):
    method, path, op = data.draw(st.sampled_from(BODY_OPS))
    body, why = data.draw(invalid(body_schema(op)))
    before = (len(fresh.book.tasks), len(fresh.book.queries), len(fresh.links))
    status, _, obj = request(fresh.port, method, path, json.dumps(body).encode())
    note(f"{method} {path} [{why}] {body!r} -> {status} {obj}")
    assert status == 400, f"{why}: {status} {obj}"
    assert (len(fresh.book.tasks), len(fresh.book.queries), len(fresh.links)) == before


@fuzz(80)
@given(data=st.data())
def test_operations_without_the_right_token(fresh, data):
    method, path, op = data.draw(st.sampled_from(OPS))
    token = data.draw(st.sampled_from([None, "", "wrong", TOKEN + "x", TOKEN[:-1], " " + TOKEN + " x",
                                       "Bearer " + TOKEN]))
    scheme = data.draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
    header = None if token is None else scheme + token
    status, _, obj = request(fresh.port, method, path, b'{"target_accuracy": 0.5, "deadline_s": 9}'
                             if method == "POST" else None, token=None,
                             headers={} if header is None else {"Authorization": header})
    # only "Bearer <token>" passes (the scheme is case-insensitive, RFC 7235)
    passes = header is not None and header[:7].lower() == "bearer " and header[7:].strip() == TOKEN
    assert (status != 401) == passes, (header, status, obj)
    assert 401 in documented(op)


# ---- 2. anything at all -----------------------------------------------------------------

PATHS = st.one_of(
    st.sampled_from([p for _, p, _ in OPS] + ["/", "/v1", "/v1/", "/v2/maps", "//v1/maps", "/v1/maps/",
                                              "/v1/../v1/maps", "/v1/maps?x=1", "/v1/%2e%2e/maps", "*",
                                              "/v1/maps#frag", "/v1/links/", "/v1/" + "a" * 5000]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=60).map(lambda s: "/" + s),
)
BODIES = st.one_of(
    st.none(), st.binary(max_size=300),
    st.sampled_from([b"", b"{", b"[", b"null", b"{}", b'{"a": NaN, "b": "s2"}',
                     b'{"a": "s1", "b": "s2", "bw": Infinity}',
                     b'{"a": "s1", "b": "s2", "bw": 1e400}', b'{"target_accuracy": 0.5, "deadline_s": 1e400}',
                     b'{"target_accuracy": 0.5, "deadline_s": 1e300}', b'{"model": 1, "features": [1e39, 0, 0, 0]}',
                     b'{"target_accuracy": 0.5, "deadline_s": 9, "max_laps": 100000}',
                     b'{"target_accuracy": 0.5, "deadline_s": 9, "required_labels": [70000]}',
                     b'{"target_accuracy": 0.5, "deadline_s": 9, "byte_budget": 99999999999999999999999}',
                     b'{"model": 1, "features": [1, 2, 3, 4], "max_latency_ms": 1e-300}',
                     b'{"id": ' + b"9" * 5000 + b', "target_accuracy": 0.5, "deadline_s": 9}',
                     b"[" * 50000 + b"]" * 50000, b'{"a": ' * 20000 + b"1" + b"}" * 20000,
                     "{\"a\": \"\u00e9\ud800\"}".encode("utf-8", "surrogatepass"), b"\xff\xfe{}"]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                 lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
)


@fuzz(300)
@given(method=st.sampled_from(METHODS), path=PATHS, body=BODIES,
       length=st.one_of(st.none(), st.sampled_from([0, -1, 1, MAX_BODY, MAX_BODY + 1, 10**12,
                                                    "x", "1e3", " 5", "+3"])),
       token=st.sampled_from([TOKEN, TOKEN, None, "wrong"]),
       ctype=st.sampled_from([None, "text/plain", "application/json; charset=latin-1"]))
def test_arbitrary_requests(fresh, method, path, body, length, token, ctype):
    headers = {} if ctype is None else {"Content-Type": ctype}
    if body is None and length is not None:
        headers["Content-Length"] = str(length)
    if body is not None and isinstance(length, int) and 0 <= length < len(body):
        content_length = length   # says less than what follows
    else:
        content_length = None if body is None or length is None else length
    status, _, obj = request(fresh.port, method, path, body, token=token, headers=headers,
                             content_length=content_length)
    note(f"{method} {path} {body!r:.80} len={length} -> {status} {obj}")
    fresh.hand_off_everything()


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /v1/maps HTTP/9.9\r\n\r\n", 505),
    (b"GET /v1/maps HTTP/1.0\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET /v1/maps HTTP/1.0\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", 401),
    (b"POST /v1/tasks HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 400),   # a TLS ClientHello
], ids=["garbage", "no_path", "http_9_9", "header_flood", "long_line", "binary_token", "chunked", "tls_hello"])
def test_broken_request_lines_and_headers(fresh, data, status):
    got, headers, body = raw(fresh.port, data)
    if got == 505:
        return  # HTTP/9.9: version not supported is the right answer, and not ours to shape
    check_answer("GET", got, headers, body)
    assert got == status, (got, body)


def test_huge_body_is_refused_without_reading_it(fresh):
    """64 MiB announced: refused at once, before the body is read (the client here
    sends the start of it and waits for the answer)."""
    head = (f"POST /v1/tasks HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n").encode()
    t0 = time.monotonic()
    status, headers, body = raw(fresh.port, head + b"{" + b" " * 1000, hold_open=True)
    check_answer("POST", status, headers, body)
    assert status in (400, 413) and time.monotonic() - t0 < 5, (status, body)


def test_slow_client_is_timed_out_and_others_are_served(fresh):
    """A client that announces a body and never sends it holds one connection only for
    the server's read timeout; meanwhile the API answers others."""
    head = (f"POST /v1/tasks HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: 100\r\n\r\n").encode()
    got = {}

    def slow():
        got["answer"] = raw(fresh.port, head + b'{"target', hold_open=True, timeout=30)

    t = threading.Thread(target=slow)
    t0 = time.monotonic()
    t.start()
    for _ in range(5):
        status, _, _ = request(fresh.port, "GET", "/v1/maps")
        assert status == 200
    t.join(30)
    assert not t.is_alive(), "the server never gave up on the slow client"
    status, headers, body = got["answer"]
    check_answer("POST", status, headers, body)
    assert status == 408 and REQUEST_TIMEOUT_S <= time.monotonic() - t0 < REQUEST_TIMEOUT_S + 10, (status, body)


def test_many_connections_at_once(fresh):
    """64 clients at once, half of them with bad bodies: every one answered, none 5xx."""
    results = []

    def one(i):
        body = b'{"model": 1, "features": [1, 2, 3, 4]}' if i % 2 else b"{not json"
        results.append(request(fresh.port, "POST", "/v1/queries", body)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(set(results)) == [202, 400] and len(results) == 64, results


def test_non_finite_numbers_never_reach_the_dcc(fresh):
    """NaN, Infinity and 1e400 (a float overflow) are not JSON numbers the DCC can use:
    refused with 400, never handed to the app, never echoed back as invalid JSON."""
    before = list(fresh.links)
    for body in (b'{"a": "s1", "b": "s2", "bw": Infinity}', b'{"a": "s1", "b": "s2", "bw": 1e400}',
                 b'{"a": "s1", "b": "s2", "bw": NaN}'):
        status, _, obj = request(fresh.port, "POST", "/v1/links", body)
        assert status == 400, (body, status, obj)
    assert fresh.links == before
    for body in (b'{"target_accuracy": 0.5, "deadline_s": 1e400}', b'{"target_accuracy": NaN, "deadline_s": 9}',
                 b'{"target_accuracy": 0.5, "deadline_s": 1' + b"0" * 400 + b"}"):
        assert request(fresh.port, "POST", "/v1/tasks", body)[0] == 400, body
    # an integer too large for a float (JSON allows it): a bad body (400), not "busy" (429)
    for body in (b'{"model": 1, "features": [1' + b"0" * 400 + b', 0, 0, 0]}',
                 b'{"model": 1, "features": [1, 2, 3, 4], "max_latency_ms": 1' + b"0" * 400 + b"}"):
        assert request(fresh.port, "POST", "/v1/queries", body)[0] == 400, body
    assert all(math.isfinite(s.deadline_at) for s in fresh.book.tasks.values())
