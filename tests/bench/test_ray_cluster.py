"""A Ray cluster as users run one: a head and a second node started with ``ray start`` on 127.0.0.1 and
protected by Ray's token authentication. A study joined with ``--address`` runs its cells on both
nodes and gives the local engine's values; a driver without the cluster's token gets one clear line;
a SIGKILLed driver's own local Ray does not outlive it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from bench_helpers import deterministic_table

import cnnlens.bench as bench


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")

#: Two shards of one image, two methods, deletion/insertion: the smallest study with cells for two nodes.
SUITE = """
[study]
name = "two-nodes"
seed = 3
threads = 1
[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32
[images]
demo = ["chelsea", "coffee", "astronaut", "rocket"]
shard = 1
[methods]
include = ["saliency", "gradcam"]
backends = ["captum"]
[faithfulness]
steps = 4
road_images = 0
infidelity = false
confidence_change = false
[agreement]
enabled = false
[sanity]
enabled = false
[speed]
enabled = false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _without_auth(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}


class Cluster:
    """``ray start --block`` processes this test started (stopped by their PIDs), their address and the
    environment that holds the cluster's token."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # HOME is the test's folder: Ray neither reads nor writes the user's ~/.ray/auth_token.
        self.env = {**_without_auth(dict(os.environ)), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(root), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        log = self.root / f"node{len(self.procs)}.log"
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=78643200",
                  f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats", "--block"]
        with log.open("w") as out:
            proc = subprocess.Popen([ray, "start", *args, *common], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM each ``ray start --block`` (it stops its node's processes), then SIGKILL by PID what is left."""
        import psutil

        under = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                under += psutil.Process(proc.pid).children(recursive=True)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for p in under:
            with contextlib.suppress(psutil.Error):
                p.kill()  # psutil refuses a pid that now belongs to another process


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Ray's socket paths must stay short: a folder right under the temporary directory.
    root = Path(tempfile.mkdtemp(prefix="cnr", dir="/tmp" if Path("/tmp").is_dir() else None))
    c = Cluster(root)
    try:
        c.start("--head", f"--port={c.port}", "--include-dashboard=false")
        c.start(f"--address={c.address}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _cli(env: dict[str, str], *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cnnlens", "bench", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_a_study_through_address_runs_on_both_nodes_with_the_local_values(cluster, tmp_path):
    suite = tmp_path / "two.toml"
    suite.write_text(SUITE)
    local = bench.run(suite, out=tmp_path / "local", progress=False)
    r = _cli(cluster.env, "--suite", suite, "--out", tmp_path / "ray", "--no-progress", "--engine", "ray",
             "--workers", "2", "--address", cluster.address)
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / "ray" / "two-nodes.sqlite"
    cells = bench.read_table(db, "cells")
    ran = cells[cells.kind.isin(["images", "explain"])]
    nodes = set(ran.host)
    # Each node has one CPU and each actor asks for one: one actor per node, each recording its node.
    assert len(nodes) == 2 and all("ray node" in h for h in nodes), nodes
    assert (ran.status == "done").all()
    ref = deterministic_table(local)
    measures = {m.split(".")[0].split("@")[0] for m in ref.metric}
    assert {"deletion_blur", "insertion_blur"} <= measures and len(set(ref.image)) == 4, measures
    pd.testing.assert_frame_equal(deterministic_table(db), ref)


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("token", [None, "0" * 32], ids=["no-token", "wrong-token"])
def test_a_driver_the_cluster_refuses_gets_one_line_naming_the_token_variables(cluster, tmp_path, token):
    suite = tmp_path / "two.toml"
    suite.write_text(SUITE)
    env = {**_without_auth(cluster.env), "HOME": str(tmp_path)}  # no ~/.ray/auth_token there either
    if token:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    t0 = time.monotonic()
    r = _cli(env, "--suite", suite, "--out", tmp_path / "o", "--no-progress", "--engine", "ray",
             "--address", cluster.address, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlens: error: "), r.stderr[-3000:]
    for word in (cluster.address, "refused", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "~/.ray/auth_token"):
        assert word in lines[0], lines[0]
    assert took < 60, f"the refusal took {took:.0f} s"  # not Ray's 20 s of retries on top of the start


def test_a_killed_drivers_local_ray_is_gone_within_seconds(tmp_path):
    """A driver that started its own local Ray (and an actor on it), silently, is SIGKILLed: every
    process Ray started under it (GCS, raylet, agents, the actor's worker) is gone within a few seconds."""
    import psutil

    code = ("import time, ray\n"
            "from cnnlens.bench.ray_engine import start_local_ray\n"
            "start_local_ray(1)\n"
            "@ray.remote(num_cpus=1)\n"
            "class A:\n"
            "    def pid(self):\n"
            "        import os\n"
            "        return os.getpid()\n"
            "a = A.remote()\n"
            "print(ray.get(a.pid.remote()), flush=True)\n"
            "time.sleep(600)\n")
    env = {**_without_auth(dict(os.environ)), "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    err = (tmp_path / "stderr").open("w")
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=err,
                              text=True, start_new_session=True)
    under: list = []
    try:
        actor = int(driver.stdout.readline() or 0)
        assert actor, "the driver did not start its Ray"
        under = psutil.Process(driver.pid).children(recursive=True)  # Ray's processes and cnnlens's watchdog
        assert actor in {p.pid for p in under} and len(under) >= 4
        # Ray's notice that it enabled token authentication would be a second line under a CLI error.
        assert "Token authentication" not in (tmp_path / "stderr").read_text()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        t0 = time.monotonic()
        alive = under
        while alive and time.monotonic() - t0 < 5:
            time.sleep(0.1)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.cmdline()[:1]) for p in alive]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        err.close()
        for p in under:  # nothing of this test's is left behind, whatever happened
            with contextlib.suppress(psutil.Error):
                p.kill()


#: The embedded pretrained model (real weights: near-ties in its maps are where float noise between
#: machines and thread counts would turn into different pixel rankings), every ranking measure.
EMBEDDED_SUITE = """
[study]
name = "two-nodes-embedded"
seed = 5
threads = 1
[[models]]
id = "efficientnet_lite0"
spec = "efficientnet_lite0"
[images]
demo = ["chelsea", "coffee", "astronaut", "rocket"]
shard = 2
[methods]
include = ["gradcam", "saliency"]
backends = ["captum", "pytorch-grad-cam", "flashtorch"]
[agreement]
enabled = true
topk = [5, 10]
[faithfulness]
steps = 4
road_images = 1
road_percentiles = [50]
infidelity = false
confidence_change = false
[localization]
enabled = true
[sanity]
enabled = false
[speed]
enabled = false
"""


def test_the_embedded_model_gives_the_local_values_on_two_nodes(cluster, tmp_path):
    """Local and a two-node cluster agree on every deterministic value of the embedded model to 1e-5."""
    import numpy as np

    suite = tmp_path / "emb.toml"
    suite.write_text(EMBEDDED_SUITE)
    local = bench.run(suite, out=tmp_path / "local", progress=False)
    r = _cli(cluster.env, "--suite", suite, "--out", tmp_path / "ray", "--no-progress", "--engine", "ray",
             "--workers", "2", "--address", cluster.address, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / "ray" / "two-nodes-embedded.sqlite"
    cells = bench.read_table(db, "cells")
    assert len(set(cells[cells.kind == "explain"].host)) == 2
    keys = ["model", "image", "method", "backend", "metric"]
    a, b = deterministic_table(local), deterministic_table(db)
    joined = a.merge(b, on=keys, suffixes=("_local", "_ray"), how="outer", indicator=True)
    assert (joined["_merge"] == "both").all(), joined[joined["_merge"] != "both"][keys]
    measures = {m.split(".")[0].split("@")[0] for m in joined.metric}
    assert {"deletion_blur", "insertion_blur", "agree", "road"} <= measures, measures
    x, y = joined["value_local"].to_numpy(float), joined["value_ray"].to_numpy(float)
    both = ~(np.isnan(x) & np.isnan(y))
    np.testing.assert_allclose(y[both], x[both], rtol=1e-5, atol=1e-7)
