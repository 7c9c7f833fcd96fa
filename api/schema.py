"""Structural validation against the CRDs' openAPIV3Schema, as the Kubernetes API server does it.

`problems(api_version, kind, obj)` walks one object with the schema of its CRD version in
manifests/kubernetes/10-crds.yaml and returns what the API server would refuse, in its words:
unknown fields (strict field validation, `kubectl apply`'s default since 1.27), value keywords
(type, enum, lengths, patterns, counts, oneOf ...) checked by jsonschema one node at a time, and
the `x-kubernetes-validations` CEL rules, evaluated by cel-python on nodes whose structure is
sound (the API server skips CEL where the schema already failed). Nulls are treated as absent:
the API server prunes them before validating.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

_MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
CRD_FILES = (
    _MANIFESTS / "kubernetes/10-crds.yaml",
    _MANIFESTS / "gateway-api/standard-crds.yaml",
)
# Keywords a node's children are reached through; the rest constrain the node's own value
# (but "required", which names a child, so the problem is reported at the child as kube does).
_STRUCTURE = frozenset({"properties", "items", "additionalProperties", "x-kubernetes-validations"})
_CEL_ENV = celpy.Environment()


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the field's path (`spec.rules[0].to`) and the reason."""

    field: str
    reason: str


def summary(problems: Sequence[Problem]) -> Problem:
    """The one line a user reads: the first problem, and how many more there are."""
    first, more = problems[0], len(problems) - 1
    return Problem(first.field, first.reason + (f" (and {more} more)" if more else ""))


@dataclass(frozen=True)
class _Rule:
    program: Any
    message: str


@functools.cache
def _crds() -> tuple[Mapping[str, Any], ...]:
    return tuple(
        crd for path in CRD_FILES for crd in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    )


@functools.cache
def schemas() -> dict[tuple[str, str], Mapping[str, Any]]:
    """(apiVersion, kind) -> the version's openAPIV3Schema, for every CRD we ship."""
    return {
        (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"]): v["schema"][
            "openAPIV3Schema"
        ]
        for crd in _crds()
        for v in crd["spec"]["versions"]
    }


@functools.cache
def crd_names() -> dict[str, str]:
    """Every name kubectl accepts for the kinds of our CRDs: plural, singular, short names."""
    out: dict[str, str] = {}
    for crd in _crds():
        names = crd["spec"]["names"]
        for name in (names["plural"], names["singular"], *names.get("shortNames", ())):
            out[name] = names["kind"]
    return out


def problems(api_version: str, kind: str, obj: Mapping[str, Any]) -> list[Problem]:
    """What the API server would refuse in `obj` (metadata is the caller's to check), after
    pruning nulls and applying the schema's defaults as it does."""
    schema = schemas().get((api_version, kind))
    if schema is None:
        return []
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    return list(_walk(schema, stored(api_version, kind, body), ""))


def stored(api_version: str, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` (spec, status ...) as the API server stores it: nulls pruned, the schema's
    `default`s filled in under `spec` (a Gateway listener's allowedRoutes, for one)."""
    out = pruned(dict(body))
    schema = schemas().get((api_version, kind))
    spec_schema = (schema or {}).get("properties", {}).get("spec")
    if spec_schema is not None and isinstance(out.get("spec"), Mapping):
        out["spec"] = _defaulted(spec_schema, out["spec"])
    return dict(out)


def _defaulted(schema: Mapping[str, Any], value: Any) -> Any:
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_defaulted(schema["items"], v) for v in value]
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    props = schema.get("properties") or {}
    for name, sub in props.items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    extra = schema.get("additionalProperties")
    for name, child in out.items():
        if name in props:
            out[name] = _defaulted(props[name], child)
        elif isinstance(extra, Mapping):
            out[name] = _defaulted(extra, child)
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _walk(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[Problem]:
    own = list(_value_problems(schema, value, path))
    yield from own
    children = list(_children(schema, value, path))
    for child_schema, child, child_path in children:
        if child_schema is None:
            yield Problem(child_path, _unknown(child_path, schema))
        else:
            yield from _walk(child_schema, child, child_path)
    # The API server runs a node's CEL rules only when its own structure validated.
    if not own and "x-kubernetes-validations" in schema:
        yield from _cel_problems(schema, value, path)


def _children(
    schema: Mapping[str, Any], value: Any, path: str
) -> Iterator[tuple[Mapping[str, Any] | None, Any, str]]:
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield schema["items"], item, f"{path}[{i}]"
    if not isinstance(value, Mapping) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, child in value.items():
        if props is not None and key in props:
            yield props[key], child, _join(path, key)
        elif isinstance(extra, Mapping):
            yield extra, child, f"{path}[{key}]"
        elif props is not None or extra is False:
            yield None, child, _join(path, key)


def _unknown(path: str, parent: Mapping[str, Any]) -> str:
    name = path.rsplit(".", 1)[-1]
    known = sorted(parent.get("properties", {}))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f'unknown field "{name}"{hint}'  # the path leads the message already


def _value_problems(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[Problem]:
    shallow = {k: v for k, v in schema.items() if k not in _STRUCTURE and k != "required"}
    where = path or "<root>"
    if isinstance(value, Mapping):
        for name in schema.get("required", ()):
            if name not in value:
                yield Problem(_join(path, name), "Required value")
    for error in jsonschema.Draft7Validator(shallow).iter_errors(value):
        yield Problem(where, _k8s_reason(error, where))


def pruned(value: Any) -> Any:
    """`value` as the API server stores it: null fields pruned, map keys strings (YAML's
    `8080:` is an int key; kubectl's YAML-to-JSON makes it "8080")."""
    if isinstance(value, Mapping):
        return {_json_key(k): pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return key if isinstance(key, str) else str(key)


_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
}


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _k8s_reason(error: jsonschema.ValidationError, where: str) -> str:
    """jsonschema's finding in the words kube-openapi uses, so users can search for them."""
    value = error.instance
    shown = value if isinstance(value, str) else _type_name(value)
    size = len(value) if isinstance(value, list | Mapping | str) else 0
    arg = error.validator_value
    words: dict[str, str] = {
        "enum": 'Unsupported value: "{value}": supported values: {supported}',
        "type": 'Invalid value: "{type}": {where} in body must be of type {arg}',
        "maxItems": "Too many: {size}: must have at most {arg} items",
        "minItems": "Invalid value: {size}: {where} in body should have at least {arg} items",
        "maxLength": "Too long: may not be more than {arg} bytes",
        "minLength": 'Invalid value: "{shown}": {where} in body should be at least {arg} chars'
        " long",
        "pattern": "Invalid value: \"{shown}\": {where} in body should match '{arg}'",
        "minProperties": "{where} in body should have at least {arg} properties",
        "maxProperties": "Too many: {size}: must have at most {arg} items",
        "oneOf": 'Invalid value: "{shown}": must validate one and only one schema (oneOf)',
        "maximum": "Invalid value: {value}: {where} in body should be less than or equal to {arg}",
        "minimum": "Invalid value: {value}: {where} in body should be greater than or equal to "
        "{arg}",
    }
    template = words.get(str(error.validator), 'Invalid value: "{shown}": {message}')
    supported = ", ".join(f'"{v}"' for v in arg) if isinstance(arg, list) else ""
    return template.format(
        value=value,
        supported=supported,
        type=_type_name(value),
        where=where,
        arg=arg,
        message=error.message,
        size=size,
        shown=shown,
    )


def _split(text: Any, separator: Any) -> celtypes.ListType:
    """Kubernetes' CEL strings library `split` (the Gateway API's rules use it)."""
    return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(separator))])


_CEL_FUNCTIONS: dict[str, Any] = {"split": _split}


@functools.cache
def _compiled(rule: str, message: str) -> _Rule:
    return _Rule(_CEL_ENV.program(_CEL_ENV.compile(rule), functions=_CEL_FUNCTIONS), message)


def _cel_problems(schema: Mapping[str, Any], value: Any, path: str) -> Iterator[Problem]:
    where = path or "<root>"
    activation = {"self": json_to_cel(value)}
    for spec in schema["x-kubernetes-validations"]:
        rule = _compiled(spec["rule"], spec.get("message") or f"failed rule: {spec['rule']}")
        try:
            verdict = rule.program.evaluate(activation)
        except CELEvalError as exc:
            yield Problem(where, f'Invalid value: "{_type_name(value)}": {_eval_reason(exc)}')
            continue
        if isinstance(verdict, CELEvalError):
            yield Problem(where, f'Invalid value: "{_type_name(value)}": {_eval_reason(verdict)}')
        elif not bool(verdict):
            yield Problem(where, f'Invalid value: "{_type_name(value)}": {rule.message}')


def _eval_reason(exc: Exception) -> str:
    """The API server's wording for the one evaluation error our CRDs can hit: int(key)."""
    text = str(exc.args)
    if "invalid literal for int()" in text:
        found = re.search(r"StringType\(\\*'([^'\\]*)", text)
        literal = found.group(1) if found else "?"
        return f"type conversion error from 'string' to 'int': {literal!r}"
    return f"rule evaluation error: {exc.args[0] if exc.args else exc}"
