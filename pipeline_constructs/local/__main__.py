"""``python -m pipeline_constructs.local`` (also ``pipeline local``): run a synthesized stack locally."""

from __future__ import annotations

import sys

from pipeline_constructs.local.cli import main

if __name__ == "__main__":
    sys.exit(main())
