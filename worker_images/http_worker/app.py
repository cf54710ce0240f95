"""A worker-tier app (WorkerTask.http(port=8080, start=["python3", "app.py"])): the standard library, and boto3
to read inputs.

As under Elastic Beanstalk's worker tier, each task's message is POSTed to ``/`` with sqsd's headers; a 2xx
answer means done, anything else a failed attempt. This one counts the words of the message's ``text`` (or, as
`pipeline submit` sends tasks, of the input object ``<PIPELINE_PREFIX>input/<key>`` in ``PIPELINE_BUCKET``: the
app reads its inputs itself, with the worker's credentials, as a worker-tier app does) and answers
``{"outputs": {"words.json": ...}, "result": {...}}``: the worker writes the outputs once, under
``output/<task id>/``, and records the result. ``GET /`` answers 200, as a load balancer's health check expects.

Run it alone: ``PORT=8080 python3 app.py``, then ``curl -d '{"key": "a", "text": "to be or not"}' localhost:8080``.
"""

from __future__ import annotations

import collections
import json
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def count_words(text: str) -> dict[str, int]:
    """Each word's count, most frequent first."""
    counts = collections.Counter(re.findall(r"[\w']+", text.lower()))
    return dict(counts.most_common())


def read_input(key: str) -> str | None:
    """The task's input object as text, from the fleet's bucket and prefix (None when there is none)."""
    import boto3  # here: an app given its text needs no AWS SDK

    s3 = boto3.client("s3")
    try:
        body = s3.get_object(
            Bucket=os.environ["PIPELINE_BUCKET"], Key=f"{os.environ.get('PIPELINE_PREFIX', '')}input/{key}"
        )
    except s3.exceptions.NoSuchKey:
        return None
    return body["Body"].read().decode("utf-8", errors="replace")


class TaskHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(200, {"status": "ok"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            message = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self._answer(400, {"error": "the message is not JSON"})
            return
        if not isinstance(message, dict) or not isinstance(message.get("text") or message.get("key"), str):
            self._answer(400, {"error": 'no "text" or "key" in the message'})
            return
        text = message.get("text")
        if not isinstance(text, str):
            text = read_input(message["key"])
            if text is None:
                self._answer(404, {"error": f"no input object for key {message['key']!r}"})
                return
        counts = count_words(text)
        self.log_message(
            "task %s (message %s, receive %s): %d words",
            self.headers.get("X-Pipeline-Task-Id"),
            self.headers.get("X-Aws-Sqsd-Msgid"),
            self.headers.get("X-Aws-Sqsd-Receive-Count"),
            sum(counts.values()),
        )
        result = {"words": sum(counts.values()), "distinct": len(counts)}
        self._answer(200, {"outputs": {"words.json": json.dumps(counts)}, "result": result})

    def _answer(self, status: int, body: dict) -> None:
        # The error's text first, on its own line: the worker records the status and the body's first line.
        data = (body["error"] + "\n").encode() if "error" in body else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if "error" in body else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), TaskHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
