"""JSON to and from the generated API models (`_api.py`), and the HTTP transport they use.

Decoding follows the models' type hints, which the generator wrote from the OpenAPI document:
a missing required field, a value of the wrong type or an unknown enum value is an error naming
the field's path. In strict mode (the tests) an unknown field is one too, so a response that
disagrees with the document fails instead of passing unread.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class DecodeError(ValueError):
    """A response that does not match the API's document; names the field."""


class ApiError(RuntimeError):
    """The service answered with an error status; `message` is its own (it names the field)."""

    def __init__(self, status: int, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status}: {message}")
        self.status = status
        self.message = message


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _datetime(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise DecodeError(f"{where}: expected a date-time string, got {value!r}")
    try:
        # Python reads at most microseconds; chrono writes nanoseconds.
        text = _FRACTION.sub(r"\1", value)
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError as e:
        raise DecodeError(f"{where}: {e}") from e


def _hints(cls: type) -> dict[str, Any]:
    cached = getattr(cls, "__neurodiff_hints__", None)
    if cached is None:
        cached = typing.get_type_hints(cls)
        setattr(cls, "__neurodiff_hints__", cached)
    return cached


def json_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("json", f.name))


def decode(tp: Any, value: Any, where: str = "$", strict: bool = False) -> Any:
    """`value` (parsed JSON) as type `tp`, checked."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for member in args:
            if member is type(None):
                continue
            try:
                return decode(member, value, where, strict)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError("; ".join(errors) or f"{where}: no type matches {value!r}")
    if origin is Literal:
        if value not in args:
            raise DecodeError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected a list, got {type(value).__name__}")
        return [decode(args[0], v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: decode(args[1], v, f"{where}.{k}", strict) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_object(tp, value, where, strict)
    return _decode_scalar(tp, value, where)


def _decode_object(cls: type[T], value: Any, where: str, strict: bool) -> T:
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: expected a {cls.__name__} object, got {type(value).__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    known = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = json_name(f)
        known.add(name)
        if name in value:
            kwargs[f.name] = decode(hints[f.name], value[name], f"{where}.{name}", strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DecodeError(f"{where}: required field `{name}` of {cls.__name__} is missing")
    if strict:
        unknown = sorted(set(value) - known)
        if unknown:
            raise DecodeError(f"{where}: {cls.__name__} has no field {unknown} in the API document")
    return cls(**kwargs)


def _decode_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is datetime:
        return _datetime(value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool) and isinstance(value, tp):
        return value
    elif tp is bytes and isinstance(value, (bytes, bytearray)):
        return bytes(value)
    name = getattr(tp, "__name__", str(tp))
    raise DecodeError(f"{where}: expected {name}, got {value!r}")


def encode(value: Any) -> Any:
    """A model (or anything holding models) as JSON-ready data; absent optional fields left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is not None:
                out[json_name(f)] = encode(v)
        return out
    if isinstance(value, datetime):
        # The API takes times with a zone; a naive one is taken as UTC, as the API gives them.
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


class Transport:
    """Requests to one NeuroDiff API with one bearer token (standard library only)."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0, strict: bool = False) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.strict = strict

    def _open(
        self,
        method: str,
        template: str,
        path: Mapping[str, Any] | None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | None] | None = None,
        body: Any = None,
    ) -> tuple[Any, str]:
        """The open response to one request, and the path it went to; ApiError on an error status."""
        where = template.format(**{k: urllib.parse.quote(str(v), safe="") for k, v in (path or {}).items()})
        q = {k: encode(v) for k, v in (query or {}).items() if v is not None}
        url = self.url + where + (f"?{urllib.parse.urlencode(q)}" if q else "")
        data = None if body is None else json.dumps(encode(body)).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            # Never copied onto a redirect: a token is for this API only.
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            if v is not None:
                req.add_header(k, v)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout), where
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, _message(e.read()), method, where) from None

    def call(
        self,
        method: str,
        template: str,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | None] | None = None,
        body: Any = None,
        response: Any = None,
    ) -> Any:
        """One request; the response decoded as `response` (bytes: the raw body; None: nothing)."""
        r, where = self._open(method, template, path, query, headers, body)
        with r:
            raw = r.read()
        if response is bytes:
            return raw
        if response is None:
            return None
        return decode(response, json.loads(raw), where, self.strict)

    def download(self, template: str, path: Mapping[str, Any], dest: str) -> None:
        """GET `template` into the file `dest`, a chunk at a time (artifacts can be large)."""
        r, _ = self._open("GET", template, path)
        with r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip()[:500]

