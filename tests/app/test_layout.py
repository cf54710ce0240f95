"""The codebase's shape: component folders, classes and functions of one responsibility, runtimes free of the
CDK, and the flat module paths of earlier releases still importing (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline_constructs._moved import MOVED_MODULES, new_path
from tests.support import ROOT

PACKAGE = ROOT / "pipeline_constructs"
#: A class or function longer than this (its def line to its last, docstrings included) does too much.
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60
COMPONENTS = ("building_blocks", "chain", "fleet", "glue", "local", "monitoring", "ops", "trigger")


def oversized(source: str, path: str) -> list[str]:
    """Every class over MAX_CLASS_LINES and function over MAX_FUNCTION_LINES in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                found.append(f"{path}:{node.lineno} {node.name} has {lines} lines (limit {limit})")
    return found


def test_no_class_or_function_of_the_package_is_oversized():
    found = [
        finding
        for path in sorted(PACKAGE.rglob("*.py"))
        for finding in oversized(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []


def test_the_size_check_finds_an_oversized_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert oversized(f"def f():\n{body}\n", "f.py") == [f"f.py:1 f has {MAX_FUNCTION_LINES + 1} lines (limit 60)"]
    assert oversized(f"def f():\n{body[: body.rindex(chr(10))]}\n", "f.py") == []


def test_every_component_folder_says_what_it_holds():
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert folders == sorted(COMPONENTS)
    for name in COMPONENTS:
        assert ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())), name
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "_moved.py"], "modules belong in a component folder"


def test_the_runtimes_import_no_cdk():
    """The worker runs on instances and the glue on Lambda with stdlib and boto3 only."""
    code = (
        "import sys, pipeline_constructs.fleet.worker.runtime, pipeline_constructs.fleet.worker.__main__, "
        "pipeline_constructs.glue.handler, pipeline_constructs.ops.cli, pipeline_constructs.ops.cost; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aws_cdk', 'jsii', 'constructs'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


#: Names the flat modules had that now live in a module of their own, and that code may have imported.
OLD_NAMES = {
    "pipeline_constructs.batch_chain": [
        "ARM_INSTANCE_CLASSES",
        "CLAIMS_FOLDER",
        "LINK_VARIABLES",
        "MAX_MEMORY_MIB",
        "MAX_VCPUS",
        "MIN_MEMORY_MIB",
        "MIN_TIMEOUT",
        "MIN_VCPUS",
        "X86_INSTANCE_CLASSES",
        "ChainLink",
        "ChainStep",
        "StepImage",
    ],
    "pipeline_constructs.spot_worker_fleet": ["DEFAULT_ARM_INSTANCE_TYPES", "DEFAULT_X86_INSTANCE_TYPES"],
    "pipeline_constructs.worker": [],
}


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_a_flat_module_path_still_imports_as_its_new_module(old: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])
    assert any(MOVED_MODULES[old] in str(w.message) and w.category is DeprecationWarning for w in caught)
    assert [name for name in OLD_NAMES.get(old, []) if not hasattr(module, name)] == []


def test_what_the_runtime_and_the_local_run_modules_held_before_their_split_still_imports():
    from pipeline_constructs.fleet.worker import runtime
    from pipeline_constructs.local import runner

    assert {"ACK_BATCH", "COMPLETION_MARKER", "JSON", "SQS_BATCH", "Held", "attempt_budget"} <= set(dir(runtime))
    assert {"EMULATED", "IAM_CHECKED", "LocalPipeline", "sample_feed"} <= set(dir(runner))


def test_a_submodule_of_a_moved_package_follows_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pipeline_constructs.worker.config import WorkerConfig  # the runtime's path before fleet/
    from pipeline_constructs.fleet.worker.config import WorkerConfig as moved

    assert WorkerConfig is moved
    assert new_path("pipeline_constructs.worker.status") == "pipeline_constructs.fleet.worker.status"
    assert new_path("pipeline_constructs.workers") is None
    assert new_path("pipeline_constructs.fleet.construct") is None


def test_every_moved_module_exists_at_its_new_path():
    for target in MOVED_MODULES.values():
        relative = Path(*target.split(".")[1:])
        assert (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def test_python_dash_m_of_a_moved_package_runs_the_module_it_became():
    """``python -m pipeline_constructs.worker`` (the runtime's path before fleet/) still starts the worker."""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "pipeline_constructs.worker"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.strip()) == (2, "error: PIPELINE_QUEUE_URL is required")


def test_an_old_path_leaves_the_real_module_its_own_spec():
    """Reloads and package resources of the module go on working after its old path was imported."""
    import importlib.resources

    import pipeline_constructs.fleet.worker.status as real

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pipeline_constructs.worker as old_package
        import pipeline_constructs.worker.status  # noqa: F401 - the old path of the real module
    assert real.__spec__.name == "pipeline_constructs.fleet.worker.status"
    assert importlib.reload(real).__name__ == "pipeline_constructs.fleet.worker.status"
    units = sorted(p.name for p in importlib.resources.files(old_package).iterdir() if p.name.endswith(".service"))
    assert units == ["pipeline-worker-container.service", "pipeline-worker.service"]


def test_a_module_that_exists_at_neither_path_is_not_found():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("pipeline_constructs.worker")  # the parent warns once, rightly
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # and no warning for the module that is not there
        assert importlib.util.find_spec("pipeline_constructs.worker.nonexistent") is None
