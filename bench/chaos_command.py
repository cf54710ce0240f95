#!/usr/bin/env python3
"""The chaos benchmark's task as a command (``PIPELINE_TASK_KIND=command``,
``PIPELINE_COMMAND=["python3", "<this file>"]``): the body from ``PIPELINE_MESSAGE_PATH``, the input (when the
body asks to read it) from ``PIPELINE_INPUT_PATH``, the outputs written into ``PIPELINE_OUTPUT_DIR``; a failure
is exit code 1 with the error on stderr (the row's reason ends with it).

Each long output name (:data:`bench.chaos_tasks.LONG_NAME`, 960 bytes) is longer than a file name may be
(255 bytes): it is written as nested folders whose path is the name, so the output keeps its length.
``result_bytes`` does not apply: a command returns no result, only outputs (the bench skips the mode here).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the bench package, run as a plain script

from bench.chaos_tasks import perform, record_run

#: The longest file name a Linux file system takes, in bytes.
NAME_MAX = 255


def as_path(name: str) -> str:
    """An output name cut into path parts no longer than a file name may be."""
    return "/".join(name[start : start + NAME_MAX] for start in range(0, len(name), NAME_MAX))


def main() -> int:
    task_id, attempt = os.environ["PIPELINE_TASK_ID"], int(os.environ["PIPELINE_ATTEMPT"])
    message = Path(os.environ["PIPELINE_MESSAGE_PATH"]).read_text()
    try:
        body = json.loads(message)
    except ValueError:
        body = message
    input_path = os.environ.get("PIPELINE_INPUT_PATH", "")

    def read_input() -> bytes:
        if not input_path:
            raise FileNotFoundError(f"no input object for task {task_id}")
        return Path(input_path).read_bytes()

    try:
        outputs, result = perform(task_id, attempt, body, read_input)
    except Exception as error:  # the task's failure: its reason on stderr, as the worker records it
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    folder = Path(os.environ["PIPELINE_OUTPUT_DIR"])
    for name, content in outputs.items():
        path = folder / as_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    record_run(task_id, attempt, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
