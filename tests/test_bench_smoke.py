"""
A smoke run of the benchmark (bench/run.py) with tiny parameters, so that it
cannot rot: it starts the real daemon, drives it with the Node.js generator
and must print its table with nothing missing or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")


def _ensure_generator() -> None:
    """Fail (never skip) without node; install the ws package with npm ci if needed."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed: the benchmark's load generator needs Node.js")
    if not os.path.isdir(os.path.join(BENCH, "node_modules", "ws")):
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError("npm is not installed: cannot install bench/'s ws package")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=BENCH,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise AssertionError(f"npm ci in bench/ failed: {result.stderr[-2000:]}")
    check = subprocess.run(
        [node, "-e", "require('ws')"], cwd=BENCH, capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise AssertionError(f"the ws package cannot be loaded: {check.stderr[-2000:]}")


class BenchSmokeTests(unittest.TestCase):
    timeout = 120

    def test_tiny_fanout_run(self) -> None:
        """
        A run with 5 subscribers (over 2 generator processes) and 10 records prints its
        table: 0 missing, 0 duplicated.
        """
        _ensure_generator()
        scratch = tempfile.mkdtemp(prefix="yeti-bench-smoke-")
        self.addCleanup(shutil.rmtree, scratch, True)
        out = os.path.join(scratch, "result.json")
        result = subprocess.run(
            [
                sys.executable,
                os.path.join(BENCH, "run.py"),
                "--servers",
                "yeti",
                "--variants",
                "plain",
                "--scenarios",
                "fanout",
                "--subscribers",
                "5",
                "--records",
                "10",
                "--generators",
                "2",
                "--scratch",
                os.path.join(scratch, "run"),
                "--json",
                out,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        stdout = result.stdout
        self.assertIn("| scenario | yeti ws |", stdout)
        self.assertIn("| WS fan-out N=5 M=10: missing / duplicated | 0 / 0 |", stdout)
        with open(out) as f:
            fanout = json.load(f)["results"]["yeti ws"]["ws-fanout-5"]
        self.assertEqual(fanout["subscribers"], 5)
        self.assertEqual(fanout["generators"], 2)
        roles = [p["role"] for p in fanout["generator"]["processes"]]
        self.assertEqual(roles, ["writer", "subscribers", "subscribers"])
        self.assertEqual(fanout["delivered"], 50)
        self.assertEqual(fanout["missing"], 0)
        self.assertEqual(fanout["duplicated"], 0)
        self.assertEqual(fanout["post_errors"], 0)
        self.assertGreater(fanout["msgs_per_s"], 0)


class ProfileSummaryTests(unittest.TestCase):
    """bench/run.py's summary of a py-spy profile (collapsed stacks with thread names)."""

    def test_reactor_sqlite_work_counted(self) -> None:
        """Reactor-thread samples inside SQLite work are counted; other threads' are not."""
        sys.path.insert(0, BENCH)
        self.addCleanup(sys.path.remove, BENCH)
        import run  # bench/run.py

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "thread (1): MainThread;doPoll (twisted/x.py:1);"
                "SQLiteStorage._fetch (yeti/storage.py:463) 5\n"
                "thread (1): MainThread;_fire (yeti/storage.py:400);render (yeti/rest.py:9) 2\n"
                "thread (1): MainThread;doPoll (twisted/x.py:1) 7\n"
                "thread (2): yeti-reader-0;SQLiteStorage._fetch (yeti/storage.py:463) 6\n"
                "thread (3): yeti-writer /d/a.sqlite3;_Writer._batch (yeti/storage.py:252) 4\n"
            )
        summary = run.summarise_profile(path)
        self.assertIn("threads: MainThread 58.3%, yeti-reader 25.0%, yeti-writer 16.7%", summary)
        self.assertIn("reactor thread (MainThread): 14 samples, 5 inside SQLite work", summary)
        self.assertIn("7 with yeti/storage.py in the stack", summary)
