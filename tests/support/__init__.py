"""What the tests share beyond fixtures, and what ``bench/`` may import too: the emulator's worlds
(:mod:`.glue_world`, :mod:`.botocore_models`), worker processes (:mod:`.worker_harness`, :mod:`.fleet_tasks`).

Importing this package imports nothing else: worker processes import :mod:`.fleet_tasks` through it.
"""

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parent.parent.parent
