"""A small Auto Scaling endpoint for local workers: what a worker calls on its group, recorded.

moto does not implement CompleteLifecycleAction, so local workers (``AWS_ENDPOINT_URL_AUTO_SCALING``) talk
to this instead: CompleteLifecycleAction and SetInstanceProtection over the Query protocol boto3 uses,
each call kept in :attr:`LocalAutoScaling.calls` for the run's summary and for tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

NAMESPACE = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
HANDLED = ("CompleteLifecycleAction", "SetInstanceProtection")


class LocalAutoScaling(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
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
                self._reply(200, _result(action))

            def _reply(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, name="local-autoscaling", daemon=True).start()

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


def _result(action: str) -> str:
    return (
        f'<{action}Response xmlns="{NAMESPACE}"><{action}Result/>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>"
    )


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
