"""Dataclasses that cross the wire as JSON objects, checked field by field on the way in.

The guest agent is the code most exposed to hostile input and the host must not
trust the guest either, so every message is decoded through ``WireModel.from_wire``:
unknown fields are ignored, missing required fields, wrong types, integers
beyond 64 bits, numbers that are not finite and text that is not valid
Unicode raise ``WireError`` naming the field. Supported field types: ``str``, ``int``, ``float``,
``bool``, ``Any``, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested models.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from ember.protocol.codes import ErrorCode

M = TypeVar("M", bound="WireModel")
_MISSING = dataclasses.MISSING
# What every system call and every JSON reader can hold: bigger numbers are no pid, offset or size.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class WireError(ValueError):
    """A message did not have the shape its type requires."""

    code = ErrorCode.INVALID_REQUEST


class WireModel:
    """Base of every message: a dataclass whose instances map to JSON objects."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = _dump(getattr(self, field.name))
        return out

    @classmethod
    def from_wire(cls: type[M], data: Any) -> M:
        if not isinstance(data, dict):
            raise WireError(f"{cls.__name__} must be a JSON object")
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if field.name in data:
                kwargs[field.name] = _check(hints[field.name], data[field.name], field.name)
            elif field.default is _MISSING and field.default_factory is _MISSING:
                raise WireError(f"{cls.__name__}: missing field {field.name!r}")
        return cls(**kwargs)


def is_unicode_text(text: str) -> bool:
    """False for a string JSON can carry but UTF-8 cannot: one with an unpaired surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dump(value: Any) -> Any:
    if isinstance(value, WireModel):
        return value.to_wire()
    if isinstance(value, list):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value


def _check(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, where)
            except WireError as exc:
                errors.append(str(exc))
        raise WireError("; ".join(errors) or f"{where}: unexpected null")
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{where}: expected a list")
        (item_hint,) = typing.get_args(hint)
        return [_check(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected an object")
        _, item_hint = typing.get_args(hint)
        return {
            _check(str, key, f"{where} key"): _check(item_hint, item, f"{where}.{key}")
            for key, item in value.items()
        }
    if isinstance(hint, type) and issubclass(hint, WireModel):
        try:
            return hint.from_wire(value)
        except WireError as exc:
            raise WireError(f"{where}: {exc}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{where}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{where}: expected an integer")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise WireError(f"{where}: {value} does not fit in 64 bits")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise WireError(f"{where}: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WireError(f"{where}: expected a string")
        if not value.isascii() and not is_unicode_text(value):
            raise WireError(f"{where}: not valid Unicode text (it holds an unpaired surrogate)")
        return value
    raise TypeError(f"unsupported wire type {hint!r} for {where}")
