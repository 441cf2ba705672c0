"""Start the page: an offline Gradio server on the loopback interface by default."""

from __future__ import annotations

import ipaddress
import os
import socket
import warnings
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cnnlens.app import workbench as W
from cnnlens.errors import CnnlensError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Addresses that mean "every interface": the app then answers any IP address and the machine's names.
WILDCARD = ("0.0.0.0", "::", "")

#: Gradio and huggingface_hub read these: no analytics or version pings, no Hub calls.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}

#: System fonts only: the page must not load a web font from anywhere.
FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif")
MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def host_warning(host: str) -> str | None:
    """The warning for a non-loopback interface (None for loopback)."""
    if host in LOOPBACK:
        return None
    return (f"serving on {host}: the app has no authentication, so anyone who can reach this address can use it "
            "(and browse the studies it was given); bind 127.0.0.1 unless you trust the network")


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _host_name(netloc: str) -> str | None:
    """The host name of a ``Host`` header or origin's ``host[:port]`` (lower case, no brackets); None if
    it does not parse."""
    try:
        parts = urlsplit("//" + netloc)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which requests the app answers: those addressed to a host name it listens on, from its own page.

    A web page elsewhere can point a DNS name of its own at 127.0.0.1 (DNS rebinding); the browser then
    sends that name as ``Host``. Answering only the names the app listens on (the loopback names and
    ``--host``) shuts that out. A request that carries an ``Origin`` (browsers send it on every POST
    and on cross-origin reads) must come from the app's own origin, so another site can neither upload
    nor run events, and never gets an ``Access-Control-Allow-Origin``. An IP address cannot be
    rebound, so when the app listens on every interface (``0.0.0.0``) any IP address is answered, plus
    the machine's own names.
    """

    def __init__(self, host: str, extra: Iterable[str] = ()) -> None:
        names = {"127.0.0.1", "localhost", "::1", *(h.lower().strip("[]").rstrip(".") for h in (host, *extra))}
        self.any_ip = host in WILDCARD
        if self.any_ip:
            for n in (socket.gethostname(), socket.getfqdn()):
                if n:
                    names.add(n.lower().rstrip("."))
        names.discard("")
        self.names = frozenset(names)

    def host_ok(self, host_header: str | None) -> bool:
        name = _host_name(host_header or "")
        if name is None:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def origin_ok(self, origin: str | None, host_header: str) -> bool:
        """No ``Origin``, or exactly this server's own (``http(s)://`` + the ``Host`` it was sent to)."""
        if origin is None:
            return True
        scheme, _, rest = origin.strip().lower().partition("://")
        return scheme in ("http", "https") and rest.rstrip("/") == host_header.strip().lower()


class HostGuard:
    """ASGI middleware that applies a :class:`HostPolicy` before anything else runs (pages, the API,
    events, uploads, files): a foreign ``Host`` gets 400, a foreign ``Origin`` 403, neither with CORS
    headers."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.policy.host_ok(host):
            await self._refuse(scope, receive, send, 400, "this app answers only requests addressed to the host "
                               "names it listens on (`cnnlens serve --host`; `--allow-host NAME` adds a name, "
                               "e.g. a reverse proxy's)")
            return
        if not self.policy.origin_ok(headers.get("origin"), host):
            await self._refuse(scope, receive, send, 403, "this app answers only its own page (the Origin differs)")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]],
                      code: int, text: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import PlainTextResponse

        await PlainTextResponse(text, status_code=code)(scope, receive, send)


class AppStartError(CnnlensError):
    """The server started but its own address does not answer."""


def guarded_app(policy: HostPolicy) -> Any:
    """Gradio's FastAPI app with :class:`HostGuard` outside every other middleware (Gradio's CORS
    included), in place from the first request the server answers."""
    from gradio.routes import App, ORJSONResponse

    class GuardedApp(App):  # type: ignore[misc]
        def build_middleware_stack(self) -> Any:
            return HostGuard(super().build_middleware_stack(), policy)

    return GuardedApp(default_response_class=ORJSONResponse)


def theme() -> Any:
    import gradio as gr

    return gr.themes.Default(font=list(FONTS), font_mono=list(MONO))


def start(
    model: Any = None,
    study: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    *,
    name: str | None = None,
    block: bool = True,
    quiet: bool = False,
    export_dir: str | Path | None = None,
    studies: str | Path | None = None,
    time_budget: float | None = W.TIME_BUDGET,
    announce: bool = False,
    allow_hosts: Iterable[str] = (),
) -> tuple[Any, str]:
    """Build and launch the app; returns ``(blocks, url)`` (after the server stops when ``block``).

    Args:
        model: An ``nn.Module`` or a :func:`cnnlens.load_model` spec (None: the embedded model).
        study: A study database, open in the Study tab when the page loads.
        host: Interface to bind; anything but loopback warns that the page has no authentication.
            Only requests addressed to this name or a loopback name are answered (:class:`HostPolicy`).
        port: TCP port; None or 0 picks a free one.
        name: The model's name on the page.
        block: Serve until interrupted (the CLI); False returns once the server is up (tests).
        quiet: Do not print Gradio's banner.
        export_dir: Where export zips are written (default: a new temporary folder).
        studies: A folder whose study databases the Study tab offers; no other study can be opened.
        time_budget: Seconds one Explain request may run (None: no limit).
        allow_hosts: More host names to answer besides ``host`` and the loopback names (the name a
            reverse proxy or a container's host forwards under).
        announce: Print one line with the address once the server is up (the CLI, which passes
            ``quiet`` so that Gradio's own banner, with hints a command-line user cannot act on, is not shown).
    """
    os.environ.update(OFFLINE_ENV)
    import cnnlens
    from cnnlens.app import views
    from cnnlens.app.studies import Studies
    from cnnlens.errors import InputError

    if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(time_budget, (int, float))
                                    or not time_budget > 0):
        raise InputError(f"time_budget must be a number of seconds > 0 or None, got {time_budget!r}")
    if study is not None and not Path(study).is_file():
        raise InputError(f"study database '{study}' does not exist; run `cnnlens bench --out DIR` first")
    if studies is not None and not Path(studies).is_dir():
        raise InputError(f"studies folder '{studies}' is not a folder")

    warning = host_warning(host)
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    if model is None or isinstance(model, (str, os.PathLike)):
        spec = model
        model = cnnlens.load_model(spec)
        name = name or (str(spec) if spec else "efficientnet_lite0 (embedded)")
    wb = W.Workbench(model, name or type(model).__name__, time_budget)
    demo = views.build(wb, Studies(study, studies), export_dir)
    demo.queue(default_concurrency_limit=4, max_size=64)
    if port == 0:
        port = None
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=quiet,
            show_error=True,
            max_file_size=W.MAX_UPLOAD,
            footer_links=[],
            theme=theme(),
            enable_monitoring=False,
            mcp_server=False,
            pwa=False,
            ssr_mode=False,
            inbrowser=False,
            share=False,
            _app=guarded_app(HostPolicy(host, allow_hosts)),
        )
    except ValueError as exc:
        if "share=True" not in str(exc):
            raise
        # Gradio could not reach its own address and suggests a public share link; the app offers none.
        demo.close()
        raise AppStartError(f"the web app started but does not answer on {getattr(demo, 'local_url', host)} from "
                            "this machine; if an HTTP proxy is set (HTTP_PROXY, HTTPS_PROXY), add the host to "
                            "NO_PROXY") from None
    url = demo.local_url
    if announce:
        print(f"cnnlens: the web app is at {url} (Ctrl-C stops it)", flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
