#!/usr/bin/env python3
"""Generates the Python client's models and operations (python/neurodiff/_api.py) from the API's
own OpenAPI document, so the client is never a hand-copied second definition of the API.

    neurodiff openapi > openapi.json
    python scripts/gen_python_client.py openapi.json python/neurodiff/_api.py          # write
    python scripts/gen_python_client.py --check openapi.json python/neurodiff/_api.py  # or fail

Every component schema becomes a dataclass (objects; `allOf` parts, as serde's flatten writes
them, merged) or a Literal alias (string enums); every operation becomes a typed method of
`Operations`, named by its operationId. python/tests/test_api_drift.py runs `--check` against the
document the binary serves, so a change to the API that is not regenerated fails the tests.
"""

from __future__ import annotations

import argparse
import difflib
import json
import keyword
import re
import sys
from typing import Any

HEADER = '''"""GENERATED from the API's OpenAPI document by scripts/gen_python_client.py; do not edit.

Regenerate: neurodiff openapi > openapi.json && python scripts/gen_python_client.py openapi.json python/neurodiff/_api.py
"""

# ruff: noqa
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._codec import Transport
'''

_REF = "#/components/schemas/"
# Transport.call returns Any; each method's annotation is what the document says it decodes to.
_IGNORE = "  # type: ignore[no-any-return]"


def _ref_name(ref: str) -> str:
    if not ref.startswith(_REF):
        raise SystemExit(f"unsupported reference {ref}")
    return ref[len(_REF):]


class Generator:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})

    # ---- types
    def py_type(self, s: dict[str, Any] | bool) -> str:
        """The Python annotation for schema `s`."""
        if not isinstance(s, dict) or not s:
            return "Any"
        if "$ref" in s:
            return _ref_name(s["$ref"])
        for combinator in ("oneOf", "anyOf"):
            if combinator in s:
                return self._union(s[combinator])
        if "allOf" in s:
            parts = s["allOf"]
            if len(parts) == 1:
                return self.py_type(parts[0])
            return "dict[str, Any]"
        t = s.get("type")
        if isinstance(t, list):
            members = [self.py_type({**s, "type": x}) for x in t if x != "null"]
            ann = " | ".join(dict.fromkeys(members))
            return ann if "null" not in t or ann.endswith("| None") else f"{ann} | None"
        if "enum" in s and t in ("string", None):
            values = [v for v in s["enum"] if v is not None]
            lit = f"Literal[{', '.join(json.dumps(v) for v in values)}]"
            return f"{lit} | None" if None in s["enum"] else lit
        if t == "string":
            return "datetime" if s.get("format") == "date-time" else "str"
        if t == "integer":
            return "int"
        if t == "number":
            return "float"
        if t == "boolean":
            return "bool"
        if t == "null":
            return "None"
        if t == "array":
            return f"list[{self.py_type(s.get('items', {}))}]"
        if t == "object" or "properties" in s:
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and not s.get("properties"):
                return f"dict[str, {self.py_type(extra)}]"
            return "dict[str, Any]"
        return "Any"

    def _union(self, members: list[dict[str, Any]]) -> str:
        nullable = any(m.get("type") == "null" for m in members)
        rest = [m for m in members if m.get("type") != "null"]
        # A serde enum of unit variants, one alternative per variant: a Literal of them all.
        if rest and all(m.get("type") == "string" and "enum" in m for m in rest):
            values = [v for m in rest for v in m["enum"]]
            ann = f"Literal[{', '.join(json.dumps(v) for v in values)}]"
        else:
            ann = " | ".join(dict.fromkeys(self.py_type(m) for m in rest)) or "Any"
        return f"{ann} | None" if nullable else ann

    def _object(self, s: dict[str, Any]) -> tuple[dict[str, Any], set[str]] | None:
        """Properties and required names of an object schema (allOf merged); None if not one."""
        if "allOf" in s:
            props: dict[str, Any] = {}
            required: set[str] = set()
            for part in s["allOf"]:
                target = self.schemas[_ref_name(part["$ref"])] if "$ref" in part else part
                sub = self._object(target)
                if sub is None:
                    return None
                props.update(sub[0])
                required |= sub[1]
            return props, required
        if s.get("type") == "object" and "properties" in s:
            return dict(s["properties"]), set(s.get("required", []))
        return None

    # ---- declarations
    def declaration(self, name: str, s: dict[str, Any]) -> str:
        obj = self._object(s)
        doc = _docstring(s.get("description"), "    ")
        if obj is None:
            return f"{name} = {self.py_type(s)}\n" + (f'"""{_clean(s["description"])}"""\n' if s.get("description") else "")
        props, required = obj
        lines = ["@dataclass", f"class {name}:"]
        if doc:
            lines.append(doc)
        fields = sorted(props.items(), key=lambda kv: kv[0] not in required)  # stable: required first
        if not fields:
            lines.append("    pass")
        for json_name, p in fields:
            py = _py_name(json_name)
            ann = self.py_type(p)
            meta = f"metadata={{'json': {json.dumps(json_name)}}}" if py != json_name else ""
            if json_name in required:
                line = f"    {py}: {ann}" + (f" = field({meta})" if meta else "")
            else:
                if not ann.endswith("| None") and ann != "Any":
                    ann = f"{ann} | None"
                line = f"    {py}: {ann} = " + (f"field(default=None, {meta})" if meta else "None")
            lines.append(line)
            if p.get("description"):
                lines.append(f'    """{_clean(p["description"])}"""')
        return "\n".join(lines) + "\n"

    def models(self) -> str:
        # Classes first, then aliases: an alias is evaluated where it stands, and may name one.
        names = sorted(self.schemas, key=lambda n: (self._object(self.schemas[n]) is None, n))
        return "\n\n".join(self.declaration(n, self.schemas[n]) for n in names)

    # ---- operations
    def operations(self) -> str:
        methods = []
        seen: set[str] = set()
        for path, item in sorted(self.doc.get("paths", {}).items()):
            for method, op in sorted(item.items()):
                op_id = op.get("operationId")
                if not op_id or op_id in seen:
                    raise SystemExit(f"{method.upper()} {path}: missing or repeated operationId {op_id!r}")
                seen.add(op_id)
                methods.append(self._method(method.upper(), path, op))
        methods.sort(key=lambda m: m[0])
        body = "\n".join(m[1] for m in methods)
        return (
            "class Operations:\n"
            '    """One method per operation of the API, named by its operationId."""\n\n'
            "    def __init__(self, transport: Transport) -> None:\n"
            "        self.transport = transport\n\n" + body
        )

    def _method(self, method: str, path: str, op: dict[str, Any]) -> tuple[str, str]:
        op_id = op["operationId"]
        params = op.get("parameters", [])
        args: list[str] = ["self"]
        kwargs: list[str] = []
        path_args, query_args, header_args = [], [], []
        for p in params:
            py = _py_name(p["name"].replace("-", "_").lower())
            ann = self.py_type(p.get("schema", {}))
            where = p["in"]
            if where == "path":
                args.append(f"{py}: {ann}")
                path_args.append((p["name"], py))
            elif p.get("required"):
                args.append(f"{py}: {ann}")
                (query_args if where == "query" else header_args).append((p["name"], py))
            else:
                if not ann.endswith("| None") and ann != "Any":
                    ann = f"{ann} | None"
                kwargs.append(f"{py}: {ann} = None")
                (query_args if where == "query" else header_args).append((p["name"], py))
        body = op.get("requestBody")
        if body:
            schema = body.get("content", {}).get("application/json", {}).get("schema", {})
            args.append(f"body: {self.py_type(schema)}")
        response = self._response(op)
        signature = ", ".join(args + (["*", *kwargs] if kwargs else []))
        summary = _clean(op.get("summary") or op.get("description") or "")
        summary = f"{summary} ({method} {path})" if summary else f"{method} {path}"
        call = [f'self.transport.call("{method}", "{path}"']
        if path_args:
            call.append("path={" + ", ".join(f'"{n}": {py}' for n, py in path_args) + "}")
        if query_args:
            call.append("query={" + ", ".join(f'"{n}": {py}' for n, py in query_args) + "}")
        if header_args:
            call.append("headers={" + ", ".join(f'"{n}": {py}' for n, py in header_args) + "}")
        if body:
            call.append("body=body")
        call.append(f"response={response if response != 'None' else 'None'}")
        ret = response
        text = (
            f"    def {op_id}({signature}) -> {ret}:\n"
            f'        """{summary}"""\n'
            + (f"        {', '.join(call)})\n" if ret == "None" else f"        return {', '.join(call)}){_IGNORE if ret != 'Any' else ''}\n")
        )
        return op_id, text

    def _response(self, op: dict[str, Any]) -> str:
        for status, r in sorted(op.get("responses", {}).items()):
            if not status.startswith("2"):
                continue
            content = r.get("content", {})
            if "application/json" in content:
                return self.py_type(content["application/json"].get("schema", {}))
            if content:
                return "bytes"
            return "None"
        return "None"

    def module(self) -> str:
        return HEADER + "\n\n" + self.models() + "\n\n" + self.operations()


def _py_name(name: str) -> str:
    py = re.sub(r"\W", "_", name)
    return py + "_" if keyword.iskeyword(py) else py


def _clean(text: str | None) -> str:
    return " ".join((text or "").replace('"""', "'''").replace("\\", "\\\\").split())


def _docstring(text: str | None, indent: str) -> str:
    t = _clean(text)
    return f'{indent}"""{t}"""' if t else ""


def generate(doc: dict[str, Any]) -> str:
    return Generator(doc).module()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail (with a diff) if OUT differs")
    ap.add_argument("openapi", help="the OpenAPI document (`neurodiff openapi`), or - for stdin")
    ap.add_argument("out")
    a = ap.parse_args()
    doc = json.load(sys.stdin if a.openapi == "-" else open(a.openapi))
    text = generate(doc)
    if a.check:
        try:
            old = open(a.out).read()
        except FileNotFoundError:
            old = ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), a.out, "generated"))
            print(f"\n{a.out} is not what the API's document generates: regenerate it", file=sys.stderr)
            return 1
        return 0
    with open(a.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
