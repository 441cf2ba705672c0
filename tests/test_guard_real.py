"""The model guard in the situations real programs meet (issue 16, section 3): TorchScript models,
models unpickled in another process, threads sharing one model, Ctrl-C while the model is being
restored, models that must be freed, and models made under ``torch.inference_mode()``.

Each test checks the user's model afterwards with :func:`cnnlens.testing.assert_same_state`
(parameters, buffers, flags, ``requires_grad``, ``.grad``, hooks, module tree)."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import cnnlens
from cnnlens import _guard, cli, registry
from cnnlens.errors import ModelError
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

# Small options so that every hook-free method runs in milliseconds on the tiny model.
FAST = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 3},
    "smoothgrad_sq": {"nt_samples": 3},
    "vargrad": {"nt_samples": 3},
    "gradient_shap": {"n_samples": 3},
    "occlusion": {"sliding_window": 8, "strides": 8},
    "feature_ablation": {"feature_grid": 8},
    "lime": {"n_samples": 8, "feature_grid": 8},
    "kernel_shap": {"n_samples": 8, "feature_grid": 8},
}
HOOK_FREE = [(i.method, i.backend) for i in registry.REGISTRY.values() if not i.needs_hooks]
NEEDS_HOOKS = [(i.method, i.backend) for i in registry.REGISTRY.values() if i.needs_hooks]


def _used_model() -> nn.Module:
    """tiny_cnn as a user leaves it mid-training: a submodule in train mode, gradients accumulated,
    one parameter frozen."""
    model = tiny_cnn()
    model.features[4].train()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)
    model.features[0].bias.requires_grad_(False)
    return model


def _at(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]  # (a traced Sequential has no indexing)


def _torchscript(model: nn.Module, kind: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        if kind == "script":
            return torch.jit.script(model)
        return torch.jit.trace(model.eval(), tiny_input(n=2, size=32))


# ------------------------------------------------------------------------------------------------
# TorchScript
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["script", "trace"])
@pytest.mark.parametrize(("method", "backend"), HOOK_FREE)
def test_torchscript_models_explained_by_gradient_and_perturbation_methods(kind, method, backend) -> None:
    """Every hook-free pair works on a scripted and a traced model, gives the eager model's map,
    and leaves the TorchScript model as it was (flags, requires_grad, .grad, buffers)."""
    x = tiny_input(n=2, size=32)
    eager = tiny_cnn()
    expected = cnnlens.explain(eager, x, method, backend=backend, target=[0, 3], **FAST.get(method, {}))
    ts = _torchscript(tiny_cnn(), kind)
    _at(ts, "features.4").train()  # a submodule the user left in train mode (its flag lives in C++)
    ts.fc.weight.grad = torch.full_like(ts.fc.weight, 0.25)
    _at(ts, "features.0").bias.requires_grad_(False)
    before = snapshot(ts)
    e = cnnlens.explain(ts, x, method, backend=backend, target=[0, 3], **FAST.get(method, {}))
    assert_same_state(before, ts)
    assert _at(ts, "features.4").training and not _at(ts, "features.3").training
    torch.testing.assert_close(e.maps, expected.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_guard_restores_what_a_backend_changes(kind) -> None:
    ts = _torchscript(tiny_cnn(), kind)
    _at(ts, "features.1").train()
    ts.fc.weight.grad = torch.ones_like(ts.fc.weight)
    before = snapshot(ts)
    mean = _at(ts, "features.1").running_mean
    with _guard.ModelGuard(ts):
        assert not any(m.training for m in ts.modules())
        assert not any(p.requires_grad for p in ts.parameters()) and ts.fc.weight.grad is None
        mean.add_(1.0)
        _at(ts, "features.4").train()
        ts.fc.weight.requires_grad_(True)
        ts.fc.weight.grad = torch.zeros_like(ts.fc.weight)
    assert_same_state(before, ts)
    assert _at(ts, "features.1").running_mean is mean


@pytest.mark.parametrize("kind", ["script", "trace"])
@pytest.mark.parametrize(("method", "backend"), NEEDS_HOOKS)
def test_hook_methods_refuse_torchscript_models_up_front(kind, method, backend) -> None:
    ts = _torchscript(tiny_cnn(), kind)
    with pytest.raises(ModelError) as info:
        cnnlens.Explainer(ts, method, backend=backend)
    msg = str(info.value)
    assert "TorchScript" in msg and "hooks" in msg and "eager model" in msg and "saliency" in msg


def test_hook_methods_refuse_a_model_holding_a_torchscript_module() -> None:
    inner = _torchscript(tiny_cnn(), "script")
    model = nn.Sequential(inner, nn.Identity()).eval()
    with pytest.raises(ModelError, match="contains a TorchScript module"):
        cnnlens.Explainer(model, "gradcam", backend="pytorch-grad-cam")
    x = tiny_input(n=2, size=32)
    before = snapshot(model)
    e = cnnlens.explain(model, x, "saliency", backend="captum", target=1)
    assert_same_state(before, model)
    torch.testing.assert_close(e.maps, cnnlens.explain(tiny_cnn(), x, "saliency", backend="captum", target=1).maps)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_cli_explains_a_torchscript_file(tmp_path, kind) -> None:
    path = tmp_path / f"{kind}.pt"
    torch.jit.save(_torchscript(tiny_cnn(), kind), str(path))
    (tmp_path / "in").mkdir()
    photo = tmp_path / "in" / "a.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(photo)
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(cli.app, ["explain", str(photo), "--model", str(path), "-m", "saliency",
                                          "-b", "captum", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    refused = CliRunner().invoke(cli.app, ["explain", str(photo), "--model", str(path), "-m", "gradcam",
                                           "-b", "captum", "--out", str(tmp_path / "g2.png")])
    assert refused.exit_code == 2 and "TorchScript" in refused.output, refused.output


# ------------------------------------------------------------------------------------------------
# Nothing kept alive
# ------------------------------------------------------------------------------------------------


class _SelfHooked(nn.Module):
    """A model that hooks its own submodule with a bound method (a reference cycle through a hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.seen: list[tuple[int, ...]] = []
        self.net.features.register_forward_hook(self._keep)

    def _keep(self, _m: nn.Module, _i: object, out: torch.Tensor) -> None:
        self.seen.append(tuple(out.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("build", [tiny_cnn, _SelfHooked, lambda: _torchscript(tiny_cnn(), "script")],
                         ids=["eager", "self-hooked", "scripted"])
def test_explained_models_are_freed(build) -> None:
    """After ``del model; gc.collect()`` the model is gone: the guard's per-model cache and lock
    hold no reference that reaches it."""
    model = build()
    x = tiny_input(n=2, size=32)
    pairs = [("saliency", "captum"), ("integrated_gradients", "captum")]
    if not isinstance(model, torch.jit.ScriptModule):
        pairs += [("gradcam", "pytorch-grad-cam"), ("saliency", "flashtorch"), ("deeplift", "captum")]
    for method, backend in pairs:
        cnnlens.explain(model, x, method, backend=backend, target=1, **FAST.get(method, {}))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]


# ------------------------------------------------------------------------------------------------
# A model unpickled in a fresh process
# ------------------------------------------------------------------------------------------------

_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    import cnnlens
    from cnnlens.testing import tiny_input

    warnings.simplefilter("ignore")
    model = torch.load(sys.argv[1], weights_only=False)

    def hooks(m):
        names = ("_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                 "_state_dict_pre_hooks")
        return {f"{n}.{d}": [(k, id(v)) for k, v in getattr(mod, d).items()]
                for n, mod in m.named_modules() for d in names if getattr(mod, d)}

    before = hooks(model)
    counter = torch.utils.hooks.RemovableHandle.next_id
    for method, backend in [("saliency", "captum"), ("gradcam", "pytorch-grad-cam"), ("deeplift", "captum"),
                            ("saliency", "flashtorch")]:
        cnnlens.explain(model, tiny_input(n=2, size=32), method, backend=backend, target=1)
    calls = model.counter.calls
    model(tiny_input(n=1, size=32))
    print(json.dumps({"before": before, "after": hooks(model), "counter": counter,
                      "fires": model.counter.calls - calls}))
    """
)


def test_hooks_of_a_model_unpickled_in_a_fresh_process_are_kept(tmp_path) -> None:
    """torch.save(model) in a process whose hook ids have grown, torch.load in a fresh one (Ray
    workers, multiprocessing): the user's forward hook and the old-style weight_norm / spectral_norm
    hooks have ids above the fresh process's counter, and must survive explain()."""
    from cnnlens.testing import CountingHook

    for _ in range(3000):  # a long-running program has registered and removed many hooks
        nn.Identity().register_forward_hook(lambda *_a: None).remove()
    model = tiny_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old-style parametrizations are deprecated
        nn.utils.weight_norm(model.features[0])
        nn.utils.spectral_norm(model.fc)
    model.counter = CountingHook()
    model.features[2].register_forward_hook(model.counter)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ids = [k for entries in out["before"].values() for k, _v in entries]
    assert ids and min(ids) >= out["counter"]  # the situation of the bug: ids above the counter
    assert out["after"] == out["before"]
    assert out["fires"] == 1


# ------------------------------------------------------------------------------------------------
# Threads
# ------------------------------------------------------------------------------------------------


def test_threads_explaining_one_model_get_the_serial_results_and_leave_it_intact() -> None:
    model = _used_model()
    x = tiny_input(n=4, size=48)
    pairs = [("saliency", "captum"), ("gradcam", "pytorch-grad-cam"), ("integrated_gradients", "captum"),
             ("saliency", "flashtorch")]
    before = snapshot(model)
    serial = {p: cnnlens.explain(model, x, p[0], backend=p[1], target=[0, 1, 2, 3], **FAST.get(p[0], {})).maps
              for p in pairs}
    assert_same_state(before, model)
    explainers = {p: cnnlens.Explainer(model, p[0], backend=p[1], **FAST.get(p[0], {})) for p in pairs}
    start = threading.Barrier(4)
    results: list[tuple[tuple[str, str], torch.Tensor]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            for k in range(6):
                p = pairs[(i + k) % len(pairs)]
                if k % 2:  # one shared Explainer per pair, and one-shot calls
                    maps = explainers[p].explain(x, target=[0, 1, 2, 3]).maps
                else:
                    maps = cnnlens.explain(model, x, p[0], backend=p[1], target=[0, 1, 2, 3], **FAST.get(p[0], {})).maps
                results.append((p, maps))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert_same_state(before, model)
    assert model.features[4].training and not model.features[0].bias.requires_grad
    assert not errors, errors
    assert len(results) == 24
    for p, maps in results:
        torch.testing.assert_close(maps, serial[p], rtol=1e-5, atol=1e-6, msg=f"{p} differs from the serial call")


def test_the_per_model_lock_is_reentrant_and_per_model() -> None:
    a, b = tiny_cnn(), tiny_cnn()
    with _guard.ModelGuard(a), _guard.ModelGuard(a):  # nested on one model: no deadlock
        other = threading.Thread(target=lambda: _guard.ModelGuard(b).__enter__().__exit__())
        other.start()
        other.join(timeout=30)  # another model is not blocked
        assert not other.is_alive()
    assert _guard._lock_of(a).acquire(timeout=1)  # released
    _guard._lock_of(a).release()


# ------------------------------------------------------------------------------------------------
# Ctrl-C
# ------------------------------------------------------------------------------------------------


def _interrupt_at(k: int, fn) -> bool:
    """Run ``fn`` and send this process a real SIGINT at the ``k``-th line the guard's module
    executes; True if the KeyboardInterrupt came out of ``fn``."""
    count = [0]

    def tracer(frame, event, _arg):
        if frame.f_code.co_filename != _guard.__file__:
            return None
        if event == "line":
            count[0] += 1
            if count[0] == k:
                signal.raise_signal(signal.SIGINT)
        return tracer

    def root(frame, event, arg):
        return tracer(frame, event, arg) if event == "call" else None

    sys.settrace(root)
    try:
        fn()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize(("method", "backend"), [("saliency", "captum"), ("gradcam", "pytorch-grad-cam")])
def test_ctrl_c_anywhere_in_the_guard_restores_the_model_then_interrupts(method, backend) -> None:
    """A real SIGINT at every line the guard executes (its snapshot, eval switch, restore, the
    removal of the toolkit's hooks): the model always comes back whole, the interrupt is never
    lost, the user's SIGINT handler is back in place, and the model's lock is free."""
    model = _used_model()
    x = tiny_input(n=2, size=32)
    ex = cnnlens.Explainer(model, method, backend=backend)
    ex.explain(x, target=1)
    before = snapshot(model)
    lines = [0]

    def counting(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename == _guard.__file__:
            def line(f, ev, _a):
                if ev == "line":
                    lines[0] += 1
                return line
            return line
        return None

    sys.settrace(counting)
    try:
        ex.explain(x, target=1)
    finally:
        sys.settrace(None)
    assert lines[0] > 50
    handler = signal.getsignal(signal.SIGINT)
    missed = []
    for k in range(1, lines[0] + 1):
        interrupted = _interrupt_at(k, lambda: ex.explain(x, target=1))
        try:
            assert_same_state(before, model)
        except AssertionError as exc:
            raise AssertionError(f"SIGINT at guard line {k} of {lines[0]}: {exc}") from exc
        assert model.features[4].training and not model.features[0].bias.requires_grad
        assert signal.getsignal(signal.SIGINT) is handler
        if not interrupted:
            missed.append(k)
    assert not missed, f"the interrupt was lost at guard lines {missed[:10]}"
    _explains_in_another_thread(ex, x)  # no lock left held


def _explains_in_another_thread(ex: cnnlens.Explainer, x: torch.Tensor) -> None:
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(ex.explain(x, target=0)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert done, "another thread could not explain the model (its lock is still held)"


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_while_another_thread_explains_the_model_interrupts_at_once() -> None:
    import _thread
    import time

    model = _used_model()
    before = snapshot(model)
    handler = signal.getsignal(signal.SIGINT)
    inside, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with _guard.ModelGuard(model):
            inside.set()
            leave.wait(timeout=60)

    t = threading.Thread(target=holder)
    t.start()
    assert inside.wait(timeout=30)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt), _guard.ModelGuard(model):
            pytest.fail("entered while another thread held the model")
        assert time.perf_counter() - t0 < 10
    finally:
        leave.set()
        t.join(timeout=60)
        timer.cancel()
    assert_same_state(before, model)
    assert signal.getsignal(signal.SIGINT) is handler
    _explains_in_another_thread(cnnlens.Explainer(model, "saliency", backend="captum"), tiny_input(n=2, size=32))


# ------------------------------------------------------------------------------------------------
# torch.inference_mode()
# ------------------------------------------------------------------------------------------------


def test_a_model_made_under_inference_mode_gets_one_clear_error_and_is_untouched() -> None:
    with torch.inference_mode():
        model = tiny_cnn()
    model.features[1].train()
    x = tiny_input(n=2, size=32)
    for method, backend in [("saliency", "captum"), ("gradcam", "pytorch-grad-cam")]:
        with pytest.raises(ModelError, match=r"inference tensors.*torch\.inference_mode\(\)"):
            cnnlens.explain(model, x, method, backend=backend, target=0)
    assert model.features[1].training and all(p.requires_grad for p in model.parameters())
    # the fix the message names works (in another thread: no lock was left held)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    ex = cnnlens.Explainer(model, "saliency", backend="captum")
    _explains_in_another_thread(ex, x)
    torch.testing.assert_close(ex.explain(x, target=0).maps,
                               cnnlens.explain(tiny_cnn().train(), x, "saliency", backend="captum", target=0).maps)

