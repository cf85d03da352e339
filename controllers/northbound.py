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

The server thread never touches the app's state: reads return the latest
published copy, writes are handed to the app's event thread (``submit``).
Standard library only: three routes do not need a framework.
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
    """Serves ``views`` (name -> callable returning a JSON-able dict) and passes
    link changes to ``submit``; ``start()`` runs it in a daemon thread."""

    def __init__(self, host: str, port: int, token: str, views: dict[str, Callable[[], dict]],
                 submit: Callable[[str, dict], None]):
        self.token = token.encode()
        self.views = views
        self.submit = submit
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
                if self.path.rstrip("/") != "/v1/links":
                    return self._reply(HTTPStatus.NOT_FOUND, {"error": f"cannot POST {self.path!r}"})
                try:
                    n = int(self.headers.get("Content-Length", "0"))
                    if not 0 < n <= MAX_BODY:
                        raise ValueError(f"body of {n} bytes (1..{MAX_BODY} allowed)")
                    req = json.loads(self.rfile.read(n))
                    change = parse_link_change(req)
                except (ValueError, TypeError) as e:
                    return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(e)})
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
