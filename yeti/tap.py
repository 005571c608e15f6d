"""
C{twistd yeti}: command-line options and the entry point that builds the
service tree (L{yeti.service}).
"""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from yeti.config import load_config
from yeti.errors import ConfigError
from yeti.service import CleanExitOnSIGTERM, make_service_from_config


class Options(usage.Options):
    optParameters = [
        ["config", "c", "etc/config.yaml", "Path to the server config.yaml."],
    ]


def makeService(options: Options) -> service.MultiService:
    """
    twistd entry point.  A bad configuration exits with one line naming the
    file and key (twistd prints a traceback for any other exception).
    """
    from twisted.internet import reactor

    try:
        config = load_config(options["config"])
        root = make_service_from_config(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"twistd yeti: {e}") from None
    CleanExitOnSIGTERM(reactor).setServiceParent(root)
    return root
