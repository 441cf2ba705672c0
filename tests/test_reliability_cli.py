"""Issue 7, part 1 (CLI): the bad-input matrix through ``cnnlens``.

Each case must exit with code 2 and print exactly one line (``cnnlens: error: ...`` on stderr,
nothing on stdout) without a traceback; ``--debug`` shows the traceback. The cases run in-process
(``cnnlens.cli.main``) for speed; a few run in a real subprocess to check the real exit status.

Tensor-only cases of the API matrix (NaN, integer dtype, empty batch, ...) cannot be produced from
image files; their file-level counterparts are here instead (a huge image, a model expecting other
channels, a crop size above the pixel limit).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlens.testing import tiny_cnn

MODELS_MODULE = "cnnlens_cli_testmodels"
MODELS_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn
    from cnnlens.testing import tiny_cnn

    def tiny():
        return tiny_cnn()

    class _Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn()
        def forward(self, x):
            y = self.net(x)
            return y, y * 2

    class _Dict(_Tuple):
        def forward(self, x):
            y = self.net(x)
            return {"logits": y, "aux": y}

    def tuple_out():
        return _Tuple()

    def dict_out():
        return _Dict()

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))

    def gray():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    not_a_model = 42
    """
)


class Sentinel:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("cli")
    (d / f"{MODELS_MODULE}.py").write_text(MODELS_SRC)
    rng = np.random.default_rng(0)
    img = d / "img"  # the pictures in a folder of their own: no output may land among them
    img.mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img / "full.jpg", quality=90)
    data = (img / "full.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (img / "text.png").write_text("not an image\n")
    (img / "empty.jpg").write_bytes(b"")
    (img / "noimages").mkdir()
    Image.new("1", (9000, 9000)).save(img / "huge.png")
    torch.save(tiny_cnn().state_dict(), d / "tiny_state.pt")
    (d / "junk.pt").write_bytes(b"PK\x03\x04 not an archive")
    with open(d / "evil.pkl", "wb") as fh:
        pickle.dump(Sentinel(d / "SENTINEL"), fh)
    torch.save({"weight": torch.zeros(2), "payload": Sentinel(d / "SENTINEL")}, d / "evil.pt")
    (d / "exists.png").write_bytes(b"already here")
    (d / "hub").mkdir()
    return d


@dataclass(frozen=True)
class CliCase:
    id: str
    args: tuple[str, ...]
    words: tuple[str, ...]


TINY = ("--model", f"{MODELS_MODULE}:tiny", "--size", "32")
IMGS = ("{d}/img/a.png", "{d}/img/b.png")


def ex(*extra: str, images: tuple[str, ...] = IMGS, model: tuple[str, ...] = TINY) -> tuple[str, ...]:
    return ("explain", *images, *model, "--out", "{d}/out/grid.png", *extra)


def with_model(name: str) -> tuple[str, ...]:
    return ("--model", f"{MODELS_MODULE}:{name}", "--size", "32")


# fmt: off
CASES: list[CliCase] = [
    # files
    CliCase("image-missing", ex(images=("{d}/img/missing.jpg",)), ("missing.jpg", "does not exist")),
    CliCase("folder-without-images", ex(images=("{d}/img/noimages",)), ("contains no images",)),
    CliCase("truncated-jpeg", ex(images=("{d}/img/truncated.jpg",)), ("truncated or corrupt",)),
    CliCase("text-named-png", ex(images=("{d}/img/text.png",)), ("text.png", "not a readable image")),
    CliCase("empty-file", ex(images=("{d}/img/empty.jpg",)), ("not a readable image",)),
    CliCase("huge-image-file", ex(images=("{d}/img/huge.png",)), ("9000x9000", "downscale")),
    CliCase("glob-no-match", ex(images=("{d}/*.gif",)), ("matches no image files",)),
    # tensors, as far as files can make them
    CliCase("crop-above-pixel-limit", ex(images=("{d}/img/a.png",), model=("--model", f"{MODELS_MODULE}:tiny", "--size", "4097")), ("4097x4097", "4096x4096")),
    CliCase("channels-mismatch", ex(model=with_model("gray"), ), ("3 channels", "expects 1")),
    # model and weights
    CliCase("tuple-output", ex(model=with_model("tuple_out")), ("tuple of 2", "output=")),
    CliCase("dict-output", ex(model=with_model("dict_out")), ("dict with keys 'logits', 'aux'",)),
    CliCase("no-conv-cam", ex("-m", "gradcam", model=with_model("mlp")), ("spatial", "convolutional")),
    CliCase("callable-not-a-model", ex(model=with_model("not_a_model")), ("int", "not a torch.nn.Module")),
    CliCase("callable-missing-module", ex(model=("--model", "no_such_module_xyz:build")), ("could not import", "no_such_module_xyz")),
    CliCase("unknown-model", ex(model=("--model", "resnet19", "--weights", "none")), ("unknown model 'resnet19'", "resnet18")),
    CliCase("unknown-weights", ex(model=("--model", "resnet18", "--weights", "IMAGENET9K")), ("unknown weights 'IMAGENET9K'", "IMAGENET1K_V1")),
    CliCase("weights-not-cached", ex(model=("--model", "resnet18")), ("not in the torch hub cache", "--weights none) for random weights")),
    CliCase("state-dict-wrong-arch", ex(model=("--model", "{d}/tiny_state.pt", "--arch", "resnet18")), ("does not fit architecture 'resnet18'", "--arch")),
    CliCase("state-dict-no-arch", ex(model=("--model", "{d}/tiny_state.pt")), ("state dict", "--arch")),
    CliCase("model-file-missing", ex(model=("--model", "{d}/nope.pt")), ("nope.pt", "does not exist")),
    CliCase("model-file-junk", ex(model=("--model", "{d}/junk.pt")), ("could not read",)),
    CliCase("pickle-payload", ex(model=("--model", "{d}/evil.pkl")), ("refused", "arbitrary code")),
    CliCase("pickle-in-torch-save", ex(model=("--model", "{d}/evil.pt", "--arch", "resnet18")), ("refused", "arbitrary code")),
    CliCase("pickle-via-layers", ("layers", "--model", "{d}/evil.pkl"), ("refused", "arbitrary code")),
    CliCase("bad-device", ex("--device", "gpu"), ("invalid device 'gpu'",)),
    # method, backend, options
    CliCase("unknown-method", ex("-m", "gradcan"), ("unknown method 'gradcan'", "gradcam")),
    CliCase("method-backend-lacks", ex("-m", "scorecam", "-b", "captum"), ("scorecam", "pytorch-grad-cam")),
    CliCase("backend-typo", ex("-b", "captun"), ("unknown backend 'captun'", "captum")),
    CliCase("option-misspelled", ex("-m", "integrated_gradients", "-b", "captum", "-o", "nsteps=8"), ("unknown option(s) nsteps", "did you mean n_steps", "valid options")),
    CliCase("option-malformed", ex("-m", "integrated_gradients", "-b", "captum", "-o", "n_steps"), ("key=value",)),
    CliCase("n_steps=0", ex("-m", "integrated_gradients", "-b", "captum", "-o", "n_steps=0"), ("n_steps", "positive integer")),
    CliCase("stdevs<0", ex("-m", "smoothgrad", "-b", "captum", "-o", "stdevs=-0.5"), ("stdevs", ">= 0")),
    CliCase("window>image", ex("-m", "occlusion", "-b", "captum", "-o", "sliding_window=64"), ("64x64", "32x32")),
    CliCase("seed-not-int", ex("-m", "lime", "-b", "captum", "-o", "seed=abc"), ("seed", "integer")),
    # layers and targets
    CliCase("unknown-layer", ex("--layer", "feature.3"), ("'feature.3' not found", "features.3")),
    CliCase("layer-not-spatial", ex("-m", "gradcam", "-b", "captum", "--layer", "fc"), ("'fc'", "(N, C, H, W)")),
    CliCase("target-out-of-range", ex("--target", "99"), ("99", "5 classes")),
    CliCase("targets-wrong-length", ex("-b", "pytorch-grad-cam", "--target", "1,2,3"), ("3 targets for 2 images",)),
    CliCase("unknown-class-name", ex("--target", "clas1"), ("unknown class name 'clas1'", "class1")),
    # the command line itself and the user's files
    CliCase("unknown-cli-option", ex("--bogus"), ("--bogus",)),
    CliCase("batch-size-0", ex("--batch-size", "0"), ("--batch-size",)),
    CliCase("alpha-out-of-range", ex("--alpha", "2"), ("--alpha",)),
    CliCase("missing-images-argument", ("explain", *TINY), ("Missing argument 'images'", "--help")),
    CliCase("out-exists", ("explain", *IMGS, *TINY, "--out", "{d}/exists.png"), ("already exists", "--overwrite")),
    CliCase("out-is-an-input", ("explain", *IMGS, *TINY, "--out", "{d}/img/a.png", "--overwrite"), ("input images", "never overwrites")),
    CliCase("out-bad-suffix", ("explain", *IMGS, *TINY, "--out", "{d}/grid.txt"), ("'.txt'", ".png")),
    CliCase("out-among-the-photos", ("explain", *IMGS, *TINY, "--out", "{d}/img/grid.png"), ("would land in", "a.png", "--out")),
    CliCase("save-below-the-photos", ex("--save", "{d}/img/saved"), ("would land below", "--save")),
]
# fmt: on


def _fill(args: tuple[str, ...], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in args]


@pytest.fixture()
def cli_env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    monkeypatch.delenv("CNNLENS_DEBUG", raising=False)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(workdir / "hub"))  # an empty hub cache: no pretrained weights offline
    yield workdir
    torch.hub.set_dir(old)


def run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from cnnlens.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_cli_matrix_size() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_bad_input(case: CliCase, cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_in_process(_fill(case.args, cli_env), capsys)
    text = out + err
    assert code == 2, f"exit {code}; output: {text}"
    assert "Traceback" not in text
    assert out.strip() == "", f"nothing on stdout expected, got: {out!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"exactly one line expected, got {len(lines)}: {err!r}"
    assert lines[0].startswith("cnnlens: error: ")
    for w in case.words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    assert not (cli_env / "SENTINEL").exists(), "a pickle payload ran"
    assert not (cli_env / "out").exists() or not any((cli_env / "out").iterdir()), "an output was written"
    assert (cli_env / "exists.png").read_bytes() == b"already here"


def test_cli_good_call_works(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same setup without the fault succeeds, so the matrix' failures are about the fault."""
    out_png = cli_env / "ok" / "grid.png"
    code, out, err = run_in_process(
        ["explain", *_fill(IMGS, cli_env), *TINY, "-m", "gradcam,saliency", "--out", str(out_png)], capsys
    )
    assert code == 0, out + err
    assert out_png.exists() and out_png.stat().st_size > 0


def _subprocess(args: list[str], d: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CNNLENS_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]),
               TORCH_HOME=str(d / "torch_home"))
    env.pop("CNNLENS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cnnlens.cli", *args], cwd=d, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize("case_id", ["target-out-of-range", "pickle-via-layers", "unknown-cli-option"])
def test_cli_subprocess_exit_code_and_debug(case_id: str, workdir: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    args = _fill(case.args, workdir)
    r = _subprocess(args, workdir)
    assert r.returncode == 2, r.stderr
    assert r.stdout.strip() == "" and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (workdir / "SENTINEL").exists()
    # --debug, here after the subcommand: the traceback is shown, the exit status is the same
    r = _subprocess([*args, "--debug"], workdir)
    assert r.returncode == 2
    if case_id != "unknown-cli-option":  # click's usage errors carry a traceback too, but keep it terse
        assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cnnlens: error: ")
    assert not (workdir / "SENTINEL").exists()
