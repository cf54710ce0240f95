"""The modules' paths before the library took component folders: each still imports, as the module it became.

``import pipeline_constructs.spot_worker_fleet`` gives ``pipeline_constructs.fleet.construct`` (the same module
object, so classes compare equal) with a :class:`DeprecationWarning` naming the new path. Submodules follow
(``pipeline_constructs.worker.config`` is ``pipeline_constructs.fleet.worker.config``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

#: Old module path -> the module it is now.
MOVED_MODULES = {
    "pipeline_constructs.alarms": "pipeline_constructs.monitoring.alarms",
    "pipeline_constructs.assembly": "pipeline_constructs.ops.assembly",
    "pipeline_constructs.batch_chain": "pipeline_constructs.chain.construct",
    "pipeline_constructs.cli": "pipeline_constructs.ops.cli",
    "pipeline_constructs.compliance": "pipeline_constructs.building_blocks.compliance",
    "pipeline_constructs.cost": "pipeline_constructs.ops.cost",
    "pipeline_constructs.data_bucket": "pipeline_constructs.building_blocks.data_bucket",
    "pipeline_constructs.fleet_boot": "pipeline_constructs.fleet.boot",
    "pipeline_constructs.fleet_permissions": "pipeline_constructs.fleet.permissions",
    "pipeline_constructs.fleet_scaling": "pipeline_constructs.fleet.scaling",
    "pipeline_constructs.glue_function": "pipeline_constructs.glue.construct",
    "pipeline_constructs.logs": "pipeline_constructs.building_blocks.logs",
    "pipeline_constructs.manifest": "pipeline_constructs.building_blocks.manifest",
    "pipeline_constructs.network": "pipeline_constructs.building_blocks.network",
    "pipeline_constructs.operator": "pipeline_constructs.ops.operator",
    "pipeline_constructs.scheduled_trigger": "pipeline_constructs.trigger.construct",
    "pipeline_constructs.spot_worker_fleet": "pipeline_constructs.fleet.construct",
    "pipeline_constructs.status_store": "pipeline_constructs.building_blocks.status_store",
    "pipeline_constructs.summary": "pipeline_constructs.ops.summary",
    "pipeline_constructs.task_queue": "pipeline_constructs.building_blocks.task_queue",
    "pipeline_constructs.topic": "pipeline_constructs.building_blocks.topic",
    "pipeline_constructs.worker": "pipeline_constructs.fleet.worker",
}


def new_path(old: str) -> str | None:
    """The module ``old`` is now (a submodule of a moved package follows it), or None if it did not move."""
    for moved, target in MOVED_MODULES.items():
        if old == moved or old.startswith(moved + "."):
            return target + old[len(moved) :]
    return None


class _Alias(importlib.abc.InspectLoader):
    """Loads an old path as the module at its new one, and hands ``python -m`` the new module's code."""

    def __init__(self, target: importlib.machinery.ModuleSpec) -> None:
        self.target = target
        self._real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target.name)
        self._real_spec = module.__spec__  # the import system sets the alias's spec next: put back in exec
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module is the target, executed already by its own import; it keeps its own spec, so that
        ``importlib.reload`` and ``importlib.resources`` see the real module."""
        module.__spec__ = self._real_spec

    def get_code(self, fullname: str) -> Any:
        """The target's code: ``python -m pipeline_constructs.worker`` runs the runtime's ``__main__``."""
        loader = self.target.loader
        return loader.get_code(self.target.name) if isinstance(loader, importlib.abc.InspectLoader) else None

    def get_source(self, fullname: str) -> str | None:
        loader = self.target.loader
        return loader.get_source(self.target.name) if isinstance(loader, importlib.abc.InspectLoader) else None

    def is_package(self, fullname: str) -> bool:
        return self.target.submodule_search_locations is not None


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds a moved module's old path and hands out the module at its new one."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        target_name = new_path(fullname)
        if target_name is None:
            return None
        target_spec = importlib.util.find_spec(target_name)
        if target_spec is None:  # no such module at the new path either
            return None
        warnings.warn(
            f"{fullname} moved to {target_name}; import public names from pipeline_constructs",
            DeprecationWarning,
            stacklevel=2,
        )
        is_package = target_spec.submodule_search_locations is not None
        spec = importlib.machinery.ModuleSpec(
            fullname, _Alias(target_spec), origin=target_spec.origin, is_package=is_package
        )
        spec.has_location = target_spec.has_location
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: before the path finder, which would otherwise load a
    moved package's submodules a second time under their old names."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
