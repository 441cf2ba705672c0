"""``cnnlens serve``: the install hint without the extra, the host warning, a real start on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

import cnnlens.app as webapp
from cnnlens.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_without_the_extra_exits_2_with_the_install_line(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(webapp, "available", lambda: False)
    code, _, err = _run(["serve"], capsys)
    assert code == 2
    assert "pip install -e '.[app]'" in err and len(err.strip().splitlines()) == 1


def _fake_serve(calls: list[tuple[Any, ...]]) -> Any:
    def serve(model: Any, study: Any, host: str, port: Any, **kw: Any) -> tuple[None, str]:
        calls.append((model, study, host, port, kw))
        return None, f"http://{host}:{port}/"

    return serve


def test_binds_loopback_by_default_and_warns_for_another_host(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(webapp, "available", lambda: True)
    monkeypatch.setattr(webapp, "serve", _fake_serve(calls))
    code, _, err = _run(["serve", "--model", "cnnlens.testing:tiny_cnn"], capsys)
    assert code == 0 and calls[-1][2] == "127.0.0.1" and calls[-1][3] == 7860
    assert "authentication" not in err
    code, _, err = _run(["serve", "--model", "cnnlens.testing:tiny_cnn", "--host", "0.0.0.0", "--port", "8123"], capsys)
    assert code == 0 and calls[-1][2] == "0.0.0.0" and calls[-1][3] == 8123
    assert "no authentication" in err


@pytest.mark.bad_input("app")
def test_missing_study_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(webapp, "available", lambda: True)
    monkeypatch.setattr(webapp, "serve", _fake_serve([]))
    code, _, err = _run(["serve", "--study", str(tmp_path / "nope.sqlite")], capsys)
    assert code == 2 and "does not exist" in err


def test_host_warning_from_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens.app import server

    assert server.host_warning("127.0.0.1") is None
    assert "no authentication" in (server.host_warning("0.0.0.0") or "")


@pytest.mark.slow
def test_cnnlens_serve_starts_and_answers(tmp_path: Path) -> None:
    if not webapp.available():
        if os.environ.get("CNNLENS_REQUIRE_BROWSER") == "1":
            pytest.fail("gradio is missing (CNNLENS_REQUIRE_BROWSER=1)")
        pytest.skip("the app extra (gradio) is not installed")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlens.cli", "serve", "--model", "cnnlens.testing:tiny_cnn",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        body = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.3)
        assert b"<html" in body.lower(), "cnnlens serve did not answer on 127.0.0.1"
        while time.monotonic() < deadline and not any(url in line for line in lines):
            time.sleep(0.1)  # the address is printed once the server is up
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    out = "".join(lines)
    assert url in out
    assert "share=True" not in out and "public link" not in out  # Gradio's hint is for Python users


def test_import_cnnlens_app_does_not_import_gradio() -> None:
    code = "import sys, cnnlens.app, cnnlens.app.server, cnnlens.app.workbench; print('gradio' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.bad_input("app")
def test_studies_must_be_a_folder(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(webapp, "available", lambda: True)
    monkeypatch.setattr(webapp, "serve", _fake_serve([]))
    code, _, err = _run(["serve", "--studies", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a folder" in err and len(err.strip().splitlines()) == 1


def test_cli_passes_studies_budget_and_silences_gradio(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                       tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(webapp, "available", lambda: True)
    monkeypatch.setattr(webapp, "serve", _fake_serve(calls))
    code, _, _ = _run(["serve", "--model", "cnnlens.testing:tiny_cnn", "--studies", str(tmp_path),
                       "--time-budget", "30", "--allow-host", "box.lan", "--allow-host", "proxy.example"], capsys)
    kw = calls[-1][4]
    assert code == 0 and kw["studies"] == tmp_path and kw["time_budget"] == 30.0
    assert list(kw["allow_hosts"]) == ["box.lan", "proxy.example"]
    assert kw["quiet"] is True and kw["announce"] is True  # Gradio's banner (and its share hint) stays off
    code, _, err = _run(["serve", "--time-budget", "0"], capsys)
    assert code == 2 and "--time-budget" in err


@pytest.mark.bad_input("app")
def test_an_unreachable_own_address_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Gradio checks that its address answers and otherwise tells the user to set share=True."""
    if not webapp.available():
        pytest.skip("the app extra (gradio) is not installed")
    import gradio.networking

    from cnnlens.app.server import AppStartError
    from cnnlens.testing import tiny_cnn

    monkeypatch.setattr(gradio.networking, "url_ok", lambda url: False)
    with pytest.raises(AppStartError, match="NO_PROXY") as exc:
        webapp.serve(tiny_cnn(num_classes=5), None, "127.0.0.1", free_port(), block=False, quiet=True,
                     export_dir=tmp_path)
    assert "share" not in str(exc.value)
