"""A pytest plugin that gives the whole test run one temporary folder and removes it when the run ends.

Left to themselves, the run's processes make temporary files in the system's temporary folder, and several
cannot remove them: worker processes killed with SIGKILL by the fault tests leave their multiprocessing
folders (``pymp-*``), the local run leaves its fleets' runtime links (``pipeline-worker-lib-*``), a jsii
process stopped by a signal leaves its copy of the jsii runtime (``tmp*``) or its Node process's ``cdk.out*``
and ``jsii-kernel-*`` folders. So the controlling pytest process points TMPDIR at a folder of the
run's own before pytest-xdist starts its worker processes: they, jsii's Node process and every process a
test starts inherit it, so everything lands in that folder, which the controlling process removes once every
worker process has exited. It lies in pytest's base folder of the run, which pytest's retention of old runs
removes should a run die before it removes the folder itself.

``tests/conftest.py`` loads this plugin; ``tests/app/test_suite_hygiene.py`` runs a session with only it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The run's temporary folder, in pytest's base folder of the run (next to xdist's ``popen-gw*`` folders).
FOLDER_NAME = "tmp"


@dataclass(frozen=True)
class RunTemp:
    """The run's temporary folder, and what TMPDIR and :data:`tempfile.tempdir` were before it."""

    folder: Path
    previous_tmpdir: str | None
    previous_tempdir: str | None

    @classmethod
    def enter(cls, folder: Path) -> RunTemp:
        """Make ``folder`` the temporary folder of this process and of every process it starts from now on."""
        run_temp = cls(folder, os.environ.get("TMPDIR"), tempfile.tempdir)
        os.environ["TMPDIR"] = str(folder)
        tempfile.tempdir = str(folder)  # gettempdir() caches its answer: it may have been asked already
        return run_temp

    def leave(self) -> None:
        """Remove the folder, whatever is in it, and make the previous temporary folder current again."""
        if self.previous_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.previous_tmpdir
        tempfile.tempdir = self.previous_tempdir
        shutil.rmtree(self.folder, ignore_errors=True)


_RUN_TEMP = pytest.StashKey[RunTemp]()


# Last: after pytest's own tmp_path set-up, whose base folder is decided below, in the usual temporary folder.
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker process: its environment, TMPDIR included, is the controlling process's
    # Set by pytest's tmpdir plugin, which xdist reads the same way; absent only with `-p no:tmpdir`.
    factory: pytest.TempPathFactory | None = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        folder = Path(tempfile.mkdtemp(prefix="pytest-run-"))
    else:
        folder = factory.getbasetemp() / FOLDER_NAME
        folder.mkdir()
    config.stash[_RUN_TEMP] = RunTemp.enter(folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After pytest_sessionfinish, in which xdist waits for its worker processes to exit (or kills them)."""
    run_temp = config.stash.get(_RUN_TEMP, None)
    if run_temp is not None:
        run_temp.leave()
        del config.stash[_RUN_TEMP]
