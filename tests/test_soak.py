"""
The bounded soak (C{bench/soak.py}) in its CI form: 60 seconds (the script's
default is 120) of mixed REST writes and WebSocket and SSE subscribers
joining and leaving, against a C{twistd -n yeti} child process.  Run the
script by hand for longer soaks.  Its summary line is printed in the test
output.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.harness import REPO

SECONDS = 60
RSS_MARGIN_MIB = 20
FD_MARGIN = 5


class SoakTests(unittest.TestCase):
    timeout = SECONDS + 90

    async def test_soak(self) -> None:
        """
        After the soak, the daemon's RSS and open file descriptors are back
        within their margins of the baseline, no connection, topic or
        subscriber is left, every acknowledged write reached every subscriber
        that stayed connected exactly once, and SIGTERM exits 0.
        """
        out = os.path.abspath(self.mktemp())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable,
            [os.path.join(REPO, "bench", "soak.py"), "--seconds", str(SECONDS),
             "--rss-margin", str(RSS_MARGIN_MIB), "--fd-margin", str(FD_MARGIN),
             "--json", out],
            env=env, path=REPO, reactor=reactor,
        )
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        print("\n" + (lines[0] if lines else "(no output)"))
        self.assertEqual(code, 0, (stdout + stderr).decode("utf-8", "replace")[-4000:])
        with open(out) as f:
            result = json.load(f)
        self.assertEqual([k for k, ok in result["checks"].items() if not ok], [])
        self.assertGreaterEqual(result["seconds"], SECONDS)
        # enough happened for the figures to mean something
        self.assertGreater(result["writes"], 500)
        self.assertGreater(result["acked_deletes"], 10)
        self.assertGreater(result["ws_cycles"], 100)
        self.assertGreater(result["sse_cycles"], 50)
        self.assertEqual((result["lost"], result["duplicated"]), (0, 0))
        self.assertLessEqual(result["rss_delta_mib"], RSS_MARGIN_MIB)
        self.assertLessEqual(result["fds"][1] - result["fds"][0], FD_MARGIN)
        self.assertEqual(result["end_counts"],
                         {"websocket": 0, "sse": 0, "topics": 0, "subscribers": 0})
