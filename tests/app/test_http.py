"""The running app over HTTP on 127.0.0.1, without a browser: who may talk to it (Host, Origin), what it
serves (upload limit, studies), and how long a request may hold the model (bounds, time budget,
Cancel, light requests beside heavy ones)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import free_port

from cnnlens.testing import tiny_cnn

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


def require_gradio() -> None:
    """Skip without the app extra (no browser needed), unless CI requires the app's tests to run."""
    import importlib.util
    import os

    if importlib.util.find_spec("gradio") is None:
        if os.environ.get("CNNLENS_REQUIRE_BROWSER") == "1":
            pytest.fail("gradio is missing (CNNLENS_REQUIRE_BROWSER=1: CI must run the app's tests)")
        pytest.skip("the app extra (gradio) is not installed")


@pytest.fixture(scope="module")
def studies_dir(study_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of studies: the study under ``runs/``, and beside the folder a SQLite file that is not
    offered."""
    root = tmp_path_factory.mktemp("served")
    (root / "runs").mkdir()
    shutil.copy(study_db, root / "runs" / "copy.sqlite")
    with sqlite3.connect(root.parent / "private.sqlite") as con:
        con.execute("create table secrets (x)")
    return root


@pytest.fixture(scope="module")
def server(study_db: Path, studies_dir: Path, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_gradio()
    from cnnlens.app import serve

    demo, url = serve(tiny_model, study_db, "127.0.0.1", free_port(), name="tiny_cnn", block=False, quiet=True,
                      export_dir=tmp_path_factory.mktemp("exports"), studies=studies_dir)
    try:
        yield url
    finally:
        demo.close()


def _port(url: str) -> str:
    return url.rstrip("/").rsplit(":", 1)[1]


def _client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


# ------------------------------------------------------------------ Host and Origin

ROUTES = [("GET", ""), ("GET", "config"), ("GET", "gradio_api/info"), ("POST", "gradio_api/upload"),
          ("POST", "gradio_api/queue/join")]


@pytest.mark.bad_input("app")
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_a_foreign_host_is_refused_everywhere(server: str, method: str, route: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    import httpx

    evil = f"evil.example:{_port(server)}"
    for headers in ({"Host": evil}, {"Host": evil, "Origin": f"http://{evil}"}):
        files = {"files": ("a.png", b"x")} if route.endswith("upload") else None
        r = httpx.request(method, server + route, headers=headers, files=files, timeout=30)
        assert r.status_code == 400, (route, headers, r.status_code, r.text[:200])
        assert "access-control-allow-origin" not in r.headers
    r = httpx.options(server + route, headers={"Host": evil, "Origin": f"http://{evil}",
                                                "Access-Control-Request-Method": "POST"}, timeout=30)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


@pytest.mark.bad_input("app")
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_another_origin_gets_no_answer_and_no_cors(server: str, method: str, route: str) -> None:
    """Another site's page posting to the app on 127.0.0.1 (a simple cross-site POST needs no preflight)."""
    import httpx

    for origin in ("http://evil.example", "null", f"http://localhost:{int(_port(server)) + 1}"):
        files = {"files": ("a.png", b"x")} if route.endswith("upload") else None
        r = httpx.request(method, server + route, headers={"Origin": origin}, files=files, timeout=30)
        assert r.status_code == 403, (route, origin, r.status_code)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.options(server + route, headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                          timeout=30)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_its_own_names_and_origin_are_answered(server: str, photo_png: Path) -> None:
    import httpx

    port = _port(server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert httpx.get(server, headers={"Host": host}, timeout=30).status_code == 200
    own = server.rstrip("/")
    r = httpx.post(server + "gradio_api/upload", headers={"Origin": own},
                   files={"files": ("cat.png", photo_png.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text[:200]
    assert r.headers.get("access-control-allow-origin") in (None, own)


def test_host_policy_names() -> None:
    from cnnlens.app.server import HostPolicy

    loop = HostPolicy("127.0.0.1")
    assert loop.host_ok("127.0.0.1:7860") and loop.host_ok("localhost") and loop.host_ok("[::1]:80")
    assert not loop.host_ok("evil.example:7860") and not loop.host_ok("") and not loop.host_ok("10.0.0.5:7860")
    assert not loop.host_ok("127.0.0.1:notaport")
    named = HostPolicy("myhost.lan", ["Proxy.Example."])
    assert named.host_ok("myhost.lan:7860") and named.host_ok("proxy.example") and not named.host_ok("evil.example")
    every = HostPolicy("0.0.0.0")
    assert every.host_ok("10.0.0.5:7860") and every.host_ok("[fe80::1]:7860") and not every.host_ok("evil.example")
    assert loop.origin_ok(None, "127.0.0.1:7860") and loop.origin_ok("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert not loop.origin_ok("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not loop.origin_ok("null", "127.0.0.1:7860")


# ------------------------------------------------------------------ uploads


@pytest.mark.bad_input("app")
def test_upload_above_the_size_limit_is_refused(server: str, photo_png: Path) -> None:
    import httpx

    r = httpx.post(server + "gradio_api/upload", files={"files": ("big.png", b"\0" * (21 * 1024 * 1024))}, timeout=60)
    assert r.status_code == 413, r.text[:200]
    r = httpx.post(server + "gradio_api/upload", files={"files": ("ok.png", b"\0" * (19 * 1024 * 1024))}, timeout=60)
    assert r.status_code == 200, r.text[:200]


# ------------------------------------------------------------------ studies


def _study_status(out: Any) -> str:
    return str(out[4])  # the status line (the State output is not part of the API)


def test_the_study_given_is_listed_and_opens(server: str, study_db: Path) -> None:
    client = _client(server)
    out = client.predict(study_db.name, api_name="/study_open")
    assert "appstudy" in _study_status(out) and "Error" not in _study_status(out)
    out = client.predict("runs/copy.sqlite", api_name="/study_open")
    assert "appstudy" in _study_status(out)


@pytest.mark.bad_input("app")
def test_other_paths_are_refused_alike(server: str, study_db: Path, studies_dir: Path) -> None:
    """The same message for a file that exists, one that does not, a SQLite file outside the folder, the
    study itself by its full path and an escape from the folder; no server path in any of them."""
    from cnnlens.app.studies import REFUSED

    client = _client(server)
    tries = ["/etc/shadow", "/etc/passwd", "/nonexistent/x.sqlite", str(study_db), str(studies_dir / "runs/copy.sqlite"),
             "../private.sqlite", "runs/../../private.sqlite", str(studies_dir.parent / "private.sqlite"),
             "runs/missing.sqlite"]
    messages = {_study_status(client.predict(p, api_name="/study_open")) for p in tries}
    assert messages == {f"**Error:** {REFUSED}"}
    assert "/" not in REFUSED.replace("`--study DB` or `--studies DIR`", "")


def test_no_study_given_says_how_to_give_one(tiny_model: Any, tmp_path: Path) -> None:
    require_gradio()
    from cnnlens.app import serve
    from cnnlens.app.studies import REFUSED

    demo, url = serve(tiny_model, None, "127.0.0.1", free_port(), block=False, quiet=True, export_dir=tmp_path)
    try:
        out = _client(url).predict("/etc/passwd", api_name="/study_open")
        assert _study_status(out) == f"**Error:** {REFUSED}"
    finally:
        demo.close()


def test_errors_show_no_server_paths() -> None:
    from cnnlens.app.views import _fail, redact
    from cnnlens.errors import ImageLoadError

    msg = _fail(ImageLoadError("'/tmp/gradio/0a1b/cat.png' is not a readable image"))
    assert msg == "**Error:** 'cat.png' is not a readable image"
    assert redact(r"C:\Users\me\study.sqlite is not a study") == "study.sqlite is not a study"
    assert redact("see http://127.0.0.1:7860/ and n/a") == "see http://127.0.0.1:7860/ and n/a"
    assert "/home" not in _fail(OSError("[Errno 2] No such file: '/home/u/x.sqlite'"))


# ------------------------------------------------------------------ the photo's fit


def test_the_input_label_says_how_the_photo_was_fitted(server: str) -> None:
    import httpx

    config = httpx.get(server + "config", timeout=30).json()
    comps = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert "centre-cropped" not in comps["photo"]["label"] and "whole photo" in comps["photo"]["label"]
    assert [v for _, v in comps["fit"]["choices"]] == ["whole", "crop"]
    client = _client(server)
    whole = client.predict("chelsea", "whole", api_name="/demo_photo")
    crop = client.predict("crop", api_name="/fit")
    assert "whole photo" in whole[0]["label"] and "centre-cropped" in crop[0]["label"]
    assert whole[0]["value"] != crop[0]["value"]


# ------------------------------------------------------------------ bounds, budget, Cancel, light requests


def _explain(client: Any, options: str, methods: tuple[str, ...] = ("integrated_gradients",),
             backends: tuple[str, ...] = ("captum",), submit: bool = False) -> Any:
    args = (None, list(methods), list(backends), "auto", options, "positive", False)
    if submit:
        return client.submit(*args, api_name="/explain")
    return client.predict(*args, api_name="/explain")


@pytest.mark.bad_input("app")
@pytest.mark.parametrize(("options", "name"), [('{"integrated_gradients": {"n_steps": 320}}', "n_steps"),
                                               ('{"occlusion": {"strides": 1}}', "strides"),
                                               ('{"occlusion": {"sliding_window": [4, 1000]}}', "sliding_window")])
def test_options_beyond_the_app_bounds_are_refused(server: str, options: str, name: str) -> None:
    from cnnlens.app.workbench import LIMITS

    client = _client(server)
    client.predict("chelsea", "whole", api_name="/demo_photo")
    method = "occlusion" if "occlusion" in options else "integrated_gradients"
    t0 = time.monotonic()
    status = str(_explain(client, options, (method,))[-1])
    assert f"{name}=" in status and f"{LIMITS[name][0]}..{LIMITS[name][1]}" in status, status
    assert time.monotonic() - t0 < 30
    config = __import__("httpx").get(server + "config", timeout=30).json()
    shown = [c["props"].get("value", "") for c in config["components"] if c["props"].get("elem_id") == "limits"]
    assert shown and "n_steps 1..64" in shown[0]


class _SlowCNN(torch.nn.Module):
    """The tiny CNN with a forward pass that takes 0.25 s: a long call on any machine."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(num_classes=5, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.25)
        return self.net(x)


BUDGET = 10.0
#: 65 forward passes of 0.25 s: 16 s, longer than the budget.
HEAVY = '{"integrated_gradients": {"n_steps": 64, "internal_batch_size": 1}}'


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_gradio()
    from cnnlens.app import serve

    demo, url = serve(_SlowCNN(), None, "127.0.0.1", free_port(), block=False, quiet=True,
                      export_dir=tmp_path_factory.mktemp("slow"), time_budget=BUDGET)
    try:
        yield url
    finally:
        demo.close()


def _wait_running(job: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.status().code.name in ("PROCESSING", "ITERATING"):
            return
        time.sleep(0.05)
    raise AssertionError(f"the request did not start: {job.status()}")


def test_a_request_stops_at_its_time_budget(slow_server: str) -> None:
    client = _client(slow_server)
    client.predict("chelsea", "whole", api_name="/demo_photo")
    t0 = time.monotonic()
    status = str(_explain(client, HEAVY)[-1])
    took = time.monotonic() - t0
    assert f"time budget of {BUDGET:g} s" in status, status
    assert took < BUDGET + 5, took  # the call ends at its next forward pass (0.25 s), not after 16 s


def test_light_requests_do_not_wait_behind_a_heavy_one(slow_server: str) -> None:
    heavy = _client(slow_server)
    heavy.predict("chelsea", "whole", api_name="/demo_photo")
    job = _explain(heavy, HEAVY, submit=True)
    _wait_running(job)
    time.sleep(0.5)
    other = _client(slow_server)  # another session
    t0 = time.monotonic()
    out = other.predict("coffee", "whole", api_name="/demo_photo")
    took = time.monotonic() - t0
    still_running = not job.done()
    job.result(timeout=60)
    assert "Loaded **coffee**" in str(out[-1])
    assert still_running, f"the demo photo took {took:.1f} s and waited for the explanation to end"


def test_cancel_frees_the_model_at_once(slow_server: str) -> None:
    client, other = _client(slow_server), _client(slow_server)
    client.predict("chelsea", "whole", api_name="/demo_photo")
    other.predict("chelsea", "whole", api_name="/demo_photo")
    job = _explain(client, HEAVY, submit=True)
    _wait_running(job)
    time.sleep(1.0)
    client.predict(api_name="/cancel")
    t0 = time.monotonic()
    out = _explain(other, "", ("gradcam",), ("pytorch-grad-cam",))  # needs the model the cancelled call held
    took = time.monotonic() - t0
    assert "Done: 1 call(s)" in str(out[-1]), out[-1]
    # Without Cancel reaching the running call, it would hold the model until its budget, about 8 s more.
    assert took < BUDGET / 2, f"the next explanation waited {took:.1f} s for the cancelled one"
