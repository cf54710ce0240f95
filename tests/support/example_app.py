"""The example app (``app.py``) built and synthesized as ``cdk synth`` would, for the tests that read it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support import ROOT

ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def cdk_json_context() -> dict[str, Any]:
    """The context `cdk synth` would pass: cdk.json's, without the CLI."""
    return json.loads((ROOT / "cdk.json").read_text())["context"]


def synth_example(outdir: Path, extra_context: dict[str, Any] | None = None, *, rule_packs: bool = True):
    """Build and synthesize the example app into ``outdir``; returns the app (for tree inspection)."""
    import app as example_app

    context = cdk_json_context() | {"aws:cdk:version-reporting": False} | (extra_context or {})
    app = example_app.build_app(context, outdir=str(outdir), rule_packs=rule_packs)
    app.synth()
    return app


def mask_asset_hashes(template: dict[str, Any]) -> dict[str, Any]:
    """Asset hashes change with every code edit; snapshots should change only when the infrastructure does."""
    return json.loads(ASSET_HASH.sub("<asset-hash>", json.dumps(template)))
