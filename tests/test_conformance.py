"""
WebSocket conformance: the Autobahn test suite (C{wstest -m fuzzingclient},
groups 1 to 10) against the real daemon, over ws:// and wss://.

The daemon runs in-process on trial's reactor with the production site,
factory, TLS and limits, plus the test application C{tests/apps/echo}, whose
custom resource C{/echo/Echo} sends every message back unchanged.  The suite
is the Python 3 build in C{../shared/tools/wstest} (next to the repository;
C{WSTEST_TOOLS} overrides), installed once into C{WSTEST_VENV} (default
C{$TMPDIR/wstest-venv}, reused while it is valid) and run as a child process.

One limit differs from the defaults: C{ws.maxMessageSize} is 16 MiB, because
cases 9.1.x and 9.2.x echo messages of up to 16 MiB.  C{ws.maxMessagesPerSecond}
stays at its default (1000): cases 9.7.x and 9.8.x send exactly 1000 messages
per connection, in about 0.2 s, which that limit allows.

Permessage-deflate (groups 12 and 13) is excluded: the daemon does not offer
it, so those cases only ever come out UNIMPLEMENTED (cleanly declined).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.harness import HERE, REPO, Daemon, write_config

TOOLS = os.environ.get("WSTEST_TOOLS") or os.path.join(
    os.path.dirname(REPO), "shared", "tools", "wstest"
)
VENV = os.environ.get("WSTEST_VENV") or os.path.join(tempfile.gettempdir(), "wstest-venv")
ECHO_APP = os.path.join(HERE, "apps", "echo")
# the suite has no group 8 (and no 11); 12 and 13 are permessage-deflate
GROUPS = {"1", "2", "3", "4", "5", "6", "7", "9", "10"}
EXCLUDE = '["12.*", "13.*"]'
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
RUN_TIMEOUT = 300  # seconds; the runner kills wstest after this (trial's timeout is 600)

# wstest's verdicts that count as passed (see summarize.py); anything else fails
PASSED = ("OK", "NON-STRICT", "INFORMATIONAL")
CLOSE_PASSED = ("OK", "INFORMATIONAL")


class _Collect(ProcessProtocol):
    """Gather a child's stdout and stderr; fire C{ended} with (exit code, output)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[tuple[int, str]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        text = self.output.decode("utf-8", "replace")
        if reason.check(ProcessDone):
            code = 0
        else:
            # ProcessTerminated: an exit status, or a signal (reported as 128 + signal)
            exited = reason.value.exitCode
            code = exited if exited is not None else 128 + (reason.value.signal or 0)
        self.ended.callback((code, text))


def run(
    executable: str, args: list[str], env: dict[str, str] | None = None
) -> Deferred[tuple[int, str]]:
    """Run a child process without blocking the reactor; (exit code, stdout + stderr)."""
    protocol = _Collect()
    reactor.spawnProcess(
        protocol, executable, [executable, *args], env={**_clean_environ(), **(env or {})}
    )
    return protocol.ended


def _clean_environ() -> dict[str, str]:
    """
    Our environment without PYTHONPATH: trial's workers (C{-j}) set it to
    this venv's path, which would shadow the suite's own (old) Autobahn.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


async def ensure_wstest(venv: str) -> str:
    """
    Install the patched wstest into C{venv} unless a working one is there;
    return its C{wstest -a} output.  A lock file keeps concurrent runs from
    installing into the same venv at once.
    """
    install = os.path.join(TOOLS, "install_wstest_py3.sh")
    if not os.path.isfile(install):
        raise AssertionError(f"the wstest tools are missing: {install} (set WSTEST_TOOLS)")
    flock = shutil.which("flock")
    if flock is None:
        raise AssertionError("flock(1) is needed to install wstest (util-linux)")
    script = (
        'out=$("$1/bin/wstest" -a 2>&1) && case "$out" in *+py3*) echo "$out"; exit 0;; esac; '
        '"$2" "$1"'
    )
    code, output = await run(flock, [venv + ".lock", "sh", "-c", script, "sh", venv, install])
    if code != 0 or "+py3" not in output:
        raise AssertionError(f"cannot install wstest into {venv} (exit {code}):\n{output}")
    return output


class AutobahnConformanceTests(unittest.TestCase):
    """The Autobahn fuzzing client finds no failing case in groups 1 to 10."""

    timeout = 600

    async def fuzz(self, tls: bool) -> None:
        """Run groups 1-10 against C{/echo/Echo}; fail on any case that did not pass."""
        await ensure_wstest(VENV)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        daemon = Daemon(
            write_config(root, [ECHO_APP], tls=tls, ws={"maxMessageSize": MAX_MESSAGE_SIZE})
        )
        daemon.start()
        self.addCleanup(daemon.stop)

        scheme = "wss" if tls else "ws"
        url = f"{scheme}://127.0.0.1:{daemon.port}/echo/Echo"
        agent = f"yeti-{scheme}"
        outdir = os.path.join(root, "reports")
        started = time.monotonic()
        code, output = await run(
            os.path.join(TOOLS, "run_fuzzingclient.sh"),
            [url, outdir, agent],
            env={
                "WSTEST_VENV": VENV,
                "WSTEST_CASES": '["*"]',
                "WSTEST_EXCLUDE": EXCLUDE,
                "WSTEST_TIMEOUT": str(RUN_TIMEOUT),
            },
        )
        elapsed = time.monotonic() - started
        lines = output.strip().splitlines()
        summary = lines[-1] if lines else "(no output)"
        print(f"\n{scheme}: {summary}  ({elapsed:.0f} s, reports in {outdir})")

        try:
            with open(os.path.join(outdir, "index.json"), encoding="utf-8") as f:
                cases: dict[str, Any] = json.load(f)[agent]
        except (OSError, ValueError, KeyError) as e:
            self.fail(f"wstest wrote no report ({e!r}); exit {code}:\n{output}")
        not_passed = sorted(
            f"{cid}: {r.get('behavior')} (close {r.get('behaviorClose')})"
            for cid, r in cases.items()
            if r.get("behavior") not in PASSED or r.get("behaviorClose") not in CLOSE_PASSED
        )
        self.assertEqual(not_passed, [], f"cases that did not pass over {scheme}:\n{output}")
        self.assertEqual({cid.split(".")[0] for cid in cases}, GROUPS, "groups 1-10 ran")
        self.assertEqual(code, 0, output)
        self.assertRegex(summary, r"^wstest: [1-9]\d* passed, 0 failed$")

    async def test_ws(self) -> None:
        """Over ws://, every case of groups 1 to 10 passes (OK, NON-STRICT or INFORMATIONAL)."""
        await self.fuzz(tls=False)

    async def test_wss(self) -> None:
        """Over wss:// (production TLS), every case of groups 1 to 10 passes."""
        await self.fuzz(tls=True)
