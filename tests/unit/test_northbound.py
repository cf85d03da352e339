"""The DCC's northbound API (controllers/northbound.py) and its client (testbed/api.py), on loopback."""
import json

import pytest

from controllers.northbound import NorthboundAPI, parse_link_change
from testbed.api import ApiClient, ApiError


@pytest.fixture
def api():
    got = []
    srv = NorthboundAPI("127.0.0.1", 0, "s3cret", {"maps": lambda: {"t": 1.0, "nodes": {}},
                                                   "state": lambda: {"converged": True}},
                        lambda kind, args: got.append((kind, args))).start()
    yield srv, got
    srv.stop()


def test_reads_views_with_the_token(api):
    srv, _ = api
    c = ApiClient(srv.port, "s3cret")
    assert c.get("maps") == {"t": 1.0, "nodes": {}}
    assert c.get("state") == {"converged": True}


@pytest.mark.parametrize("token", ["", "wrong", "s3cret-and-more"])
def test_refuses_requests_without_the_right_token(api, token):
    srv, got = api
    c = ApiClient(srv.port, token)
    with pytest.raises(ApiError, match="401"):
        c.get("maps")
    with pytest.raises(ApiError, match="401"):
        c.set_link_capacity("s1", "s2", 5)
    assert got == []


def test_unknown_resource_is_404_and_lists_resources(api):
    srv, _ = api
    with pytest.raises(ApiError, match="404.*maps"):
        ApiClient(srv.port, "s3cret").get("nope")


def test_link_change_is_handed_to_the_app(api):
    srv, got = api
    r = ApiClient(srv.port, "s3cret").set_link_capacity("s1", "s2", 5)
    assert r == {"accepted": {"a": "s1", "b": "s2", "bw": 5.0}}
    assert got == [("link", {"a": "s1", "b": "s2", "bw": 5.0})]


@pytest.mark.parametrize("body, why", [
    ([], "JSON object"), ({"a": "s1"}, "a and b"), ({"a": "s1", "b": "s2", "bw": -1}, "positive"),
    ({"a": "s1", "b": "s2", "bw": True}, "positive"), ({"a": "s1", "b": "s2", "x": 1}, "unknown field"),
])
def test_bad_link_changes_are_refused(body, why):
    with pytest.raises(ValueError, match=why):
        parse_link_change(body)


def test_bad_body_is_400_not_a_crash(api):
    import urllib.request
    srv, got = api
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/links", data=b"{not json",
                                 method="POST", headers={"Authorization": "Bearer s3cret"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as ei:
        opener.open(req, timeout=5)
    assert ei.value.code == 400
    assert got == []
    assert ApiClient(srv.port, "s3cret").get("state") == {"converged": True}  # still serving


def test_client_for_run_explains_a_missing_api(tmp_path):
    with pytest.raises(ApiError, match="no live DCC API"):
        ApiClient.for_run(tmp_path)
    (tmp_path / "dcc-state.json").write_text(json.dumps({"api_port": None}))
    (tmp_path / "api.token").write_text("x")
    with pytest.raises(ApiError, match="names no API port"):
        ApiClient.for_run(tmp_path)


def test_openapi_describes_every_route():
    """docs/openapi.yaml names exactly the routes the DCC serves, each behind the token."""
    import re
    from pathlib import Path

    import yaml
    repo = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((repo / "docs" / "openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.") and doc["security"] == [{"token": []}]
    app = (repo / "controllers" / "dcc_app.py").read_text()
    served = set(re.findall(r'"(\w+)": (?:lambda: self\._published|self\._submissions_view)', app))
    assert served >= {"maps", "drrt", "qrrt", "tasks", "plans", "models", "flows", "state", "submissions"}
    posted = set(re.findall(r'"(\w+)": self\._api_\w+', app)) | {"links"}
    assert posted == {"links", "tasks", "queries"}
    gets = {p.strip("/") for p, ops in doc["paths"].items() if "get" in ops}
    posts = {p.strip("/") for p, ops in doc["paths"].items() if "post" in ops}
    assert gets == served and posts == posted
    for p, ops in doc["paths"].items():
        for op in ops.values():
            assert "401" in op["responses"], (p, op)
