"""One botocore loader of the service models for every session of a test or bench process."""

from __future__ import annotations

import threading
from typing import Any

import botocore.loaders


class ModelsLoader(botocore.loaders.Loader):
    """botocore's loader of the service models, for many sessions of one process: it loads one file at a time,
    so sessions starting together on several threads parse each model once, not once each; boto3 appends its
    data directory to the loader of every session it makes, to this one only once."""

    _loading = threading.RLock()

    def __init__(self) -> None:
        super().__init__()
        self._search_paths = _PathsOnce(self.search_paths)

    def load_data_with_path(self, name: str) -> Any:
        with self._loading:
            return super().load_data_with_path(name)

    def load_service_model(self, *args: Any, **kwargs: Any) -> Any:
        with self._loading:
            return super().load_service_model(*args, **kwargs)


class _PathsOnce(list):
    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


#: The loader of every session :func:`deliver_at_once` makes (and, in the tests, of every session).
MODELS = ModelsLoader()
