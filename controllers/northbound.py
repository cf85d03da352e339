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
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MAX_BODY = 64 * 1024


class NorthboundAPI:
    """Serves ``views`` (name -> callable returning a JSON-able dict), passes
    link changes to ``submit`` and other POSTs to ``posts`` (name -> callable
    taking the parsed body and returning (HTTP status, JSON-able dict); a
    ValueError is a 400 with its text, an OverflowError a 429);
    ``start()`` runs it in a daemon thread."""

    def __init__(self, host: str, port: int, token: str, views: dict[str, Callable[[], dict]],
                 submit: Callable[[str, dict], None],
                 posts: dict[str, Callable[[object], tuple[int, dict]]] | None = None):
        self.token = token.encode()
        self.views = views
        self.submit = submit
        self.posts = dict(posts or {})
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "daitn-dcc/1"

            def log_message(self, fmt, *args):  # no per-request lines on stderr
                pass

            def _reply(self, status: int, obj: dict):
                body = json.dumps(obj, sort_keys=True, default=list).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                got = self.headers.get("Authorization", "")
                ok = got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), api.token)
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
                    req = json.loads(self.rfile.read(n))
                    if name == "links":
                        change = parse_link_change(req)
                    else:
                        status, obj = api.posts[name](req)
                except OverflowError as e:
                    return self._reply(HTTPStatus.TOO_MANY_REQUESTS, {"error": str(e)})
                except (ValueError, TypeError, RecursionError) as e:
                    return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                if name != "links":
                    return self._reply(status, obj)
                api.submit("link", change)
                self._reply(HTTPStatus.ACCEPTED, {"accepted": change})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
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
