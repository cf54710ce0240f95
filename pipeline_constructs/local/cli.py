"""Command line of the local run: bring a synthesized stack up, drive it, show progress, judge the result.

python -m pipeline_constructs.local --env dev --demo                 # what `make demo` runs
python -m pipeline_constructs.local --env dev --fire DailyFeed       # fire one schedule, wait, report
python -m pipeline_constructs.local --env dev --demo --kill-worker-every 4 --poison 3 --spot-notice-after 6
python -m pipeline_constructs.local --stack Work --inputs photos/ --fleet Resize   # your own files, a task each
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape

from pipeline_constructs.local import (
    LOCAL_STATE_FILE,
    emulator_as_aws_behaves,
    serve_in_background,
)
from pipeline_constructs.local.display import print_summary, progress_view
from pipeline_constructs.local.faults import Faults
from pipeline_constructs.local.fleets import WorkerRequirementsError
from pipeline_constructs.local.runner import LocalPipeline, sample_feed
from pipeline_constructs.ops.assembly import (
    SYNTH_HINT,
    SynthesizedStack,
    find_stack,
    load_assembly,
    producers_of,
    refuse_nested_stacks,
)
from pipeline_constructs.ops.operator import OperatorError


class EmulatorMissing(RuntimeError):
    """moto is not installed: the ``local`` extra was left out."""


@contextlib.contextmanager
def embedded_emulator(endpoint: str | None) -> Iterator[str]:
    if endpoint:
        yield endpoint
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise EmulatorMissing(
            "the local run needs its emulator: pip install 'pipeline-constructs[local]' "
            "(or point --endpoint-url at one that runs)"
        ) from None

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    emulator_as_aws_behaves()  # atomic item operations, as DynamoDB's: the submit-once races rely on them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


#: Signals that end the run as Ctrl-C does: ``kill``'s default, CI's ``timeout``, a closed terminal.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class RunEnded(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised in the main thread as Ctrl-C's KeyboardInterrupt is, so the run ends
    as it does on Ctrl-C (workers stopped, state file and temporary folders removed), not with them orphaned."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """While the run is up, :data:`ENDING_SIGNALS` raise :class:`RunEnded` (once: a repeat does not cut the
    cleanup short). A handler, not SIG_IGN, so the processes the run starts still get the default."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; its caller owns them
        return
    ended: list[int] = []

    def end(signum: int, _frame: Any) -> None:
        if not ended:
            ended.append(signum)
            raise RunEnded(signum)

    previous = {each: signal.signal(each, end) for each in ENDING_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


class FeedServer(ThreadingHTTPServer):
    """Serves one gzipped feed at ``url`` with an ETag of its content, so the watcher's conditional GET works.

    ``body`` may be replaced while serving; ``honour_conditionals=False`` plays a server that ignores
    If-None-Match; ``requests`` keeps the headers of every GET.
    """

    daemon_threads = True

    def __init__(self, body: bytes, *, feed_path: str = "sample-feed.xml.gz", honour_conditionals: bool = True) -> None:
        server = self
        self.body = body
        self.feed_path = feed_path
        self.honour_conditionals = honour_conditionals
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(dict(self.headers))
                etag = server.etag
                if server.honour_conditionals and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

        super().__init__(("127.0.0.1", 0), Handler)
        serve_in_background(self, "feed-server")

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{self.feed_path}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline local",
        description="Run a synthesized pipeline locally.",
        epilog="A worker directory's requirements.lock is installed from its wheels/ once, into an environment "
        "cached under $PIPELINE_LOCAL_CACHE (default: ~/.cache/pipeline-constructs) and reused by later runs.",
    )
    _add_target_arguments(parser)
    _add_work_arguments(parser)
    _add_fault_arguments(parser)
    _add_output_arguments(parser)
    return parser


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Which stack runs, on which emulator."""
    parser.add_argument("--assembly", default="cdk.out", help="cloud assembly directory (default: cdk.out)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--env", default=None, help="the example app's environment (runs stack pipeline-<env>); your own app: --stack"
    )
    target.add_argument("--stack", default=None, help="stack name (default: the only or first stack)")
    parser.add_argument("--endpoint-url", default=None, help="use this AWS emulator instead of an embedded moto")


def _add_work_arguments(parser: argparse.ArgumentParser) -> None:
    """The work the run is given, and how its compute runs it."""
    parser.add_argument("--demo", action="store_true", help="serve a sample feed, fire every schedule, submit tasks")
    parser.add_argument("--fire", action="append", default=[], help="fire this schedule (repeatable; 'all')")
    parser.add_argument(
        "--no-schedules", action="store_true", help="with --demo: the sample tasks only, no schedule fired"
    )
    parser.add_argument("--tasks", type=int, default=20, help="sample tasks per first-stage fleet (with --demo)")
    parser.add_argument(
        "--inputs",
        nargs="+",
        default=[],
        metavar="PATH",
        help="your own files or folders: each file is uploaded under the fleet's input/ prefix and sent as one "
        "task (its key: the path under the folder, or the file name, as `pipeline submit` names it); with or "
        "without --demo",
    )
    parser.add_argument(
        "--fleet", default=None, help="with --inputs: the fleet to send them to (default: every first-stage fleet)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per fleet (default: 2)")
    parser.add_argument(
        "--set-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace a variable wherever the template sets it",
    )
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        default=15,
        help="cap on queue visibility timeouts, so redeliveries happen in seconds (default: 15)",
    )
    parser.add_argument("--timeout", type=float, default=150, help="seconds to wait for the work (default: 150)")
    parser.add_argument(
        "--from-zero",
        action="store_true",
        help="fleets start at zero workers, as after a quiet night; the sample tasks' submission wakes them "
        "(SetDesiredCapacity, as `pipeline submit` does) unless --no-wake",
    )
    parser.add_argument("--no-wake", action="store_true", help="with --from-zero: submit without waking the fleet")
    parser.add_argument(
        "--no-iam-check",
        action="store_true",
        help="let every call through; by default each call of a function, job or worker is checked against its "
        "role's policies in the template and a denied one fails the run, as AccessDenied would on AWS",
    )


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The faults to inject (:class:`.Faults`)."""
    parser.add_argument("--kill-worker-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--poison", type=int, default=0, metavar="N", help="add N tasks that always fail")
    parser.add_argument("--spot-notice-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument(
        "--lifecycle-terminate-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start terminating one worker's instance (scale-in, instance refresh): it drains and completes",
    )
    parser.add_argument("--fail-step", action="append", default=[], metavar="NAME", help="make this Batch step fail")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the run's logs, result and state go, and whether it stays up."""
    parser.add_argument("--logs", default=".demo/logs", help="where process logs go (default: .demo/logs)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no live progress table")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="stay up after the work (Ctrl-C, `kill` or a closed terminal ends it) so `pipeline ... --local` can "
        "be used",
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="after the work, the run's performance report (`pipeline report`): printed, and written to "
        "PATH.json and PATH.html (its throughput and backlog chart)",
    )
    parser.add_argument(
        "--state-file", default=LOCAL_STATE_FILE, help=f"where --serve says where it runs (default: {LOCAL_STATE_FILE})"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped or captured output gets room for whole table headers, not the 80 columns of no terminal.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if not args.endpoint_url and importlib.util.find_spec("moto") is None:
        console.print(
            "[red]error:[/] the local run needs its emulator: "
            + escape("pip install 'pipeline-constructs[local]' (or point --endpoint-url at one that runs)"),
            soft_wrap=True,  # one line, whatever the terminal's width
        )
        return 2
    try:
        stack, producers = _stack_to_run(args)
    except (FileNotFoundError, KeyError) as error:
        console.print(f"[red]error:[/] {str(error).strip(chr(39))}")
        return 2
    overrides = dict(item.split("=", 1) for item in args.set_env)
    log_dir = Path(args.logs)
    shutil.rmtree(log_dir, ignore_errors=True)
    feed_server = FeedServer(sample_feed(_feed_record_tag(stack), 40)) if args.demo else None
    if feed_server is not None:
        overrides.setdefault("FEED_URL", feed_server.url)
    started = time.monotonic()
    try:
        with signals_end_the_run(), embedded_emulator(args.endpoint_url) as endpoint:
            pipeline = _pipeline(args, stack, producers, endpoint=endpoint, overrides=overrides, log_dir=log_dir)
            try:
                result = _run(pipeline, args, console, started)
            except (WorkerRequirementsError, OperatorError, KeyError) as error:
                console.print(f"[red]error:[/] {escape(str(error).strip(chr(39)))}", soft_wrap=True)
                return 2
            finally:
                pipeline.stop()
                Path(args.state_file).unlink(missing_ok=True)
                if feed_server is not None:
                    feed_server.shutdown()
    except KeyboardInterrupt as interrupted:  # Ctrl-C, or RunEnded, before the work was done: all stopped
        signum = getattr(interrupted, "signum", signal.SIGINT)
        console.print(f"[red]interrupted[/] by {signal.Signals(signum).name}; every process stopped")
        return 128 + signum
    if result is None:
        return 2
    print_summary(console, result)
    _print_reasons(console, result)
    if result["timed_out"]:
        console.print(f"[red]timed out after {args.timeout:g} s with work still in progress[/]")
    console.print(f"(logs of every process in {log_dir}/; {result['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["ok"] else 1


def _stack_to_run(args: argparse.Namespace) -> tuple[SynthesizedStack, list[SynthesizedStack]]:
    """(the stack ``--env`` or ``--stack`` names, or the first; the stacks it imports from)."""
    stacks = load_assembly(args.assembly)
    if args.env:
        stack = find_stack(stacks, f"pipeline-{args.env}")
    elif args.stack:
        stack = find_stack(stacks, args.stack)
    elif stacks:
        stack = stacks[0]
    else:
        raise KeyError(f"no stacks in {args.assembly}: {SYNTH_HINT}")
    refuse_nested_stacks(stack)
    return stack, producers_of(stack, stacks)


def _feed_record_tag(stack: SynthesizedStack) -> str:
    """The record element the stack's feed steps read (``FEED_RECORD_TAG``), for the demo's sample feed."""
    tags = {
        e["Value"]
        for r in stack.resources_of_type("AWS::Batch::JobDefinition").values()
        for e in r["Properties"].get("ContainerProperties", {}).get("Environment", [])
        if e.get("Name") == "FEED_RECORD_TAG" and isinstance(e.get("Value"), str)
    }
    return next(iter(tags), "item")


def _pipeline(
    args: argparse.Namespace,
    stack: SynthesizedStack,
    producers: list[SynthesizedStack],
    *,
    endpoint: str,
    overrides: dict[str, str],
    log_dir: Path,
) -> LocalPipeline:
    faults = Faults(
        args.kill_worker_every,
        args.poison,
        args.spot_notice_after,
        set(args.fail_step),
        lifecycle_after=args.lifecycle_terminate_after,
    )
    return LocalPipeline(
        stack,
        Path(args.assembly),
        endpoint=endpoint,
        region=stack.region or "us-east-1",
        log_dir=log_dir,
        workers_per_fleet=args.workers,
        visibility_timeout=args.visibility_timeout,
        env_overrides=overrides,
        faults=faults,
        from_zero=args.from_zero,
        wake=not args.no_wake,
        iam_check=not args.no_iam_check,
        producers=producers,
    )


def _run(pipeline: LocalPipeline, args: argparse.Namespace, console: Console, started: float) -> dict[str, Any] | None:
    """Start the run, give it its work, wait for it (and serve, with ``--serve``); its result, with
    ``timed_out`` and ``seconds``, or None when a schedule to fire does not exist."""
    pipeline.start()
    pipeline.write_state(Path(args.state_file))
    console.print(
        f"[bold]{pipeline.stack.name}[/] up on {pipeline.clients.endpoint} (account {pipeline.resolver.account}, "
        f"region {pipeline.resolver.region}): {len(pipeline.functions)} function(s), "
        f"{len(pipeline.batch.definitions) if pipeline.batch else 0} job definition(s), "
        f"{len(pipeline.fleets)} fleet(s), schedules: {', '.join(pipeline.schedule_names()) or 'none'}"
    )

    def wait(timeout: float) -> bool:
        if args.quiet:
            return pipeline.wait_until_idle(timeout)
        with Live(progress_view(pipeline, started), console=console, refresh_per_second=2) as live:
            return pipeline.wait_until_idle(timeout, on_tick=lambda: live.update(progress_view(pipeline, started)))

    # The day's tasks first, then the nightly schedules (which may report on those tasks).
    idle = wait(args.timeout) if _submit_tasks(pipeline, args, console) else True
    fire = args.fire or (["all"] if args.demo and pipeline.schedules and not args.no_schedules else [])
    for name in fire:
        try:
            for fired in pipeline.fire(name):
                console.print(f"fired schedule {fired}")
        except KeyError as error:
            console.print(f"[red]error:[/] {str(error).strip(chr(39))}")
            return None
    idle = wait(max(10.0, args.timeout - (time.monotonic() - started))) and idle
    if args.demo:
        pipeline.fire_alarms()  # what became of each notification: in the result and its summary
    if args.report:
        _write_report(console, args.state_file, Path(args.report))
    if args.serve:
        _serve(pipeline, console, args.state_file)
    result = pipeline.result()
    result["timed_out"] = not idle
    result["ok"] = result["ok"] and idle
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _submit_tasks(pipeline: LocalPipeline, args: argparse.Namespace, console: Console) -> bool:
    """The demo's sample tasks and the user's ``--inputs``; True when any task was sent (then wait for it)."""
    sent = False
    if args.demo:
        pipeline.submit_sample_tasks(args.tasks)
        sent = bool(args.tasks or args.poison)
    if args.inputs:
        count = pipeline.submit_inputs(args.inputs, args.fleet)
        console.print(f"sent {count} input file(s) from {', '.join(args.inputs)}, one task each")
        sent = sent or count > 0
    return sent


def _write_report(console: Console, state_file: str, path: Path) -> None:
    """`pipeline report --local` of this run while it still serves: its tables, its figures and its chart."""
    from pipeline_constructs.ops import operator
    from pipeline_constructs.ops import report as performance

    figures = performance.gather(operator.connect(None, local=True, state_file=state_file))
    performance.render(figures, console)
    path.parent.mkdir(parents=True, exist_ok=True)
    performance.write_json(figures, path.with_suffix(".json"))
    performance.write_chart(figures, path.with_suffix(".html"))
    console.print(f"report written to {path.with_suffix('.json')} and {path.with_suffix('.html')}")


def _print_reasons(console: Console, result: dict[str, Any]) -> None:
    """Why each failed job, worker restart and dead letter failed, and the log that says more."""
    for item in result.get("reasons", []):
        where = f" (log: {item['log']})" if item["log"] else ""
        console.print(f"[red]{escape(item['what'])}[/]: {escape(item['reason'] + where)}", soft_wrap=True)


def _serve(pipeline: LocalPipeline, console: Console, state_file: str) -> None:
    """Stay up, schedules firing on their cron, until Ctrl-C (or SIGTERM, SIGHUP: :class:`RunEnded`)."""
    threading.Thread(target=pipeline.run_schedules, name="schedules", daemon=True).start()
    # The CLI finds the run by its state file: a file of the user's own must be named to it as well.
    own_file = "" if state_file == LOCAL_STATE_FILE else f" --state-file {shlex.quote(state_file)}"
    console.print(
        f"serving, schedules firing on their cron; state in {escape(state_file)}; "
        f"try `pipeline status --local{escape(own_file)}`. Ctrl-C ends it.",
        soft_wrap=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)
