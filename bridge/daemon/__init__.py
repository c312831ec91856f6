"""``akobridge serve``: one process that owns a state dir, serves the API and drives every
workflow of it.

Threads: the *main loop* (this module) runs the bridge cycles, publishes state changes and
pings the systemd watchdog only when the cycle and the API loop both made progress; uvicorn
serves the API on its own thread and event loop, and one writer thread stores the AkoFlow
submissions in group commits (:mod:`bridge.intake`); each cluster's rounds run on the cluster's
own thread (:mod:`bridge.runner`); webhook delivery has a thread per destination; the spool
scan and the metrics refresh are APScheduler jobs. SIGTERM/SIGINT stop cleanly (Slurm jobs
keep running and are picked up after a restart), SIGHUP reloads the cluster configs. Peak
cron triggers are jobs of the same scheduler, rebuilt from the store at start
(:mod:`bridge.peak.triggers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from bridge import config as paths
from bridge.api.app import ApiContext, create_app
from bridge.changes import ChangeFeed
from bridge.daemon.config import DaemonConfig, DaemonConfigError, Listener
from bridge.daemon.metrics import BridgeCollector
from bridge.owner import StateDirLock
from bridge.peak.triggers import CronTriggers
from bridge.runner import Bridge
from bridge.service import Service, ServiceError
from bridge.store import Checkpointer, Store
from runtimes.config import ClusterConfigError, Clusters

log = structlog.get_logger("akobridge.daemon")

API_STALL_S = 10.0
"""The API loop counts as stuck when its heartbeat is older than this."""


PRUNE_EVERY_H = 6
"""Hours between two prunes of Peak executions older than 90 days."""
SWITCH_INTERVAL_S = 0.001
"""How long a thread holds the interpreter before one that waits gets it (Python's default,
5 ms, added about that much to each API request while the bridge loop was busy)."""
GC_THRESHOLDS = (1_000, 10, 1_000_000)
"""The cyclic collector's thresholds in the daemon (Python's are 700, 10, 10). Young and
middle collections stay small, so each pause is short: every daemon keeps a few dozen
objects per queued workflow (parsed specs, planner records), and a young collection walks
what was made since the last one — at 50,000 that was a 26-40 ms pause, every 600
submissions of a stream. Full collections (every long-lived object: 0.3-0.4 s with ~25,000
queued) never start by themselves: :class:`FullCollections` runs them when the daemon is
quiet."""
DELIVERY_IDLE_S = 0.5
"""The webhook loop reads an empty outbox this often (each cycle that changed something
pokes it at once)."""
FULL_GC_QUIET_S = 2.0
"""A full collection runs once nothing woke or changed the loop for this long …"""
FULL_GC_EVERY_S = (60.0, 900.0)
"""… at most once a minute, and at the latest every 15 minutes even under load (cyclic
garbage that outlived the young collections is freed then)."""
CYCLE_GAP_S = 0.02
"""Shortest time from the start of one cycle to the start of the next (at most 50 a second)."""
WAKE_GAP_S = 0.1
"""The same after a cycle that changed nothing when a request (a submission, a cancel) woke
the loop: a stream of submissions is planned ten times a second, not fifty — each pass reads
every RUNNING workflow, thousands when many queue, and took the CPU the requests needed.
Changes found by the rounds (a job's end: its dependants, its webhook) still wait only
:data:`CYCLE_GAP_S`, and a loop idle for longer than this plans a submission at once."""


def pause_s(changed: bool, woken: bool, began: float, now: float) -> float:
    """How long the loop waits before its next cycle, which began at ``began`` (monotonic s):
    the rest of :data:`CYCLE_GAP_S` after a cycle that changed something or found nothing to
    wake for, the rest of :data:`WAKE_GAP_S` after a wake-up by a request (nothing when the
    idle wait alone took longer)."""
    gap = WAKE_GAP_S if woken and not changed else CYCLE_GAP_S
    return max(0.0, gap - (now - began))


class FullCollections:
    """Full collections of the cyclic collector at quiet moments (see :data:`GC_THRESHOLDS`):
    a pause of tenths of a second with tens of thousands queued lands between requests, not
    in the middle of a stream of them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._busy_at = self._full_at = clock()

    def after_cycle(self, busy: bool) -> bool:
        """Note one loop iteration (``busy``: a request woke it or the cycle changed
        something); collect if it is time. Whether a collection ran."""
        now = self.clock()
        if busy:
            self._busy_at = now
        since = now - self._full_at
        due = since >= FULL_GC_EVERY_S[1] or (
            since >= FULL_GC_EVERY_S[0] and now - self._busy_at >= FULL_GC_QUIET_S)
        if not due:
            return False
        began = time.perf_counter()
        found = gc.collect()
        self._full_at = self.clock()
        log.debug("full collection", found=found, ms=round((time.perf_counter() - began) * 1e3))
        return True


class ServeError(RuntimeError):
    """The daemon cannot start (message says why)."""


@dataclass
class Bound:
    """The sockets the API listens on, and how a client reaches them."""

    sockets: list[socket.socket] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    tokenless_ports: set[int] = field(default_factory=set)

    @property
    def client_address(self) -> str | None:
        """The address recorded for clients: the unix socket if there is one."""
        unix = [a for a in self.addresses if a.startswith("unix:")]
        choices = unix or self.addresses
        return choices[0] if choices else None


def _bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServeError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a stale socket from a process that died
        else:
            raise ServeError(f"{path}: another process is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(256)
    sock.setblocking(False)
    return sock


def bind(cfg: DaemonConfig) -> Bound:
    """Open every listener (so a port in use fails before anything starts)."""
    bound = Bound()
    try:
        for lst in cfg.api.listen:
            if lst.is_unix:
                bound.sockets.append(_bind_unix(lst.path))
                bound.addresses.append(lst.url)
                continue
            family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
            try:
                sock = socket.create_server((lst.host, lst.port), family=family, backlog=1024,
                                            reuse_port=False)
            except OSError as exc:
                raise ServeError(f"cannot listen on {lst.url}: {exc.strerror or exc}") from None
            # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP; without
            # it every reply (headers, then body) waits ~40 ms for the client's delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            host = f"[{lst.host}]" if ":" in lst.host else lst.host
            bound.sockets.append(sock)
            bound.addresses.append(f"http://{host}:{port}")
            if lst.loopback and cfg.api.token_file is None:
                bound.tokenless_ports.add(port)
    except BaseException:
        for s in bound.sockets:
            s.close()
        raise
    return bound


class ApiThread(threading.Thread):
    """uvicorn on its own event loop; ``beat`` is refreshed by a task on that loop."""

    def __init__(self, app: Any, sockets: list[socket.socket], ctx: ApiContext) -> None:
        super().__init__(name="akb-api", daemon=True)
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_keep_alive=30, timeout_graceful_shutdown=5))
        self.sockets = sockets
        self.ctx = ctx
        self.beat = time.monotonic()
        self.error: BaseException | None = None

    def run(self) -> None:
        async def main() -> None:
            self.ctx.hub.bind(asyncio.get_running_loop())

            async def heartbeat() -> None:
                while True:
                    self.beat = time.monotonic()
                    await asyncio.sleep(1.0)

            task = asyncio.create_task(heartbeat())
            try:
                await self.server.serve(sockets=self.sockets)
            finally:
                task.cancel()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the main loop
            self.error = exc

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def alive(self) -> bool:
        return self.is_alive() and time.monotonic() - self.beat < API_STALL_S

    def stop(self, timeout: float = 8.0) -> None:
        self.server.should_exit = True
        self.join(timeout)


class Daemon:
    """Everything ``serve`` runs; :meth:`run` returns the exit code."""

    def __init__(self, cfg: DaemonConfig, state_dir: Path | None = None,
                 listen: list[Listener] | None = None) -> None:
        if listen:
            cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={
                "listen": tuple(listen)})})
        self.cfg = cfg
        self.warnings = cfg.check()
        self.state_dir = state_dir or paths.state_dir(cfg.state_dir)
        self.clusters_dir = paths.clusters_dir(cfg.clusters_dir)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()
        self._last_cycle = time.monotonic()
        self._spool: Any = None

    # -- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested.set()
        else:
            self.stop_requested.set()
        self.wake.set()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- the parts ------------------------------------------------------------------------------
    def _clusters(self) -> Clusters:
        try:
            return Clusters.from_dir(self.clusters_dir)
        except (ClusterConfigError, OSError) as exc:
            raise DaemonConfigError(f"clusters dir {self.clusters_dir}: {exc}") from None

    def readiness(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ready": True, "store": "ok", "clusters": {}}
        try:
            probe = Store(self.store.path)
            probe.db.execute("SELECT 1").fetchone()
            probe.close()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report.update(ready=False, store=f"error: {exc}")
        bridge = self.bridge
        for cfg in bridge.clusters.configs():  # each once; its aliases listed with it
            name = cfg.name
            entry: dict[str, Any]
            if name in bridge.unreachable:
                entry = {"reachable": False, "reason": bridge.unreachable[name]}
                report["ready"] = False
            elif name in bridge.runtimes:
                entry = {"reachable": True}
            else:
                entry = {"reachable": None, "reason": "not used yet"}
            if cfg.aliases:
                entry["aliases"] = list(cfg.aliases)
            report["clusters"][name] = entry
        stalled = time.monotonic() - self._last_cycle
        if stalled > API_STALL_S * 3:
            report.update(ready=False, loop=f"no cycle for {stalled:.0f} s")
        return report

    def run(self, pidfile: Path | None = None) -> int:
        from bridge.notify.systemd import Notifier

        notifier = Notifier.from_env()
        clusters = self._clusters()
        self.catalogue = self.cfg.catalogue(clusters.names())  # peak.instance_types' clusters
        bound = bind(self.cfg)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        pid_ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if pidfile is not None:
            from bridge.pidfile import PidFile
            pid_ctx = PidFile(pidfile)
        with pid_ctx, StateDirLock(self.state_dir, "akobridge serve",
                                   api=bound.client_address):
            checkpointer = Checkpointer(self.state_dir / paths.DB_NAME).start()
            try:
                self.store = Store(self.state_dir / paths.DB_NAME)
                self.bridge = Bridge(self.store, clusters, self.state_dir)
                self.bridge.raise_refusals = False
                self.bridge.secrets = self.cfg.peak_secrets()  # mode checked; again on SIGHUP
                return self._serve(bound, notifier)
            finally:
                checkpointer.stop()

    def _serve(self, bound: Bound, notifier: Any) -> int:
        from bridge.notify import webhooks

        settings = webhooks.WebhookSettings.from_daemon(self.cfg)
        policy = settings.policy
        service = Service(self.bridge, url_check=policy.check,
                          allowed_roots=self.cfg.staging.allowed_roots, wake=self.wake.set)
        delivery = webhooks.DeliveryLoop(self.store.path, settings, idle_s=DELIVERY_IDLE_S)

        def redeliver(delivery_id: int) -> bool:
            again = webhooks.redeliver(service.store, delivery_id)
            if again:
                delivery.poke()  # at once, not at the loop's next idle read
            return again

        ctx = ApiContext(service, tokens=self.cfg.tokens(),
                         tokenless_ports=bound.tokenless_ports, max_body=self.cfg.api.max_body,
                         readiness=self.readiness,
                         dead_letters=lambda limit, offset: webhooks.dead_letters(
                             service.store, limit, offset),
                         redeliver=redeliver, catalogue=self.catalogue)
        api = ApiThread(create_app(ctx), bound.sockets, ctx)
        scheduler = self._scheduler(service, delivery)
        cron = CronTriggers(scheduler, service, self.catalogue,
                            catch_up=self.cfg.peak.cron_catch_up,
                            catch_up_grace_s=self.cfg.peak.cron_catch_up_grace)
        ctx.on_definition_change = cron.sync
        feed = ChangeFeed(self.store)
        collector = BridgeCollector(self.bridge, self.store.path)
        collector.register()
        api.start()
        deadline = time.monotonic() + 20
        while not api.started:
            if not api.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the API did not start: {api.error or 'timeout'}")
            time.sleep(0.01)
        delivery.start()
        scheduler.start()
        cron.start()  # the Peak cron jobs, from the store
        for w in self.warnings:
            log.warning(w)
        log.info("serving", listen=bound.addresses, state_dir=str(self.state_dir),
                 clusters=self.bridge.clusters.names())
        # what exists now (modules, the app, its schemas) lives as long as the process: out
        # of the collector's sight, a full collection walks half as many objects; and the
        # thresholds keep every pause short and full collections rare (GC_THRESHOLDS)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        notifier.ready(f"serving on {', '.join(bound.addresses)}")
        code = 0
        try:
            code = self._loop(api, feed, ctx, notifier, delivery)
        finally:
            notifier.stopping()
            log.info("stopping")
            scheduler.shutdown(wait=False)
            if self._spool is not None:
                self._spool.close()
            api.stop()
            ctx.intake.close()
            delivery.stop(timeout=2)
            self.bridge.close()
            collector.unregister()
            for s in bound.sockets:
                with contextlib.suppress(OSError):
                    s.close()
            for lst in self.cfg.api.listen:
                if lst.is_unix:
                    with contextlib.suppress(OSError):
                        lst.path.unlink()
        return code

    def _scheduler(self, service: Service, delivery: Any = None) -> Any:
        from apscheduler.schedulers.background import BackgroundScheduler

        from bridge.notify.email import EmailSettings, Mailer
        from bridge.peak import executions as peak_executions
        from bridge.peak.watchers import ScanJob

        scheduler = BackgroundScheduler(daemon=True, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        watch = ScanJob(self.store.path, minute_s=self.cfg.peak.minute_s,
                        secrets=lambda: self.bridge.secrets,
                        poke=delivery.poke if delivery is not None else None)
        scheduler.add_job(watch, "interval", seconds=1, id="peak-watchers")
        scheduler.add_job(lambda: peak_executions.prune(service.store), "interval",
                          hours=PRUNE_EVERY_H, id="peak-prune", next_run_time=datetime.now(UTC))
        try:
            mail = EmailSettings.from_daemon(self.cfg)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        if mail is not None:  # without smtp.host, watcher e-mails stay queued
            scheduler.add_job(Mailer(self.store.path, mail), "interval", seconds=1,
                              id="email")
        if self.cfg.spool.dir is not None:
            from bridge.spool import SpoolIntake

            def submit(text: str, name: str, key: str) -> int:
                wf_id, _ = service.submit_text(text, intake="spool", intake_key=key,
                                               durable=True)  # the file moves away next
                return wf_id

            from bridge.spool import SpoolError

            try:
                spool = SpoolIntake(self.cfg.spool.dir, submit, rejections=(ServiceError,),
                                    max_bytes=self.cfg.spool.max_file)
            except SpoolError as exc:
                raise ServeError(f"spool.dir: {exc}") from None
            self._spool = spool
            scheduler.add_job(spool.scan_once, "interval", seconds=self.cfg.spool.interval,
                              id="spool", next_run_time=datetime.now(UTC))
        return scheduler

    def _loop(self, api: ApiThread, feed: ChangeFeed, ctx: ApiContext, notifier: Any,
              delivery: Any) -> int:
        ping_every = notifier.watchdog_interval_s
        last_ping = 0.0
        feed_live = False
        collections = FullCollections()
        while not self.stop_requested.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload(notifier)
            began = time.monotonic()
            try:
                changed = self.bridge.cycle()
            except Exception:  # a bug: logged, the loop goes on (the store is the truth)
                log.exception("cycle failed")
                changed = False
                self.stop_requested.wait(1.0)
            self._last_cycle = time.monotonic()
            if changed:
                delivery.poke()
            watched = ctx.hub.watched_since
            if watched is not None:
                if not feed_live:  # the first client since nobody listened
                    feed.watch_from(watched)
                    feed_live = True
                try:
                    ctx.hub.publish(feed.poll())
                except Exception:  # a bug or a store error: logged; read again next cycle
                    log.exception("change feed failed")
            else:
                feed_live = False
            if not api.alive():
                if not api.is_alive():
                    log.error("the API thread ended", error=str(api.error))
                    return 1
            elif ping_every is not None and time.monotonic() - last_ping >= ping_every / 2:
                notifier.watchdog()  # only when the cycle ran and the API loop beats
                last_ping = time.monotonic()
            woken = False
            if not changed:
                woken = self.wake.wait(self.bridge.idle_s())
                self.wake.clear()
            collections.after_cycle(busy=changed or woken)
            # a burst of submissions (each one wakes the loop) is planned in one cycle, and
            # the API keeps its share of the interpreter while the loop is busy
            self.stop_requested.wait(pause_s(changed, woken, began, time.monotonic()))
        return 0

    def _reload(self, notifier: Any) -> None:
        notifier.reloading()
        try:
            clusters = self._clusters()
        except DaemonConfigError as exc:
            log.error("reload failed; keeping the old cluster configs", error=str(exc))
        else:
            changed = self.bridge.reload(clusters)
            log.info("cluster configs reloaded", changed=changed, clusters=clusters.names())
        try:
            self.bridge.secrets = self.cfg.peak_secrets()
        except DaemonConfigError as exc:
            log.error("reload of the secrets file failed; keeping the old ones",
                      error=str(exc))
        notifier.ready("reloaded")


__all__ = ["Daemon", "ServeError", "bind", "pause_s"]
