"""Interrupted studies, for real: SIGKILL a running ``cnnlens bench`` (and ``python -m cnnlens.bench``)
half-way, rerun the same command, and get the uninterrupted run's table, with no duplicated row and a
database that passes ``PRAGMA integrity_check``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from bench_helpers import MINI_SUITE, assert_no_duplicates, deterministic_table


def _cmd(kind: str, suite: Path, out: Path) -> list[str]:
    if kind == "cli":  # the `cnnlens bench` command itself
        return [sys.executable, "-m", "cnnlens.cli", "bench", "--suite", str(suite), "--out", str(out)]
    return [sys.executable, "-m", "cnnlens.bench", "--suite", str(suite), "--out", str(out), "--no-progress"]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The suite file and the database of an uninterrupted run of it."""
    root = tmp_path_factory.mktemp("kill")
    suite = root / "mini.toml"
    suite.write_text(MINI_SUITE)
    r = subprocess.run(_cmd("module", suite, root / "full"), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return suite, root / "full" / "mini.sqlite"


def _cells(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("kind", ["cli", "module"])
def test_sigkill_half_way_then_rerun(reference, tmp_path, kind):
    suite, full_db = reference
    env = ENV
    killed_out = tmp_path / "killed"
    total = _cells(full_db)
    assert total > 20

    proc = subprocess.Popen(_cmd(kind, suite, killed_out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    db = killed_out / "mini.sqlite"
    deadline = time.monotonic() + 300
    try:
        while _cells(db) < total // 2:
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "the study made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _cells(db)
    assert 0 < done_at_kill < total, (done_at_kill, total)
    print(f"{kind}: killed with {done_at_kill} of {total} cells finished")

    r = subprocess.run(_cmd(kind, suite, killed_out), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _cells(db) == total
    assert_no_duplicates(db)
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(full_db))
    conn = sqlite3.connect(db)
    try:
        # same cells with the same statuses as the uninterrupted run
        got = sorted(conn.execute("SELECT cell, kind, status FROM cells").fetchall())
    finally:
        conn.close()
    conn = sqlite3.connect(full_db)
    try:
        want = sorted(conn.execute("SELECT cell, kind, status FROM cells").fetchall())
    finally:
        conn.close()
    assert got == want
