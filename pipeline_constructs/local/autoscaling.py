"""A small Auto Scaling endpoint for the local run: what workers and producers call on a group, recorded.

moto does not implement CompleteLifecycleAction, so local workers (``AWS_ENDPOINT_URL_AUTO_SCALING``) talk
to this instead: CompleteLifecycleAction and SetInstanceProtection over the Query protocol boto3 uses,
each call kept in :attr:`LocalAutoScaling.calls` for the run's summary and for tests. Groups registered
with :meth:`LocalAutoScaling.register_group` also answer DescribeAutoScalingGroups and SetDesiredCapacity,
which start and stop their local workers (a wake from zero).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from pipeline_constructs.local import serve_in_background

NAMESPACE = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
HANDLED = ("CompleteLifecycleAction", "SetInstanceProtection", "DescribeAutoScalingGroups", "SetDesiredCapacity")


@dataclass
class LocalGroup:
    """A group whose desired capacity the local run acts on: ``on_desired(n)`` sets its worker count."""

    name: str
    max_size: int
    desired: int
    on_desired: Callable[[int], None]


class LocalAutoScaling(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.groups: dict[str, LocalGroup] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fields = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                action = fields.pop("Action", "")
                fields.pop("Version", None)
                if action not in HANDLED:
                    self._reply(400, _error("InvalidAction", f"{action} is not emulated locally"))
                    return
                with server._lock:
                    server.calls.append({"action": action, "at": time.time(), **fields})
                if action == "DescribeAutoScalingGroups":
                    names = [v for k, v in fields.items() if k.startswith("AutoScalingGroupNames.member.")]
                    self._reply(200, _result(action, server._describe(names)))
                    return
                if action == "SetDesiredCapacity":
                    error = server._set_desired(fields.get("AutoScalingGroupName", ""), fields.get("DesiredCapacity"))
                    if error:
                        self._reply(400, _error("ValidationError", error))
                        return
                self._reply(200, _result(action))

            def _reply(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        serve_in_background(self, "local-autoscaling")

    def register_group(self, group: LocalGroup) -> None:
        with self._lock:
            self.groups[group.name] = group

    def _describe(self, names: list[str]) -> str:
        with self._lock:
            groups = [g for name, g in self.groups.items() if not names or name in names]
        members = "".join(
            f"<member><AutoScalingGroupName>{escape(g.name)}</AutoScalingGroupName><MinSize>0</MinSize>"
            f"<MaxSize>{g.max_size}</MaxSize><DesiredCapacity>{g.desired}</DesiredCapacity>"
            "<DefaultCooldown>300</DefaultCooldown><AvailabilityZones/><HealthCheckType>EC2</HealthCheckType>"
            "<CreatedTime>2026-01-01T00:00:00Z</CreatedTime></member>"
            for g in groups
        )
        return f"<AutoScalingGroups>{members}</AutoScalingGroups>"

    def _set_desired(self, name: str, raw: str | None) -> str:
        with self._lock:
            group = self.groups.get(name)
        if group is None:
            return f"AutoScalingGroup name not found - {name}"
        desired = int(raw or -1)
        if not 0 <= desired <= group.max_size:
            return f"New SetDesiredCapacity value {desired} is outside the range 0 to {group.max_size}"
        group.desired = desired
        group.on_desired(desired)
        return ""

    def desired_capacity_changes(self, group: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c["action"] == "SetDesiredCapacity" and group in (None, c.get("AutoScalingGroupName"))
            ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def completed_lifecycle_actions(self, group: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c["action"] == "CompleteLifecycleAction" and group in (None, c.get("AutoScalingGroupName"))
            ]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _result(action: str, body: str = "") -> str:
    return (
        f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{body}</{action}Result>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>"
    )


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
