"""The rules Istio's validating webhook checks beyond the CRD schema (pkg/config/validation).

Pure functions over a spec the schema already accepted (so types are right): each returns the
problems in Istio's own words, with the field they are about, so a message found in Istio's
docs or issues finds ours too. Warnings Istio gives (a DENY with only HTTP attributes) are not
errors here either.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from api.schema import Problem

# validation.go allowedTargetRefs: group (canonical, "core" for "") and kind.
TARGET_KINDS = (
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)
# In the order Istio checks them with CUSTOM, so the first problem named is the one it names.
_SOURCE_FIELDS = (
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
)
_OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods")
_PATH_FIELDS = ("paths", "notPaths")
# Source fields Istio's CUSTOM action cannot match on: the identities (its ext_authz filter
# runs before them), not the addresses.
_NOT_WITH_CUSTOM = tuple(f for f in _SOURCE_FIELDS if not f.lower().endswith("ipblocks"))
_KEYS_NOT_WITH_CUSTOM = (
    "source.namespace",
    "source.serviceAccount",
    "source.trustDomain",
    "source.principal",
)
# pchar of RFC 3986 appendix A, as Envoy's uri_template requires of a literal segment.
_VALID_LITERAL = re.compile(r"^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$")
MATCH_ONE, MATCH_ANY = "{*}", "{**}"
MAX_SERVICE_ACCOUNTS = 16  # Istio's "arbitrary limit to avoid unbounded configuration sizes"
MAX_SERVICE_ACCOUNT_LEN = 320


DRY_RUN = "istio.io/dry-run"
# Go's strconv.ParseBool, which Istio reads the dry-run annotation with.
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_BOOLS = _GO_TRUE | {"0", "f", "F", "FALSE", "false", "False"}
# Annotations istiod sets on objects it generates; a user setting one would escalate privileges.
_INTERNAL = ("internal.istio.io/parents", "internal.istio.io/parent-namespace")
_ALWAYS_REJECT = "internal.istio.io/webhook-always-reject"


def metadata(kind: str, meta: Mapping[str, Any], spec: Mapping[str, Any]) -> list[Problem]:
    """validateMetadata: the dry-run annotation (AuthorizationPolicy's ALLOW and DENY only) and
    the annotations users may not set."""
    annotations = meta.get("annotations") or {}
    where = f"metadata.annotations[{DRY_RUN}]"
    ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    out: list[Problem] = []
    if DRY_RUN in annotations:
        value, action = annotations[DRY_RUN], spec.get("action", "ALLOW")
        if kind != "AuthorizationPolicy":
            out.append(
                Problem(
                    where,
                    f"{ref} has unsupported annotation {DRY_RUN}, please remove the annotation",
                )
            )
        elif action not in ("ALLOW", "DENY"):
            out.append(
                Problem(
                    where,
                    f"the annotation {DRY_RUN} currently only supports action ALLOW/DENY, "
                    f"found action {action} in {ref}",
                )
            )
        elif value not in _GO_BOOLS:
            out.append(
                Problem(
                    where,
                    f"{ref} has annotation {DRY_RUN} with invalid value ({value}): "
                    f'strconv.ParseBool: parsing "{value}": invalid syntax',
                )
            )
    if _ALWAYS_REJECT in annotations:
        out.append(
            Problem("metadata.annotations", f'"{_ALWAYS_REJECT}" annotation found, rejecting')
        )
    for name in _INTERNAL:
        if name in annotations:
            out.append(
                Problem(
                    "metadata.annotations",
                    f'"{name}" annotation found, this may not be set by users',
                )
            )
    return out


def is_dry_run(meta: Mapping[str, Any]) -> bool:
    """Whether a valid AuthorizationPolicy is only to be evaluated and reported."""
    return (meta.get("annotations") or {}).get(DRY_RUN) in _GO_TRUE


def authorization_policy(spec: Mapping[str, Any]) -> list[Problem]:
    return [*_selector_type(spec), *_action(spec), *_rules(spec)]


def peer_authentication(spec: Mapping[str, Any]) -> list[Problem]:
    out = list(_workload_selector(spec.get("selector")))
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    levels = spec.get("portLevelMtls")
    if levels and not labels:
        out.append(
            Problem(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            )
        )
    for port in levels or {}:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            out.append(Problem(f"spec.portLevelMtls[{port}]", "port must be in range 1..65535"))
    return out


def _workload_selector(selector: Mapping[str, Any] | None) -> Iterator[Problem]:
    for key, value in ((selector or {}).get("matchLabels") or {}).items():
        field = f"spec.selector.matchLabels[{key}]"
        if key == "":
            yield Problem(field, f'empty key is not supported in selector: "{key}={value}"')
        if "*" in key or "*" in str(value):
            yield Problem(field, f'wildcard is not supported in selector: "{key}={value}"')


def _selector_type(spec: Mapping[str, Any]) -> Iterator[Problem]:
    set_ = sum(1 for k in ("selector", "targetRef") if spec.get(k) is not None)
    set_ += 1 if spec.get("targetRefs") else 0
    if set_ > 1:
        yield Problem("spec", "only one of targetRefs or workloadSelector can be set")
    yield from _workload_selector(spec.get("selector"))
    refs = [("spec.targetRef", spec["targetRef"])] if spec.get("targetRef") else []
    refs += [(f"spec.targetRefs[{i}]", r) for i, r in enumerate(spec.get("targetRefs") or [])]
    for field, ref in refs:
        yield from _target_ref(field, ref)


def _target_ref(field: str, ref: Mapping[str, Any]) -> Iterator[Problem]:
    if not ref.get("name"):
        yield Problem(f"{field}.name", "targetRef name must be set")
    if ref.get("namespace"):
        yield Problem(
            f"{field}.namespace",
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        )
    group = ref.get("group") or "core"
    if (group, ref.get("kind")) not in TARGET_KINDS:
        allowed = ", ".join(f"{g}/{k}" for g, k in TARGET_KINDS)
        yield Problem(
            field,
            f"targetRef must be to one of [{allowed}] but was "
            f"{ref.get('group', '')}/{ref.get('kind', '')}",
        )


def _action(spec: Mapping[str, Any]) -> Iterator[Problem]:
    action = spec.get("action", "ALLOW")
    rules = spec.get("rules")
    if action == "CUSTOM":
        if rules is None:
            yield Problem("spec.rules", _never_triggered("CUSTOM"))
        elif not (spec.get("provider") or {}).get("name"):
            yield Problem("spec.provider.name", "`provider.name` must not be empty")
        yield from _custom_rules(rules or [])
    elif spec.get("provider") is not None:
        yield Problem(
            "spec.provider", f"`provider` must not be with non CUSTOM action, found {action}"
        )
    if action == "DENY" and rules is None:
        yield Problem("spec.rules", _never_triggered("DENY"))


def _never_triggered(action: str) -> str:
    return (
        f"{action} action without `rules` is meaningless as it will never be triggered, "
        "add an empty rule `{}` if you want it be triggered for every request"
    )


def _custom_rules(rules: Sequence[Mapping[str, Any]]) -> Iterator[Problem]:
    for i, rule in enumerate(rules):
        for j, from_ in enumerate(rule.get("from") or []):
            source = from_.get("source") or {}
            for name in _NOT_WITH_CUSTOM:
                if source.get(name):
                    yield Problem(
                        f"spec.rules[{i}].from[{j}].source.{name}",
                        f"From.{_title(name)} is currently not supported with CUSTOM action",
                    )
        for j, cond in enumerate(rule.get("when") or []):
            key = cond.get("key", "")
            if key in _KEYS_NOT_WITH_CUSTOM or key.startswith("request.auth."):
                yield Problem(
                    f"spec.rules[{i}].when[{j}].key",
                    f"{key} is currently not supported with CUSTOM action",
                )


def _rules(spec: Mapping[str, Any]) -> Iterator[Problem]:
    for i, rule in enumerate(spec.get("rules") or []):
        at = f"spec.rules[{i}]"
        if rule.get("from") == []:
            yield Problem(f"{at}.from", f"`from` must not be empty, found at rule {i}")
        for j, from_ in enumerate(rule.get("from") or []):
            yield from _source(f"{at}.from[{j}].source", from_.get("source"), i)
        if rule.get("to") == []:
            yield Problem(f"{at}.to", f"`to` must not be empty, found at rule {i}")
        for j, to in enumerate(rule.get("to") or []):
            yield from _operation(f"{at}.to[{j}].operation", to.get("operation"), i)
        for j, cond in enumerate(rule.get("when") or []):
            yield from _condition(f"{at}.when[{j}]", cond)


def _source(field: str, source: Mapping[str, Any] | None, rule: int) -> Iterator[Problem]:
    if source is None:
        yield Problem(field, f"`from.source` must not be nil, found at rule {rule}")
        return
    if not any(source.get(k) for k in _SOURCE_FIELDS):
        yield Problem(field, f"`from.source` must not be empty, found at rule {rule}")
    identities = any(
        source.get(k) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")
    )
    if identities and (source.get("serviceAccounts") or source.get("notServiceAccounts")):
        yield Problem(
            field, f"cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
        )
    for name in _SOURCE_FIELDS:
        values = source.get(name) or []
        where = f"{field}.{name}"
        if name in ("serviceAccounts", "notServiceAccounts"):
            yield from _service_accounts(where, _title(name), values)
        elif name in ("trustDomains", "notTrustDomains"):
            yield from _trust_domains(where, _title(name), values)
        else:
            yield from _empty_values(where, _title(name), values)
        if name.endswith(("IpBlocks", "ipBlocks")):
            yield from _ips(where, [v for v in values if v])


def _operation(field: str, op: Mapping[str, Any] | None, rule: int) -> Iterator[Problem]:
    if op is None:
        yield Problem(field, f"`to.operation` must not be nil, found at rule {rule}")
        return
    if not any(op.get(k) for k in (*_OPERATION_FIELDS, *_PATH_FIELDS)):
        yield Problem(field, f"`to.operation` must not be empty, found at rule {rule}")
    for name in (*_OPERATION_FIELDS, *_PATH_FIELDS):
        values = op.get(name) or []
        where = f"{field}.{name}"
        yield from _empty_values(where, _title(name), values)
        if name in ("ports", "notPorts"):
            yield from _ports(where, [v for v in values if v])
        if name in _PATH_FIELDS:
            yield from _path_templates(where, _title(name), values)


def _condition(field: str, cond: Mapping[str, Any]) -> Iterator[Problem]:
    key = cond.get("key", "")
    if not key:
        yield Problem(f"{field}.key", "`key` must not be empty")
        return
    values, not_values = cond.get("values") or [], cond.get("notValues") or []
    if not values and not not_values:
        yield Problem(field, f"at least one of `values` or `notValues` must be set for key {key}")
        return
    for name, items in (("values", values), ("notValues", not_values)):
        if reason := attribute_problem(key, items):
            label = "value" if name == "values" else "notValue"
            yield Problem(f"{field}.{name}", f"invalid `{label}` for `key` {key}: {reason}")


def _title(name: str) -> str:
    return name[0].upper() + name[1:]


def _empty_values(field: str, label: str, values: Sequence[str]) -> Iterator[Problem]:
    if any(v == "" for v in values):
        yield Problem(field, f"empty value not allowed, found in {label}")


def _ips(field: str, values: Sequence[str]) -> Iterator[Problem]:
    for value in values:
        if reason := ip_problem(value):
            yield Problem(field, reason)


def ip_problem(value: str) -> str | None:
    """security.ValidateIPs for one value, as Go's netip parses it: host bits may be set in a
    prefix (10.1.2.3/16 is accepted), a netmask is not a prefix length."""
    bits = value.rpartition("/")[2]
    if "/" in value and not bits.isdigit():
        return f"bad CIDR range ({value}): netip.ParsePrefix({value!r}): bad bits after slash"
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError as exc:
        if "/" in value:
            return f"bad CIDR range ({value}): {exc}"
        return f"bad IP address ({value})"
    return None


def _ports(field: str, values: Sequence[str]) -> Iterator[Problem]:
    for value in values:
        if reason := port_problem(value):
            yield Problem(field, reason)


def port_problem(value: str) -> str | None:
    """security.ValidatePorts for one value: an unsigned decimal no greater than 65535."""
    if not value.isascii() or not value.isdigit():
        return f'bad port ({value}): strconv.ParseUint: parsing "{value}": invalid syntax'
    if int(value) > 65535:
        return f"bad port ({value}): out of range"
    return None


def _wildcards(field: str, label: str, values: Sequence[str]) -> Iterator[Problem]:
    yield from _empty_values(field, label, values)
    for value in values:
        count = value.count("*")
        if count > 1:
            yield Problem(field, f'at most one wildcard is allowed, found in {label}: "{value}"')
        elif count == 1 and value != "*" and not value.startswith("*") and not value.endswith("*"):
            yield Problem(
                field, f'wildcard is only allowed at the start or end, found in {label}: "{value}"'
            )


def _trust_domains(field: str, label: str, values: Sequence[str]) -> Iterator[Problem]:
    found = list(_wildcards(field, label, values))
    yield from found
    if not found:
        for value in values:
            if "/" in value:
                yield Problem(
                    field, f"trust domain must not contain '/', found in {label}: \"{value}\""
                )


def _service_accounts(field: str, label: str, values: Sequence[str]) -> Iterator[Problem]:
    if len(values) > MAX_SERVICE_ACCOUNTS:
        yield Problem(field, f"may not have more than {MAX_SERVICE_ACCOUNTS} values")
        return
    for value in values:
        if reason := service_account_problem(label, value):
            yield Problem(field, reason)
            return


def service_account_problem(label: str, value: str) -> str | None:
    """security.CheckServiceAccount for one value: `sa` or `namespace/sa`, no wildcard."""
    form = "expected format 'serviceAccount' or 'namespace/serviceAccount'"
    ns, slash, sa = value.partition("/")
    checks = (
        (value == "", f"empty value not allowed, found in {label}"),
        ("*" in value, f"wildcard not allowed, found in {label}"),
        (value.count("/") > 1, f'{form}, found "{value}" in {label}'),
        (
            len(value) > MAX_SERVICE_ACCOUNT_LEN,
            f'value cannot exceed {MAX_SERVICE_ACCOUNT_LEN} characters, found "{value}" in {label}',
        ),
        (bool(slash) and not ns, f'{form}, found empty namespace "{value}" in {label}'),
        (bool(slash) and not sa, f'{form}, found empty serviceAccount "{value}" in {label}'),
    )
    return next((reason for failed, reason in checks if failed), None)


def _path_templates(field: str, label: str, paths: Sequence[str]) -> Iterator[Problem]:
    for path in paths:
        if reason := path_template_problem(label, path):
            yield Problem(field, reason)


def path_template_problem(label: str, path: str) -> str | None:
    """security.CheckValidPathTemplate: `{*}` one segment, `{**}` the rest and last."""
    templated = MATCH_ONE in path or MATCH_ANY in path
    trimmed = path.strip("/")
    seen_any = False
    for glob in trimmed.split("/"):
        if glob in (MATCH_ONE, MATCH_ANY):
            if seen_any:
                return (
                    f"invalid or unsupported path {trimmed}, found in {label}. "
                    "{**} is not the last operator"
                )
            seen_any = glob == MATCH_ANY
            continue
        if "{" in glob or "}" in glob:
            return (
                f"invalid or unsupported path {trimmed}, found in {label}. "
                "Contains '{' or '}' beyond a supported path template"
            )
        if templated and not _VALID_LITERAL.match(glob):
            return (
                f"invalid or unsupported path {trimmed}, found in {label}. "
                f"Contains segment {glob} with invalid string literal"
            )
    return None


def _first(check: Callable[[str], str | None], values: Sequence[str]) -> str | None:
    return next((r for v in values if (r := check(v))), None)


def _no_check(_values: Sequence[str]) -> str | None:
    return None


# security.ValidateAttribute: exact `when` keys and how their values are checked.
_ATTRIBUTES: dict[str, Callable[[Sequence[str]], str | None]] = {
    "source.ip": lambda vs: _first(ip_problem, vs),
    "remote.ip": lambda vs: _first(ip_problem, vs),
    "destination.ip": lambda vs: _first(ip_problem, vs),
    "destination.port": lambda vs: _first(port_problem, vs),
    "source.serviceAccount": lambda vs: _first(
        lambda v: service_account_problem("source.serviceAccount", v), vs
    ),
    "source.trustDomain": lambda vs: next(
        (p.reason for p in _wildcards("", "source.trustDomain", vs)), None
    ),
    "source.namespace": _no_check,
    "source.principal": _no_check,
    "request.auth.principal": _no_check,
    "request.auth.audiences": _no_check,
    "request.auth.presenter": _no_check,
    "connection.sni": _no_check,
}
_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")
_RETIRED = {
    "destination.namespace": "attribute {key} is replaced by the metadata.namespace",
    "destination.labels": "attribute {key} is replaced by the workload selector",
    "destination.name": "deprecated attribute {key}: only supported in v1alpha1",
    "destination.user": "deprecated attribute {key}: only supported in v1alpha1",
}


def attribute_problem(key: str, values: Sequence[str]) -> str | None:
    """security.ValidateAttribute: the `when` keys Istio knows, and their values' forms."""
    if any(v == "" for v in values):
        return f"empty value not allowed, found in {key}"
    if key.startswith(_MAP_KEYS):
        return _map_key_problem(key)
    if key in _ATTRIBUTES:
        return _ATTRIBUTES[key](values)
    retired = _RETIRED.get(key) or _RETIRED.get(key.split("[", 1)[0])
    return (retired or "unknown attribute: {key}").format(key=key)


def _map_key_problem(key: str) -> str | None:
    open_ = key.find("[")
    if key.endswith("]") and 0 < open_ < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"
