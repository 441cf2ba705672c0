"""The Gradio page: an "Explore" tab over a :class:`~cnnlens.app.workbench.Workbench` and a
"Study" tab over a :class:`~cnnlens.bench.browse.StudyView`.

Handlers translate between widgets and the workbench and nothing else. Each one catches
:class:`~cnnlens.errors.CnnlensError` (and any other exception) and shows its message in the page's
status line, so bad input never stops the server.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.app import workbench as W
from cnnlens.app.studies import Studies
from cnnlens.errors import CnnlensError, InputError, OptionError

SIGNS = ("positive", "absolute", "negative", "all")
AUTO = "auto"
#: How the photo becomes the model's input (:func:`cnnlens.load_images`'s ``fit``), as shown on the page.
FITS = (("Whole photo, resized to the model's square input (squeezed)", "whole"),
        ("Centre crop: shorter side resized, the middle cut out (torchvision's preset)", "crop"))

#: An absolute path (POSIX, or a Windows drive or share) inside a message.
_PATH = re.compile(r"""(?<![\w.:/])(?:[A-Za-z]:[\\/]|\\\\|/)[^\s'"`:;,()<>|]+""")


def redact(text: str) -> str:
    """``text`` with every absolute path cut to its last part: the page never shows where the server
    keeps files (uploads, studies, the package)."""
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1] or "…", text)


def _fail(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, CnnlensError) else f"{type(exc).__name__}: {exc}"
    return f"**Error:** {redact(text)}"


def input_label(fit: str, side: int | None = None) -> str:
    """The label of the model-input picture: what was done to the photo."""
    size = f" {side}x{side}" if side else ""
    if fit == "crop":
        return f"Model input (shorter side resized, centre-cropped to{size or ' a square'})"
    return f"Model input (the whole photo resized to{size or ' a square'}, not cropped)"


class Runs:
    """The :class:`~cnnlens.app.workbench.Stop` of each session's running Explain request, so Cancel
    (a separate request) can stop it; a new run of a session stops the one it replaces."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: dict[str, W.Stop] = {}

    def start(self, session: str, budget: float | None) -> W.Stop:
        stop = W.Stop(budget)
        with self._lock:
            old = self._stops.get(session)
            self._stops[session] = stop
        if old is not None:
            old.cancelled.set()
        return stop

    def cancel(self, session: str) -> bool:
        with self._lock:
            stop = self._stops.get(session)
        if stop is None:
            return False
        stop.cancelled.set()
        return True

    def finish(self, session: str, stop: W.Stop) -> None:
        with self._lock:
            if self._stops.get(session) is stop:
                del self._stops[session]


def _guarded(n_out: int, status_index: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Show an exception as the status output and leave the other outputs unchanged."""
    import gradio as gr

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:
                out: list[Any] = [gr.update() for _ in range(n_out)]
                out[status_index] = _fail(exc)
                return tuple(out)

        return wrapper

    return deco


def _target_choices(wb: W.Workbench, top: list[Any]) -> list[tuple[str, int]]:
    return [(f"{c.label} ({c.index}) · {c.probability:.3f}", c.index) for c in top]


def _parse_options(text: str) -> dict[str, dict[str, Any]]:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"the options are not valid JSON ({exc.msg} at line {exc.lineno}); "
                          'write e.g. {"integrated_gradients": {"n_steps": 16}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise OptionError('options must map each method to its options, e.g. {"integrated_gradients": {"n_steps": 16}}')
    return data


def _default_options(wb: W.Workbench, methods: list[str], backends: list[str]) -> str:
    out: dict[str, dict[str, Any]] = {}
    have = wb.pairs()
    for m in methods or []:
        opts: dict[str, Any] = {}
        for b in have.get(m, []):
            if b in (backends or []):
                opts.update({k: v for k, v in wb.option_defaults(m, b).items() if _jsonable(v)})
        if opts:
            out[m] = opts
    return json.dumps(out, indent=1) if out else ""


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


def chosen_pairs(wb: W.Workbench, methods: list[str], backends: list[str]) -> list[tuple[str, str]]:
    have = wb.pairs()
    return [(m, b) for m in methods or [] for b in have.get(m, []) if b in (backends or [])]


def build(wb: W.Workbench, study: str | Path | Studies | None = None, export_dir: str | Path | None = None) -> Any:
    """The app as a ``gradio.Blocks`` (not launched).

    Args:
        study: The studies the Study tab may open (:class:`~cnnlens.app.studies.Studies`), or one
            study database.
    """
    import gradio as gr

    studies = study if isinstance(study, Studies) else Studies(study)
    runs = Runs()

    export_root = Path(export_dir) if export_dir is not None else Path(tempfile.mkdtemp(prefix="cnnlens-app-"))
    pairs = wb.pairs()
    backends = sorted({b for bs in pairs.values() for b in bs})
    _, auto_layer = wb.layers()
    cam_layers = wb.cam_layers()
    auto_label = f"{AUTO} ({auto_layer})" if auto_layer else AUTO
    from cnnlens.images import DEMO

    with gr.Blocks(title="cnnlens", analytics_enabled=False) as demo:
        gr.Markdown(f"## cnnlens · {wb.name}\nOne image, several methods from several toolkits, the same target "
                    "and layer, and how much they agree.")
        photo_state = gr.State(None)
        grid_state = gr.State(None)
        with gr.Tab("Explore", elem_id="tab-explore"):
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Upload an image (max 20 MB)", file_count="single", elem_id="upload")
                    demo_pick = gr.Dropdown(list(DEMO), value=None, label="…or a demo photo", elem_id="demo")
                    fit = gr.Radio(FITS, value="whole", label="How the photo becomes the model's input",
                                   elem_id="fit")
                    shown = gr.Image(label=input_label("whole"), interactive=False, elem_id="photo", height=224)
                    top5 = gr.Dataframe(headers=["class", "index", "probability"], label="Top-5",
                                        interactive=False, elem_id="top5")
                with gr.Column(scale=1):
                    target = gr.Dropdown([], label="Target (default: the predicted class)", elem_id="target")
                    search = gr.Textbox(label="…or search a class by name", elem_id="class-search",
                                        placeholder="e.g. tabby, then Enter")
                    methods = gr.CheckboxGroup(sorted(pairs), value=["gradcam"], label="Methods", elem_id="methods")
                    backs = gr.CheckboxGroup(backends, value=[b for b in ("pytorch-grad-cam", "captum") if b in backends],
                                             label="Backends (only the pairs that exist run)", elem_id="backends")
                    layer = gr.Dropdown([(auto_label, AUTO), *cam_layers], value=AUTO,
                                        label="Layer (for CAM methods)", elem_id="layer")
                    options = gr.Code(_default_options(wb, ["gradcam"], backends), language="json",
                                      label="Options per method (defaults; stochastic methods take a seed)",
                                      elem_id="options")
                    budget = f"; each Explain stops after {wb.time_budget:g} s" if wb.time_budget else ""
                    gr.Markdown(f"<small>Bounds in this app: {W.limits_text()}; at most {W.MAX_CELLS} "
                                f"calls per run{budget}.</small>", elem_id="limits")
                    with gr.Row():
                        sign = gr.Radio(list(SIGNS), value="positive", label="Sign", elem_id="sign")
                        faith = gr.Checkbox(False, label="Quick faithfulness check (8-step deletion/insertion AUC)",
                                            elem_id="faith")
                    with gr.Row():
                        run = gr.Button("Explain", variant="primary", elem_id="run")
                        cancel = gr.Button("Cancel", elem_id="cancel")
                        export = gr.Button("Export zip", elem_id="export")
            status = gr.Markdown("Upload an image or pick a demo photo.", elem_id="status")
            grid = gr.Gallery(label="Method x backend", columns=4, height="auto", elem_id="grid",
                              object_fit="contain", allow_preview=False)
            scale = gr.HTML(_colour_scale("positive"), elem_id="colorbar")
            agree = gr.Dataframe(headers=["method", "backends", "pearson", "iou_top5"],
                                 label="Agreement between backends (Pearson r, top-5 % IoU)",
                                 interactive=False, elem_id="agreement")
            times = gr.Dataframe(label="Each call", interactive=False, elem_id="timings", wrap=True)
            zipped = gr.File(label="Export", interactive=False, elem_id="zip")

        # ------------------------------------------------------------ explore handlers
        def show_photo(photo: W.Photo) -> tuple[Any, ...]:
            top = wb.top5(photo)
            choices = _target_choices(wb, top)
            table = [[c.label, c.index, round(c.probability, 4)] for c in top]
            picture = gr.update(value=photo.display, label=input_label(photo.fit, int(photo.x.shape[-1])))
            return (photo, picture, table, gr.update(choices=choices, value=choices[0][1]),
                    f"Loaded **{photo.name}**; predicted: {top[0].label} ({top[0].probability:.3f}).")

        photo_outs = [photo_state, shown, top5, target, status]

        @_guarded(5, 4)
        def on_upload(path: str | None, how: str) -> tuple[Any, ...]:
            if not path:
                return tuple(gr.update() for _ in range(5))
            name = Path(path).stem
            return show_photo(wb.load(path, name, how or "whole"))

        @_guarded(5, 4)
        def on_demo(name: str | None, how: str) -> tuple[Any, ...]:
            if not name:
                return tuple(gr.update() for _ in range(5))
            return show_photo(wb.demo(name, how or "whole"))

        @_guarded(5, 4)
        def on_fit(photo: W.Photo | None, how: str) -> tuple[Any, ...]:
            if photo is None or not photo.source:
                return (gr.update(), gr.update(label=input_label(how or "whole")), gr.update(), gr.update(),
                        gr.update())
            return show_photo(wb.load(photo.source, photo.name, how or "whole"))

        @_guarded(2, 1)
        def on_search(text: str) -> tuple[Any, ...]:
            hits = wb.search_classes(text)
            if not hits:
                return gr.update(), ""
            choices = [(f"{label} ({i})", i) for i, label in hits]
            return gr.update(choices=choices, value=hits[0][0]), f"{len(hits)} class(es) match '{text}'."

        def on_methods(ms: list[str], bs: list[str]) -> str:
            return _default_options(wb, ms, bs)

        def on_run(photo: W.Photo | None, tgt: Any, ms: list[str], bs: list[str], lay: str, opts: str, sg: str,
                   fq: bool, request: gr.Request) -> Any:
            session = getattr(request, "session_hash", None) or ""
            stop = runs.start(session, wb.time_budget)
            done = 0
            try:
                if photo is None:
                    raise InputError("no image yet: upload one or pick a demo photo first")
                todo = chosen_pairs(wb, ms, bs)
                if not todo:
                    raise InputError("no (method, backend) pair exists for this choice; `cnnlens methods` lists them")
                t = int(tgt) if tgt is not None else wb.top5(photo)[0].index
                use_layer = None if not lay or lay == AUTO else lay
                parsed = _parse_options(opts)
                for done, total, g in wb.run(photo, t, todo, use_layer, parsed, sg, bool(fq), stop=stop):
                    fails = [c for c in g.cells if not c.ok]
                    head = f"{done}/{total} done" if done < total else f"Done: {total} call(s)"
                    msg = f"{head} · target {g.target_label} ({g.target}) · layer {g.layer or '-'}"
                    if fails:
                        msg += "".join(f"\n\n**Error** in {c.method} · {c.backend}: {redact(c.error or '')}"
                                       for c in fails)
                    notes = [(c, w) for c in g.cells if c.ok for w in c.explanation.warnings]
                    msg += "".join(f"\n\nNote ({c.method} · {c.backend}): {redact(w)}" for c, w in notes)
                    yield (g, W.overlays(g), _colour_scale(sg), _table(W.agreement(g)), _table(W.timings(g)), msg)
            except W.RunStopped as exc:
                what = "Cancelled" if str(exc) == "cancelled" else f"**Stopped:** {str(exc).removeprefix('stopped: ')}"
                yield (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                       f"{what} after {done} finished call(s); the grid shows those. Choose fewer methods or "
                       "smaller options for a shorter run.")
            except Exception as exc:
                yield (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), _fail(exc))
            finally:
                runs.finish(session, stop)

        def on_cancel(request: gr.Request) -> str:
            runs.cancel(getattr(request, "session_hash", None) or "")
            return "Cancelled (a call that is running stops at its next forward pass)."

        # Gradio finds the request parameter by its type hint; this module's hints are strings and
        # Gradio is imported here only, so the hint is given as the class itself.
        for fn in (on_run, on_cancel):
            fn.__annotations__ = {"request": gr.Request}

        @_guarded(2, 1)
        def on_export(g: W.Grid | None) -> tuple[Any, ...]:
            if g is None or not any(c.ok for c in g.cells):
                raise InputError("nothing to export yet: run at least one method first")
            path = W.export_zip(g, export_root)
            return str(path), f"Exported {path.name}."

        # Light requests (decoding a photo, its top-5 on the workbench's own copy of the model) have a
        # queue of their own, so they never wait behind an explanation; explanations take turns.
        light: dict[str, Any] = {"concurrency_id": "light", "concurrency_limit": 4}
        upload.upload(on_upload, [upload, fit], photo_outs, api_name="upload", **light)
        demo_pick.input(on_demo, [demo_pick, fit], photo_outs, api_name="demo_photo", **light)
        fit.input(on_fit, [photo_state, fit], photo_outs, api_name="fit", **light)
        search.submit(on_search, search, [target, status], api_name="search", **light)
        methods.change(on_methods, [methods, backs], options)
        backs.change(on_methods, [methods, backs], options)
        run_evt = run.click(on_run, [photo_state, target, methods, backs, layer, options, sign, faith],
                            [grid_state, grid, scale, agree, times, status], concurrency_id="model",
                            concurrency_limit=1, api_name="explain")
        cancel.click(on_cancel, None, status, cancels=[run_evt], api_name="cancel", **light)
        export.click(on_export, grid_state, [zipped, status])

        _study_tab(gr, demo, studies)
    return demo


def _colour_scale(sign: str) -> str:
    stops = ", ".join(f"rgb{c}" for c in W.colour_stops(sign))
    lo = "-1 (negative)" if sign == "all" else "0"
    what = ("CAMs: each map's largest magnitude; pixel methods: its 99th percentile")
    return (f'<div style="font-size:0.85em">Colour scale shared by every cell ({sign}): '
            f'<span style="display:inline-block;vertical-align:middle;width:240px;height:12px;'
            f'background:linear-gradient(to right, {stops})"></span> from {lo} to 1 = {what}.</div>')


def _table(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd  # type: ignore[import-untyped]

    return pd.DataFrame(rows)


# -------------------------------------------------------------------- the study browser


def _study_tab(gr: Any, demo: Any, studies: Studies) -> None:
    from cnnlens.bench.browse import StudyView

    with gr.Tab("Study", elem_id="tab-study"):
        view_state = gr.State(None)
        with gr.Row():
            # A custom value reaches the handler, which refuses every name it was not given.
            path = gr.Dropdown(studies.names(), value=studies.default, allow_custom_value=True,
                               label="Study (those given to `cnnlens serve --study DB` / `--studies DIR`)",
                               elem_id="study-path", scale=4)
            open_btn = gr.Button("Open", elem_id="study-open", scale=1)
        with gr.Row():
            f_models = gr.CheckboxGroup([], label="Models", elem_id="f-models")
            f_methods = gr.CheckboxGroup([], label="Methods", elem_id="f-methods")
            f_backends = gr.CheckboxGroup([], label="Backends", elem_id="f-backends")
            f_metric = gr.Dropdown([], label="Metric (summary table)", elem_id="f-metric")
        hint = ("Choose a study and click Open." if studies else
                "No study was given: start the app with `cnnlens serve --study DB` or `--studies DIR`.")
        s_status = gr.Markdown("" if studies.default else hint, elem_id="study-status")
        s_agree = gr.Dataframe(label="Agreement between backends (mean over images)", interactive=False,
                               elem_id="study-agreement")
        s_grid = gr.Gallery(label="Image x method: the stored maps", columns=6, height="auto",
                            elem_id="study-grid", allow_preview=False)
        s_curves = gr.Image(label="Faithfulness (deletion, insertion) and sanity curves", interactive=False,
                            elem_id="study-curves")
        s_speed = gr.Dataframe(label="Speed (median)", interactive=False, elem_id="study-speed")
        s_summary = gr.Dataframe(label="Summary: mean, std and count over images", interactive=False,
                                 elem_id="study-summary")

        outs = [view_state, f_models, f_methods, f_backends, f_metric, s_status, s_agree, s_grid, s_curves,
                s_speed, s_summary]

        def render(v: StudyView, models: list[str], methods: list[str], backends: list[str], metric: str | None) -> tuple[Any, ...]:
            flt = {"models": models, "methods": methods, "backends": backends}
            pairs = [(m, b) for m, b in v.pairs() if (not methods or m in methods) and (not backends or b in backends)]
            name = v.meta.loc[v.meta["key"] == "suite_name", "value"]
            title = json.loads(name.iloc[0]) if len(name) else v.db.stem
            n_img = len({(i.model, i.image) for i in v.images})
            text = (f"**{title}** · {len(v.models())} model(s) · {n_img} image(s) · {len(v.pairs())} method x backend "
                    f"pair(s) · {len(v.results)} result rows")
            return (v, gr.update(), gr.update(), gr.update(), gr.update(), text,
                    v.agreement(**flt).round(4), gr.update(value=_study_grid(v, models, pairs), columns=min(1 + len(pairs), 12)),
                    _curves_png(v, flt),
                    v.speed(**flt).round(5), v.summary(**flt, metric=metric or None).round(4))

        def on_open(p: str | None) -> tuple[Any, ...]:
            try:
                if not p or not p.strip():
                    raise InputError("choose a study from the list first")
                v = StudyView(studies.resolve(p))
                out = list(render(v, [], [], [], None))
                methods = sorted({m for m, _ in v.pairs()})
                backends = sorted({b for _, b in v.pairs()})
                out[1] = gr.update(choices=v.models(), value=[])
                out[2] = gr.update(choices=methods, value=[])
                out[3] = gr.update(choices=backends, value=[])
                out[4] = gr.update(choices=["", *v.metrics()], value="")
                return tuple(out)
            except Exception as exc:
                res = [gr.update() for _ in outs]
                res[5] = _fail(exc)
                return tuple(res)

        def on_filter(v: StudyView | None, models: list[str], methods: list[str], backends: list[str], metric: str) -> tuple[Any, ...]:
            try:
                if v is None:
                    raise InputError("open a study first")
                return render(v, models, methods, backends, metric)
            except Exception as exc:
                res = [gr.update() for _ in outs]
                res[5] = _fail(exc)
                return tuple(res)

        def on_load() -> tuple[Any, ...]:
            names = studies.names()
            default = studies.default if studies.default in names else None
            choices = gr.update(choices=names, value=default)
            if default is None:
                return (choices, *[gr.update() for _ in outs])
            return (choices, *on_open(default))

        open_btn.click(on_open, path, outs, api_name="study_open")
        path.input(on_open, path, outs)
        # The study given on the command line is open when the page appears; a folder is listed afresh.
        demo.load(on_load, None, [path, *outs])
        for w in (f_models, f_methods, f_backends, f_metric):
            w.input(on_filter, [view_state, f_models, f_methods, f_backends, f_metric], outs)


def _study_grid(v: Any, models: list[str], pairs: list[tuple[str, str]], max_images: int = 6) -> list[tuple[np.ndarray, str]]:
    import io

    from PIL import Image

    import cnnlens
    from cnnlens import plot

    kinds = {i.method: i.kind for i in cnnlens.methods()}
    out = []
    images = [i for i in v.images if not models or i.model in models][:max_images]
    for img in images:
        with Image.open(io.BytesIO(img.png)) as im:
            pic = np.asarray(im.convert("RGB"))
        out.append((pic, f"{img.image} · {img.label or ''}"))
        for m, b in pairs:
            a = v.map(img.model, img.image, m, b)
            if a is not None:
                pixel = kinds.get(m) == "pixel"
                shown = plot.display_map(a.astype(np.float32), "pixel") if pixel else a.astype(np.float32)
                out.append((plot.overlay(pic, shown, "jet", 0.5, weighted=pixel), f"{img.image} · {m} · {b}"))
    return out


def _curves_png(v: Any, flt: dict[str, Any]) -> np.ndarray | None:
    from matplotlib.figure import Figure

    from cnnlens import plot

    families = ("deletion_blur", "insertion_blur", "sanity.spearman")
    data = {f: v.curves(f, **flt) for f in families}
    if not any(data.values()):
        return None
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, len(families))
    for ax, f in zip(axes, families, strict=True):
        for (model, m, b), ys in sorted(data[f].items()):
            xs = np.linspace(0, 1, len(ys)) if not f.startswith("sanity") else np.arange(1, len(ys) + 1)
            ax.plot(xs, ys, label=f"{m} · {b}" + (f" ({model})" if len(v.models()) > 1 else ""), lw=1.2)
        ax.set_title(f, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="best")
    import io

    from PIL import Image

    with Image.open(io.BytesIO(plot.figure_png(fig, dpi=80))) as im:
        return np.asarray(im.convert("RGB"))
