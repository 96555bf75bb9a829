"""WebSocket /v1/events under load: N clients connected to one gateway process (started as
`make run` starts it), events published straight to its Redis stream at a steady rate, and
the delay from each event's time (stamped as it is published) to its arrival at a client.

Two shapes of load:
- watch: each client follows a subject of its own (a page open on one task), and the events
  go round the subjects, so each event reaches one client. The target applies here.
- broadcast: every client follows one event type (a dashboard), so each event reaches every
  client; deliveries are clients x rate, so it runs at a lower rate.

The clients run in this process and negotiate compression (permessage-deflate) as browsers
do, unless `--compression none`.

    python -m bench.events_ws [--clients 1000] [--rate 500] [--seconds 10]
                              [--broadcast-rate 10] [--compression deflate|none] [--strict]
"""

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from websockets.asyncio.client import ClientConnection, connect

from bench.cpu import CpuMeter
from bench.machine import describe, summary
from bench.report import Row, _at_most, table_text
from bench.run import _git
from bench.servers import bench_servers, delete_keys, server_pids
from bench.stats import distribution
from dev import secrets
from dev.embedded import free_port
from dev.stack import ROOT, Ports, Stack
from libs.common.events import EventBus
from libs.common.redis_client import Keys
from libs.common.tokens import mint

log = logging.getLogger("bench")

RESULTS = ROOT / "bench/results"
P99_TARGET_MS = 50.0
_WARMUP_S = 1.0
_DRAIN_S = 10.0
_CONNECTING = 50  # handshakes in flight at once


class Gateway:
    """One gateway process on the bench's database and a Redis prefix of its own. No
    service answers behind it: the event feed needs Redis only."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self._secrets = secrets.ensure(ROOT / ".cache/bench/secrets")
        self.prefix = f"bench-ev-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.log_dir = log_dir
        self._stack = Stack(
            database_url,
            redis_url,
            Ports(free_port(), free_port(), free_port(), self.port),
            self._secrets,
            env={
                "AGENTRY_REDIS_PREFIX": self.prefix,
                "AGENTRY_HTTP_PORT": str(self.port),
                "AGENTRY_INSTANCE": f"{self.prefix}-gateway",
                "AGENTRY_LOG_LEVEL": "WARNING",
                "AGENTRY_MIGRATE_ON_START": "false",
            },
            log_dir=log_dir,
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/events"

    @property
    def pid(self) -> int:
        return self._stack.processes["gateway"].pid

    def token(self, role: str) -> str:
        key = self._secrets.jwt_private_key.read_bytes()
        return mint(key, "bench", role, "agentry-gateway", 3600)

    def start(self, timeout_s: float = 60.0) -> None:
        """Started when /healthz answers (/readyz wants the services behind it)."""
        self._stack.start_one("gateway")
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._stack.processes["gateway"].poll()
            if code is not None:
                raise RuntimeError(f"the gateway exited with {code}; see {self.log_dir}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start in {timeout_s:.0f}s")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def stop(self) -> int:
        if "gateway" not in self._stack.processes:
            return 0
        return self._stack.stop(grace_s=15.0)["gateway"]


class Clients:
    """N connections, each reading its frames and recording every event's delay."""

    def __init__(self) -> None:
        self.delays_ms: list[float] = []
        self.received = 0
        self._expected: int | None = None
        self._all_in = asyncio.Event()
        self.closed_early = 0
        self._connections: list[ClientConnection] = []
        self._readers: list[asyncio.Task[None]] = []

    async def open(
        self, url: str, token: str, topics: Callable[[int], list[str]], n: int, deflate: bool
    ) -> None:
        gate = asyncio.Semaphore(_CONNECTING)

        async def one(k: int) -> None:
            async with gate:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=30,
                    compression="deflate" if deflate else None,
                )
                await ws.send(json.dumps({"subscribe": topics(k)}))
                answer = json.loads(await ws.recv())
                assert answer.get("type") == "subscribed", answer
                self._connections.append(ws)
                self._readers.append(asyncio.create_task(self._read(ws)))

        await asyncio.gather(*(one(k) for k in range(n)))

    async def _read(self, ws: ClientConnection) -> None:
        stamp = Timestamp()
        try:
            async for message in ws:
                now = time.time()
                frame = json.loads(message)
                if "id" not in frame or not frame["data"].get("measured"):
                    continue
                stamp.FromJsonString(frame["time"])
                self.delays_ms.append((now - stamp.seconds - stamp.nanos / 1e9) * 1000)
                self.received += 1
                if self._expected is not None and self.received >= self._expected:
                    self._all_in.set()
        finally:
            if ws.close_code not in (None, 1000):
                self.closed_early += 1

    async def wait_for(self, expected: int, timeout_s: float) -> None:
        """Until `expected` events were received, or for `timeout_s`."""
        self._expected = expected
        if self.received >= expected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._all_in.wait()

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self._connections))
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _publish(
    bus: EventBus, rate: float, seconds: float, subject: Callable[[int], str]
) -> dict[str, Any]:
    """One event per stream entry, on a fixed schedule; the first second is a warm-up
    whose events are not measured."""
    total = int(rate * (_WARMUP_S + seconds))
    warmup = int(rate * _WARMUP_S)
    started = time.monotonic()
    late = 0
    for i in range(total):
        due = started + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.005:
            late += 1
        await bus.publish("bench.tick", subject(i), {"i": i, "measured": i >= warmup})
    return {
        "published": total,
        "measured": total - warmup,
        "late_publishes": late,
        "publish_s": round(time.monotonic() - started, 2),
    }


async def _scenario(
    gateway: Gateway,
    redis_url: str,
    pids: dict[str, int | None],
    clients_n: int,
    rate: float,
    seconds: float,
    broadcast: bool,
    deflate: bool,
) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    bus = EventBus(client, Keys(gateway.prefix), "bench/events-ws")
    run = uuid.uuid4().hex[:8]

    def topics(k: int) -> list[str]:
        return ["type:bench.tick"] if broadcast else [f"task:{run}-{k}"]

    def subject(i: int) -> str:
        return f"task/{run}" if broadcast else f"task/{run}-{i % clients_n}"

    clients = Clients()
    started = time.monotonic()
    try:
        await clients.open(gateway.url, gateway.token("viewer"), topics, clients_n, deflate)
        connect_s = time.monotonic() - started
        # A full collection over a thousand connections stalls this process for up to
        # 200 ms, which would be counted as the gateway's delay: the connections are left
        # out of it.
        gc.freeze()
        rss_connected = gateway.rss_mib()
        meter = CpuMeter(pids)
        window = time.monotonic()
        published = await _publish(bus, rate, seconds, subject)
        expected = published["measured"] * (clients_n if broadcast else 1)
        await clients.wait_for(expected, _DRAIN_S)
        wall_s = time.monotonic() - window
        cpu = meter.seconds()
        rss = gateway.rss_mib()
    finally:
        await clients.close()
        await client.aclose()
        gc.unfreeze()
    return {
        "clients": clients_n,
        "rate_per_s": rate,
        "seconds": seconds,
        "connect_s": round(connect_s, 2),
        **published,
        "expected": expected,
        "received": clients.received,
        "closed_early": clients.closed_early,
        "delay_ms": distribution(clients.delays_ms),
        "gateway_rss_mib_connected": round(rss_connected, 1),
        "gateway_rss_mib_after": round(rss, 1),
        "wall_s": round(wall_s, 2),
        "cpu_s": cpu,
    }


def rows(figures: dict[str, Any]) -> list[Row]:
    watch, wide = figures["watch"], figures.get("broadcast")
    n, rate = watch["clients"], watch["rate_per_s"]
    table = [
        Row(f"Watch: {n:,} clients, {rate:g} events/s, each to one client", None, ""),
        Row("  event -> client p50", watch["delay_ms"]["p50"], "ms"),
        _at_most("  event -> client p99", watch["delay_ms"]["p99"], "ms", P99_TARGET_MS),
        Row("  event -> client max", watch["delay_ms"]["max"], "ms"),
        Row("  deliveries missing", watch["expected"] - watch["received"], "events"),
        Row("  gateway RSS with the clients connected", watch["gateway_rss_mib_after"], "MiB"),
        Row(f"  {n:,} clients connected and subscribed in", watch["connect_s"] * 1000, "ms"),
    ]
    if wide:
        table += [
            Row(
                f"Broadcast: {wide['clients']:,} clients, {wide['rate_per_s']:g} events/s, "
                "each to every client",
                None,
                "",
            ),
            Row("  event -> client p50", wide["delay_ms"]["p50"], "ms"),
            Row("  event -> client p99", wide["delay_ms"]["p99"], "ms"),
            Row("  event -> client max", wide["delay_ms"]["max"], "ms"),
            Row("  deliveries missing", wide["expected"] - wide["received"], "events"),
            Row("  clients cut off (fell a queue behind)", wide["closed_early"], "clients"),
        ]
    return table


def cpu_lines(figures: dict[str, Any]) -> list[str]:
    lines = []
    for phase in ("watch", "broadcast"):
        if phase not in figures:
            continue
        cpu, wall_s = figures[phase]["cpu_s"], figures[phase]["wall_s"]
        parts = ", ".join(f"{k} {v:.1f}s ({v / wall_s:.0%})" for k, v in cpu.items())
        lines.append(f"CPU in the {wall_s:.1f}s of {phase} (share of one core): {parts}")
    return lines


def write(results: dict[str, Any], table: list[Row]) -> Path:
    dirty = " with local changes" if results["git"]["dirty"] else ""
    lines = [
        "# WebSocket event feed benchmark",
        "",
        f"Run {results['started_at']}, code {results['git']['commit']}{dirty}: "
        f"`{results['command']}`.",
        "",
        f"Machine: {summary(results['machine'])}.",
        "",
        "One gateway process; the clients run in the bench process (compression: "
        f"{results['config']['compression']}); events are published one per stream entry "
        "with EventBus. Delay: the event's time (stamped as it is published) to the client's "
        "receipt, same clock.",
        "",
        "| figure | value | target | status |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {'&emsp;' if r.figure.startswith(' ') else ''}{r.figure.strip()} "
        f"| {'' if r.value is None else r.shown()} | {r.target} | {r.status} |"
        for r in table
    ]
    lines += ["", *(f"- {line}" for line in cpu_lines(results["figures"]))]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "events-ws.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.events_ws", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s, watch load")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per load")
    parser.add_argument(
        "--broadcast-rate", type=float, default=10.0, help="events/s to every client; 0 skips"
    )
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="deflate: as browsers ask; none: what the gateway's per-client compression costs",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    return parser.parse_args(argv)


async def _measure(gateway: Gateway, redis_url: str, args: argparse.Namespace, pids: Any) -> Any:
    deflate = args.compression == "deflate"
    figures = {
        "watch": await _scenario(
            gateway, redis_url, pids, args.clients, args.rate, args.seconds, False, deflate
        )
    }
    log.info("watch: %s", figures["watch"]["delay_ms"])
    if args.broadcast_rate > 0:
        figures["broadcast"] = await _scenario(
            gateway, redis_url, pids, args.clients, args.broadcast_rate, args.seconds, True, deflate
        )
        log.info("broadcast: %s", figures["broadcast"]["delay_ms"])
    return figures


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    started = datetime.now(UTC)
    code = _git()
    log_dir = ROOT / ".cache/bench/logs" / f"events-ws-{started.strftime('%Y%m%dT%H%M%S')}"
    with bench_servers() as servers:
        machine = describe(servers)
        log.info("machine: %s", summary(machine))
        _, redis_pid = server_pids(servers)
        gateway = Gateway(servers.database_url, servers.redis_url, log_dir)
        try:
            gateway.start()
            pids = {"gateway": gateway.pid, "redis": redis_pid}
            figures = asyncio.run(_measure(gateway, servers.redis_url, args, pids))
        except BaseException:
            log.error("the gateway's log: %s", log_dir)
            raise
        finally:
            exit_code = gateway.stop()
            if exit_code != 0:
                log.warning("the gateway exited with %s; see %s", exit_code, log_dir)
            delete_keys(servers.redis_url, f"{gateway.prefix}:")
    given = sys.argv[1:] if argv is None else argv
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "git": code,
        "command": " ".join(["python -m bench.events_ws", *given]),
        "machine": machine,
        "config": vars(args),
        "figures": figures,
    }
    table = rows(figures)
    path = write(results, table)
    out = [
        f"WebSocket event feed: {summary(machine)}",
        "",
        table_text(table),
        "",
        *cpu_lines(figures),
        "",
        f"Written: {path.relative_to(ROOT)}",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 1 if args.strict and any(r.passed is False for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
