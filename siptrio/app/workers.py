"""``siptrio serve --workers N``: N worker processes behind the same ports, supervised.

One Python process uses one core. The supervisor starts N ``siptrio serve``
processes that bind the same SIP ports with SO_REUSEPORT (the kernel spreads
datagrams and connections across them) and share the Redis location store; each is
a node of the cluster with its own internal address, so a request landing on one
worker reaches a client connected to another. A worker that dies is started again;
SIGINT or SIGTERM stops them all (each closes its WebSockets, flushes its store);
SIGHUP is passed on to each, which reloads its config.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial

import trio

from .config import Config

__all__ = ["supervise"]

log = logging.getLogger("siptrio.workers")

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_SECONDS = 10.0  # a worker that ran this long is healthy again: reset its backoff


def _free_port(host: str, kind: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_overrides(config: Config, count: int, supervisor_pid: int) -> list[list[str]]:
    """The extra ``--set`` arguments of each worker.

    Ports given as 0 are chosen now, once, so that every worker binds the same one;
    the admin API and the control socket cannot be shared, so each worker gets its
    own (the next port up, and the socket path with ``.w<i>``), and so does the
    internal address other nodes reach a worker on.
    """
    host = config.sip.listen_addr[0]
    common: dict[str, str] = {}
    sip = config.sip
    if sip.udp_enable and sip.tcp_enable and sip.udp_port == 0 and sip.tcp_port == 0:
        port = _free_port(host, socket.SOCK_STREAM)
        common["sip.udp_port"] = common["sip.tcp_port"] = str(port)
    else:
        if sip.udp_enable and sip.udp_port == 0:
            common["sip.udp_port"] = str(_free_port(host, socket.SOCK_DGRAM))
        if sip.tcp_enable and sip.tcp_port == 0:
            common["sip.tcp_port"] = str(_free_port(host, socket.SOCK_STREAM))
    if config.tls.enable and config.tls.listen_port == 0:
        common["sip_tls.listen_port"] = str(_free_port(host, socket.SOCK_STREAM))
    ws = config.websocket
    if ws.enable and ws.listen_port == 0:
        common["sip_websocket.listen_port"] = str(_free_port(host, socket.SOCK_STREAM))
    if ws.wss_enable and ws.wss_listen_port == 0:
        common["sip_websocket.wss_listen_port"] = str(_free_port(host, socket.SOCK_STREAM))
    base = config.cluster.node_id or f"{socket.gethostname()}-{supervisor_pid}"
    out = []
    for i in range(count):
        mine = dict(common)
        mine["cluster.node_id"] = f"{base}-w{i}"
        if config.cluster.internal_port != 0:
            mine["cluster.internal_port"] = str(config.cluster.internal_port + i)
        if config.admin.enable and config.admin.listen_port != 0:
            mine["admin.listen_port"] = str(config.admin.listen_port + i)
        if config.control.enable and i > 0:
            mine["control.socket"] = f"{config.control.socket}.w{i}"
        out.append([item for k, v in mine.items() for item in ("--set", f"{k}={v}")])
    return out


async def _run_worker(
    index: int, argv: list[str], running: dict[int, trio.Process] | None = None
) -> None:
    """Run worker ``index`` and start it again when it dies; ``running`` holds its
    process while it runs."""
    failures = 0
    while True:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            # on cancel run_process sends SIGTERM (SIGKILL 5 s later): the worker stops
            # cleanly, closing its flows and leaving the cluster
            proc = await nursery.start(
                partial(trio.run_process, [sys.executable, "-m", "siptrio", *argv], check=False)
            )
            log.info("worker %d started, pid %d", index, proc.pid)
            if running is not None:
                running[index] = proc
        ran = trio.current_time() - started
        failures = 0 if ran >= STABLE_SECONDS else failures + 1
        delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
        log.error(
            "worker %d exited with status %s after %.1f s; starting it again in %g s",
            index,
            proc.returncode,
            ran,
            delay,
        )
        await trio.sleep(delay)


async def _supervise(argvs: list[list[str]], reopen_log: Callable[[], None]) -> None:
    running: dict[int, trio.Process] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            for i, argv in enumerate(argvs):
                nursery.start_soon(_run_worker, i, argv, running)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reopen_log()  # its own log file, moved by logrotate too
                    live = [p for p in running.values() if p.returncode is None]
                    log.info("received SIGHUP, passing it to %d workers", len(live))
                    for proc in live:
                        proc.send_signal(signal.SIGHUP)
                    continue
                log.info(
                    "received %s, stopping %d workers", signal.Signals(signum).name, len(argvs)
                )
                nursery.cancel_scope.cancel()  # each worker gets SIGTERM and stops cleanly
                return


def supervise(
    config: Config,
    count: int,
    serve_argv: Sequence[str],
    *,
    reopen_log: Callable[[], None] = lambda: None,
) -> int:
    """Run ``count`` workers of ``siptrio serve <serve_argv>`` until a signal."""
    per_worker = worker_overrides(config, count, os.getpid())
    argvs = [
        ["serve", *serve_argv, *extra, "--worker-index", str(i)]
        for i, extra in enumerate(per_worker)
    ]
    trio.run(_supervise, argvs, reopen_log)
    return 0
