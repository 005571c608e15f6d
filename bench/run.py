#!/usr/bin/env python3
"""
Yeti benchmark, side by side with HarperDB 4.

One command (from the repository root)::

    cd bench && npm ci && cd ..          # once: the load generator's `ws` package
    python bench/run.py                  # everything, default sizes (~20 minutes)
    python bench/run.py --servers yeti --variants plain --scenarios fanout \\
        --subscribers 5 --records 10     # a smoke run (seconds)

It writes its own configuration into a scratch directory, starts the daemon
(C{twistd -n yeti --config ...} with C{PYTHONPATH=<repo>}) on free loopback
ports, plain (ws/http) and TLS (wss/https) in turn, installs HarperDB 4 with
npm into the scratch directory (or reuses C{--harperdb-dir}), starts it with a
C{Message} table of the same shape, and drives both with C{bench/loadgen.js}
(Node.js + the C{ws} package).  Scenarios run one after another (the machine
has few cores); the generator's own CPU time and the server's CPU time over
each load window are reported next to the figures.

Scenarios (C{--scenarios}, comma-separated; default all):
  - connections  N idle WebSockets (C{--connections}): held, RSS delta / N
  - fanout       WS fan-out: N subscribers (C{--subscribers}, a list) on the
                 table URL, one writer POSTing M records (C{--records})
                 sequentially on one keep-alive connection
  - sse          SSE fan-out, C{--sse-subscribers} subscribers
                 (both fan-outs: the subscribers are spread over C{--generators}
                 Node processes, the writer is one more; latency is measured on
                 CLOCK_MONOTONIC, the same clock in every process)
  - fanin        C{--fanin-clients} WebSocket clients each sending
                 C{--fanin-records} records (default incoming handler)
  - rest         C{--rest-clients} keep-alive clients, C{--rest-requests}
                 writes then as many reads; for Yeti also a reactor probe (a
                 back-to-back GET /health on the ops port, same reactor)
  - durability   one sequential writer, C{--durability-writes} POSTs, default
                 durable settings; for Yeti also on tmpfs (/dev/shm) to show
                 what the fsyncs cost

Deliveries are matched by a marker in the record id, so the two servers'
different envelopes do not matter.  HarperDB's table is emptied before each
scenario (a table-level subscriber first receives every existing record).
If HarperDB cannot be installed or started, its column says why and Yeti's
columns are still produced.  C{--json FILE} writes the raw results;
C{--profile DIR} records our daemon with py-spy during each WS fan-out and
the REST scenario and prints the top frames, each thread's share, and the
reactor thread's samples inside SQLite work (there should be none).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
LOADGEN = os.path.join(BENCH, "loadgen.js")
ALL_SCENARIOS = ("connections", "fanout", "sse", "fanin", "rest", "durability")
HDB_USER = "admin"
HDB_PASSWORD = "bench-" + uuid.uuid4().hex[:12]

SCHEMA = """\
type Message @table(database: "bench") @export(rest: true, ws: true, sse: true) {
    id: ID! @primaryKey
    title: String!
    content: String!
}
"""
HDB_SCHEMA = """\
type Message @table @export {
    id: ID @primaryKey
    title: String
    content: String
}
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1048576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_tree(pid: int) -> list[int]:
    """C{pid} and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [float(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def http_json(
    url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


# -- servers -------------------------------------------------------------------


class ServerUnavailable(Exception):
    """A server could not be installed or started; the message says why."""


@dataclass
class Server:
    """A running server under test, as the load generator needs to see it."""

    name: str
    variant: str  # "plain" or "tls"
    port: int
    proc: subprocess.Popen | None = None
    auth: str | None = None
    paths: dict[str, str] = field(default_factory=dict)
    probe_port: int | None = None
    probe_path: str | None = None

    @property
    def tls(self) -> bool:
        return self.variant == "tls"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def target(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": self.tls,
            "auth": self.auth,
            **self.paths,
        }

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    # hooks the scenarios call; HarperDB overrides them
    def empty_table(self) -> None:
        """Make sure a table-level subscriber starts with no backlog."""

    def count_marker(self, marker: str) -> int | None:
        return None


class YetiServer(Server):
    def count_marker(self, marker: str) -> int | None:
        scheme = "https" if self.tls else "http"
        import ssl

        context = ssl._create_unverified_context() if self.tls else None
        request = urllib.request.Request(
            f"{scheme}://127.0.0.1:{self.port}/bench/Message?title=={marker}&select=id&limit=10000000"
        )
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return len(json.loads(response.read()))


def start_yeti(
    scratch: str, variant: str, max_connections: int, root: str | None = None, label: str = ""
) -> YetiServer:
    """Write a config for C{variant} into C{scratch} and start the daemon."""
    name = f"yeti-{variant}{label}"
    home = os.path.join(scratch, name)
    app = os.path.join(home, "bench")
    os.makedirs(app, exist_ok=True)
    with open(os.path.join(app, "schema.graphql"), "w") as f:
        f.write(SCHEMA)
    with open(os.path.join(app, "config.yaml"), "w") as f:
        f.write(
            'name: "Benchmark"\napp_id: "bench"\nrest: true\nws: true\nsse: true\n'
            "schemas:\n  - schema.graphql\n"
        )
    port, ops_port = free_port(), free_port()
    root_dir = root or os.path.join(home, "var")
    config = textwrap.dedent(f"""\
        # Written by bench/run.py: defaults except ports, loopback and the connection cap.
        rootDirectory: {root_dir}
        http:
          host: "127.0.0.1"
          port: {port}
          maxConnections: {max_connections}
        tls:
          enabled: {"true" if variant == "tls" else "false"}
          autoGenerate: true
        operationsApi:
          host: 127.0.0.1
          port: {ops_port}
        logging:
          level: warn
        applications:
          - bench
        """)
    config_path = os.path.join(home, "config.yaml")
    with open(config_path, "w") as f:
        f.write(config)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd") or "twistd"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    logfile = open(os.path.join(home, "twistd.log"), "wb")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "yeti", "--config", config_path],
        cwd=home,
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = YetiServer(
        name="yeti",
        variant=variant,
        port=port,
        proc=proc,
        probe_port=ops_port,
        probe_path="/health",
        paths={
            "wsPath": "/bench/Message",
            "ssePath": "/bench/Message?stream=sse",
            "postPath": "/bench/Message",
            "getPath": "/bench/Message",
        },
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(
                f"yeti exited with {proc.returncode}; see {logfile.name}: " + _tail(logfile.name)
            )
        try:
            http_json(f"http://127.0.0.1:{ops_port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise ServerUnavailable("yeti did not answer /health within 30 s: " + _tail(logfile.name))


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


class HarperServer(Server):
    ops_port: int = 0

    def _ops(self, body: dict[str, Any]) -> Any:
        return http_json(
            f"http://127.0.0.1:{self.ops_port}/",
            body,
            {"Authorization": self.auth or ""},
            timeout=120,
        )

    def empty_table(self) -> None:
        self._ops({"operation": "sql", "sql": "DELETE FROM data.Message"})

    def count_marker(self, marker: str) -> int | None:
        rows = self._ops(
            {
                "operation": "sql",
                "sql": f"SELECT COUNT(*) AS n FROM data.Message WHERE title = '{marker}'",
            }
        )
        return int(rows[0]["n"])


def install_harperdb(directory: str) -> str:
    """C{npm install harperdb@4} into C{directory} (once); return the bin path."""
    binary = os.path.join(directory, "node_modules", ".bin", "harperdb")
    if os.path.exists(binary):
        return binary
    os.makedirs(directory, exist_ok=True)
    package = os.path.join(directory, "package.json")
    if not os.path.exists(package):
        with open(package, "w") as f:
            json.dump({"name": "harperdb-bench-scratch", "private": True}, f)
    log(f"installing harperdb@4 with npm into {directory} ...")
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "harperdb@4"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not os.path.exists(binary):
        raise ServerUnavailable(
            "npm install harperdb@4 failed: "
            + " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        )
    return binary


def harperdb_version(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, "node_modules", "harperdb", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, KeyError, ValueError):
        return None


def start_harperdb(scratch: str, package_dir: str, variant: str) -> HarperServer:
    """Install (if needed), set up a fresh root with free ports, and run it."""
    import yaml

    binary = install_harperdb(package_dir)
    home = os.path.join(scratch, f"harperdb-{variant}")
    shutil.rmtree(home, ignore_errors=True)
    root, component, user_home = (os.path.join(home, d) for d in ("root", "component", "home"))
    os.makedirs(component)
    os.makedirs(user_home)
    with open(os.path.join(component, "schema.graphql"), "w") as f:
        f.write(HDB_SCHEMA)
    with open(os.path.join(component, "config.yaml"), "w") as f:
        f.write("rest: true\ngraphqlSchema:\n  files: 'schema.graphql'\n")
    env = dict(
        os.environ,
        TC_AGREEMENT="yes",
        ROOTPATH=root,
        HDB_ADMIN_USERNAME=HDB_USER,
        HDB_ADMIN_PASSWORD=HDB_PASSWORD,
        HOME=user_home,
    )
    install = subprocess.run(
        [binary, "install"], env=env, cwd=home, capture_output=True, text=True, timeout=300
    )
    config_path = os.path.join(root, "harperdb-config.yaml")
    if install.returncode != 0 or not os.path.exists(config_path):
        raise ServerUnavailable(
            "harperdb install failed: "
            + " | ".join((install.stderr or install.stdout).strip().splitlines()[-3:])
        )
    with open(config_path) as f:
        config = yaml.safe_load(f)
    port, secure_port, ops_port = free_port(), free_port(), free_port()
    config["http"]["port"] = port
    config["http"]["securePort"] = secure_port
    config["operationsApi"]["network"]["port"] = ops_port
    config["operationsApi"]["network"]["securePort"] = None
    config["mqtt"]["network"]["port"] = free_port()
    config["mqtt"]["network"]["securePort"] = free_port()
    config.setdefault("replication", {})["securePort"] = free_port()
    config.setdefault("localStudio", {})["enabled"] = False
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    logfile = open(os.path.join(home, "harperdb.out"), "wb")
    env.pop("HDB_ADMIN_PASSWORD")
    proc = subprocess.Popen(
        [binary, "run", component],
        env=env,
        cwd=home,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    auth = "Basic " + base64.b64encode(f"{HDB_USER}:{HDB_PASSWORD}".encode()).decode()
    server = HarperServer(
        name="harperdb",
        variant=variant,
        port=secure_port if variant == "tls" else port,
        proc=proc,
        auth=auth,
        paths={
            "wsPath": "/Message/",
            "ssePath": "/Message/",
            "postPath": "/Message/",
            "getPath": "/Message",
        },
    )
    server.ops_port = ops_port
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(
                f"harperdb exited with {proc.returncode}: " + _tail(logfile.name)
            )
        try:
            http_json(
                f"http://127.0.0.1:{port}/Message/", headers={"Authorization": auth}, timeout=2
            )
            return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise ServerUnavailable("harperdb did not serve /Message/ within 120 s: " + _tail(logfile.name))


# -- the load generator ----------------------------------------------------------


def run_loadgen(
    config: dict[str, Any], on_ready: Callable[[dict], None] | None = None, timeout: float = 1800
) -> dict[str, Any]:
    """Run one scenario in Node; C{on_ready} runs between READY and the load."""
    config = dict(config, pause=on_ready is not None)
    proc = subprocess.Popen(
        ["node", LOADGEN, json.dumps(config)],
        cwd=BENCH,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    deadline = time.time() + timeout
    result = None
    try:
        for line in proc.stdout:
            if line.startswith("READY "):
                if on_ready is not None:
                    on_ready(json.loads(line[6:]))
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
            if time.time() > deadline:
                break
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        raise RuntimeError(
            f"load generator failed (exit {proc.returncode}) for {config['scenario']}"
        )
    return result


# -- profiling -------------------------------------------------------------------


class Profiler:
    """py-spy record on a pid between start() and stop(); summarises the top frames."""

    def __init__(self, directory: str, name: str, pid: int) -> None:
        self.path = os.path.join(directory, name + ".txt")
        self.pid = pid
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.proc = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "-o",
                self.path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return summarise_profile(self.path)


# the functions of yeti/storage.py that run SQLite statements (py-spy frame names)
_SQLITE_WORK = ("SQLiteStorage._fetch ", "_Writer._batch ", "_apply ", "SQLiteStorage._prepare ")


def summarise_profile(path: str, top: int = 15) -> str:
    """
    Self and inclusive time per frame from py-spy's collapsed-stack output,
    the share of each thread, and how many of the reactor thread's samples
    were inside the functions of C{yeti/storage.py} that run SQLite
    statements (L{_SQLITE_WORK}: the writer and reader threads run them; on
    the reactor thread they would block it) or anywhere in that file
    (handing jobs over, firing results).
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    reactor = reactor_in_storage = reactor_in_sqlite = 0
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = stack.split(";")
                if frames and frames[0].startswith("process "):
                    frames = frames[1:]
                thread = "all"
                if frames and frames[0].startswith("thread "):
                    # "thread (tid): name"; "yeti-writer <file>", "PoolThread-yeti-readers-1"
                    name = frames[0].partition(": ")[2].split(" ")[0]
                    thread = name.rstrip("-0123456789") or frames[0]
                    frames = frames[1:]
                threads[thread] += n
                if thread == "MainThread":
                    reactor += n
                    storage = [fr for fr in frames if "yeti/storage.py:" in fr]
                    if storage:
                        reactor_in_storage += n
                    if any(fr.startswith(_SQLITE_WORK) for fr in storage):
                        reactor_in_sqlite += n
                total += n
                if frames:
                    self_time[_short(frames[-1])] += n
                for frame in {_short(fr) for fr in frames}:
                    inclusive[frame] += n
    except OSError as e:
        return f"(no profile: {e})"
    if not total:
        return "(no samples)"
    lines = [f"py-spy samples: {total} ({path})"]
    lines.append("  threads: " + ", ".join(
        f"{name} {100 * n / total:.1f}%" for name, n in threads.most_common()
    ))
    lines.append(
        f"  reactor thread (MainThread): {reactor} samples, {reactor_in_sqlite} inside SQLite work"
        f" ({', '.join(w.strip() for w in _SQLITE_WORK)}),"
        f" {reactor_in_storage} with yeti/storage.py in the stack"
    )
    lines.append("  self%  frame")
    lines += [f"  {100 * n / total:5.1f}  {frame}" for frame, n in self_time.most_common(top)]
    # inclusive time, without the frames every sample shares (twistd, reactor.run)
    shared = [f for f, n in inclusive.items() if n >= 0.95 * total]
    for frame in shared:
        del inclusive[frame]
    lines += ["  incl%  frame"]
    lines += [f"  {100 * n / total:5.1f}  {frame}" for frame, n in inclusive.most_common(top + 5)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    if where:
        return f"{name} ({os.path.basename(where.rstrip(')'))})"
    return frame


# -- scenarios --------------------------------------------------------------------


def marker() -> str:
    return "b" + uuid.uuid4().hex[:10]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, dict[str, Any]] = {}  # column -> scenario key -> result
        self.notes: dict[str, str] = {}
        self.profiles: list[str] = []

    def column(self, server: Server | str, variant: str | None = None) -> dict[str, Any]:
        if isinstance(server, Server):
            key = f"{server.name} {'wss' if server.tls else 'ws'}"
        else:
            key = f"{server} {'wss' if variant == 'tls' else 'ws'}"
        return self.results.setdefault(key, {})

    def measured(
        self, server: Server, config: dict[str, Any], on_ready: Callable[[dict], None] | None = None
    ) -> dict[str, Any]:
        """Run the generator and add the server's CPU use over the whole run."""
        cpu0, t0 = cpu_seconds(server.pid), time.time()
        result = run_loadgen(
            dict(server.target(), concurrency=self.args.concurrency, **config), on_ready
        )
        wall = time.time() - t0
        result["server_cpu_pct_run"] = 100 * (cpu_seconds(server.pid) - cpu0) / wall
        return result

    def scenario_connections(self, server: Server) -> None:
        n = self.args.connections
        server.empty_table()
        before = {}

        def ready(info: dict) -> None:
            time.sleep(2)
            before["after"] = rss_kib(server.pid)

        before["before"] = rss_kib(server.pid)
        result = self.measured(server, {"scenario": "connections", "connections": n}, ready)
        delta = before.get("after", 0) - before["before"]
        result["rss_before_kib"] = before["before"]
        result["rss_after_kib"] = before.get("after")
        result["kib_per_conn"] = delta / max(1, result["still_open"])
        self.column(server)["connections"] = result
        log(
            f"{server.name}/{server.variant} connections: held {result['still_open']}/{n}, "
            f"{result['kib_per_conn']:.1f} KiB each"
        )

    def scenario_fanout(self, server: Server, transport: str, n: int) -> None:
        server.empty_table()
        profiler = None
        on_ready = None
        if self.args.profile and server.name == "yeti" and transport == "ws":
            os.makedirs(self.args.profile, exist_ok=True)
            profiler = Profiler(self.args.profile, f"yeti-{server.variant}-fanout-{n}", server.pid)
            on_ready = lambda info: profiler.start()  # noqa: E731
        cpu0: dict[str, Any] = {}

        def ready(info: dict) -> None:
            if on_ready:
                on_ready(info)
            cpu0["cpu"], cpu0["t"] = cpu_seconds(server.pid), time.time()
            cpu0["machine"] = machine_busy()

        result = self.measured(
            server,
            {
                "scenario": "fanout",
                "transport": transport,
                "subscribers": n,
                "records": self.args.records,
                "generators": self.args.generators,
                "marker": marker(),
                "idleTimeout": self.args.idle_timeout,
            },
            ready,
        )
        if cpu0:
            result["server_cpu_pct"] = (
                100 * (cpu_seconds(server.pid) - cpu0["cpu"]) / (time.time() - cpu0["t"])
            )
            (busy0, total0), (busy1, total1) = cpu0["machine"], machine_busy()
            busy, total = busy1 - busy0, total1 - total0
            result["machine_busy_pct"] = 100 * busy / total if total else 0
        if profiler is not None:
            summary = profiler.stop()
            self.profiles.append(f"{server.name} {server.variant} WS fan-out N={n}\n{summary}")
        key = f"{transport}-fanout-{n}"
        self.column(server)[key] = result
        lat = result["latency_ms"]
        log(
            f"{server.name}/{server.variant} {transport} fan-out N={n}: "
            f"{result['msgs_per_s']:.0f} msg/s, p50 {_ms(lat['p50'])} p99 {_ms(lat['p99'])} ms, "
            f"missing {result['missing']} dup {result['duplicated']}, "
            f"generator {_generator_cpu(result['generator'])}% CPU, "
            f"all cores {result.get('machine_busy_pct', 0):.0f}% busy"
        )

    def scenario_fanin(self, server: Server) -> None:
        server.empty_table()
        m = marker()
        result = self.measured(
            server,
            {
                "scenario": "fanin",
                "clients": self.args.fanin_clients,
                "records": self.args.fanin_records,
                "marker": m,
                "idleTimeout": 5,
            },
        )
        try:
            result["stored"] = server.count_marker(m)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            result["stored"] = None
            result["count_error"] = str(e)
        self.column(server)["fanin"] = result
        log(
            f"{server.name}/{server.variant} fan-in: {result['observed_per_s']:.0f}/s observed, "
            f"stored {result['stored']} of {result['sent']}"
        )

    def scenario_rest(self, server: Server) -> None:
        server.empty_table()
        profiler = None
        if self.args.profile and server.name == "yeti":
            os.makedirs(self.args.profile, exist_ok=True)
            profiler = Profiler(self.args.profile, f"yeti-{server.variant}-rest", server.pid)
            profiler.start()
        config = {
            "scenario": "rest",
            "clients": self.args.rest_clients,
            "requests": self.args.rest_requests,
            "marker": marker(),
        }
        if server.probe_port:
            config.update(probePort=server.probe_port, probePath=server.probe_path)
        result = self.measured(server, config)
        if profiler is not None:
            summary = profiler.stop()
            self.profiles.append(f"{server.name} {server.variant} REST\n{summary}")
        self.column(server)["rest"] = result
        log(
            f"{server.name}/{server.variant} REST: writes {result['writes']['per_s']:.0f}/s, "
            f"reads {result['reads']['per_s']:.0f}/s"
        )

    def scenario_durability(self, server: Server, key: str = "durability") -> None:
        server.empty_table()
        result = self.measured(
            server,
            {"scenario": "durability", "requests": self.args.durability_writes, "marker": marker()},
        )
        self.column(server)[key] = result
        log(f"{server.name}/{server.variant} {key}: {result['per_s']:.0f} writes/s")

    def run_server(self, start: Callable[[], Server], label: str) -> None:
        args = self.args
        try:
            server = start()
        except ServerUnavailable as e:
            self.notes[label] = str(e)
            log(f"{label}: UNAVAILABLE: {e}")
            return
        log(f"{label}: started, pid {server.pid}, port {server.port}")
        try:
            scenarios = args.scenarios
            if "connections" in scenarios:
                self.scenario_connections(server)
            if "fanout" in scenarios:
                for n in args.subscribers:
                    self.scenario_fanout(server, "ws", n)
            if "sse" in scenarios:
                self.scenario_fanout(server, "sse", args.sse_subscribers)
            if "fanin" in scenarios:
                self.scenario_fanin(server)
            if "rest" in scenarios:
                self.scenario_rest(server)
            if "durability" in scenarios:
                self.scenario_durability(server)
        except Exception as e:  # noqa: BLE001 - keep the other columns
            self.notes[label] = f"failed: {e}"
            log(f"{label}: FAILED: {e}")
        finally:
            server.stop()

    def run(self) -> None:
        args = self.args
        for variant in args.variants:
            for name in args.servers:
                label = f"{name} {'wss' if variant == 'tls' else 'ws'}"
                self.column(name, variant)
                if name == "yeti":
                    self.run_server(
                        lambda v=variant: start_yeti(
                            args.scratch, v, max(10000, args.connections + 100)
                        ),
                        label,
                    )
                else:
                    self.run_server(
                        lambda v=variant: start_harperdb(args.scratch, args.harperdb_dir, v), label
                    )
        if "durability" in args.scenarios and "yeti" in args.servers and os.path.isdir("/dev/shm"):
            shm = tempfile.mkdtemp(prefix="yeti-bench-", dir="/dev/shm")
            try:
                server = start_yeti(args.scratch, "plain", 10000, root=shm, label="-tmpfs")
                try:
                    # reported in the "yeti ws" column, next to the run on disk
                    self.scenario_durability(server, "durability_tmpfs")
                finally:
                    server.stop()
            except ServerUnavailable as e:
                self.notes["yeti tmpfs"] = str(e)
            finally:
                shutil.rmtree(shm, ignore_errors=True)


# -- the table --------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _quantiles(latency: dict[str, float | None], *names: str) -> str:
    return " / ".join(_ms(latency[name]) for name in names)


def _generator_cpu(generator: dict[str, Any]) -> str:
    """Total generator CPU %, and per process (writer + subscriber processes) if several."""
    total = f"{generator['cpu_pct']:.0f}"
    processes = generator.get("processes")
    if not processes:
        return total
    return total + " (" + " + ".join(f"{p['cpu_pct']:.0f}" for p in processes) + ")"


def _rate_p50(result: dict[str, Any]) -> str:
    return f"{_rate(result['per_s'])} ({_ms(result['latency_ms']['p50'])})"


def table(bench: Bench) -> str:
    args = bench.args
    columns = list(bench.results)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = []

    def fanout_rows(key: str, title: str) -> None:
        rows.append((f"{title}: delivered msg/s", lambda c: _rate(c[key]["msgs_per_s"])))
        rows.append(
            (
                f"{title}: latency p50 / p99 / max ms",
                lambda c: " / ".join(_ms(c[key]["latency_ms"][q]) for q in ("p50", "p99", "max")),
            )
        )
        rows.append(
            (
                f"{title}: missing / duplicated",
                lambda c: (
                    f"{c[key]['missing']} / {c[key]['duplicated']}"
                    + (f" ({c[key]['closed_early']} cut off)" if c[key]["closed_early"] else "")
                ),
            )
        )
        rows.append(
            (
                f"{title}: server CPU % / generator CPU % (writer + subscribers)"
                " / all cores busy %",
                lambda c: (
                    f"{c[key].get('server_cpu_pct', 0):.0f} / {_generator_cpu(c[key]['generator'])}"
                    f" / {c[key].get('machine_busy_pct', 0):.0f}"
                ),
            )
        )

    if "connections" in args.scenarios:
        n = args.connections
        rows.append(
            (
                f"idle WS connections held (of {n:,})",
                lambda c: (
                    f"{c['connections']['still_open']:,}"
                    + (
                        f" ({c['connections']['failed']} failed)"
                        if c["connections"]["failed"]
                        else ""
                    )
                ),
            )
        )
        rows.append(
            (
                "idle WS: server RSS per connection KiB",
                lambda c: f"{c['connections']['kib_per_conn']:.1f}",
            )
        )
    if "fanout" in args.scenarios:
        for n in args.subscribers:
            fanout_rows(f"ws-fanout-{n}", f"WS fan-out N={n:,} M={args.records:,}")
    if "sse" in args.scenarios:
        fanout_rows(
            f"sse-fanout-{args.sse_subscribers}",
            f"SSE fan-out N={args.sse_subscribers:,} M={args.records:,}",
        )
    if "fanin" in args.scenarios:
        title = f"WS fan-in {args.fanin_clients} clients x {args.fanin_records}"
        rows.append(
            (
                f"{title}: stored records/s (seen by a subscriber)",
                lambda c: _rate(c["fanin"]["observed_per_s"]),
            )
        )
        rows.append(
            (
                f"{title}: stored / sent",
                lambda c: (
                    f"{c['fanin']['stored'] if c['fanin']['stored'] is not None else '?'}"
                    f" / {c['fanin']['sent']}"
                ),
            )
        )
    if "rest" in args.scenarios:
        title = f"REST {args.rest_clients} clients"
        for kind in ("writes", "reads"):
            rows.append((f"{title}: {kind}/s", lambda c, k=kind: _rate(c["rest"][k]["per_s"])))
            rows.append(
                (
                    f"{title}: {kind} p50 / p99 ms",
                    lambda c, k=kind: (
                        _quantiles(c["rest"][k]["latency_ms"], "p50", "p99")
                        + (f" ({c['rest'][k]['errors']} errors)" if c["rest"][k]["errors"] else "")
                    ),
                )
            )
        rows.append(
            (
                f"{title}: reactor probe during writes p99 / max ms",
                lambda c: (
                    "n/a"
                    if not c["rest"]["writes"].get("probe_ms")
                    else _quantiles(c["rest"]["writes"]["probe_ms"], "p99", "max")
                ),
            )
        )
    if "durability" in args.scenarios:
        rows.append(
            (
                "durable writes, 1 sequential writer: writes/s (p50 ms)",
                lambda c: _rate_p50(c["durability"]),
            )
        )
        rows.append(
            (
                "same, data on tmpfs (no fsync cost): writes/s (p50 ms)",
                lambda c: _rate_p50(c["durability_tmpfs"]) if "durability_tmpfs" in c else "n/a",
            )
        )

    header = "| scenario | " + " | ".join(columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for title, cell in rows:
        cells = []
        for column in columns:
            data = bench.results[column]
            try:
                cells.append(cell(data))
            except (KeyError, TypeError):
                cells.append("n/a")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for label, note in bench.notes.items():
        lines.append("")
        lines.append(f"{label}: {note}")
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for module in ("twisted", "autobahn", "orjson", "OpenSSL"):
        try:
            from importlib.metadata import version

            dist = {"OpenSSL": "pyOpenSSL"}.get(module, module)
            versions.append(f"{dist} {version(dist)}")
        except Exception:  # noqa: BLE001
            versions.append(f"{module} not installed")
    try:  # Autobahn's native UTF-8 validator and XOR masker (it no longer uses wsaccel)
        from autobahn.websocket import USES_NVX

        versions.append(f"Autobahn NVX {'on' if USES_NVX else 'off'}")
    except ImportError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    hdb = harperdb_version(args.harperdb_dir) if "harperdb" in args.servers else None
    return (
        f"{os.cpu_count()} cores, {model}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {', '.join(versions)}; Node {node}; "
        f"HarperDB {hdb or 'not run'}"
    )


# -- command line ----------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x for x in text.split(",") if x]
        bad = [x for x in names if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        type=_names(("yeti", "harperdb")),
        default=["yeti", "harperdb"],
        help="comma-separated: yeti,harperdb (default both)",
    )
    parser.add_argument(
        "--variants",
        type=_names(("plain", "tls")),
        default=["plain", "tls"],
        help="comma-separated: plain (ws/http), tls (wss/https); default both",
    )
    parser.add_argument(
        "--scenarios",
        type=_names(ALL_SCENARIOS),
        default=list(ALL_SCENARIOS),
        help=f"comma-separated, from {','.join(ALL_SCENARIOS)} (default all)",
    )
    parser.add_argument(
        "--subscribers",
        type=_ints,
        default=[1000, 4000],
        help="WS fan-out subscriber counts (default 1000,4000)",
    )
    parser.add_argument(
        "--records", type=int, default=2000, help="records POSTed per fan-out run (default 2000)"
    )
    parser.add_argument("--sse-subscribers", type=int, default=1000)
    parser.add_argument(
        "--generators",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 2) - 1)),
        help="fan-out (WS and SSE): generator processes the N subscribers are spread over; the "
        "writer is one more (default: cores - 1, between 1 and 4; one core is left to the server)",
    )
    parser.add_argument("--fanin-clients", type=int, default=100)
    parser.add_argument("--fanin-records", type=int, default=100, help="records per fan-in client")
    parser.add_argument("--rest-clients", type=int, default=50)
    parser.add_argument(
        "--rest-requests",
        type=int,
        default=20000,
        help="writes, then as many reads (default 20000)",
    )
    parser.add_argument(
        "--connections", type=int, default=10000, help="idle WebSocket connections (default 10000)"
    )
    parser.add_argument("--durability-writes", type=int, default=1000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="connection handshakes in flight while opening (default 50)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="seconds without a delivery before a fan-out run ends",
    )
    parser.add_argument(
        "--scratch", default=None, help="scratch directory (default: a new temp dir)"
    )
    parser.add_argument(
        "--harperdb-dir",
        default=None,
        help="where harperdb@4 is (or gets) npm-installed (default: <scratch>/harperdb-pkg)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy record Yeti during each WS fan-out into DIR",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(os.path.join(BENCH, "node_modules", "ws")):
        print("bench/node_modules/ws is missing: run `npm ci` in bench/ first", file=sys.stderr)
        return 2
    made_scratch = args.scratch is None
    args.scratch = os.path.abspath(args.scratch or tempfile.mkdtemp(prefix="yeti-bench-"))
    os.makedirs(args.scratch, exist_ok=True)
    args.harperdb_dir = os.path.abspath(
        args.harperdb_dir or os.path.join(args.scratch, "harperdb-pkg")
    )
    limit = raise_fd_limit()
    if limit < args.connections + 200:
        log(f"open-file limit is {limit}: fewer than {args.connections} connections may be held")
    log(f"scratch {args.scratch}; open-file limit {limit}")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        if made_scratch and not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print(f"Machine: {machine(args)}")
    print(f"Command: {command}")
    print()
    print(table(bench))
    for profile in bench.profiles:
        print()
        print(profile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(args),
                    "command": command,
                    "results": bench.results,
                    "notes": bench.notes,
                    "profiles": bench.profiles,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
