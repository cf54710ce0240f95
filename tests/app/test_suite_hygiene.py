"""The test suite leaves nothing in the system's temporary folder (tests/support/temp_root.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import ROOT
from tests.support.temp_root import FOLDER_NAME

#: Tests that leave temporary folders behind as the suite's tests do, each recording the folder it made.
LEAVING_TESTS = """
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def made(folder):
    assert Path(folder).is_absolute() and Path(folder).is_dir(), folder
    with open(os.environ["MADE_RECORD"], "a") as record:
        record.write(folder + "\\n")


def test_a_node_process_makes_a_folder_as_a_cdk_app_synthesized_without_outdir_does():
    # What aws-cdk-lib does in jsii's Node process (the Node jsii starts), without the seconds a synth costs.
    script = "console.log(require('fs').mkdtempSync(require('path').join(require('os').tmpdir(), 'cdk.out')))"
    node = os.environ.get("JSII_NODE", "node")
    made(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout.strip())


def test_a_folder_for_worker_logs_as_the_worker_harness_makes_it():
    made(tempfile.mkdtemp(prefix="t0-workers-"))


def test_a_process_killed_with_sigkill_leaves_its_multiprocessing_folder():
    code = "import multiprocessing.util, time; print(multiprocessing.util.get_temp_dir(), flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    made(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
"""


def test_a_run_on_several_processes_leaves_nothing_in_the_temporary_folder(tmp_path):
    system_temp, session, record = tmp_path / "system-temp", tmp_path / "session", tmp_path / "made.txt"
    system_temp.mkdir()
    session.mkdir()
    (session / "pytest.ini").write_text("[pytest]\n")  # its own root: none of our pytest settings
    (session / "test_leaving.py").write_text(LEAVING_TESTS)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")} | {
        "TMPDIR": str(system_temp),
        "PYTHONPATH": str(ROOT),
        "MADE_RECORD": str(record),
    }
    plugin = ["-p", "tests.support.temp_root", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-n", "2", "-q", "--basetemp", str(tmp_path / "basetemp")],
        cwd=session,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    made = record.read_text().split()
    assert len(made) == 3, made
    assert sorted(path.name for path in system_temp.iterdir()) == [], "made in the run's folder"
    assert [folder for folder in made if Path(folder).exists()] == [], "removed when the run ended"


def test_this_run_makes_its_temporary_files_in_a_folder_of_its_own(tmp_path):
    run_temp = Path(tempfile.gettempdir())
    assert os.environ["TMPDIR"] == str(run_temp), "what every process a test starts inherits"
    assert run_temp.name == FOLDER_NAME
    assert tmp_path.is_relative_to(run_temp.parent), "in pytest's base folder of the run"
