"""Run a synthesized pipeline locally: an embedded moto server for the data plane, local processes for the
compute (Lambda, Batch jobs, fleet workers), wired as the template wires them. See ``python -m
pipeline_constructs.local --help``.
"""

# Where a serving local run says where it runs; the operator CLI reads it with --local.
LOCAL_STATE_FILE = ".demo/local-run.json"
#: How often the local run's HTTP servers (Batch, Auto Scaling, IAM proxies, instance metadata) look for a
#: shutdown: each waits up to this long to close, and a run closes several at its end (socketserver: 0.5 s).
SERVER_POLL_SECONDS = 0.05
