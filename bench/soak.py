#!/usr/bin/env python3
"""
A bounded soak of the daemon: mixed REST writes, WebSocket and SSE
subscribers joining and leaving, for C{--seconds} (default 120; CI runs a
30-second form, C{tests/test_soak.py}).

From the repository root::

    python bench/soak.py                 # 120 s
    python bench/soak.py --seconds 30 --json /tmp/soak.json

It starts C{twistd -n yeti} (TLS, a scratch root directory, free loopback
ports) as a child process and drives it on one Twisted reactor with real
clients (Autobahn over wss, Twisted's HTTPS agent for REST and SSE):

  - writers: C{--writers} loops of POST (new record), PUT, PATCH and DELETE
    of their own records, each write marked by a unique C{content};
  - stayers: C{--ws-stayers} WebSocket and C{--sse-stayers} SSE subscribers
    of the table, connected the whole time;
  - churners: C{--ws-churners} loops opening a WebSocket (table or record
    URL, sometimes subscribing and publishing to a topic of their own),
    holding it briefly and closing it (cleanly or by dropping the TCP
    connection), and C{--sse-churners} loops doing the same with SSE streams.

A short warm-up round of the same load comes first and is closed down; the
baseline is measured after it.  At the end, with every client gone, it
checks, and prints one summary line:

  - the daemon's RSS (C{VmRSS}) is at most C{--rss-margin} MiB (default 20)
    above the baseline, its open file descriptors at most C{--fd-margin}
    (default 5) above;
  - C{/health} on the operations port shows 0 WebSocket and SSE
    connections, 0 topics and 0 subscribers;
  - every stayer received each acknowledged write exactly once (an Update
    carrying its marker, or a Delete of its id): nothing lost, nothing
    duplicated; no write failed;
  - SIGTERM stops the daemon with exit status 0.

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from io import BytesIO
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from autobahn.twisted.websocket import connectWS  # noqa: E402
from twisted.internet import defer, error, reactor, task  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from tests.harness import MESSAGE_SCHEMA, TrustCert, write_app, write_config  # noqa: E402
from tests.test_durability import TWISTD, DaemonProcess  # noqa: E402
from tests.test_sse import SSEClient  # noqa: E402
from tests.test_websocket import WSClient, WSClientFactory, with_timeout  # noqa: E402

# Twisted warns about readBody over a TLS proxy transport; harmless here.
warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)

OPS_READY = re.compile(rb"Site starting on (\d+)")
TIMEOUT = 10.0
JSON = Headers({b"content-type": [b"application/json"]})


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = tempfile.mkdtemp(prefix="yeti-soak-")
        self.config_path = write_config(
            self.root, [write_app(self.root, "my-app", MESSAGE_SCHEMA)], tls=True,
            logging={"level": "warn"},
        )
        self.cert = os.path.join(self.root, "certs", "localhost", "cert.pem")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = args.writers + 2
        self.pool.retryAutomatically = False
        self.stopping = False
        # what writers had acknowledged: markers of Updates, ids of Deletes
        self.acked_updates: set[str] = set()
        self.acked_deletes: set[str] = set()
        self.write_errors: list[str] = []
        self.client_errors: list[str] = []
        self.writes = 0
        self.ws_cycles = 0
        self.sse_cycles = 0

    # -- the daemon ------------------------------------------------------

    async def start_daemon(self) -> None:
        self.proc = DaemonProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
        self.transport = reactor.spawnProcess(
            self.proc, TWISTD,
            [TWISTD, "-n", "--pidfile=", "yeti", "--config", self.config_path],
            env=env, path=self.root,
        )
        self.port = await with_timeout(self.proc.ready, 30, "the daemon to listen")
        deadline = time.monotonic() + 10
        while not OPS_READY.search(self.proc.output):
            if time.monotonic() > deadline:
                raise RuntimeError("no operations port in:\n" + self.proc.output.decode())
            await sleep(0.05)
        self.ops_port = int(OPS_READY.search(self.proc.output).group(1))  # type: ignore[union-attr]
        self.agent = Agent(reactor, contextFactory=TrustCert(self.cert), pool=self.pool)
        self.plain = Agent(reactor)

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://localhost:{self.port}{path}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.transport.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.transport.pid}/fd"))

    async def health(self) -> dict[str, Any]:
        response = await self.plain.request(
            b"GET", f"http://127.0.0.1:{self.ops_port}/health".encode())
        return json.loads(await readBody(response))

    @staticmethod
    def counts(report: dict[str, Any]) -> dict[str, int]:
        return {**report["connections"], "topics": report["topics"],
                "subscribers": report["subscribers"]}

    async def settle(self) -> dict[str, int]:
        """Wait (10 s at most) for every connection, topic and subscriber to go."""
        deadline = time.monotonic() + 10
        while True:
            counts = self.counts(await self.health())
            if not any(counts.values()) or time.monotonic() > deadline:
                return counts
            await sleep(0.1)

    # -- writers ---------------------------------------------------------

    async def write(self, method: str, path: str, body: Any) -> int:
        producer = None if body is None else FileBodyProducer(BytesIO(json.dumps(body).encode()))
        response = await self.agent.request(
            method.encode(), self.url(path).encode(), JSON if body is not None else None, producer)
        text = await readBody(response)
        if response.code >= 300:
            self.write_errors.append(f"{method} {path}: {response.code} {text[:200]!r}")
        return response.code

    async def writer(self, n: int, phase: str) -> None:
        rng = random.Random(n)
        alive: list[str] = []
        seq = 0
        while not self.stopping:
            seq += 1
            marker = f"{phase}{n}-{seq}"
            choice = rng.random()
            try:
                if not alive or choice < 0.5:
                    key = f"{phase}{n}-r{seq}"
                    record = {"id": key, "title": "soak", "content": marker}
                    if await self.write("POST", "/my-app/Message", record) == 201:
                        alive.append(key)
                        self.acked_updates.add(marker)
                elif choice < 0.7:
                    key = rng.choice(alive)
                    body = {"title": "put", "content": marker}
                    if await self.write("PUT", f"/my-app/Message/{key}", body) == 200:
                        self.acked_updates.add(marker)
                elif choice < 0.9:
                    key = rng.choice(alive)
                    body = {"content": marker}
                    if await self.write("PATCH", f"/my-app/Message/{key}", body) == 200:
                        self.acked_updates.add(marker)
                else:
                    key = alive.pop(rng.randrange(len(alive)))
                    if await self.write("DELETE", f"/my-app/Message/{key}", None) == 204:
                        self.acked_deletes.add(key)
            except Exception as e:
                self.write_errors.append(f"{marker}: {e!r}")
            self.writes += 1
            await sleep(self.args.write_pause)

    # -- subscribers -----------------------------------------------------

    async def open_ws(self, path: str) -> WSClient:
        client = WSClient()
        factory = WSClientFactory(self.url(path, "wss"), client)
        connectWS(factory, contextFactory=TrustCert(self.cert).creatorForNetloc(
            b"localhost", self.port))
        await with_timeout(client.opened, TIMEOUT, f"a WebSocket to {path}")
        return client

    async def open_sse(self, path: str) -> SSEClient:
        response = await with_timeout(
            self.agent.request(b"GET", self.url(path).encode()), TIMEOUT, f"SSE {path}")
        if response.code != 200:
            raise RuntimeError(f"SSE {path}: {response.code}")
        client = SSEClient(response)
        response.deliverBody(client)
        return client

    async def ws_churner(self, n: int) -> None:
        rng = random.Random(1000 + n)
        while not self.stopping:
            path = "/my-app/Message" if rng.random() < 0.5 else f"/my-app/Message/x{n}"
            try:
                client = await self.open_ws(path)
                if rng.random() < 0.5:
                    topic = f"churn-{n}-{self.ws_cycles}"
                    client.send_json({"action": "subscribe", "topic": topic})
                    client.send_json({"action": "publish", "topic": topic, "data": {"n": n}})
                await sleep(rng.uniform(0.02, 0.3))
                if rng.random() < 0.3:
                    client.transport.abortConnection()
                    await with_timeout(client.closed, TIMEOUT, "an aborted WebSocket")
                else:
                    await client.close_and_wait()
                self.ws_cycles += 1
            except Exception as e:
                self.client_errors.append(f"ws churner {n}: {e!r}")
                await sleep(0.1)

    async def sse_churner(self, n: int) -> None:
        rng = random.Random(2000 + n)
        while not self.stopping:
            path = "/my-app/Message?stream=sse" if rng.random() < 0.5 \
                else f"/my-app/Message/x{n}?stream=sse"
            try:
                client = await self.open_sse(path)
                await client.next(TIMEOUT)  # the connected message
                await sleep(rng.uniform(0.02, 0.3))
                await client.disconnect()
                self.sse_cycles += 1
            except Exception as e:
                self.client_errors.append(f"sse churner {n}: {e!r}")
                await sleep(0.1)

    # -- the run -----------------------------------------------------------

    async def load(self, seconds: float, phase: str) -> None:
        self.stopping = False
        loops = (
            [defer.ensureDeferred(self.writer(n, phase)) for n in range(self.args.writers)]
            + [defer.ensureDeferred(self.ws_churner(n)) for n in range(self.args.ws_churners)]
            + [defer.ensureDeferred(self.sse_churner(n)) for n in range(self.args.sse_churners)]
        )
        await sleep(seconds)
        self.stopping = True
        await defer.gatherResults(loops)

    def received(self, stayer: Any) -> tuple[Counter[str], Counter[str]]:
        """(update markers, deleted ids) a stayer received."""
        updates: Counter[str] = Counter()
        deletes: Counter[str] = Counter()
        if isinstance(stayer, WSClient):
            for m in stayer.messages:
                if m.get("message_type") == "Update":
                    updates[m["data"]["content"]] += 1
                elif m.get("message_type") == "Delete":
                    deletes[m["id"]] += 1
        else:
            for e in stayer.events:
                if e["event"] == "update":
                    updates[json.loads(e["data"])["content"]] += 1
                elif e["event"] == "delete":
                    deletes[e["id"]] += 1
        return updates, deletes

    def complete(self, stayers: list[Any]) -> bool:
        for stayer in stayers:
            updates, deletes = self.received(stayer)
            if not (self.acked_updates <= set(updates) and self.acked_deletes <= set(deletes)):
                return False
        return True

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.start_daemon()
        # warm-up: the same load, briefly, then everything closed
        warm = [await self.open_ws("/my-app/Message")]
        await self.load(args.warmup, "w")
        for c in warm:
            await c.close_and_wait()
        await self.pool.closeCachedConnections()
        await self.settle()
        await sleep(1.0)
        base_rss, base_fds = self.rss_kib(), self.fds()
        base_counts = self.counts(await self.health())
        self.acked_updates.clear()
        self.acked_deletes.clear()
        self.writes = self.ws_cycles = self.sse_cycles = 0

        ws_stayers = [await self.open_ws("/my-app/Message") for _ in range(args.ws_stayers)]
        sse_stayers = [await self.open_sse("/my-app/Message?stream=sse")
                       for _ in range(args.sse_stayers)]
        stayers: list[Any] = ws_stayers + sse_stayers
        started = time.monotonic()
        await self.load(args.seconds, "s")
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 15
        while not self.complete(stayers) and time.monotonic() < deadline:
            await sleep(0.1)
        await sleep(0.5)  # anything duplicated would have come by now
        lost = duplicated = 0
        for stayer in stayers:
            updates, deletes = self.received(stayer)
            lost += len(self.acked_updates - set(updates)) + len(self.acked_deletes - set(deletes))
            duplicated += sum(1 for c in updates.values() if c > 1)
            duplicated += sum(1 for c in deletes.values() if c > 1)
        stayers_open = sum(1 for c in ws_stayers if c.still_open) + \
            sum(1 for c in sse_stayers if c.ended is None)

        for c in ws_stayers:
            await c.close_and_wait()
        for c in sse_stayers:
            await c.disconnect()
        await self.pool.closeCachedConnections()
        end_counts = await self.settle()
        await sleep(1.0)
        end_rss, end_fds = self.rss_kib(), self.fds()

        self.transport.signalProcess("TERM")
        reason = await with_timeout(self.proc.ended, 20, "the daemon to stop")
        exit_ok = isinstance(reason, error.ProcessDone)

        rss_delta = (end_rss - base_rss) / 1024
        checks = {
            "rss": rss_delta <= args.rss_margin,
            "fds": end_fds - base_fds <= args.fd_margin,
            "counts": not any(end_counts.values()),
            "lost": lost == 0,
            "duplicated": duplicated == 0,
            "stayers_open": stayers_open == len(stayers),
            "write_errors": not self.write_errors,
            "client_errors": not self.client_errors,
            "exit_0": exit_ok,
            "traceback": b"Traceback" not in self.proc.output,
        }
        return {
            "seconds": round(elapsed, 1),
            "writes": self.writes,
            "acked_updates": len(self.acked_updates),
            "acked_deletes": len(self.acked_deletes),
            "write_errors": self.write_errors[:10],
            "client_errors": self.client_errors[:10],
            "ws_cycles": self.ws_cycles,
            "sse_cycles": self.sse_cycles,
            "stayers": len(stayers),
            "lost": lost,
            "duplicated": duplicated,
            "rss_mib": [round(base_rss / 1024, 1), round(end_rss / 1024, 1)],
            "rss_delta_mib": round(rss_delta, 1),
            "rss_margin_mib": args.rss_margin,
            "fds": [base_fds, end_fds],
            "fd_margin": args.fd_margin,
            "baseline_counts": base_counts,
            "end_counts": end_counts,
            "checks": checks,
            "passed": all(checks.values()),
        }


def summary(r: dict[str, Any]) -> str:
    failed = [name for name, ok in r["checks"].items() if not ok]
    counts = r["end_counts"]
    return (
        f"soak: {r['seconds']:.0f} s, {r['writes']} writes ({len(r['write_errors'])} failed), "
        f"{r['ws_cycles']} WS + {r['sse_cycles']} SSE connect/disconnect cycles, "
        f"{r['stayers']} stayers: {r['lost']} lost, {r['duplicated']} duplicated; "
        f"RSS {r['rss_mib'][0]} -> {r['rss_mib'][1]} MiB ({r['rss_delta_mib']:+.1f}, "
        f"margin {r['rss_margin_mib']}), fds {r['fds'][0]} -> {r['fds'][1]} "
        f"(margin {r['fd_margin']}), end ws/sse/topics/subscribers "
        f"{counts['websocket']}/{counts['sse']}/{counts['topics']}/{counts['subscribers']}: "
        + ("PASS" if r["passed"] else "FAIL " + ", ".join(failed))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--write-pause", type=float, default=0.01,
                        help="seconds each writer waits between writes")
    parser.add_argument("--ws-stayers", type=int, default=3)
    parser.add_argument("--sse-stayers", type=int, default=2)
    parser.add_argument("--ws-churners", type=int, default=4)
    parser.add_argument("--sse-churners", type=int, default=2)
    parser.add_argument("--rss-margin", type=float, default=20.0, help="MiB")
    parser.add_argument("--fd-margin", type=int, default=5)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    soak = Soak(args)

    async def go(_: Any) -> None:
        try:
            result = await soak.run()
        finally:
            proc = getattr(soak, "proc", None)
            if proc is not None and proc.running:
                soak.transport.signalProcess("KILL")
                await proc.ended
        print(summary(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        if not result["passed"]:
            print(json.dumps(result, indent=2), flush=True)
            raise SystemExit(1)

    task.react(lambda r: defer.ensureDeferred(go(r)))  # exits with the status
    return 0

if __name__ == "__main__":
    main()
