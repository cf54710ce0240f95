"""`pip install .` must give a library that carries every runtime file, not only its Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import ROOT

PACKAGE = ROOT / "pipeline_constructs"


def _package_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_carries_every_file_of_the_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("pipeline_constructs-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = _package_files()
    assert any(not name.endswith(".py") for name in expected), "the check must cover non-Python files"
    assert expected - shipped == set()
