"""``engine="ray"``: the study's cells on long-lived Ray actors, on this machine or a cluster.

Each actor is a :class:`~cnnlens.bench.engine.Worker`: it loads a model once and runs many cells,
reading each shard's image files itself (decoding is spread over the workers; a shard's cells go
to the actor that read it last when it is free). The driver keeps
the plan, hands each actor at most two cells at a time (one running, one queued, so an actor is
never idle while the driver writes), and alone writes the store with what the actors return.

Faults: an actor that dies (killed, out of memory, a crash in a toolkit) is replaced by a new one
and its cells go back to the queue, to run on whichever actor is free next. Only the cell the actor
was running is charged an attempt: an actor executes its cells in the order they were handed to it,
after a ``ready`` call that proves its start-up finished, so the running cell is its oldest one,
and only once it was ready; the cell queued behind it, and every cell of an actor that died while
starting, go back uncharged. A cell that took its worker down :data:`MAX_ATTEMPTS` times is
recorded as an error (a rerun retries it). Workers that keep dying without finishing anything
(:data:`MAX_IDLE_DEATHS` per worker in a row) stop the study with one clear error. The driver's own
death loses nothing: every finished cell is in the store, and a rerun skips it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from cnnlens.bench.engine import Outcome, Worker, _error_text
from cnnlens.bench.suite import Suite
from cnnlens.errors import BackendError, BackendUnavailableError, ModelError, OptionError, install_hint

#: Times a cell may take its worker down with it before it is recorded as an error.
MAX_ATTEMPTS = 3

#: Worker deaths in a row, per worker, with no cell finished in between, before the study stops.
MAX_IDLE_DEATHS = 5

#: Cells handed to one actor at a time (one running, one queued behind it).
DEPTH = 2

INSTALL = install_hint("ray")


def require_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Make Ray use the loopback address for this node while a Ray starts or is joined.

    Ray binds its servers to the node's address, which it resolves to the machine's network
    interface unless Ray clusters are disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own
    switch, which makes it use the loopback address as on a laptop). The switch is set only for
    the call (the Ray processes started meanwhile inherit it) and then restored.
    """
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before_env, before_flag = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before_env


#: What a driver needs to join a cluster that uses Ray's token authentication.
AUTH_HELP = ("Ray clusters use token authentication: set RAY_AUTH_MODE=token and the cluster's token in "
             "RAY_AUTH_TOKEN or in the file ~/.ray/auth_token (RAY_AUTH_TOKEN_PATH names another file), "
             "the same on every node and on this driver")

#: Ray's notice that a Ray it starts uses token authentication: true, and not the user's to act on.
_NOTICES = ("Token authentication is enabled for this Ray cluster", "Token authentication is disabled")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what this process writes to its standard error (file descriptor 2) meanwhile.

    Ray's C++ client writes a warning line per retry there while it cannot reach a cluster, and
    its Python side a token notice; the caller decides what of it to show (the CLI's error must stay
    one line). The lines come in the yielded list when the block ends.
    """
    import sys
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            lines.extend(buf.read().decode("utf-8", "replace").splitlines())


def _replay(lines: list[str]) -> None:
    """Show captured standard-error lines again, without Ray's token notice."""
    import sys

    kept = [ln for ln in lines if not any(n in ln for n in _NOTICES)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def _auth_refused(exc: BaseException) -> bool:
    """Whether Ray refused the connection for its token authentication (anywhere in the chain)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e) \
                or "Authentication token is missing or incorrect" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _check_token(address: str) -> None:
    """Ask the cluster's GCS once whether it accepts this process's token, so a refusal is one clear
    error at once instead of Ray's 20 s of retries. Any other outcome is left to ``ray.init``; so is an
    address where nothing answers (Ray's client would wait 40 s for it)."""
    import socket

    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
    except ImportError:  # another Ray layout: ray.init reports it
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass
    except (OSError, ValueError):
        return
    try:
        GcsClient(address=address)
    except Exception as exc:
        if _auth_refused(exc):
            raise OptionError(f"the Ray cluster at '{address}' refused this driver's token; {AUTH_HELP}") from None


def start_local_ray(num_cpus: int, num_gpus: int = 0) -> str:
    """Start a Ray on this machine, reachable on the loopback interface only; returns its address.

    Ray's notice that it enabled token authentication is not shown: this Ray is the run's own, on
    loopback, and a line on standard error would break the CLI's one-line errors. A watchdog process
    (see :func:`_start_watchdog`) ends Ray's processes soon after this process dies, even by SIGKILL.
    """
    import logging

    ray = require_ray()
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notices.level
    notices.setLevel(logging.ERROR)
    before = _children()
    try:
        with _loopback():
            ctx = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
    finally:
        notices.setLevel(level)
    _start_watchdog(_ray_processes(ray) or _children() - before)
    return str(ctx.address_info["gcs_address"])


def join_ray(address: str) -> None:
    """Connect this process to a running Ray (``auto``, ``host:port`` or ``ray://host:port``).

    A cluster on this machine's loopback address (one :func:`start_local_ray` started) is joined
    as a loopback node too; otherwise Ray would wait for a node at the machine's network address.

    Raises:
        OptionError: The cluster refused this driver's token (Ray's token authentication); the
            message names the variables to set.
    """
    from urllib.parse import urlsplit

    ray = require_ray()
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    # Ray Client (ray://) takes the address alone; a driver on a node takes the logging settings.
    kwargs = {} if address.startswith("ray://") else \
        {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    # Ray's retry warnings (one line a second while it cannot connect) are not shown: a failure is one
    # error, with its reason; after a success, what Ray wrote is shown.
    with _captured_stderr() as lines:
        try:
            if "://" not in address and address != "auto":
                _check_token(address)
            with _loopback() if host in ("127.0.0.1", "localhost", "::1") else contextlib.nullcontext():
                ray.init(address=address, **kwargs)
        except Exception as exc:
            if _auth_refused(exc):
                raise OptionError(f"the Ray cluster at '{address}' refused this driver's token; {AUTH_HELP}") from None
            raise
    _replay(lines)


# --------------------------------------------------------------------------------------------
# The watchdog: a local Ray does not outlive its driver
# --------------------------------------------------------------------------------------------

#: Seconds between the watchdog's looks at the driver and the Ray processes under it.
WATCH_EVERY = 0.5

_WATCHDOG_CODE = """
import sys, time
import psutil
driver = psutil.Process(int(sys.argv[1]))
every = float(sys.argv[2])
roots = {int(p) for p in sys.argv[3:]}
known = {}
while True:
    gone = not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE
    # One scan of the process table per look: the Ray processes and every process under them.
    procs = {p.pid: p for p in psutil.process_iter(["ppid", "status"])}
    under = {}
    for p in procs.values():
        under.setdefault(p.info["ppid"], []).append(p)
    todo = [procs[r] for r in roots if r in procs and procs[r].info["status"] != psutil.STATUS_ZOMBIE]
    if not todo and not gone:
        sys.exit(0)  # Ray was shut down: nothing left to watch
    while todo:
        p = todo.pop()
        known.setdefault(p.pid, p)
        todo.extend(under.get(p.pid, []))
    if gone:
        break
    time.sleep(every)
for p in known.values():
    try:
        p.kill()  # psutil refuses a pid that now belongs to another process
    except psutil.Error:
        pass
"""

_watchdogs: list[Any] = []


def _ray_processes(ray: Any) -> set[int]:
    """The processes ``ray.init`` started in this process (GCS, raylet, monitors), from Ray's node
    record; empty where that record is not there (the caller falls back to the new children)."""
    try:
        node = ray._private.worker._global_node
        return {int(info.process.pid) for infos in node.all_processes.values() for info in infos}
    except (AttributeError, TypeError):
        return set()


def _children() -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process().children()}
    except psutil.Error:
        return set()


def _start_watchdog(roots: set[int]) -> None:
    """Start a small process that kills Ray's processes (``roots``, the ones ``ray.init`` started, and
    every process under them: raylet, agents, workers) when this driver dies.

    Ray ties its GCS and raylet to the driver (the kernel kills them with it), but its agents and
    workers outlive a SIGKILLed driver for many seconds, some until they give up on the GCS. The
    watchdog looks every :data:`WATCH_EVERY` seconds, in its own session (a signal to the driver's
    process group does not reach it), and exits by itself once Ray's processes are gone (a clean
    ``ray.shutdown``).
    """
    import subprocess
    import sys

    if not roots:
        return
    proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG_CODE, str(os.getpid()), str(WATCH_EVERY),
                             *map(str, sorted(roots))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _watchdogs.append(proc)


class RayExecutor:
    """Runs cells on Ray actors; the driver's loop submits cells and polls for outcomes.

    Args:
        suite: The validated suite (each actor loads its models from it).
        device: The suite's device; ``cuda`` makes each actor ask Ray for ``gpus_per_worker`` GPUs.
        workers: Actors to start (default: the CPUs Ray has, divided by one per actor).
        address: ``None`` starts a local Ray on 127.0.0.1 and shuts it down in :meth:`close`;
            ``"auto"`` or ``"ray://host:port"`` joins a running cluster (left running).
        gpus_per_worker: GPUs per actor on ``cuda`` (fractions share a card).
    """

    def __init__(self, suite: Suite, device: torch.device, workers: int | None, address: str | None,
                 gpus_per_worker: float | None, threads: int | None = None) -> None:
        ray = require_ray()
        self.ray = ray
        self.suite = suite
        self.started = False
        if not ray.is_initialized():
            try:
                if address is None:
                    n = max(workers or 1, os.cpu_count() or 1)
                    gpus = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
                    start_local_ray(n, gpus)
                else:
                    join_ray(address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at '{address}'" if address else "a local Ray"
                raise OptionError(f"could not start or join {where}: {str(exc).splitlines()[0]}") from None
            self.started = True
        res = ray.cluster_resources()
        cpus = int(res.get("CPU", 1))
        self.workers = workers or max(1, cpus)
        cpus_each = max(1, cpus // self.workers) if address is None else 1
        opts: dict[str, Any] = {"num_cpus": cpus_each}
        if device.type == "cuda":
            gpus = float(res.get("GPU", 0))
            if gpus <= 0:
                self.close()
                raise ModelError("device 'cuda' was asked for but the Ray cluster has no GPU; use --device cpu")
            opts["num_gpus"] = float(gpus_per_worker) if gpus_per_worker else min(1.0, gpus / self.workers)
        self.threads = threads or suite.threads or cpus_each
        self.device = str(device)
        self.actor_cls = ray.remote(max_restarts=0)(Worker).options(**opts)
        #: actor -> the reference of its ``ready`` call (done once its start-up finished)
        self.ready: dict[Any, Any] = {}
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self.load: dict[Any, int] = dict.fromkeys(self.actors, 0)
        #: task reference -> (cell index, kind, spec, records, targets, actor, attempt, submission number)
        self.inflight: dict[Any, tuple[int, str, dict[str, Any], list[Any], dict[str, int], Any, int, int]] = {}
        self.retry: list[tuple[int, str, dict[str, Any], list[Any], dict[str, int], int]] = []
        #: dead actor -> the reference of the cell it was running (None: it died starting up or idle)
        self.dead: dict[Any, Any] = {}
        self.deaths = 0
        self.idle_deaths = 0
        self.finished = 0
        self.submitted = 0
        self.shard: dict[Any, str | None] = {}

    def _new_actor(self) -> Any:
        actor = self.actor_cls.remote(self.suite, self.device, self.threads)
        self.ready[actor] = actor.ready.remote()
        return actor

    def _was_ready(self, actor: Any) -> bool:
        """Whether the actor finished starting up (its ``ready`` call returned) before it died."""
        ref = self.ready.get(actor)
        if ref is None:
            return False
        done, _ = self.ray.wait([ref], timeout=0)
        if not done:
            return False
        try:
            self.ray.get(ref)
        except Exception:  # any failure of ``ready`` means the start-up did not finish
            return False
        return True

    def _running(self, actor: Any) -> Any:
        """The cell reference the actor was running when it died: its oldest one, if it had started."""
        if not self._was_ready(actor):
            return None
        mine = [(v[7], ref) for ref, v in self.inflight.items() if v[5] is actor]
        return min(mine, key=lambda t: t[0])[1] if mine else None

    def free(self) -> bool:
        self._drain_retries()
        return any(n < DEPTH for n in self.load.values())

    def busy(self) -> bool:
        return bool(self.inflight or self.retry)

    def submit(self, i: int, kind: str, spec: dict[str, Any], records: list[Any], targets: dict[str, int],
               attempt: int = 1) -> None:
        # Prefer the actor that last read this shard (its pixel cache holds it), else the least loaded.
        shard = spec["images"][0] if spec.get("images") else None
        free = [a for a in self.load if self.load[a] < DEPTH] or list(self.load)
        warm = [a for a in free if shard is not None and self.shard.get(a) == shard]
        actor = warm[0] if warm else min(free, key=lambda a: self.load[a])
        ref = actor.run.remote(kind, spec, records, targets)
        self.load[actor] += 1
        self.shard[actor] = shard
        self.submitted += 1
        self.inflight[ref] = (i, kind, spec, records, targets, actor, attempt, self.submitted)

    def _drain_retries(self) -> None:
        while self.retry and any(n < DEPTH for n in self.load.values()):
            i, kind, spec, records, targets, attempt = self.retry.pop(0)
            self.submit(i, kind, spec, records, targets, attempt)

    def poll(self, timeout: float = 1.0) -> list[tuple[int, Outcome]]:
        """Outcomes of the cells that finished (waits up to ``timeout`` seconds for the first)."""
        ray = self.ray
        self._drain_retries()
        if not self.inflight:
            return []
        done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        if done:  # take every other finished one too, without waiting
            more, _ = ray.wait([r for r in self.inflight if r not in done], num_returns=len(self.inflight) - 1,
                               timeout=0) if len(self.inflight) > 1 else ([], [])
            done = done + more
        out: list[tuple[int, Outcome]] = []
        # In submission order: an actor's finished cells come before the one it died running.
        for ref in sorted(done, key=lambda r: self.inflight[r][7]):
            i, kind, spec, records, targets, actor, attempt, _n = self.inflight[ref]
            try:
                outcome = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ActorUnavailableError) as exc:
                if actor not in self.dead:
                    self.dead[actor] = self._running(actor)
                    self._replace(actor)
                    if self.dead[actor] is None:
                        self.idle_deaths += 1
                del self.inflight[ref]
                limit = MAX_IDLE_DEATHS * self.workers
                if self.deaths > limit and (not self.finished or self.idle_deaths > limit):
                    raise BackendError(
                        f"Ray workers keep dying without finishing a cell ({self.deaths} deaths, {self.finished} "
                        f"cells finished; last: {str(exc).splitlines()[0][:300]}); check that cnnlens and the "
                        "suite's models import on the cluster's nodes and that the workers have memory enough, "
                        "or run with --engine local; finished cells are kept and a rerun resumes") from None
                if self.dead[actor] is not ref:  # queued behind the running cell, or the actor never started
                    self.retry.append((i, kind, spec, records, targets, attempt))
                elif attempt >= MAX_ATTEMPTS:
                    why = f"its worker died running it, {attempt} times ({type(exc).__name__})"
                    out.append((i, Outcome("error", why, [], [], {}, 0.0, 0.0)))
                else:
                    self.retry.append((i, kind, spec, records, targets, attempt + 1))
                continue
            except ray.exceptions.RayTaskError as exc:  # the worker caught method errors; this is cnnlens's
                outcome = Outcome("error", _error_text(exc.cause if exc.cause else exc), [], [], {}, 0.0, 0.0)
            del self.inflight[ref]
            if actor in self.load:
                self.load[actor] -= 1
            self.finished += 1
            self.idle_deaths = 0
            out.append((i, outcome))
        self._drain_retries()
        return out

    def _replace(self, actor: Any) -> None:
        """Swap a dead actor for a fresh one (its other queued cells come back as failures too)."""
        if actor not in self.load:
            return
        self.deaths += 1
        del self.load[actor]
        self.ready.pop(actor, None)
        self.actors = [a for a in self.actors if a is not actor]
        fresh = self._new_actor()
        self.actors.append(fresh)
        self.load[fresh] = 0

    def close(self) -> None:
        ray = self.ray
        for a in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # an actor already gone is fine
                ray.kill(a)
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()


__all__ = ["DEPTH", "INSTALL", "MAX_ATTEMPTS", "MAX_IDLE_DEATHS", "RayExecutor", "join_ray", "require_ray", "start_local_ray"]
