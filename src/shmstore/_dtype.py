"""Which numpy dtypes shmstore serves, and their JSON form.

A dtype is stored in manifests and segment headers as JSON that numpy can turn
back into the identical dtype: byte order, compound field names, offsets and
padding, and sub-array fields are all kept.

* a simple dtype is its ``dtype.str``: ``"<f8"``, ``">i4"``, ``"|b1"``, ``"|S16"``;
* a compound dtype is ``{"names": [...], "formats": [...], "offsets": [...],
  "itemsize": n}`` with each format again a dtype spec;
* a sub-array field is ``{"base": spec, "shape": [...]}``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from .errors import UnsupportedDtypeError

__all__ = [
    "DType",
    "check_supported",
    "dtype_from_spec",
    "dtype_to_spec",
    "is_supported",
    "unsupported_reason",
]

_SIMPLE_KINDS = frozenset("biufcS")


def is_supported(dtype: np.dtype[Any]) -> bool:
    """True for numeric, bool, complex, fixed-length bytes, and compounds of these."""
    if dtype.subdtype is not None:
        return is_supported(dtype.subdtype[0])
    if dtype.fields is not None:
        return all(is_supported(field[0]) for field in dtype.fields.values())
    if dtype.metadata and ("vlen" in dtype.metadata or "ref" in dtype.metadata):
        return False
    return dtype.kind in _SIMPLE_KINDS and dtype.itemsize > 0


def _kind(dtype: np.dtype[Any]) -> str:
    metadata: dict[str, Any] = dict(dtype.metadata or {})
    if "vlen" in metadata:
        return (
            "variable-length strings"
            if metadata["vlen"] in (str, bytes)
            else "variable-length sequences"
        )
    if "ref" in metadata:
        return "HDF5 references"
    names = {
        "O": "Python objects",
        "U": "unicode text",
        "V": "opaque bytes",
        "M": "datetimes",
        "m": "timedeltas",
    }
    return names.get(dtype.kind, f"dtype {dtype}")


def unsupported_reason(dtype: np.dtype[Any], what: str) -> str:
    """Why *what*, of *dtype*, is not served, and what to do instead."""
    hint = ""
    if dtype.kind == "U":
        hint = " Encode text to fixed-length bytes first, e.g. arr.astype('S')."
    elif dtype.kind == "O" and "ref" not in (dtype.metadata or {}):
        hint = " Variable-length data cannot be memory-mapped or shared; use a fixed-size dtype."
    return (
        f"{what} holds {_kind(dtype)} ({dtype!r}), which shmstore does not serve: only numeric, "
        f"bool, complex, fixed-length bytes and compound dtypes of these are supported.{hint}"
    )


def check_supported(dtype: np.dtype[Any], what: str) -> None:
    """Raise :class:`UnsupportedDtypeError` naming *what* unless *dtype* is served.

    :raises UnsupportedDtypeError: object, variable-length, unicode, reference,
        opaque or datetime dtypes, or compounds containing one.
    """
    if not is_supported(dtype):
        raise UnsupportedDtypeError(unsupported_reason(dtype, what))


def dtype_to_spec(dtype: np.dtype[Any]) -> Any:
    """The JSON form of *dtype* (see the module docstring)."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": dtype_to_spec(base), "shape": list(shape)}
    if dtype.fields is not None:
        names = list(dtype.names or ())
        return {
            "names": names,
            "formats": [dtype_to_spec(dtype.fields[n][0]) for n in names],
            "offsets": [int(dtype.fields[n][1]) for n in names],
            "itemsize": dtype.itemsize,
        }
    return dtype.str


def dtype_from_spec(spec: Any) -> np.dtype[Any]:
    """The dtype a spec made by :func:`dtype_to_spec` stands for.

    :raises ValueError: the spec is not one numpy understands.
    """
    try:
        if isinstance(spec, str):
            return np.dtype(spec)
        if isinstance(spec, dict) and set(spec) == {"base", "shape"}:
            return np.dtype((dtype_from_spec(spec["base"]), tuple(spec["shape"])))
        if isinstance(spec, dict) and set(spec) == {"names", "formats", "offsets", "itemsize"}:
            return np.dtype(
                {
                    "names": list(spec["names"]),
                    "formats": [dtype_from_spec(f) for f in spec["formats"]],
                    "offsets": list(spec["offsets"]),
                    "itemsize": int(spec["itemsize"]),
                }
            )
    # numpy parses comma-separated dtype strings as Python: "i4,(2" is a SyntaxError
    except (TypeError, ValueError, KeyError, SyntaxError, RecursionError) as err:
        raise ValueError(f"not a valid dtype spec: {spec!r} ({err})") from err
    raise ValueError(f"not a valid dtype spec: {spec!r}")


def _validate(value: Any) -> np.dtype[Any]:
    if isinstance(value, np.dtype):
        return value
    return dtype_from_spec(value)


_SPEC_SCHEMA: dict[str, Any] = {
    "title": "DType",
    "description": "numpy dtype: a dtype.str such as '<f8', a compound "
    "{names, formats, offsets, itemsize}, or a sub-array {base, shape}.",
    "anyOf": [
        {"type": "string", "pattern": "^[<>|=][biufcSV][0-9]+$"},
        {
            "type": "object",
            "properties": {
                "names": {"type": "array", "items": {"type": "string"}},
                "formats": {"type": "array"},
                "offsets": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "itemsize": {"type": "integer", "minimum": 1},
            },
            "required": ["names", "formats", "offsets", "itemsize"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "base": {},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            },
            "required": ["base", "shape"],
            "additionalProperties": False,
        },
    ],
}

DType = Annotated[
    np.dtype[Any],
    PlainValidator(_validate),
    PlainSerializer(dtype_to_spec, return_type=Any),
    WithJsonSchema(_SPEC_SCHEMA),
]
"""A pydantic field type holding a real ``np.dtype``, serialised as its spec."""
