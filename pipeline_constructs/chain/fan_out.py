"""Fan-out / fan-in in a BatchChain: :class:`FanOut`, a step that maps over a list known only at run time.

The glue function, when the step before a fan-out step publishes its message, reads the list (from the
message, or from a manifest object the message names), stores it as the run's *items object* and submits
ONE AWS Batch array job sized to it. Child ``i`` reads item ``i`` (:func:`pipeline_constructs.chain.child.item`,
or any language: the JSON list at ``PIPELINE_ITEMS``, index ``AWS_BATCH_JOB_ARRAY_INDEX``). The step after it
(the join) starts ONCE, on the array parent's terminal state change, which Batch sends only after every child
finished. Synth-time code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline_constructs.building_blocks.validation import argument_error, check_range

if TYPE_CHECKING:
    from constructs import Construct

    from pipeline_constructs.chain.steps import ChainStep

#: AWS Batch runs at most this many children per array job.
MAX_ITEMS = 10000
#: Under the chain's prefix, where the glue stores each fan-out's items (``_items/<run>/<trigger>/<step>.json``).
ITEMS_FOLDER = "_items/"


class ChildFailure:
    """What a fan-out does when some children failed (each after its own ``attempts``)."""

    #: The join does not start; the run is FAILED, its status row naming the failed children.
    FAIL_RUN = "fail_run"
    #: The join starts with the items of the children that succeeded and a list of the failed ones.
    CONTINUE = "continue"


@dataclass(frozen=True)
class FanOut:
    """How a step maps over a list: one AWS Batch array child per item, sized when the run gets there.

    Use the factories: ``FanOut.over_message()`` (the previous step's message is a JSON list, or a JSON object
    whose ``field`` holds one) or ``FanOut.over_manifest()`` (the message is ``s3://bucket/key``, or a JSON
    object whose ``field`` holds it, naming a manifest the previous step wrote under its own prefix: a JSON list,
    or one item per line). The previous step hands over with ``ChainLink.message()``; the fan-out step's own
    link is ``ChainLink.on_success()`` (to the join), or None when it is the last step. ``timeout`` and
    ``attempts`` of the step apply to each child.

    A list of 1 item runs as a plain job (index 0); an empty list skips the step: the join starts at once
    with no items (as a Step Functions Map over an empty array); over 10000 items (or ``max_items``) the run
    fails before anything is submitted, with the count as the reason.

    :param source: ``message`` or ``manifest`` (set by the factories).
    :param field: the key of a JSON object message holding the list (``over_message``) or the manifest's
        S3 URI (``over_manifest``). Default: None for ``over_message`` (the message is the list itself),
        ``"manifest"`` for ``over_manifest`` (a plain ``s3://`` message is taken as well).
    :param on_child_failure: :class:`ChildFailure`: ``FAIL_RUN`` (the join does not start) or ``CONTINUE``
        (the join gets the succeeded items and the failed ones listed). Default: ``ChildFailure.FAIL_RUN``.
    :param max_items: a list longer than this fails the run instead of starting that many jobs.
        Default: 10000. Range: 1 to 10000.
    """

    source: str
    field: str | None = None
    on_child_failure: str = ChildFailure.FAIL_RUN
    max_items: int = MAX_ITEMS

    @classmethod
    def over_message(
        cls, *, field: str | None = None, on_child_failure: str = ChildFailure.FAIL_RUN, max_items: int = MAX_ITEMS
    ) -> FanOut:
        """Map over a JSON list in the previous step's message (or in its ``field`` if it is an object)."""
        return cls("message", field, on_child_failure, max_items)

    @classmethod
    def over_manifest(
        cls, *, field: str = "manifest", on_child_failure: str = ChildFailure.FAIL_RUN, max_items: int = MAX_ITEMS
    ) -> FanOut:
        """Map over a manifest object in S3 (a JSON list, or one item per line) that the message names."""
        return cls("manifest", field, on_child_failure, max_items)

    def config(self) -> dict[str, Any]:
        """What the glue function needs of it (the step's ``fanOut`` entry)."""
        return {
            "source": self.source,
            "field": self.field,
            "onChildFailure": self.on_child_failure,
            "maxItems": self.max_items,
        }


def check_fan_out(scope: Construct, steps: Sequence[ChainStep], index: int) -> None:
    """The fan-out of the step at ``index``, if any: well formed, after a message link, before a join."""
    step = steps[index]
    fan_out, at = step.fan_out, f"steps[{index}].fan_out"
    if fan_out is None:
        return
    if not isinstance(fan_out, FanOut):
        raise argument_error(scope, at, type(fan_out).__name__, "FanOut.over_message() or FanOut.over_manifest()")
    if fan_out.source not in ("message", "manifest"):
        raise argument_error(scope, f"{at}.source", fan_out.source, "message, manifest (use the factories)")
    if fan_out.on_child_failure not in (ChildFailure.FAIL_RUN, ChildFailure.CONTINUE):
        allowed = (
            f"ChildFailure.FAIL_RUN ({ChildFailure.FAIL_RUN!r}), ChildFailure.CONTINUE ({ChildFailure.CONTINUE!r})"
        )
        raise argument_error(scope, f"{at}.on_child_failure", fan_out.on_child_failure, allowed)
    check_range(scope, f"{at}.max_items", fan_out.max_items, minimum=1, maximum=MAX_ITEMS)
    if step.array_size is not None:
        allowed = "None on a fan-out step (its array is sized by the list at run time)"
        raise argument_error(scope, f"steps[{index}].array_size", step.array_size, allowed)
    previous = steps[index - 1].link if index else None
    if previous is None or previous.kind != "message":
        allowed = "a step after one with ChainLink.message() (its message holds or names the list)"
        raise argument_error(scope, at, f"fan-out after {previous.kind if previous else 'nothing'}", allowed)
    if step.link is not None and step.link.kind != "success":
        allowed = "ChainLink.on_success() (the join starts once every child finished), or None on the last step"
        raise argument_error(scope, f"steps[{index}].link", step.link.kind, allowed)
