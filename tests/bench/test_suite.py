"""Suites: the shipped ones load, and anything wrong raises SuiteError before any work starts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import cnnlens.bench as bench
from cnnlens import registry
from cnnlens.bench.suite import BASELINES, load_suite, resolve_path
from cnnlens.errors import CnnlensError, SuiteError

REPO = Path(__file__).resolve().parents[2]

MINI = """
[study]
name = "mini"
[[models]]
spec = "cnnlens.testing:tiny_cnn"
image_size = 32
[images]
demo = ["chelsea"]
[methods]
include = ["saliency"]
"""


@pytest.mark.parametrize("name", ["smoke", "standard", "gpu"])
def test_shipped_suites_load_and_cover_the_registry(name):
    s = load_suite(name)
    assert s.name == name
    pairs = s.pairs()
    # every registry pair is in the study (the suites include "*"), plus the three baselines
    assert set(registry.REGISTRY) <= set(pairs)
    assert {(b, "baseline") for b in BASELINES} <= set(pairs)


def test_repo_suites_are_the_package_suites():
    for name in ("smoke", "standard", "gpu"):
        repo = REPO / "benchmarks" / "suites" / f"{name}.toml"
        assert repo.read_text() == resolve_path(name).read_text()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.toml"
    p.write_text(text)
    return p


def test_minimal_suite(tmp_path):
    s = load_suite(_write(tmp_path, MINI))
    assert s.pairs()[0][0] == "saliency"
    assert s.digest() == load_suite(_write(tmp_path, MINI)).digest()


BAD = {
    "malformed TOML": ("[study\nname = 'x'", "not valid TOML"),
    "unknown section": (MINI + "\n[sanityy]\nimages = 1\n", "unknown section [sanityy]"),
    "unknown method": (MINI.replace('include = ["saliency"]', 'include = ["gradcamm"]'), "matches no method"),
    "unknown backend": (MINI + 'backends = ["capptum"]\n', "unknown backend 'capptum'"),
    "unknown option": (MINI + "[methods.options]\nintegrated_gradients = { n_stepz = 4 }\n", "unknown option 'n_stepz'"),
    "invalid option value": (MINI + "[methods.options]\nintegrated_gradients = { n_steps = 0 }\n", "n_steps"),
    "unknown option method": (MINI + "[methods.options]\ngradcm = { n_steps = 4 }\n", "unknown method 'gradcm'"),
    "unknown model": (MINI.replace("cnnlens.testing:tiny_cnn", "resnet5O"), "unknown model 'resnet5O'"),
    "missing module": (MINI.replace("cnnlens.testing:tiny_cnn", "no_such_pkg.models:net"), "cannot be imported"),
    "missing attribute": (MINI.replace("tiny_cnn", "huge_cnn"), "has no attribute 'huge_cnn'"),
    "missing model file": (MINI.replace("cnnlens.testing:tiny_cnn", "/nonexistent/model.pt"), "does not exist"),
    "unknown demo image": (MINI.replace('demo = ["chelsea"]', 'demo = ["chelsey"]'), "unknown demo image 'chelsey'"),
    "unknown skimage": (MINI.replace('demo = ["chelsea"]', 'demo = ["chelsea"]\nskimage = ["no_such_sample"]'),
                        "not a local scikit-image sample"),
    "missing files": (MINI.replace('demo = ["chelsea"]', 'demo = ["chelsea"]\nfiles = ["/nonexistent/*.jpg"]'),
                      "images.files"),
    "unknown paste object": (MINI + '[images.paste]\nobjects = ["unicorn"]\n', "unknown object 'unicorn'"),
    "wrong type": (MINI + "[faithfulness]\nsteps = 'ten'\n", "faithfulness.steps must be int"),
    "even blur kernel": (MINI + "[faithfulness]\nblur_kernel = 10\n", "odd integer"),
    "bad batch size": (MINI + "[speed]\nbatch_sizes = [0]\n", "speed.batch_sizes must be between 1 and 1024"),
    "unknown key": (MINI + "[speed]\nrepeat = 3\n", "unknown key 'repeat' in [speed]"),
    "sanity pattern": (MINI + '[sanity]\nexclude = ["scorecamm"]\n', "matches no method"),
    "no images": ("[[models]]\nspec = 'cnnlens.testing:tiny_cnn'\n[images]\ndemo = []\n", "selects no image"),
    "duplicate model id": (MINI + "[[models]]\nspec = 'cnnlens.testing:tiny_cnn'\n", "appears twice"),
}


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("case", list(BAD))
def test_bad_suites_raise_suite_error(tmp_path, case):
    text, needle = BAD[case]
    with pytest.raises(SuiteError, match=None) as info:
        load_suite(_write(tmp_path, text))
    assert needle in str(info.value), str(info.value)
    assert isinstance(info.value, CnnlensError)


def test_unknown_suite_name():
    with pytest.raises(SuiteError, match="smoke"):
        load_suite("smok")


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("case", ["malformed TOML", "unknown method", "unknown model", "unknown option"])
def test_run_fails_before_any_work(tmp_path, case):
    """A bad suite fails in well under a second, and nothing is written."""
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(SuiteError):
        bench.run(_write(tmp_path, BAD[case][0]), out=out, progress=False)
    assert time.perf_counter() - t0 < 5
    assert not out.exists()


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, cnnlens.bench; heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'scipy', 'skimage') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_json_suite_is_the_same_study(tmp_path):
    import json

    import tomllib

    data = tomllib.loads(resolve_path("smoke").read_text())
    p = tmp_path / "smoke.json"
    p.write_text(json.dumps(data))
    assert load_suite(p).digest() == load_suite("smoke").digest()
    p.write_text("{not json")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load_suite(p)


#: A suite touching every section, and its digest as computed by the hand-written parser that the
#: pydantic schema replaced: stored studies resume only with the same digest, so an unchanged suite
#: must keep it.
RICH = """
[study]
name = "rich"
description = "every section"
seed = 7
threads = 1
[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 48
[images]
demo = ["chelsea", "coffee"]
flips = true
skimage = ["camera"]
batch = 2
[images.paste]
objects = ["cat", "espresso"]
scales = [0.5, 0.4]
positions = [[0.3, 0.3], [0.7, 0.6]]
backgrounds = ["gray", "grass"]
keep = "all"
max = 3
[methods]
include = ["*cam*", "saliency", "integrated_gradients"]
exclude = ["scorecam"]
backends = ["captum", "pytorch-grad-cam"]
baselines = false
[methods.options]
integrated_gradients = { n_steps = 4 }
[methods.max_images]
ablationcam = 1
[agreement]
within_backend = false
topk = [5, 20]
[faithfulness]
steps = 4
blur_kernel = 9
blur_sigma = 3
road_percentiles = [50]
road_images = 1
forward_batch = 16
images = 2
[sanity]
images = 1
max_steps = 3
exclude = ["ablationcam"]
[speed]
batch_sizes = [1, 2]
repeats = 2
warmup = 0
slow = ["ablationcam"]
slow_repeats = 1
[localization]
enabled = false
"""
RICH_DIGEST = "75a7a854c3cf2aac"  # the base parser's (b8546bb)


def test_digests_of_unchanged_suites_are_stable(tmp_path):
    assert load_suite(_write(tmp_path, RICH)).digest() == RICH_DIGEST
    assert load_suite(_write(tmp_path, MINI)).digest() == "801d7bac9a380d07"


def test_shard_is_the_batch_and_new_keys_enter_the_digest_only_when_set(tmp_path):
    by_batch = load_suite(_write(tmp_path, MINI.replace('demo = ["chelsea"]', 'demo = ["chelsea"]\nbatch = 3')))
    by_shard = load_suite(_write(tmp_path, MINI.replace('demo = ["chelsea"]', 'demo = ["chelsea"]\nshard = 3')))
    assert by_shard.images.shard == by_shard.images.batch == 3 and by_shard.digest() == by_batch.digest()
    labelled = load_suite(_write(tmp_path, MINI.replace('name = "mini"', 'name = "mini"\ntarget = "label"')))
    assert labelled.target == "label" and labelled.digest() != by_batch.digest()
    with pytest.raises(SuiteError, match=r"images.shard must be between 1 and 1024, got 0"):
        load_suite(_write(tmp_path, MINI.replace('demo = ["chelsea"]', 'demo = ["chelsea"]\nshard = 0')))


def test_every_problem_is_reported_one_per_line(tmp_path):
    text = MINI + "[faithfulness]\nsteps = 'ten'\nblur_sigma = nan\n[speed]\nrepeat = 3\n"
    with pytest.raises(SuiteError) as info:
        load_suite(_write(tmp_path, text))
    lines = str(info.value).splitlines()
    assert lines[0] == "suite.toml: 3 problems:", lines
    assert lines[1:] == ["  faithfulness.steps must be int, got 'ten';",
                         "  faithfulness.blur_sigma must be between 0.01 and 1000.0, got nan;",
                         "  unknown key 'repeat' in [speed] (did you mean repeats, slow_repeats?); valid keys: "
                         "batch_sizes, enabled, exclude, include, repeats, slow, slow_repeats, warmup;"]


@pytest.mark.parametrize(("line", "needle"), [
    ('foldr = "x"', "unknown key 'foldr' in [images] (did you mean folder?)"),
    ('folder = "no/such/dir"', "images.folder: folder 'no/such/dir' does not exist"),
    ('manifest = "m.csv"', "images.manifest: manifest file 'm.csv' does not exist"),
    ("skip_unreadable = 1", "images.skip_unreadable must be bool, got 1"),
    ('annotations_format = "yolo"', "images.annotations_format must be 'auto', 'voc' or 'coco', got 'yolo'"),
])
def test_dataset_keys_are_checked(tmp_path, line, needle):
    with pytest.raises(SuiteError) as info:
        load_suite(_write(tmp_path, MINI.replace('demo = ["chelsea"]', f'demo = ["chelsea"]\n{line}')))
    assert needle in str(info.value), str(info.value)


def test_target_must_be_predicted_or_label(tmp_path):
    with pytest.raises(SuiteError, match=r"study.target must be 'predicted' or 'label', got 'labels'"):
        load_suite(_write(tmp_path, MINI.replace('name = "mini"', 'name = "mini"\ntarget = "labels"')))
