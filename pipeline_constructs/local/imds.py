"""A stand-in for the EC2 instance metadata service (IMDSv2): spot notices and lifecycle terminations, locally."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline_constructs.local import serve_in_background

TOKEN = "local-imds-token"


class FakeInstanceMetadata(ThreadingHTTPServer):
    """Answers ``PUT /latest/api/token`` and token-signed GETs; ``spot/instance-action`` 404s until
    :meth:`interrupt` is called, as on a spot instance before and after its two-minute warning."""

    daemon_threads = True

    def __init__(self, *, instance_id: str = "i-local", group: str = "") -> None:
        self.notice: dict[str, Any] | None = None
        self.tokens_issued = 0
        self.paths = {
            "/latest/meta-data/instance-id": instance_id,
            "/latest/meta-data/tags/instance/aws:autoscaling:groupName": group,
            "/latest/meta-data/autoscaling/target-lifecycle-state": "InService",
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400, b"")
                    return
                server.tokens_issued += 1
                self._reply(200, TOKEN.encode())

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    self._reply(401, b"")
                elif self.path == "/latest/meta-data/spot/instance-action" and server.notice:
                    self._reply(200, json.dumps(server.notice).encode())
                elif server.paths.get(self.path):
                    self._reply(200, server.paths[self.path].encode())
                else:
                    self._reply(404, b"")

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        serve_in_background(self, "fake-imds")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def interrupt(self, when: str = "2026-01-01T00:02:00Z") -> None:
        self.notice = {"action": "terminate", "time": when}

    def terminate_lifecycle(self) -> None:
        """The group starts terminating the instance (scale-in, rebalance, refresh): a lifecycle hook waits."""
        self.paths["/latest/meta-data/autoscaling/target-lifecycle-state"] = "Terminated"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
