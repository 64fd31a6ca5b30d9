"""Which numpy dtypes shmstore serves, and their JSON form.

shmstore serves every fixed-size numpy dtype: numbers, bool, complex, bytes
(``S``), unicode (``U``), ``datetime64``, ``timedelta64``, raw bytes (``V``)
and structured dtypes of these, with sub-arrays, offsets and padding.  What
HDF5 has no type for (``U``, ``M``, ``m``) is stored as HDF5 opaque data of
the same size, tagged as h5py tags it (see ``_hdf5.storage_dtype``), so the
bytes are kept as they are and h5py reads them back as the same dtype.

A dtype is stored in manifests and segment headers as JSON that numpy can turn
back into the identical dtype: byte order, compound field names, offsets and
padding, and sub-array fields are all kept.

* a simple dtype is its ``dtype.str``: ``"<f8"``, ``">i4"``, ``"|b1"``,
  ``"|S16"``, ``"<U5"``, ``"<M8[ns]"``, ``">m8[10us]"``, ``"|V4"``;
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
    "empty",
    "is_supported",
    "unsupported_reason",
]

_FIXED_KINDS = frozenset("biufcSUVMm")


def is_supported(dtype: np.dtype[Any]) -> bool:
    """True for every fixed-size dtype: no Python objects, no variable-length or reference data.

    Numbers, bool, complex, bytes, unicode, ``datetime64``, ``timedelta64``,
    raw bytes (``V``), and structured dtypes of these; a dtype of no bytes
    is not served (there would be nothing to store).
    """
    if dtype.itemsize == 0:
        return False
    if dtype.subdtype is not None:
        return is_supported(dtype.subdtype[0])
    if dtype.fields is not None:
        return all(is_supported(field[0]) for field in dtype.fields.values())
    if dtype.metadata and ("vlen" in dtype.metadata or "ref" in dtype.metadata):
        return False
    return dtype.kind in _FIXED_KINDS


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
    if dtype.itemsize == 0:
        return "no bytes per element"
    if dtype.kind == "T":
        return "variable-width strings"
    names = {"O": "Python objects"}
    return names.get(dtype.kind, f"dtype {dtype}")


def _offender(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The part of *dtype* that is not served (a field of a structured dtype, say)."""
    if dtype.itemsize and dtype.subdtype is not None:
        return _offender(dtype.subdtype[0])
    if dtype.itemsize and dtype.fields is not None:
        for field in dtype.fields.values():
            if not is_supported(field[0]):
                return _offender(field[0])
    return dtype


def unsupported_reason(dtype: np.dtype[Any], what: str) -> str:
    """Why *what*, of *dtype*, is not served, and what to do instead."""
    part = _offender(dtype)
    metadata: dict[str, Any] = dict(part.metadata or {})
    hint = ""
    if part.kind in "OT" and "ref" not in metadata:
        hint = (
            " Variable-length data cannot be memory-mapped or shared: convert it to a "
            "fixed-size dtype first, e.g. arr.astype('U') or arr.astype('S') for text."
        )
    where = "" if part is dtype else f" in {dtype!r}"
    return (
        f"{what} holds {_kind(part)} ({part!r}{where}), which shmstore does not serve: every "
        "fixed-size dtype is served (numbers, bool, complex, bytes, unicode, datetime64, "
        f"timedelta64, raw bytes, and structured dtypes of these), nothing else.{hint}"
    )


def check_supported(dtype: np.dtype[Any], what: str) -> None:
    """Raise :class:`UnsupportedDtypeError` naming *what* unless *dtype* is served.

    :raises UnsupportedDtypeError: Python objects, variable-length data,
        HDF5 references, a dtype of no bytes, or a structured dtype holding one.
    """
    if not is_supported(dtype):
        raise UnsupportedDtypeError(unsupported_reason(dtype, what))


def empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """``np.empty(shape, dtype)``, but of exactly *dtype*.

    numpy makes an array of a generic (unit-less) ``datetime64`` or
    ``timedelta64`` in big-endian order little-endian (``np.empty(3, ">M8")``
    has dtype ``<M8``); a view of bytes keeps the dtype as it is.
    """
    count = 1
    for n in shape:
        count *= n
    return np.empty(count * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(shape)


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
    "description": "numpy dtype: a dtype.str such as '<f8', '<U5' or '<M8[ns]', a compound "
    "{names, formats, offsets, itemsize}, or a sub-array {base, shape}.",
    "anyOf": [
        {
            "type": "string",
            "pattern": "^[<>|=]([biufcSUV][0-9]+"
            "|[Mm]8(\\[[0-9]*(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\\])?)$",
        },
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
