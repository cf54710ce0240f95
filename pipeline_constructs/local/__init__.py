"""Run a synthesized pipeline locally: an embedded moto server for the data plane, local processes for the
compute (Lambda, Batch jobs, fleet workers), wired as the template wires them. See ``python -m
pipeline_constructs.local --help``.
"""

from __future__ import annotations

import threading
from socketserver import BaseServer

# Where a serving local run says where it runs; the operator CLI reads it with --local.
LOCAL_STATE_FILE = ".demo/local-run.json"
#: How often the local run's HTTP servers (Batch, Auto Scaling, IAM proxies, instance metadata) look for a
#: shutdown: each waits up to this long to close, and a run closes several at its end (socketserver: 0.5 s).
SERVER_POLL_SECONDS = 0.05


def serve_in_background(server: BaseServer, name: str) -> None:
    """Serve ``server`` on a daemon thread, looking for a shutdown every :data:`SERVER_POLL_SECONDS`."""
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SERVER_POLL_SECONDS}, name=name, daemon=True
    ).start()
