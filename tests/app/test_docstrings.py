"""The API reference is generated from the docstrings (``make docs``): every keyword argument of every
public construct and function must be documented there, with its default when it has one."""

from __future__ import annotations

import inspect

import pytest

import pipeline_constructs
from pipeline_constructs.building_blocks.compliance import PipelineKey


def _public() -> list[tuple[str, object]]:
    names = [(name, getattr(pipeline_constructs, name)) for name in pipeline_constructs.__all__]
    return [*names, ("PipelineKey", PipelineKey)]


def _documented_signature(obj: object) -> tuple[inspect.Signature, str]:
    if inspect.isclass(obj):
        return inspect.signature(obj.__init__), (obj.__doc__ or "") + (obj.__init__.__doc__ or "")
    return inspect.signature(obj), obj.__doc__ or ""


@pytest.mark.parametrize(("name", "obj"), _public(), ids=[name for name, _ in _public()])
def test_every_keyword_argument_is_documented_with_its_default(name, obj):
    if (inspect.isclass(obj) and not hasattr(obj, "__init__")) or getattr(obj, "__dataclass_fields__", None):
        pytest.skip("a dataclass or enum documents its fields in its own docstring")
    signature, doc = _documented_signature(obj)
    keywords = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not keywords:
        pytest.skip("no keyword arguments")
    missing = [p.name for p in keywords if f":param {p.name}:" not in doc]
    assert missing == [], f"{name}: undocumented {missing}"
    for parameter in keywords:
        if parameter.default is not inspect.Parameter.empty:
            text = doc.split(f":param {parameter.name}:", 1)[1].split(":param ", 1)[0]
            assert "Default" in text, f"{name}.{parameter.name}: no default stated"
