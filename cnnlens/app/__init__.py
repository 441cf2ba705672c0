"""``cnnlens serve``: a local web app to compare methods and backends on one image, and to browse a study.

Decisions (issue 20):

* **Framework: Gradio** (``pip install -e '.[app]'``). It is what ML model demos are built with,
  so users know its widgets; it ships its whole front end inside the wheel (nothing fetched at run
  time), has per-session state, a request queue with progress and cancellation, and an upload size
  limit in the server. Streamlit reruns the whole script on each interaction, which would re-enter
  the model on every click, and its session model is harder to keep apart per user.
* **Offline**: the server sets ``GRADIO_ANALYTICS_ENABLED=False`` (no analytics, no version check),
  ``HF_HUB_OFFLINE=1`` and ``HF_HUB_DISABLE_TELEMETRY=1`` before Gradio is imported, builds the Blocks
  with ``analytics_enabled=False``, uses a theme with system fonts only, no share link, no SSR
  node server, no PWA, no MCP server, no footer links. The browser test records every request the
  page makes and requires that all go to the local server.
* **Long requests**: one Explain click runs the chosen (method, backend) cells one call at a time
  and streams the grid after each one (progress "k/n done"). A run has at most 24 cells, the options
  that set a call's work are bounded (:data:`cnnlens.app.workbench.LIMITS`, shown on the page), and
  a request stops at its time budget (``--time-budget``, 60 s by default) or on Cancel: a forward
  pre-hook on the model raises at the next forward pass, so even a long toolkit call ends within
  one forward pass, and the model guard restores the model as after any toolkit failure.
* **Concurrency**: explanations take turns on the model (one Gradio concurrency group of one, and the
  workbench's lock); decoding a photo and its top-5 run in a group of their own on a private copy of
  the model, so they never wait behind an explanation. Each session's photo and results live in its
  own ``gr.State``, so results never mix between sessions.
* **Uploads**: the server refuses bodies above 20 MB (Gradio's ``max_file_size``); the upload is a
  plain file, not decoded by Gradio: :func:`cnnlens.load_images` decodes it, and refuses an image
  above its pixel limit from the header, before decoding (a 20000x20000 PNG never allocates).
* **Files**: the app serves only what Gradio created for it (uploads, outputs, the export zips it
  writes in its own temporary folder); no ``allowed_paths`` are added, so Gradio's file route
  refuses any other path (a test asks for ``/etc/passwd`` and a relative escape).
* **Thin**: attribution, metrics, top-5, layer listing and study reading are library functions
  (:class:`cnnlens.Explainer`, :mod:`cnnlens.bench.metrics`, :mod:`cnnlens.predict`,
  :mod:`cnnlens.layer_list`, :mod:`cnnlens.signs`, :mod:`cnnlens.bench.browse`).
* **Host**: 127.0.0.1 by default; another ``--host`` prints a warning that there is no authentication.
  Every request passes :class:`cnnlens.app.server.HostGuard` first: a ``Host`` that is not a name the
  app listens on (DNS rebinding) gets 400, an ``Origin`` other than the app's own 403, neither with
  CORS headers.
* **Studies**: the Study tab opens only the study given at start and those under the folder given at
  start (:mod:`cnnlens.app.studies`); any other name gets one message, whether or not the file exists.
  Errors on the page have server paths cut to their last part.

Importing ``cnnlens.app`` does not import Gradio; :func:`serve` does, and raises
:class:`AppUnavailableError` with the install line when it is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cnnlens.errors import CnnlensError, install_hint

INSTALL = install_hint("app")


class AppUnavailableError(CnnlensError, ImportError):
    """The web app's extra (Gradio) is not installed."""


def available() -> bool:
    """Whether the ``app`` extra is installed."""
    return importlib.util.find_spec("gradio") is not None


def require() -> None:
    if not available():
        raise AppUnavailableError(f"the web app needs the 'app' extra (Gradio), which is not installed; install it with: {INSTALL}")


def serve(
    model: Any = None,
    study: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    **kwargs: Any,
) -> tuple[Any, str]:
    """Start the web app; see :func:`cnnlens.app.server.start` (which takes the same arguments)."""
    require()
    from cnnlens.app.server import start

    return start(model, study, host, port, **kwargs)


__all__ = ["INSTALL", "AppUnavailableError", "available", "require", "serve"]
