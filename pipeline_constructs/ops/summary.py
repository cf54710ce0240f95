"""Print a readable summary of each synthesized stack: resources by kind and what each construct made.

python -m pipeline_constructs.ops.summary [--assembly cdk.out] [--stack NAME]
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from pipeline_constructs.ops.assembly import SynthesizedStack, load_assembly


def stack_tables(stack: SynthesizedStack) -> list[Table]:
    by_kind = Table(title=f"{stack.name}: {len(stack.resources)} resources by kind", title_justify="left")
    by_kind.add_column("resource type")
    by_kind.add_column("count", justify="right")
    for resource_type, count in sorted(stack.resource_counts().items()):
        by_kind.add_row(resource_type, str(count))

    by_construct = Table(title=f"{stack.name}: what each construct made", title_justify="left")
    by_construct.add_column("construct")
    by_construct.add_column("resources")
    for construct, counts in sorted(stack.resources_by_construct().items()):
        made = ", ".join(f"{count}× {kind.removeprefix('AWS::')}" for kind, count in sorted(counts.items()))
        by_construct.add_row(construct, made)
    return [by_kind, by_construct]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assembly", default="cdk.out", help="cloud assembly directory (default: cdk.out)")
    parser.add_argument("--stack", action="append", help="only these stacks (repeatable; default: all)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        stacks = load_assembly(args.assembly)
    except FileNotFoundError as error:
        console.print(f"[red]error:[/] {error}")
        return 1
    for stack in stacks:
        if args.stack and stack.name not in args.stack:
            continue
        for table in stack_tables(stack):
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
