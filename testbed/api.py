"""Client of the DCC's northbound API (controllers/northbound.py) for the testbed and the CLI."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

TOKEN_FILE = "api.token"


class ApiError(RuntimeError):
    """The API could not be reached or refused the request; the text says which."""


class ApiClient:
    def __init__(self, port: int, token: str, host: str = "127.0.0.1", timeout: float = 5.0):
        self.base = f"http://{host}:{port}/v1/"
        self.token = token
        self.timeout = timeout
        # never through a proxy: CI machines set http_proxy for package registries
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def for_run(cls, run_dir: Path) -> "ApiClient":
        """The API of a run that is going on (its DCC wrote its port in dcc-state.json)."""
        run_dir = Path(run_dir)
        try:
            port = json.loads((run_dir / "dcc-state.json").read_text()).get("api_port")
            token = (run_dir / TOKEN_FILE).read_text().strip()
        except (OSError, ValueError) as e:
            raise ApiError(f"{run_dir} has no live DCC API ({e}); is the run still going?") from None
        if not port:
            raise ApiError(f"{run_dir}/dcc-state.json names no API port")
        return cls(int(port), token)

    def _call(self, req: urllib.request.Request) -> dict:
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ApiError(f"{req.get_method()} {req.full_url}: {e.code} {e.read().decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(f"{req.get_method()} {req.full_url}: {e}") from None

    def get(self, resource: str) -> dict:
        return self._call(urllib.request.Request(self.base + resource))

    def post(self, resource: str, obj) -> dict:
        body = json.dumps(obj).encode()
        return self._call(urllib.request.Request(self.base + resource, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"}))

    def set_link_capacity(self, a: str, b: str, bw: float | None) -> dict:
        body = json.dumps({"a": a, "b": b, "bw": bw}).encode()
        return self._call(urllib.request.Request(self.base + "links", data=body, method="POST",
                                                 headers={"Content-Type": "application/json"}))
