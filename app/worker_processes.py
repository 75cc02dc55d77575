"""`serve` with several worker processes, each listening on a socket of its own.

uvicorn's own workers share one listening socket, and the worker that wakes first
accepts every connection waiting: a burst of keep-alive connections (a load test, a
proxy's pool) can all land on one process while the others idle. Here each worker binds
the address with SO_REUSEPORT, and the kernel spreads new connections over the workers.

The parent only supervises: it forwards SIGINT and SIGTERM (as SIGTERM, so a worker that
already got the terminal's SIGINT shuts down gracefully rather than being forced) and
SIGHUP (each worker reloads its changed index files, as a single process does), and
starts a worker again if one dies after it was serving (one that dies before it listens
stops the server with an error: it would fail again).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from typing import Any

from actscope.indexer.errors import ActscopeError

log = logging.getLogger("actscope.app")

STOP_TIMEOUT_S = 30.0


def supported() -> bool:
    """Whether the kernel spreads connections over SO_REUSEPORT sockets (Linux does;
    other systems accept the option without balancing)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT (not yet listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ActscopeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _worker(host: str, port: int, options: dict[str, Any], ready: Any) -> None:
    """One worker process: the app of the ACTSCOPE_* variables on its own socket; sets
    `ready` once it listens."""
    import uvicorn

    from actscope.app.server import app_from_env

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                ready.set()

    # Until the app's start-up listens for it, SIGHUP would end this process: a worker
    # still starting opens the files the paths name now anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = listening_socket(host, port)
    Server(uvicorn.Config(app_from_env(sighup=True), **options)).run(sockets=[sock])


def run_workers(n: int, host: str, port: int, options: dict[str, Any]) -> None:
    """Serve with `n` worker processes until SIGINT or SIGTERM (uvicorn options)."""
    listening_socket(host, port).close()  # a port in use: one clear error, before any worker starts
    context = multiprocessing.get_context("spawn")
    ready: list[Any] = [None] * n  # by slot: the event its worker sets once it listens
    workers: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def start(slot: int) -> multiprocessing.process.BaseProcess:
        ready[slot] = context.Event()
        proc = context.Process(target=_worker, args=(host, port, options, ready[slot]), name=f"actscope-worker-{slot}")
        proc.start()
        return proc

    def forward(sig: int, _frame: Any = None) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM if sig != signal.SIGHUP else signal.SIGHUP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for slot in range(n):
            workers.append(start(slot))
        while not stopping:
            wait([proc.sentinel for proc in workers], timeout=1.0)
            for slot, proc in enumerate(workers):
                if proc.is_alive() or stopping:
                    continue
                if not ready[slot].is_set():  # its error (e.g. an index it cannot read) would repeat
                    forward(signal.SIGTERM)
                    raise ActscopeError(f"a server worker process failed to start (exit code {proc.exitcode})")
                log.warning("actscope: worker %s ended (exit code %s); starting another", proc.pid, proc.exitcode)
                workers[slot] = start(slot)
    finally:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
