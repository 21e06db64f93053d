"""Several server processes on one port (`AUSCULT_WORKERS` > 1): a small supervisor.

One event loop spends about 1-2 ms of CPU per request on HTTP alone, which caps one
process below what the scoring core does on two cores. The supervisor binds the port,
imports the application's modules once, and forks `workers` processes. Each worker is the
single-process service: its own uvicorn server with service/serving/server.py's limits, its own
registry, threads and limits.

- Sockets: one listening socket per worker on the same port (SO_REUSEPORT), so the kernel
  spreads new connections evenly over the workers. With one shared socket the first worker
  to wake accepts a whole burst (16 connections opened at once went 112:16). A socket
  listens once its worker has started; it stays open in the supervisor while its worker
  is replaced (its queued connections wait for the new one). Where SO_REUSEPORT is
  missing, the workers share one socket.
- Metrics: prometheus_client's multiprocess mode in a private temporary folder, made
  before prometheus_client is imported and removed at exit; /metrics on any worker adds
  up all of them (service/observability.py). A worker's live gauges go when it exits.
- Reload: SIGHUP to the supervisor is sent on to every worker, which re-scans the
  artifacts folder. A reload through the API on one worker sends SIGHUP to the supervisor
  and answers once every worker has re-scanned (service/serving/peers.py, in a private
  folder like the metrics'). AUSCULT_WATCH polls in every worker.
- SIGTERM or SIGINT: sent on to every worker, which stops accepting and finishes what is in
  flight (up to `GRACEFUL_S`); one still running `KILL_AFTER_S` later is killed. Workers
  die with the supervisor (PR_SET_PDEATHSIG), so none is left behind, and then remove the
  metrics folder themselves.
- A worker that exits before it served (its start-up failed, e.g. a bad default model)
  stops the whole service with its exit status; one that exits later is replaced.
- Log lines of a worker carry `worker` (1..N) and `pid`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.serving.peers import WorkerPeers

log = logging.getLogger("auscult.workers")

GRACEFUL_S = 10  # uvicorn's timeout_graceful_shutdown in each worker
KILL_AFTER_S = GRACEFUL_S + 5
RESTART_PAUSE_S = 1.0  # between the exit of a worker that lived < CRASH_LOOP_S and its replacement
CRASH_LOOP_S = 10.0
_SUPERVISOR_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    number: int
    pid: int
    ready_fd: int  # read end of a pipe the worker writes one byte to once it serves
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)


def prepare_multiprocess_metrics() -> str:
    """A private folder for the workers' metric files, set as PROMETHEUS_MULTIPROC_DIR.
    Call before anything imports prometheus_client (it reads the variable on import)."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess folder")
    path = tempfile.mkdtemp(prefix="auscult-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def serve_workers(
    settings: Any, host: str, port: int, workers: int, uvicorn_kwargs: dict[str, Any]
) -> int:
    """Run `workers` server processes on host:port until SIGTERM/SIGINT; the exit status.

    `uvicorn_kwargs` are the keyword arguments of `uvicorn.Config` besides app/host/port."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or prepare_multiprocess_metrics()
    # the application's modules load once here and are shared with the forked workers
    import uvicorn  # noqa: F401

    from service.app import create_app  # noqa: F401

    socks = listening_sockets(host, port, workers)
    peers_dir = tempfile.mkdtemp(prefix="auscult-reload-")
    supervisor = _Supervisor(settings, socks, workers, uvicorn_kwargs, peers_dir)
    try:
        return supervisor.run()
    finally:
        for sock in socks:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(peers_dir, ignore_errors=True)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to host:port with SO_REUSEPORT (one per worker), or one shared
    socket where the platform lacks it. Bound, not listening: a worker's uvicorn listens
    once its start-up is done, so until then the kernel gives it no connection (the first
    ready worker takes them all, and before any is ready a connection is refused, as with
    one process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    if reuse_port:
        # SO_REUSEPORT would let these join any other process's SO_REUSEPORT socket on
        # the port (another auscult, say) and silently share its connections: first claim
        # the port without it, which fails while anything else holds it
        port = claim_port(host, port)
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one it got
            sock.set_inheritable(True)  # no listen(): the worker's server listens once ready
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def claim_port(host: str, port: int) -> int:
    """Bind host:port once without SO_REUSEPORT and let it go again; the port bound (the
    one the kernel chose for port 0). OSError (EADDRINUSE) when another process's socket
    listens on it, with or without SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR, as the real sockets: a restart must not wait for the last run's
        # TIME_WAIT connections; it still fails against any socket that listens
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def describe_bind_error(host: str, port: int, error: OSError) -> str:
    """One line for a port that cannot be bound."""
    if error.errno == errno.EADDRINUSE:
        return (
            f"auscult: port {port} on {host} is already in use by another process; "
            "stop it or choose another --port"
        )
    if error.errno == errno.EACCES:
        return f"auscult: no permission to listen on port {port} on {host}; use a port above 1023"
    reason = error.strerror or str(error)
    return f"auscult: cannot listen on {host}:{port}: {reason}"


class _Supervisor:
    def __init__(
        self,
        settings: Any,
        socks: list[socket.socket],
        count: int,
        uvicorn_kwargs: dict[str, Any],
        peers_dir: str,
    ) -> None:
        self.settings = settings
        self.peers_dir = peers_dir
        self.socks = socks
        self.count = count
        self.uvicorn_kwargs = uvicorn_kwargs
        self.workers: dict[int, _Worker] = {}  # pid → worker
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)  # taken by sigtimedwait
        print(
            f"auscult: {self.count} workers on {self.socks[0].getsockname()}, supervisor pid "
            f"{os.getpid()}, metrics folder {os.environ['PROMETHEUS_MULTIPROC_DIR']}",
            file=sys.stderr,
            flush=True,
        )
        for number in range(1, self.count + 1):
            self._spawn(number)
        deadline: float | None = None
        while self.workers:
            info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, 0.2)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    self._stop_all()
                    deadline = time.monotonic() + KILL_AFTER_S
            elif info is not None and info.si_signo == signal.SIGHUP and not self.stopping:
                self._send_all(signal.SIGHUP)
            self._check_ready()
            self._reap()
            if deadline is not None and time.monotonic() > deadline:
                self._send_all(signal.SIGKILL)
                deadline = None
        return self.status

    def _spawn(self, number: int) -> None:
        read_fd, write_fd = os.pipe()
        supervisor = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            code = 1
            try:
                sock = self.socks[(number - 1) % len(self.socks)]
                peers = WorkerPeers(Path(self.peers_dir), self.count, number, _notify(supervisor))
                code = _worker_main(
                    number, self.settings, sock, write_fd, self.uvicorn_kwargs, peers
                )
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                logging.getLogger("auscult.workers").exception("worker_failed")
            finally:
                with contextlib.suppress(Exception):
                    from service.observability import stop_logging

                    stop_logging()  # os._exit skips atexit: write the queued log lines
                if os.getppid() != supervisor:  # it was killed: nobody else will clean up
                    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
                    shutil.rmtree(self.peers_dir, ignore_errors=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.workers[pid] = _Worker(number, pid, read_fd)

    def _check_ready(self) -> None:
        for w in self.workers.values():
            self._check_one(w)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self._check_one(w)
            os.close(w.ready_fd)
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # its live gauges no longer count
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                continue
            if not w.ready:  # start-up failed: it would fail again
                print(
                    f"auscult: worker {w.number} exited with {code} before it served; stopping",
                    file=sys.stderr,
                    flush=True,
                )
                self.status = code if code > 0 else 1
                self._stop_all()
                continue
            print(
                f"auscult: worker {w.number} (pid {pid}) exited with {code}; starting another",
                file=sys.stderr,
                flush=True,
            )
            if time.monotonic() - w.started_at < CRASH_LOOP_S:
                time.sleep(RESTART_PAUSE_S)  # it keeps dying: do not spin
            self._spawn(w.number)  # else at once: its socket's queued connections wait

    def _check_one(self, w: _Worker) -> None:
        if not w.ready:
            with contextlib.suppress(BlockingIOError, OSError):
                w.ready = os.read(w.ready_fd, 1) == b"1"

    def _stop_all(self) -> None:
        self.stopping = True
        self._send_all(signal.SIGTERM)

    def _send_all(self, sig: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _notify(supervisor: int) -> Callable[[], None]:
    def send_hup() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGHUP)  # sent on to every worker

    return send_hup


def _worker_main(
    number: int,
    settings: Any,
    sock: socket.socket,
    ready_fd: int,
    uvicorn_kwargs: dict[str, Any],
    peers: WorkerPeers,
) -> int:
    """One worker: the service's app on uvicorn, serving the inherited socket."""
    supervisor = os.getppid()
    _die_with_parent()
    # SIGHUP's default ends the process: until the app's reloader takes it, note it and
    # re-scan once started (the bundles may have been read before what it announced).
    # uvicorn raises SIGTERM/SIGINT again once it has drained: end with status 0 then,
    # through the caller (which writes the queued log lines), not by the signal's default.
    missed_hup = False

    def hup_while_starting(sig: int, frame: Any) -> None:
        nonlocal missed_hup
        missed_hup = True

    signal.signal(signal.SIGHUP, hup_while_starting)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if os.getppid() != supervisor:  # the supervisor died before PR_SET_PDEATHSIG was set
        return 1

    import uvicorn

    from service.app import create_app
    from service.observability import tag_log_lines

    tag_log_lines(worker=number, pid=os.getpid())
    app = create_app(settings)

    app.state.reloader.peers = peers

    class WorkerServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            asked = peers.requested()  # the lifespan loads the bundles after this
            await super().startup(sockets)
            if self.started:
                peers.scanned(asked)
                os.write(ready_fd, b"1")
                os.close(ready_fd)
                if missed_hup:  # the bundles may have been read before the change: re-scan
                    os.kill(os.getpid(), signal.SIGHUP)

    config = uvicorn.Config(app, **uvicorn_kwargs)
    WorkerServer(config).run(sockets=[sock])
    return 0


def _exit_quietly(sig: int, frame: Any) -> None:
    raise SystemExit(0)


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux), so no worker outlives it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
