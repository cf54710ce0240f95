"""`pip install .` must give a library that carries every runtime file, not only its Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.support import ROOT

PACKAGE = ROOT / "pipeline_constructs"


def _package_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_carries_every_file_of_the_package_and_its_installed_cli_runs(tmp_path):
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

    # Installed from the wheel alone (its dependencies from this environment), away from the checkout:
    # the console script and the local run's CLI work, the [local] extra's emulator included.
    installed = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(installed), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = subprocess.run(
        [sys.executable, str(installed / "bin" / "pipeline"), "local", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--no-iam-check" in result.stdout and "--demo" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import pipeline_constructs.local.iam as m; print(m.__file__)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(installed)), where.stdout  # the wheel's copy, not the checkout
