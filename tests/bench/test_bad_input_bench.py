"""Bad input to the benchmark: one clear error, and nothing lost.

Every numeric suite value is bounded; a ``[[models]] layer`` that does not exist fails when the suite
loads; a corrupt or foreign SQLite file is refused untouched; a study on read-only media is reported
read-only; a full disk or a read-only output folder gives a clear error and leaves nothing that
blocks the rerun; a cell written twice leaves exactly one row.

Full disks and read-only media are real where the tests may mount (root with CAP_SYS_ADMIN: a tiny
``tmpfs`` that fills up, a read-only bind mount). Elsewhere those tests skip, and their companions
simulate the same failure at the boundary the code sees: SQLite's own "database or disk is full"
(``PRAGMA max_page_count``), ``os.write`` failing with ``ENOSPC`` half-way, ``os.access`` saying a
folder is not writable (what it says on read-only media, even to root).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from bench_helpers import assert_no_duplicates, deterministic_table

import cnnlens.bench as bench
from cnnlens import _files as files
from cnnlens.bench import store
from cnnlens.bench import suite as suite_mod
from cnnlens.bench.suite import load_suite
from cnnlens.errors import CnnlensError, OutputError, StoreError, SuiteError
from cnnlens.testing import one_line_error as _one_line_error
from cnnlens.testing import run_cli as _cli

#: A study of a few seconds: two methods on the tiny CNN, deletion/insertion, no sanity or speed.
TINY = """
[study]
name = "tiny"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
demo = ["chelsea", "coffee"]
batch = 1

[methods]
include = ["saliency", "gradcam"]
baselines = false

[faithfulness]
steps = 2
road_percentiles = []

[sanity]
enabled = false

[speed]
enabled = false
"""


def _write(folder: Path, text: str, name: str = "suite.toml") -> Path:
    p = folder / name
    p.write_text(text)
    return p






@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("tiny"), TINY, "tiny.toml")


@pytest.fixture(scope="module")
def tiny_db(tiny_suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the tiny study: the table every recovered run must equal."""
    return bench.run(tiny_suite, out=tmp_path_factory.mktemp("ref"), progress=False)


@pytest.fixture(scope="module")
def tiny_report(tiny_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study's report, written once to a roomy folder (for sizes and contents)."""
    out = tmp_path_factory.mktemp("report")
    bench.report(tiny_db, out)
    return out


# --------------------------------------------------------------------------------------------
# Real mounts, where allowed
# --------------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def _mounted(target: Path, *setup: tuple[str, ...]) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    try:
        _mount(*setup[0], str(target))
    except (OSError, subprocess.SubprocessError):
        pytest.skip("mounting needs root with CAP_SYS_ADMIN (a real tmpfs or read-only bind mount)")
    try:
        for more in setup[1:]:
            _mount(*more, str(target))
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def small_disk(target: Path, kib: int) -> contextlib.AbstractContextManager[Path]:
    """A real file system of ``kib`` KiB (tmpfs), to fill up."""
    return _mounted(target, ("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs"))


def grow(target: Path, mib: int = 64) -> None:
    """Free space on a :func:`small_disk`: what the user does before rerunning."""
    _mount("-o", f"remount,size={mib}m", str(target))


def read_only_view(source: Path, target: Path) -> contextlib.AbstractContextManager[Path]:
    """``source`` seen through a read-only bind mount: writes fail with EROFS, even for root."""
    return _mounted(target, ("--bind", str(source)), ("-o", "remount,ro,bind"))


# --------------------------------------------------------------------------------------------
# Suite values: every number is bounded, and the bounds are in the message
# --------------------------------------------------------------------------------------------

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


def _with(section: str, line: str) -> str:
    """MINI with ``line`` added to ``section`` (an existing one is extended)."""
    if section == "study":
        return MINI.replace('name = "mini"', f'name = "mini"\n{line}')
    if section == "models":
        return MINI.replace("image_size = 32", line) if line.startswith("image_size") else \
            MINI.replace("image_size = 32", f"image_size = 32\n{line}")
    if section == "images":
        return MINI.replace('demo = ["chelsea"]', f'demo = ["chelsea"]\n{line}')
    if section == "methods":
        return MINI + f"[methods.max_images]\n{line}\n"
    return MINI + f"[{section}]\n{line}\n"


#: (section, TOML line, words the error must contain). Each value was accepted before the bounds.
BOUNDS = {
    "study.seed": ("study", "seed = 4294967296", "study.seed must be between 0 and 4294967295"),
    "study.seed negative": ("study", "seed = -1", "study.seed must be between 0 and"),
    "study.threads": ("study", "threads = 100000", "study.threads must be between 0 and"),
    "models.image_size": ("models", "image_size = 100000", "image_size must be between 8 and 4096"),
    "models.image_size small": ("models", "image_size = 2", "image_size must be between 8 and 4096"),
    "images.batch": ("images", "batch = 100000", "images.batch must be between 1 and 1024"),
    "images.paste.max": ("images.paste", "max = 100000", "images.paste.max must be between 1 and 10000"),
    "faithfulness.steps": ("faithfulness", "steps = 100000", "faithfulness.steps must be between 1 and 1000"),
    "faithfulness.forward_batch": ("faithfulness", "forward_batch = 100000",
                                   "faithfulness.forward_batch must be between 1 and 1024"),
    "faithfulness.blur_sigma inf": ("faithfulness", "blur_sigma = inf", "faithfulness.blur_sigma must be between"),
    "faithfulness.blur_sigma nan": ("faithfulness", "blur_sigma = nan", "faithfulness.blur_sigma must be between"),
    "faithfulness.blur_kernel": ("faithfulness", "blur_kernel = 100001", "odd integer between 1 and 255"),
    "faithfulness.road_images": ("faithfulness", "road_images = 100000",
                                 "faithfulness.road_images must be between 0 and 10000"),
    "faithfulness.images": ("faithfulness", "images = 100000", "faithfulness.images must be between 0 and 10000"),
    "sanity.images": ("sanity", "images = 100000", "sanity.images must be between 1 and 10000"),
    "sanity.max_steps": ("sanity", "max_steps = 100000", "sanity.max_steps must be between 2 and 100"),
    "speed.batch_sizes": ("speed", "batch_sizes = [100000]", "speed.batch_sizes must be between 1 and 1024"),
    "speed.repeats": ("speed", "repeats = 100000", "speed.repeats must be between 1 and 1000"),
    "speed.warmup": ("speed", "warmup = 100000", "speed.warmup must be between 0 and 100"),
    "speed.slow_repeats": ("speed", "slow_repeats = 100000", "speed.slow_repeats must be between 1 and 1000"),
    "methods.max_images": ("methods", "saliency = 100000", "max_images.saliency must be an integer between 1 and 10000"),
    # the toolkits' own metrics (issue 17)
    "faithfulness.perturb_samples": ("faithfulness", "perturb_samples = 100000",
                                     "faithfulness.perturb_samples must be between 1 and 1000"),
    "faithfulness.infidelity_stdev": ("faithfulness", "infidelity_stdev = nan",
                                      "faithfulness.infidelity_stdev must be between"),
    "faithfulness.perturb_radius": ("faithfulness", "perturb_radius = 0.0", "faithfulness.perturb_radius must be between"),
    "faithfulness.arcc_percentiles": ("faithfulness", "arcc_percentiles = [100]", "percentages in (0, 100)"),
    # bounded before this change too; listed so that the matrix covers every numeric value
    "agreement.topk": ("agreement", "topk = [500.0]", "percentages in (0, 100]"),
    "faithfulness.road_percentiles": ("faithfulness", "road_percentiles = [100]", "percentages in (0, 100)"),
    "images.paste.scales": ("images.paste", "scales = [50.0]", "in [0.05, 1]"),
    "images.paste.positions": ("images.paste", "positions = [[5.0, 0.5]]", "pairs in [0, 1]"),
    # the same keys, other bad values
        "faithfulness.infidelity_stdev zero": ("faithfulness", "infidelity_stdev = 0.0",
                                      "faithfulness.infidelity_stdev must be between 1e-09 and 1000.0"),
    "faithfulness.perturb_radius inf": ("faithfulness", "perturb_radius = inf",
                                    "faithfulness.perturb_radius must be between 1e-09 and 1000.0"),
    "faithfulness.arcc_percentiles zero": ("faithfulness", "arcc_percentiles = [0]", "percentages in (0, 100)"),
}


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("case", list(BOUNDS))
def test_every_numeric_suite_value_is_bounded(tmp_path, case):
    section, line, words = BOUNDS[case]
    with pytest.raises(SuiteError) as info:
        load_suite(_write(tmp_path, _with(section, line)))
    assert words in str(info.value), str(info.value)


#: Annotation strings (the suite module uses postponed annotations) of numeric fields.
_NUMERIC = ("int", "float", "int | None", "tuple[int, ...]", "tuple[float, ...]",
            "tuple[tuple[float, float], ...]", "dict[str, int]")


def _numeric_fields(cls: type, prefix: str) -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out |= _numeric_fields(type(default), f"{prefix}.{f.name}")
        elif f.type in _NUMERIC:
            out.add(f"{prefix}.{f.name}")
    return out


def test_the_bounds_matrix_covers_every_numeric_field():
    """A numeric field added to a suite section later must get a bound and a case above."""
    fields = {"study.seed", "study.threads"}
    for cls, prefix in ((suite_mod.ModelSpec, "models"), (suite_mod.ImagesSpec, "images"),
                        (suite_mod.MethodsSpec, "methods"), (suite_mod.AgreementSpec, "agreement"),
                        (suite_mod.FaithSpec, "faithfulness"), (suite_mod.SanitySpec, "sanity"),
                        (suite_mod.SpeedSpec, "speed")):
        fields |= _numeric_fields(cls, prefix)
    fields -= {"methods.options"}  # option values are checked by the registry's own validators
    covered = {k.split(" ")[0] for k in BOUNDS}
    assert fields <= covered, sorted(fields - covered)


@pytest.mark.bad_input("engine")
def test_a_huge_batch_of_large_images_is_refused_at_load(tmp_path):
    text = _with("models", "image_size = 4096") + "[speed]\nbatch_sizes = [64]\n"
    with pytest.raises(SuiteError, match=r"64 images of 4096x4096 needs 12\.0 GiB"):
        load_suite(_write(tmp_path, text))


@pytest.mark.bad_input("engine")
def test_threads_and_size_fail_before_any_work_in_the_cli(tmp_path):
    for section, line, words in (BOUNDS["study.threads"], BOUNDS["models.image_size"]):
        out = tmp_path / f"out-{section}"
        result = _cli("bench", "--suite", _write(tmp_path, _with(section, line)), "--out", out)
        _one_line_error(result, words)
        assert not out.exists()


# --------------------------------------------------------------------------------------------
# [[models]] layer
# --------------------------------------------------------------------------------------------


@pytest.mark.bad_input("engine")
def test_a_layer_that_does_not_exist_fails_when_the_suite_loads(tmp_path):
    text = _with("models", 'layer = "featurs.3"')
    with pytest.raises(SuiteError) as info:
        load_suite(_write(tmp_path, text))
    msg = str(info.value)
    assert "models[0].layer" in msg and "'featurs.3'" in msg and "close matches: features.3" in msg, msg


def test_a_torchvision_layer_is_checked_without_weights(tmp_path):
    text = MINI.replace('spec = "cnnlens.testing:tiny_cnn"\nimage_size = 32',
                        'spec = "resnet18"\nweights = "none"\nlayer = "layer5"')
    with pytest.raises(SuiteError, match=r"layer 'layer5' is not a module of 'resnet18'; close matches: .*layer4"):
        load_suite(_write(tmp_path, text))
    ok = text.replace('"layer5"', '"layer4.1"')
    assert load_suite(_write(tmp_path, ok)).models[0].layer == "layer4.1"


@pytest.mark.bad_input("engine")
def test_a_bad_layer_writes_no_error_rows_and_exits_2(tmp_path):
    out = tmp_path / "out"
    result = _cli("bench", "--suite", _write(tmp_path, _with("models", 'layer = "conv9"')), "--out", out)
    _one_line_error(result, "layer 'conv9'")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Corrupt and foreign SQLite files
# --------------------------------------------------------------------------------------------


def _foreign_db(path: Path, results_table: bool) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'Ada')")
    if results_table:  # a table of the same name, of another program
        conn.execute("CREATE TABLE results (id INTEGER, score REAL)")
    conn.commit()
    conn.close()
    return path.read_bytes()


@pytest.mark.bad_input("engine")
def test_report_refuses_a_text_file_renamed_sqlite(tmp_path):
    junk = tmp_path / "study.sqlite"
    junk.write_text("id,score\n1,0.5\n")
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        bench.report(junk, tmp_path / "rep")
    _one_line_error(_cli("report", junk), "not a readable SQLite database")


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("results_table", [False, True], ids=["other-tables", "other-results-table"])
def test_report_refuses_another_programs_database(tmp_path, results_table):
    db = tmp_path / "study.sqlite"
    before = _foreign_db(db, results_table)
    with pytest.raises(StoreError, match=r"not a cnnlens study.*customers"):
        bench.report(db, tmp_path / "rep")
    with pytest.raises(StoreError, match="not a cnnlens study"):
        bench.read_results(db)
    _one_line_error(_cli("report", db), "not a cnnlens study")
    assert db.read_bytes() == before


def test_a_study_with_a_table_of_the_users_own_is_still_a_study(tiny_db, tmp_path):
    db = tmp_path / "tiny.sqlite"
    shutil.copy(tiny_db, db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE my_notes (metric TEXT, note TEXT)")
    conn.commit()
    conn.close()
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
    store.Store(db, "tiny").close()


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("kind", ["text", "foreign"])
def test_bench_refuses_a_foreign_file_where_its_study_goes_and_leaves_it_untouched(tiny_suite, tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    db = out / "tiny.sqlite"
    if kind == "text":
        db.write_text("not a database, but somebody's notes\n")
        before = db.read_bytes()
    else:
        before = _foreign_db(db, results_table=True)
    with pytest.raises(StoreError):
        bench.run(tiny_suite, out=out, progress=False)
    assert db.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["tiny.sqlite"]  # no -wal/-shm either
    _one_line_error(_cli("bench", "--suite", tiny_suite, "--out", out), "tiny.sqlite")
    assert db.read_bytes() == before


@pytest.mark.bad_input("engine")
def test_a_study_corrupted_past_its_header_gives_a_store_error(tiny_db, tmp_path):
    db = tmp_path / "tiny.sqlite"
    shutil.copy(tiny_db, db)
    data = bytearray(db.read_bytes())
    page = 4096
    for start in range(page, len(data), 2 * page):  # every other page after the schema page
        data[start:start + page] = b"\xa5" * page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        bench.report(db, tmp_path / "rep")
    _one_line_error(_cli("report", db, "--out", tmp_path / "rep2"), "corrupt")


# --------------------------------------------------------------------------------------------
# Read-only media
# --------------------------------------------------------------------------------------------


def test_report_reads_a_study_on_read_only_media(tiny_db, tiny_report, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_db, src / "tiny.sqlite")
    with read_only_view(src, tmp_path / "ro") as ro:
        db = ro / "tiny.sqlite"
        md, _html = bench.report(db, tmp_path / "rep")
        assert md.read_text() == (tiny_report / "report.md").read_text().replace(str(tiny_db), str(db))
        pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
        # next to the database is the default output: read-only there, so a clear error and exit 2
        with pytest.raises(OutputError, match="read-only file system"):
            bench.report(db)
        _one_line_error(_cli("report", db), "read-only", "--out")
        assert sorted(p.name for p in ro.iterdir()) == ["tiny.sqlite"]


@pytest.mark.bad_input("engine")
def test_a_write_ahead_log_without_its_index_on_read_only_media_is_explained(tiny_db, tmp_path):
    """A study copied mid-run (its -wal, not its -shm): SQLite cannot read it there; say so."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_db, src / "tiny.sqlite")
    code = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0'); "
            "c.execute(\"INSERT INTO meta VALUES ('tiny', 'late', '1')\"); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(src / "tiny.sqlite")], check=True, timeout=60)
    (src / "tiny.sqlite-shm").unlink()
    assert (src / "tiny.sqlite-wal").stat().st_size > 0
    with read_only_view(src, tmp_path / "ro") as ro, \
            pytest.raises(StoreError, match=r"read-only media.*write-ahead log.*copy the folder"):
        bench.read_table(ro / "tiny.sqlite", "meta")
    # where the folder is writable, SQLite recovers the log and the late row is there
    assert "late" in set(bench.read_table(src / "tiny.sqlite", "meta").key)


def test_a_folder_that_is_not_writable_opens_the_study_immutable(tiny_db, tmp_path, monkeypatch):
    """Without mounts: ``os.access`` answers as on read-only media, and the study is read immutable."""
    db = tmp_path / "tiny.sqlite"
    shutil.copy(tiny_db, db)
    real = os.access
    monkeypatch.setattr(store.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    assert store._read_only_uri(db).endswith("?mode=ro&immutable=1")
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.sqlite"]  # no -shm was created


@pytest.mark.bad_input("engine")
def test_bench_into_a_read_only_folder_is_one_clear_error(tiny_suite, tiny_db, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_db, src / "tiny.sqlite")  # a finished study: even a no-op resume must not write
    with read_only_view(src, tmp_path / "ro") as ro:
        for out in (ro, ro / "new-sub-folder"):
            with pytest.raises(OutputError, match="cannot be written"):
                bench.run(tiny_suite, out=out, progress=False)
            _one_line_error(_cli("bench", "--suite", tiny_suite, "--out", out), "cannot be written", "--out")


@pytest.mark.bad_input("engine")
def test_bench_checks_the_folder_is_writable_first(tiny_suite, tmp_path, monkeypatch):
    """Without mounts: the same refusal, driven by what ``os.access`` says on read-only media."""
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))
    with pytest.raises(OutputError, match=f"'{out}' cannot be written"):
        bench.run(tiny_suite, out=out, progress=False)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Full disk
# --------------------------------------------------------------------------------------------


@pytest.mark.bad_input("engine")
def test_bench_on_a_full_disk_stops_clearly_and_the_rerun_resumes(tiny_suite, tiny_db, tmp_path):
    with small_disk(tmp_path / "disk", kib=200) as disk:
        with pytest.raises(OutputError, match=r"disk is full.*resumes"):
            bench.run(tiny_suite, out=disk, progress=False)
        db = disk / "tiny.sqlite"
        kept = len(bench.read_table(db, "cells"))
        assert 0 < kept < len(bench.read_table(tiny_db, "cells"))
        grow(disk)
        bench.run(tiny_suite, out=disk, progress=False)
        pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
        assert_no_duplicates(db)


@pytest.mark.bad_input("engine")
def test_bench_when_sqlite_finds_the_disk_full_keeps_what_it_finished(tiny_suite, tiny_db, tmp_path, monkeypatch):
    """Without mounts: SQLite's own SQLITE_FULL ("database or disk is full") from a page cap."""
    real_init = store.Store.__init__

    def capped(self, path, study):
        real_init(self, path, study)
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count = {pages + 12}")

    monkeypatch.setattr(store.Store, "__init__", capped)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="disk is full"):
        bench.run(tiny_suite, out=out, progress=False)
    _one_line_error(_cli("bench", "--suite", tiny_suite, "--out", tmp_path / "out2"), "disk is full")
    monkeypatch.setattr(store.Store, "__init__", real_init)
    db = bench.run(tiny_suite, out=out, progress=False)
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
    assert_no_duplicates(db)


def _report_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.bad_input("engine")
def test_report_on_a_full_disk_leaves_no_truncated_file(tiny_db, tiny_report, tmp_path):
    sizes = {k: len(v) for k, v in _report_files(tiny_report).items()}
    room = sum(v for k, v in sizes.items() if k != "report.html") + 48 * 1024  # not room for the HTML too
    assert sizes["report.html"] > 64 * 1024
    with small_disk(tmp_path / "disk", kib=room // 1024) as disk:
        with pytest.raises(OutputError, match=r"report.html.*disk is full"):
            bench.report(tiny_db, disk)
        left = _report_files(disk)
        assert "report.html" not in left and not [k for k in left if k.endswith(".tmp")], sorted(left)
        for name, data in left.items():  # whatever was written is complete
            assert data == (tiny_report / name).read_bytes(), name
        _one_line_error(_cli("report", tiny_db, "--out", disk, "--overwrite"), "disk is full")
        grow(disk)
        bench.report(tiny_db, disk)
        assert _report_files(disk).keys() == sizes.keys()


@pytest.mark.bad_input("engine")
def test_report_interrupted_by_enospc_keeps_the_previous_report(tiny_db, tmp_path, monkeypatch):
    """Without mounts: the kernel's answer to a write on a full disk, half-way through report.html."""
    out = tmp_path / "rep"
    bench.report(tiny_db, out)
    before = _report_files(out)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if ".report.html." in os.readlink(f"/proc/self/fd/{fd}"):
            n = real_write(fd, bytes(data[: len(data) // 2]))
            if n < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(OutputError, match=r"report.html.*disk is full"):
        bench.report(tiny_db, out)
    assert _report_files(out) == before  # the old report.html is whole, and no temporary file is left


@pytest.mark.bad_input("engine")
def test_export_csv_on_a_full_disk_leaves_no_truncated_csv(tiny_db, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", no_space)
    with pytest.raises(OutputError, match="disk is full"):
        bench.export_csv(tiny_db, out)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# A cell written twice leaves exactly one row
# --------------------------------------------------------------------------------------------


def _cell_rows(value: float) -> list[store.Row]:
    return [("m", "img", "saliency", "captum", "deletion_blur.auc", value, 1),
            ("m", "img", "saliency", "captum", "avg_drop", value / 2, 1)]


def _counts(db: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(db)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                     for t in ("results", "artifacts", "cells"))
    finally:
        conn.close()


def test_a_cell_written_twice_keeps_one_row_and_the_first_values(tmp_path):
    import numpy as np

    db = tmp_path / "s.sqlite"
    art = [("m", "img", "saliency", "captum", "map", np.ones((4, 4), np.float16))]
    with store.Store(db, "s") as st:
        st.write_cell("c1", "explain", {"k": 1}, "done", _cell_rows(0.25), art, seconds=1.0)
    with store.Store(db, "s") as st:  # a rerun or a second worker that ran the same cell
        st.write_cell("c1", "explain", {"k": 1}, "done", _cell_rows(0.75), art, seconds=2.0)
    assert _counts(db) == (2, 1, 1)
    res = bench.read_results(db)
    assert res.set_index("metric").value.to_dict() == {"avg_drop": 0.125, "deletion_blur.auc": 0.25}
    assert_no_duplicates(db)


def test_two_writers_of_the_same_cell_at_once_leave_one_row(tmp_path):
    db = tmp_path / "s.sqlite"
    store.Store(db, "s").close()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(value: float) -> None:
        try:
            with store.Store(db, "s") as st:
                start.wait()
                st.write_cell("c1", "explain", {"k": 1}, "done", _cell_rows(value))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (0.25, 0.75)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _counts(db) == (2, 0, 1)
    assert set(bench.read_results(db).value) in ({0.25, 0.125}, {0.75, 0.375})  # one writer's, whole


def test_two_studies_racing_on_one_store_give_the_single_runs_table(tiny_suite, tiny_db, tmp_path):
    """Two processes run the same study into one folder at once: both finish, no row is doubled."""
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "cnnlens.bench", "--suite", str(tiny_suite), "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _o, e in outs]
    db = out / "tiny.sqlite"
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(tiny_db))
    assert_no_duplicates(db)


def test_store_errors_are_cnnlens_errors():
    assert issubclass(StoreError, CnnlensError) and issubclass(OutputError, CnnlensError)
