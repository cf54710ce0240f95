"""Synth-time argument checks shared by every construct.

Every check raises one ``ValueError`` naming the construct id, the argument, the value and the allowed
range, and skips values that are unresolved CDK tokens (they are only known at deploy time).
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import os
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aws_cdk import App, Duration, Stack, Token, cx_api
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct


def _unresolved(value: object) -> bool:
    return Token.is_unresolved(value)


class ArgumentError(ValueError):
    """A construct's argument outside what it allows (a ``ValueError``, made by :func:`argument_error`)."""


def argument_error(scope: IConstruct | str, argument: str, value: object, allowed: str) -> ArgumentError:
    """The one error shape of this library: ``<id>: <argument>=<value> is invalid; allowed: <allowed>``."""
    construct_id = scope if isinstance(scope, str) else scope.node.path or scope.node.id
    return ArgumentError(f"{construct_id}: {argument}={value!r} is invalid; allowed: {allowed}")


#: Set by the CDK CLI for the app process it runs (``cdk synth``, ``cdk deploy``), and by nothing else.
CDK_CLI_VARIABLE = "CDK_CLI_VERSION"
#: Where this package's frames come from (not the user's code, nor are site-packages' or the interpreter's).
_PACKAGE = str(Path(__file__).resolve().parents[1])


def one_line_argument_errors(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An ``excepthook`` that prints an :class:`ArgumentError` as one line, with the line of the user's code
    that made the construct, instead of a traceback through jsii; any other error goes to ``previous``."""

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> Any:
        if not isinstance(error, ArgumentError):
            return previous(kind, error, trace)
        frames = [frame for frame in traceback.extract_tb(trace) if _users(frame.filename)]
        where = f" ({os.path.relpath(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
        print(f"error: {error}{where}", file=sys.stderr)
        return None

    return hook


def _users(filename: str) -> bool:
    path = str(Path(filename).resolve())
    return not path.startswith(_PACKAGE) and "site-packages" not in path and not filename.startswith("<")


# Under the CDK CLI, a wrong argument reaches the user as one line (the CLI adds one of its own), not at the
# end of a traceback through jsii; `python app.py` and tests keep the whole traceback.
if os.environ.get(CDK_CLI_VARIABLE):
    sys.excepthook = one_line_argument_errors(sys.excepthook)


def check_range(
    scope: Construct | str,
    argument: str,
    value: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
) -> None:
    """Raise unless ``minimum <= value <= maximum`` (either bound may be open)."""
    if value is None or _unresolved(value):
        return
    too_low = minimum is not None and value < minimum
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        lower = _number(minimum) if minimum is not None else None
        upper = _number(maximum) if maximum is not None else None
        if lower is not None and upper is not None:
            allowed = f"{lower} to {upper}{unit}"
        elif lower is not None:
            allowed = f"at least {lower}{unit}"
        else:
            allowed = f"at most {upper}{unit}"
        shown: object = f"{_number(value)}{unit}" if unit else value
        raise argument_error(scope, argument, shown, allowed)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def seconds(duration: Duration | None) -> float | None:
    """A duration in seconds, or None when absent or unresolved."""
    if duration is None or duration.is_unresolved():
        return None
    return duration.to_seconds()


#: The one id the library takes at a stack's root: the shared constructs of a stack (glue function, status
#: store, key, manifest) live under it, so that no id of the user's collides with one of the library's.
NAMESPACE_ID = "PipelineConstructs"


class _Namespace(Construct):
    """Where the library keeps a stack's shared constructs (see :func:`stack_singleton`)."""


def stack_singleton(scope: Construct, construct_id: str, kind: type, create: Callable[[Construct, str], Any]) -> Any:
    """The stack's one ``kind`` at ``<stack>/PipelineConstructs/<construct_id>``, created by ``create`` (given
    the namespace and the id) on first use. A construct of the user's own at ``<stack>/PipelineConstructs`` is
    named in one line, not mistaken for the library's.

    In a nested stack, the stack deployed is its top-level parent: one glue function, status store and
    manifest serve every nested stack in it (nested stacks are how more chains than 500 resources fit)."""
    stack = Stack.of(scope)
    while stack.nested_stack_parent is not None:
        stack = stack.nested_stack_parent
    namespace = stack.node.try_find_child(NAMESPACE_ID)
    if namespace is None:
        namespace = _Namespace(stack, NAMESPACE_ID)
    elif not isinstance(namespace, _Namespace):
        raise argument_error(
            f"{stack.node.path}/{NAMESPACE_ID}",
            "id",
            NAMESPACE_ID,
            "left to pipeline_constructs, which keeps a stack's shared constructs under it "
            f"(this stack's is a {type(namespace).__name__}: rename it)",
        )
    existing = namespace.node.try_find_child(construct_id)
    if existing is None:
        return create(namespace, construct_id)
    if not isinstance(existing, kind):  # two kinds of the library's under one id: a bug of ours, not the user's
        raise TypeError(f"{existing.node.path} is a {type(existing).__name__}, not a {kind.__name__}")
    return existing


def check_is_duration(scope: Construct | str, argument: str, value: object) -> None:
    """``task_timeout=300`` would fail deep inside with an AttributeError: name the argument instead."""
    if value is not None and not isinstance(value, Duration):
        raise argument_error(scope, argument, value, "a Duration, such as Duration.minutes(5)")


def check_is_instance(scope: Construct | str, argument: str, value: object, kind: type, hint: str = "") -> None:
    """``network=vpc`` where a PipelineNetwork belongs would fail later with an AttributeError."""
    if value is not None and not isinstance(value, kind):
        raise argument_error(scope, argument, type(value).__name__, f"a {kind.__name__}{hint}")


def check_task_function(scope: Construct | str, directory: Path, task: str) -> None:
    """``module:function`` must name a function defined in ``directory``: read from its source, never imported
    (importing user code at synth would run it). A wrong name would crash-loop every worker after deploy."""
    if not directory.is_dir():
        raise argument_error(scope, "worker_directory", str(directory), "an existing directory with the task code")
    module, _, function = task.partition(":")
    if not module or not function or not all(part.isidentifier() for part in [*module.split("."), function]):
        raise argument_error(scope, "task", task, "'module:function', such as 'task:handle'")
    base = directory.joinpath(*module.split("."))
    source = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    if source is None:
        raise argument_error(scope, "task", task, f"a module in {directory} ({base.name}.py not found)")
    try:
        tree = ast.parse(source.read_text(), filename=str(source))
    except SyntaxError as error:
        where = f"{source.name}:{error.lineno}: {error.msg}"
        raise argument_error(scope, "task", task, f"a module that parses ({where})") from None
    defined: set[str] = set()
    for node in tree.body:  # what the module binds at its top level: functions, assignments, imports
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if function not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        raise argument_error(scope, "task", task, f"a function of {source.name}: {', '.join(functions) or 'none'}")


def check_duration(
    scope: Construct | str,
    argument: str,
    value: Duration | None,
    *,
    minimum: Duration | None = None,
    maximum: Duration | None = None,
) -> None:
    """Like :func:`check_range`, for durations; the error shows the value in seconds."""
    check_range(
        scope,
        argument,
        seconds(value),
        minimum=seconds(minimum),
        maximum=seconds(maximum),
        unit=" seconds",
    )


def check_visibility_covers(
    scope: Construct | str, visibility_timeout: Duration | None, other: str, timeout: Duration | None
) -> None:
    """A queue's visibility timeout must cover ``other`` (the consumer's or task's timeout), else a message
    is handed to a second consumer while the first is still on it."""
    visibility_s, timeout_s = seconds(visibility_timeout), seconds(timeout)
    if visibility_s is not None and timeout_s is not None and visibility_s < timeout_s:
        raise argument_error(
            scope,
            "visibility_timeout",
            f"{_number(visibility_s)} seconds",
            f"at least {other} ({_number(timeout_s)} seconds) up to 43200 seconds",
        )


def synth_or_exit(app: App) -> cx_api.CloudAssembly:
    """``app.synth()`` that fails where ``cdk synth`` fails, for ``python app.py`` in CI: on an error annotation
    (``Annotations.add_error``, cdk-nag added as an Aspect, a lookup the CDK could not make) or a violation of
    a validation plugin (``Validations.of(app).add_plugins``), it prints one line per finding and exits 1.
    ``app.synth()`` alone exits 0 on annotations. Use it as the app's last line: ``synth_or_exit(app)``."""
    report = Path(app.outdir) / "validation-report.json"
    started = time.time()
    try:
        assembly = app.synth()
    except RuntimeError as error:  # a plugin's violations, where the CDK raises for them: its report is written
        if "ValidationFailed" not in str(error) or not report.is_file():
            raise
        findings = _plugin_violations(json.loads(report.read_text()))
    else:
        findings = [
            f"{message.id}: {message.entry.data}"
            for stack in assembly.stacks_recursively
            for message in stack.messages
            if message.level == cx_api.SynthesisMessageLevel.ERROR
        ]
        # The CDK may only report a plugin's violations (aws-cdk-lib 2.275 does): this synth's report says.
        if report.is_file() and report.stat().st_mtime >= started - 1:
            findings += _plugin_violations(json.loads(report.read_text()))
        if not findings:
            return assembly
    for finding in findings:
        print(f"error: {finding}", file=sys.stderr)
    raise SystemExit(1)


def _plugin_violations(report: dict[str, Any]) -> list[str]:
    """One line per construct of each violation a plugin reports as an error (a plugin may conclude "success"
    with errors in its list, as the Control Tower validator does; warnings are not findings)."""
    return [
        f"{construct['constructPath']}: {violation['ruleName']}: {violation['description']} ({plugin['pluginName']})"
        for plugin in report.get("pluginReports", [])
        for violation in plugin.get("violations", [])
        if str(violation.get("severity", "error")).lower() not in ("warning", "info")
        for construct in violation.get("violatingConstructs", [])
    ]


@functools.cache
def ec2_instance_types() -> frozenset[str]:
    """Every instance type EC2's API knows: the ``InstanceType`` enum of botocore's model of it (boto3 is a
    dependency), read once and only when a type is checked."""
    from botocore.loaders import Loader

    model = Loader().load_service_model("ec2", "service-2")
    return frozenset(model["shapes"]["InstanceType"]["enum"])


def check_instance_types(scope: Construct | str, argument: str, names: Iterable[str]) -> None:
    """Each name a real instance type: ``m7i.larg`` or ``M7i.large`` would otherwise fail only when the Auto
    Scaling group or compute environment is created, at deploy."""
    known = ec2_instance_types()
    for name in names:
        if _unresolved(name) or name in known:
            continue
        close = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.75)
        hint = f"did you mean {', '.join(close)}?" if close else "see the EC2 instance types"
        raise argument_error(
            scope, argument, name, f"an EC2 instance type ({hint} A type newer than botocore: upgrade boto3)"
        )


#: Less memory than this is no container's (Batch's own floor is 4 MiB): a number of GiB given as MiB.
MIN_PLAUSIBLE_MEMORY_MIB = 128


def check_memory_mib(scope: Construct | str, argument: str, value: int | None) -> None:
    """``memory_mib=8`` means 8 GiB: say so, rather than start a job that the kernel kills at once."""
    if value is None or _unresolved(value) or value >= MIN_PLAUSIBLE_MEMORY_MIB or value <= 0:
        return
    raise argument_error(
        scope,
        argument,
        value,
        f"at least {MIN_PLAUSIBLE_MEMORY_MIB} MiB; the value is in MiB: did you mean {value} GiB = {value * 1024}?",
    )


def check_not_empty(scope: Construct | str, argument: str, values: Iterable[object] | None) -> None:
    if values is not None and not list(values):
        raise argument_error(scope, argument, [], "a non-empty list")


def check_unique(scope: Construct | str, argument: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise argument_error(scope, argument, name, "unique names (this one appears twice)")
        seen.add(name)


#: Per stack: bucket -> {prefix: construct path} of the fleets and chains writing into it.
_PREFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: The scratch folder under a fleet's prefix (DataBucket's INTERMEDIATE_PREFIX), expired by lifecycle rules.
SCRATCH_FOLDERS = ("intermediate/",)


def claim_prefix(
    scope: Construct, bucket: s3.IBucket, prefix: str, *, scratch_folders: Sequence[str] = SCRATCH_FOLDERS
) -> None:
    """Two fleets or chains writing under the same (or a nested) prefix of one bucket would overwrite each
    other's outputs, silently: the second to claim it gets one line naming the first.

    In a DataBucket's bucket, ``<prefix><folder>`` then expires for each of ``scratch_folders`` (a rule per
    writer: one at the bucket's root would never match its keys). Any other bucket, imported or the user's
    own, gets no rule from here: its owner expires the scratch folders."""
    stack = Stack.of(scope)
    key = json.dumps(stack.resolve(bucket.bucket_name), sort_keys=True)
    claims = _PREFIXES.setdefault(stack, {}).setdefault(key, {})
    for taken, owner in claims.items():
        if prefix.startswith(taken) or taken.startswith(prefix):
            raise argument_error(scope, "prefix", prefix, f"a prefix of its own in the bucket ({owner} uses {taken!r})")
    claims[prefix] = scope.node.path
    # Here, not at the top: data_bucket imports this module.
    from pipeline_constructs.building_blocks.data_bucket import DataBucket

    owner = bucket.node.scope
    if isinstance(owner, DataBucket) and owner.bucket is bucket:
        owner.expire_scratch(prefix, scratch_folders)
