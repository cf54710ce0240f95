"""The chaos benchmark's task as a worker-tier app (``PIPELINE_TASK_KIND=http``,
``PIPELINE_HTTP_START=["python3", "<this file>"]``), on ``127.0.0.1:$PORT``: each POSTed body does what
:func:`bench.chaos_tasks.perform` says, for the task and attempt its headers name; the outputs (each one's
text) and the result come back in the JSON answer, a failure is a 500 whose first line is the error. The
app reads a task's input itself, through the worker's endpoint (its proxy, and so its faults).

A hung task's handler goes on sleeping after the worker gave up on it (the app is not restarted with
several tasks at once): harmless here, as it never answers.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the bench package, run as a plain script

from bench.chaos_tasks import perform, record_run

S3 = boto3.client("s3")  # one for every request: clients are thread safe


class ChaosHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        task_id, attempt = self.headers["X-Pipeline-Task-Id"], int(self.headers["X-Pipeline-Attempt"])
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")

        def read_input() -> bytes:
            key = f"{os.environ.get('PIPELINE_PREFIX', '')}input/{task_id}"
            return S3.get_object(Bucket=os.environ["PIPELINE_BUCKET"], Key=key)["Body"].read()

        try:
            outputs, result = perform(task_id, attempt, body, read_input)
        except Exception as error:  # the task's failure: the worker records the status and the first line
            self._answer(500, f"{type(error).__name__}: {error}\n".encode(), "text/plain")
            return
        record_run(task_id, attempt, result)
        answer = {"outputs": {name: content.decode() for name, content in outputs.items()}, "result": result}
        self._answer(200, json.dumps(answer).encode(), "application/json")

    def _answer(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per request would bury the worker's log."""


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), ChaosHandler).serve_forever()
