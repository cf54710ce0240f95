"""SIGTERM and SIGHUP end a local run as Ctrl-C does: `kill` of a serving run (what ``kill %1`` sends), or
CI's ``timeout`` of a run still working, stops every worker and removes the state file and the fleets'
temporary folders, instead of leaving the workers running against an emulator that is gone."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline_constructs.local.cli import RunEnded, signals_end_the_run
from pipeline_constructs.local.fleets import WORKER_MAIN, workers_temp_folder
from tests.support import ROOT

#: Generous: a run brings the emulator, functions and fleets up on a busy 2-core machine.
UP_WITHIN = 120


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while read
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has ended: only its exit status waits to be collected)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def is_worker(pid: int) -> bool:
    try:
        return b"pipeline_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def temp_folder_of(pid: int) -> Path | None:
    """The TMPDIR a process was started with (a fleet's workers' own folder), or None."""
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [v.split(b"=", 1)[1] for v in variables if v.startswith(b"TMPDIR=")]
    return Path(found[0].decode()) if found else None


def wait_for(what: str, condition: Callable[[], bool], run: subprocess.Popen) -> None:
    deadline = time.monotonic() + UP_WITHIN
    while not condition():
        assert run.poll() is None, f"the run ended (exit code {run.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {UP_WITHIN} s"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("ending", "mode"),
    [
        (signal.SIGTERM, ["--serve"]),  # `kill <pid>` of `pipeline local --serve &`
        (signal.SIGTERM, ["--demo", "--no-schedules", "--tasks", "200"]),  # CI's `timeout` of a run still working
    ],
    ids=["serving", "working"],
)
def test_an_ending_signal_stops_every_worker_and_cleans_up(example_outdir, tmp_path, ending, mode):
    temp, state_file, logs = tmp_path / "tmp", tmp_path / "state.json", tmp_path / "logs"
    temp.mkdir()
    argv = [sys.executable, "-m", "pipeline_constructs.local", "--assembly", str(example_outdir), "--env", "dev"]
    argv += ["--workers", "1", "--quiet", "--timeout", "600", "--logs", str(logs), "--state-file", str(state_file)]
    run = subprocess.Popen(
        [*argv, *mode],
        cwd=ROOT,
        env=os.environ | {"TMPDIR": str(temp)},  # the fleets' runtime links land here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    printed: list[str] = []

    def read_lines() -> None:
        for line in run.stdout or []:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()

    def said(words: str) -> bool:
        while not lines.empty():
            printed.append(lines.get())
        return any(words in line for line in printed)

    started: set[int] = set()
    try:
        # The state file is written once every fleet's workers are started.
        wait_for("state file", state_file.exists, run)
        if "--serve" in mode:
            wait_for("serving", lambda: said("serving, schedules firing"), run)
            # Its hint names the run's own state file, which the CLI needs to find it.
            assert said(f"try `pipeline status --local --state-file {state_file}`"), printed
        started = descendants(run.pid)
        assert any(is_worker(pid) for pid in started), "no worker process started"
        workers_temps = {temp_folder_of(pid) for pid in started if is_worker(pid)} - {None}
        assert list(temp.glob("pipeline-worker-lib-*"))
        run.send_signal(ending)
        code = run.wait(timeout=UP_WITHIN)
        said("")
        # A worker's task processes notice its end through their lifeline, a moment after it.
        deadline = time.monotonic() + 30
        while (left := [pid for pid in started if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"processes left running: {left}; the run said: {''.join(printed)[-2000:]}"
        assert not state_file.exists()
        assert list(temp.glob("pipeline-worker-lib-*")) == []
        assert list(temp.glob("pymp-*")) == []  # the workers' own temporary folders went with the run
        assert workers_temps and not any(folder.exists() for folder in workers_temps)
        # The workers ran, not crashed at start (their fork server's socket in a folder too deep for it).
        crashed = [log.name for log in logs.glob("worker-*.log") if "Traceback" in log.read_text()]
        assert crashed == [], crashed
        if "--serve" not in mode:
            assert code == 128 + ending and any("interrupted by SIGTERM" in line for line in printed), printed
    finally:
        for pid in [run.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait()


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
def test_an_ending_signal_is_raised_once_in_the_main_thread_and_the_handlers_are_put_back(ending):
    before = signal.getsignal(ending)
    with pytest.raises(RunEnded) as ended, signals_end_the_run():
        os.kill(os.getpid(), ending)
        time.sleep(5)  # the handler runs before this returns; the sleep is only its wait
    assert ended.value.signum == ending and isinstance(ended.value, KeyboardInterrupt)  # as Ctrl-C's ends it
    with signals_end_the_run():
        with pytest.raises(RunEnded):
            os.kill(os.getpid(), ending)
            time.sleep(5)
        os.kill(os.getpid(), ending)  # again, during the cleanup: not cut short
    assert signal.getsignal(ending) is before


def test_a_worker_stops_when_its_local_run_is_gone_even_by_kill_9(tmp_path):
    """The backstop when the run gets no cleanup: a worker's stdin is a pipe only the run holds, and at its end
    the worker is sent SIGTERM, as the run's own end sends it. Here a stand-in runtime says what it got."""
    runtime = tmp_path / "pipeline_worker"
    runtime.mkdir()
    (runtime / "__init__.py").write_text("")
    (runtime / "__main__.py").write_text(
        "import signal, sys\n"
        "if __name__ == '__main__':\n"
        "    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f'stopped by {signum}'))\n"
        "    print('up', flush=True)\n"
        "    while True:\n"
        "        signal.pause()\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_MAIN],
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "up\n"
        assert worker.stdin is not None
        worker.stdin.close()  # what the end of the run's process does, however it ends
        worker.wait(timeout=60)
        said = worker.stderr.read() if worker.stderr else ""
    finally:
        worker.kill()
    assert (worker.returncode, said.strip()) == (1, f"stopped by {signal.SIGTERM.value}")


def test_the_workers_temp_folder_is_short_enough_for_their_fork_servers_socket(tmp_path, monkeypatch):
    """multiprocessing binds its fork server's socket at TMPDIR/pymp-*/listener-*: in a deep temporary folder
    (macOS's /var/folders/..., a test's) the bind fails and every worker crashes at start."""
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    folder = workers_temp_folder()
    try:
        assert folder.parent == Path("/tmp") and len(str(folder)) + len("/pymp-abcdefgh/listener-abcdefgh") <= 103
    finally:
        folder.rmdir()
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    shallow = workers_temp_folder()
    shallow.rmdir()
    assert shallow.parent == Path("/tmp")
