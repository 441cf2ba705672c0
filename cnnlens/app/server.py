"""Start the page: an offline Gradio server on the loopback interface by default."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from cnnlens.app import workbench as W

LOOPBACK = ("127.0.0.1", "localhost", "::1")

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
            "(and open study files by path); bind 127.0.0.1 unless you trust the network")


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
) -> tuple[Any, str]:
    """Build and launch the app; returns ``(blocks, url)`` (after the server stops when ``block``).

    Args:
        model: An ``nn.Module`` or a :func:`cnnlens.load_model` spec (None: the embedded model).
        study: A study database to open in the Study tab.
        host: Interface to bind; anything but loopback warns that the page has no authentication.
        port: TCP port; None or 0 picks a free one.
        name: The model's name on the page.
        block: Serve until interrupted (the CLI); False returns once the server is up (tests).
        quiet: Do not print Gradio's banner.
        export_dir: Where export zips are written (default: a new temporary folder).
    """
    os.environ.update(OFFLINE_ENV)
    import cnnlens
    from cnnlens.app import views

    warning = host_warning(host)
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    if model is None or isinstance(model, (str, os.PathLike)):
        spec = model
        model = cnnlens.load_model(spec)
        name = name or (str(spec) if spec else "efficientnet_lite0 (embedded)")
    wb = W.Workbench(model, name or type(model).__name__)
    demo = views.build(wb, study, export_dir)
    demo.queue(default_concurrency_limit=4, max_size=64)
    if port == 0:
        port = None
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
    )
    url = demo.local_url
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
