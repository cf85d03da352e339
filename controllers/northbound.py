"""The DCC's northbound API: HTTP + JSON on the management side, token-authenticated.

It listens on the controller machine's loopback (the root network namespace),
which emulated hosts cannot reach: each has its own namespace with only its
fabric interface. Every request needs ``Authorization: Bearer TOKEN``; the
token lives in the run directory (``api.token``, mode 0600).

Routes (all JSON):

- ``GET  /v1/maps``   the DRRT and QRRT (controllers.maps snapshot)
- ``GET  /v1/state``  the DCC's state (switches, links, flows, knowledge)
- ``POST /v1/links``  ``{"a": "s1", "b": "s2", "bw": 5.0}``: the testbed tells
  the DCC a link's configured capacity changed (OAM configuration); 202
- ``POST /v1/tasks``, ``POST /v1/queries``: submit a training task or an inference
  query while the run goes on (controllers/submissions.py); 202 with its id
- ``GET  /v1/submissions`` what was submitted and how far each got

The server thread never touches the app's event-thread state: reads return the
latest published copy; link changes are handed to the app's event thread
(``submit``); submissions go to ``posts`` handlers that keep their own lock.
Standard library only: a handful of routes do not need a framework.
"""
from __future__ import annotations

import hmac
import json
import math
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT_S = 10.0   # a client that sends less than it announced holds a thread this long at most


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):   # 1e400: a float overflow, not a number the DCC can use
        raise ValueError(f"number {text} is out of range")
    return x


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")  # Python's json accepts NaN and Infinity


def parse_json(body: bytes):
    """Strict JSON: NaN, Infinity and numbers that overflow a float are refused."""
    return json.loads(body, parse_constant=_no_constant, parse_float=_finite)


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of clients overflowed it and waited
    # a SYN retransmission (1 s) each (found by tests/unit/test_api_fuzz.py)
    request_queue_size = 128
    daemon_threads = True


class NorthboundAPI:
    """Serves ``views`` (name -> callable returning a JSON-able dict), passes
    link changes to ``submit`` and other POSTs to ``posts`` (name -> callable
    taking the parsed body and returning (HTTP status, JSON-able dict); a
    ValueError is a 400 with its text, an OverflowError a 429);
    ``start()`` runs it in a daemon thread. Every answer, errors of the HTTP layer
    included (bad request line, header flood, unsupported method), is a JSON object;
    errors carry ``error``."""

    def __init__(self, host: str, port: int, token: str, views: dict[str, Callable[[], dict]],
                 submit: Callable[[str, dict], None],
                 posts: dict[str, Callable[[object], tuple[int, dict]]] | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S):
        self.token = token.encode()
        self.views = views
        self.submit = submit
        self.posts = dict(posts or {})
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "daitn-dcc/1"
            # a garbled request line would otherwise be answered HTTP/0.9 style: no status, no headers
            default_request_version = "HTTP/1.0"
            timeout = request_timeout_s

            def log_message(self, fmt, *args):  # no per-request lines on stderr
                pass

            def _reply(self, status: int, obj: dict, headers: dict | None = None):
                body = json.dumps(obj, sort_keys=True, default=list, allow_nan=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def finish(self):
                """Lingering close: an answer sent before the request was read whole (a body
                too large, a GET with a body) is lost if the socket is closed with unread
                data - the kernel answers it with a reset. Read off (bounded) what is left."""
                super().finish()
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                    self.connection.settimeout(0.5)
                    left = 4 * MAX_BODY
                    while left > 0 and (chunk := self.connection.recv(min(left, 65536))):
                        left -= len(chunk)
                except OSError:
                    pass

            def send_error(self, code, message=None, explain=None):
                """Errors of the HTTP layer (http.server answers them in HTML): JSON too.
                An unknown method is a 405 here (http.server says 501, a server error)."""
                self.close_connection = True
                if code == HTTPStatus.NOT_IMPLEMENTED:
                    code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command!r} not allowed"
                try:
                    self._reply(code, {"error": message or HTTPStatus(code).phrase},
                                {"Connection": "close", "Allow": "GET, POST"})
                except OSError:
                    pass  # the client has gone

            def _authorized(self) -> bool:
                scheme, _, cred = self.headers.get("Authorization", "").partition(" ")
                ok = scheme.lower() == "bearer" and hmac.compare_digest(
                    cred.strip().encode("utf-8", "surrogateescape"), api.token)
                if not ok:
                    self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token: send "
                                                                   "'Authorization: Bearer <api.token>'"})
                return ok

            def do_GET(self):
                if not self._authorized():
                    return
                name = self.path.split("?", 1)[0].rstrip("/").removeprefix("/v1/")
                view = api.views.get(name)
                if view is None:
                    return self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such resource {self.path!r}",
                                                              "resources": sorted(api.views)})
                self._reply(HTTPStatus.OK, view())

            def do_POST(self):
                if not self._authorized():
                    return
                name = self.path.split("?", 1)[0].rstrip("/").removeprefix("/v1/")
                if name != "links" and name not in api.posts:
                    return self._reply(HTTPStatus.NOT_FOUND, {"error": f"cannot POST {self.path!r}",
                                                              "resources": sorted({"links", *api.posts})})
                try:
                    n = int(self.headers.get("Content-Length", "0"))
                    if not 0 < n <= MAX_BODY:
                        raise ValueError(f"body of {n} bytes (1..{MAX_BODY} allowed)")
                    req = parse_json(self.rfile.read(n))
                    if name == "links":
                        change = parse_link_change(req)
                    else:
                        status, obj = api.posts[name](req)
                except OverflowError as e:
                    return self._reply(HTTPStatus.TOO_MANY_REQUESTS, {"error": str(e)})
                except (ValueError, TypeError, RecursionError) as e:
                    return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                except TimeoutError:
                    return self.send_error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within "
                                                                      f"{request_timeout_s:g} s")
                if name != "links":
                    return self._reply(status, obj)
                api.submit("link", change)
                self._reply(HTTPStatus.ACCEPTED, {"accepted": change})

        self.httpd = _Server((host, port), Handler)
        self.port = self.httpd.server_address[1]

    def start(self):
        threading.Thread(target=self.httpd.serve_forever, name="northbound", daemon=True).start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_link_change(req) -> dict:
    """Validate a POST /v1/links body: {"a", "b", "bw" (Mbit/s > 0 or null)}."""
    if not isinstance(req, dict):
        raise ValueError("body must be a JSON object")
    extra = set(req) - {"a", "b", "bw"}
    if extra:
        raise ValueError(f"unknown field(s) {sorted(extra)}; expected a, b, bw")
    a, b, bw = req.get("a"), req.get("b"), req.get("bw")
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        raise ValueError("a and b must name the link's two ends, e.g. {\"a\": \"s1\", \"b\": \"s2\"}")
    if bw is not None and (isinstance(bw, bool) or not isinstance(bw, (int, float)) or not bw > 0):
        raise ValueError(f"bw must be a positive number of Mbit/s or null, got {bw!r}")
    return {"a": a, "b": b, "bw": None if bw is None else float(bw)}
