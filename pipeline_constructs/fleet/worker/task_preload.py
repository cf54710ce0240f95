"""Imported by the task processes' fork server only (see :class:`.isolation.TaskProcess`): boto3's default
session with its S3 models already parsed, which every task process forks with.

A task process makes its S3 client on first use; parsing botocore's S3 model and endpoint rules for it cost each
process about 80 ms of CPU, paid again by every process a timeout or crash replaces. Parsed here once, before any
fork, they are shared copy-on-write. Nothing here resolves credentials or opens a connection: each process still
does both for itself, on its first call.
"""

from __future__ import annotations

import contextlib

import boto3

#: What an S3 client's creation reads from botocore's data files (measured: every file it reads).
_SHARED_DATA = ("endpoints", "partitions", "sdk-default-configuration")


def parse_s3_models() -> None:
    """Into the default session's loader, which keeps what it parsed under the arguments it was asked with:
    those a client asks with (``api_version=None`` by name, as botocore's client creator passes it)."""
    loader = boto3._get_default_session()._session.get_component("data_loader")
    for name in _SHARED_DATA:
        loader.load_data(name)
    for kind in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("s3", kind, api_version=None)


# Only a saving: a preload that raises kills the fork server, which would then start no task process at all (an
# older botocore in a worker's lock, say, without one of these files).
with contextlib.suppress(Exception):
    parse_s3_models()
