"""The registry, the lazy import contract and the error classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cnnlens
from cnnlens import errors
from cnnlens.registry import METHODS, REGISTRY, resolve
from cnnlens.testing import tiny_cnn, tiny_input


def test_import_is_lazy():
    code = (
        "import sys, cnnlens; heavy = [m for m in ('torch', 'captum', 'pytorch_grad_cam', 'flashtorch', "
        "'zennit', 'matplotlib', 'torchvision') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_methods_table_lists_every_pair():
    rows = cnnlens.methods()
    assert {(r.method, r.backend) for r in rows} == set(REGISTRY)
    assert all(isinstance(r.installed, bool) for r in rows)
    fl = [r for r in rows if r.backend == "flashtorch" and r.method == "guided_backprop"]
    assert fl and "relu_output" in fl[0].notes
    assert {r.method for r in cnnlens.methods("*cam*")} >= {"gradcam", "scorecam"}
    sg = next(r for r in rows if r.method == "smoothgrad")
    assert sg.stochastic and "seed" in sg.options and "nt_samples" in sg.options


def test_every_method_has_an_implementation():
    assert {m for m, _ in REGISTRY} == set(METHODS)


def test_unknown_method():
    with pytest.raises(errors.UnknownMethodError, match="did you mean gradcam"):
        resolve("gradcamm", "captum")


def test_method_not_on_backend_lists_alternatives():
    with pytest.raises(errors.UnsupportedMethodError, match="pytorch-grad-cam") as info:
        resolve("scorecam", "captum")
    assert "backends that have it" in str(info.value)


def test_unknown_backend():
    with pytest.raises(errors.BackendUnavailableError, match="did you mean captum"):
        resolve("gradcam", "captun")


def test_missing_backend_names_install_command(monkeypatch):
    from cnnlens import registry

    monkeypatch.setattr(registry.Backend, "installed", property(lambda self: False))
    with pytest.raises(errors.BackendUnavailableError, match=r"pip install -e \. in the cnnlens checkout"):
        resolve("saliency", "captum")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(errors.OptionError, match=r"valid options: .*n_steps"):
        cnnlens.Explainer(tiny_cnn(), "integrated_gradients", "captum", n_step=5)


@pytest.mark.parametrize(("opts", "word"), [({"n_steps": 0}, "n_steps"), ({"stdevs": -1.0}, "stdevs")])
def test_invalid_option_values(opts, word):
    method = "integrated_gradients" if "n_steps" in opts else "smoothgrad"
    with pytest.raises(errors.OptionError, match=word):
        cnnlens.Explainer(tiny_cnn(), method, "captum", **opts)


def test_layer_error_lists_close_matches():
    with pytest.raises(errors.LayerError, match="close matches: features"):
        cnnlens.Explainer(tiny_cnn(), "gradcam", "captum", layer="feature")


def test_target_errors():
    m, x = tiny_cnn(), tiny_input(n=2)
    with pytest.raises(errors.TargetError, match="out of range"):
        cnnlens.explain(m, x, "saliency", "captum", target=9)
    with pytest.raises(errors.TargetError, match="got 1 targets for 2 images"):
        cnnlens.explain(m, x, "saliency", "captum", target=[1])
    with pytest.raises(errors.TargetError, match="unknown class name 'clas1'; close matches: class1"):
        cnnlens.explain(m, x, "saliency", "captum", target="clas1")


def test_input_errors():
    m = tiny_cnn()
    with pytest.raises(errors.InputError, match="integer dtype"):
        cnnlens.explain(m, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "saliency", "captum")
    with pytest.raises(errors.InputError, match="expects 3"):
        cnnlens.explain(m, torch.zeros(1, 1, 8, 8), "saliency", "captum")


def test_backend_failure_is_translated(monkeypatch):
    import captum.attr as ca

    def broken(*a, **k):
        raise RuntimeError("internal captum failure")

    monkeypatch.setattr(ca.Saliency, "attribute", broken)
    with pytest.raises(errors.BackendError, match=r"captum Saliency failed .*internal captum failure"):
        cnnlens.explain(tiny_cnn(), tiny_input(), "saliency", "captum")


def test_model_returning_dict_needs_output():
    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            return {"logits": self.net(x), "aux": x.mean()}

    m = DictModel()
    with pytest.raises(errors.ModelError, match="output="):
        cnnlens.explain(m, tiny_input(), "saliency", "captum")
    e = cnnlens.explain(m, tiny_input(), "saliency", "captum", output="logits")
    assert e.maps.shape == (2, 32, 32)
    e = cnnlens.explain(m, tiny_input(), "gradcam", "pytorch-grad-cam", output="logits", layer="net.features")
    assert e.maps.shape == (2, 32, 32)


def test_the_readme_methods_table_is_the_registry():
    """README.md's table is `cnnlens methods --markdown`: a new registry entry must be printed there."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    from cnnlens.registry import markdown_table

    assert markdown_table() in readme


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("backend,hint", [("torchcam", "pip install -e '.[torchcam]'"),
                                          ("zennit", "pip install -e '.[zennit]'"),
                                          ("captum", "pip install -e . in the cnnlens checkout")])
def test_a_missing_toolkit_names_the_install_that_keeps_cnnlens_version_cap(backend, hint) -> None:
    """The install line is the checkout's extra (which carries the version cap), not a bare package."""
    import dataclasses

    from cnnlens import registry
    from cnnlens.errors import BackendUnavailableError

    missing = dataclasses.replace(registry.BACKENDS[backend], module="cnnlens_no_such_module")
    with pytest.raises(BackendUnavailableError) as info:
        missing.require()
    assert hint in str(info.value) and f"pip install '{registry.BACKENDS[backend].pip}'" not in str(info.value)


def test_a_duplicate_is_refused_when_registered() -> None:
    """A second (method, backend), a method declared twice, or a pair of an undeclared method is an
    error at import, never a silent replacement (``setdefault`` once dropped Finer-CAM's summary)."""
    from cnnlens.registry import schema

    impl = REGISTRY[("gradcam", "captum")]
    with pytest.raises(ValueError, match=r"\(gradcam, captum\) is registered twice"):
        schema.register(impl)
    with pytest.raises(ValueError, match="method 'finercam' is declared twice"):
        schema.declare(METHODS["finercam"])
    import dataclasses

    with pytest.raises(ValueError, match="method 'no_such_method' is not declared"):
        schema.register(dataclasses.replace(impl, method="no_such_method"))
    assert ("no_such_method", "captum") not in REGISTRY


def test_a_catalogue_imports_no_toolkit() -> None:
    """Reading every catalogue imports none of the toolkits (nor torch)."""
    code = ("import sys, cnnlens.registry as r; assert len(r.REGISTRY) >= 70; "
            "heavy = [m for m in ('torch', 'captum', 'pytorch_grad_cam', 'flashtorch', 'torchcam', 'zennit') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_adding_a_method_is_one_entry_in_its_toolkits_catalogue() -> None:
    """A new method and its pair, declared where the toolkit lives, reach methods() and the README table."""
    from cnnlens import registry
    from cnnlens.registry import schema

    spec = schema.MethodSpec("example_cam", "cam", True, True, False, "Example: a test-only method")
    impl = schema.Implementation("example_cam", "captum", "cnnlens.adapters.captum:CaptumAdapter", "LayerGradCam")
    try:
        schema.declare(spec)
        schema.register(impl)
        assert [m.backend for m in registry.methods("example_cam")] == ["captum"]
        assert "| example_cam | cam |" in registry.markdown_table()
    finally:
        schema.REGISTRY.pop(("example_cam", "captum"), None)
        schema.METHODS.pop("example_cam", None)
