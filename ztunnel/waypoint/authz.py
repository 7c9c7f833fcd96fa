"""L7 AuthorizationPolicy for the waypoint: compiled once per config version, evaluated per HTTP
request. Pure. Istio's semantics (security.istio.io/v1), as for L4 (`ztunnel.state.policy`):

- Binding: a waypoint enforces the policies whose `targetRefs` name its Gateway, or a Service
  it fronts (kind Gateway of group gateway.networking.k8s.io, or a core Service), in the
  policy's namespace. `selector` policies belong to ztunnels and are ignored here.
- Order: DENY (and CUSTOM: no external authorizer, fail closed) → ALLOW → default allow. A policy
  without rules matches nothing; `{}` matches everything. AUDIT never decides.
- Strings: exact, prefix `abc*`, suffix `*abc`, or `*` (present). Hosts compare without case and
  without a port. Methods compare exactly. Paths match normalized (`waypoint.paths`): the
  path the upstream receives; one with `{*}` (a segment) or `{**}` (the rest) is a template.
- `serviceAccounts` and `source.serviceAccount` are `<ns>/<sa>`, a bare `<sa>` of the policy's
  namespace; `trustDomains` and `source.trustDomain` match the peer's trust domain.
- What a waypoint cannot judge (`requestPrincipals` and `request.auth.*`: no JWT validation): an
  ALLOW rule using it is dropped, a DENY rule loses it — more restrictive either way.
- A policy that fails to compile denies every request it would bind to (fail closed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.objects import Obj
from ztunnel.state.policy import (
    Decision,
    decide,
    namespace_of,
    qualify,
    rule_matcher,
    service_account_of,
    string_match,
    trust_domain_of,
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
UNSUPPORTED_SOURCE = ("requestPrincipals", "notRequestPrincipals")


@dataclass(frozen=True)
class Request:
    """What L7 policy may look at: the connection's facts and the HTTP request's."""

    src_ip: str
    src_principal: str | None
    dst_ip: str
    dst_port: int
    method: str
    path: str  # normalized, without query
    host: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ","
    target: str = ""  # the request-target the upstream receives: `path` and the query
    sni: str | None = None  # `connection.sni`
    remote_ip: str = ""  # the client X-Forwarded-For names, as far as trusted; "" = src_ip

    @property
    def client_ip(self) -> str:
        """`remote.ip` and `remoteIpBlocks`: Envoy's remote address (original IP detection)."""
        return self.remote_ip or self.src_ip

    @property
    def src_namespace(self) -> str | None:
        return namespace_of(self.src_principal)


Matcher = Callable[[Request], bool]


def _any(values: list[str], get: Callable[[Request], str | None]) -> Matcher:
    return lambda r: any(string_match(v, get(r)) for v in values)


def _hosts(values: list[str]) -> Matcher:
    lowered = [v.lower() for v in values]
    return lambda r: any(string_match(v, r.host.lower().rsplit(":", 1)[0]) for v in lowered)


def _ips(values: list[str], get: Callable[[Request], str]) -> Matcher:
    nets = [ipaddress.ip_network(v, strict=False) for v in values]
    return lambda r: any(ipaddress.ip_address(get(r)) in n for n in nets)


def _ports(values: list[str]) -> Matcher:
    ports = {int(v) for v in values}
    if any(not 0 < p < 65536 for p in ports):
        raise ValueError(f"ports must be 1-65535: {sorted(ports)}")
    return lambda r: r.dst_port in ports


def _service_accounts(values: list[str]) -> Matcher:
    wanted = set(values)  # `<ns>/<sa>`: policy.qualify made them so
    return lambda r: service_account_of(r.src_principal) in wanted


# Envoy's uri_template (which Istio 1.22+ uses for a path with `{*}` or `{**}`): one segment of
# RFC 3986 pchar, or the rest of the path (slashes too); literal segments match as themselves.
_ONE_SEGMENT = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+"
_ANY_SEGMENTS = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*"


def path_template(pattern: str) -> re.Pattern[str] | None:
    """The regex of a path template, or None for a plain Istio string match."""
    if "{*}" not in pattern and "{**}" not in pattern:
        return None
    parts = [
        _ONE_SEGMENT if seg == "{*}" else _ANY_SEGMENTS if seg == "{**}" else re.escape(seg)
        for seg in pattern.split("/")
    ]
    return re.compile("/".join(parts))


def _paths(values: list[str]) -> Matcher:
    templates = [t for v in values if (t := path_template(v))]
    plain = [v for v in values if path_template(v) is None]
    return lambda r: (
        any(t.fullmatch(r.path) for t in templates) or any(string_match(v, r.path) for v in plain)
    )


_BUILDERS: dict[str, Callable[[list[str]], Matcher]] = {
    "principals": lambda v: _any(v, lambda r: r.src_principal),
    "namespaces": lambda v: _any(v, lambda r: r.src_namespace),
    "serviceAccounts": _service_accounts,
    "trustDomains": lambda v: _any(v, lambda r: trust_domain_of(r.src_principal)),
    "ipBlocks": lambda v: _ips(v, lambda r: r.src_ip),
    "remoteIpBlocks": lambda v: _ips(v, lambda r: r.client_ip),
    "hosts": _hosts,
    "ports": _ports,
    "methods": lambda v: _any(v, lambda r: r.method),
    "paths": _paths,
}


def _negate(matcher: Matcher) -> Matcher:
    return lambda r: not matcher(r)


def _fields(spec: Mapping[str, Any]) -> list[Matcher]:
    out: list[Matcher] = []
    for key, raw in spec.items():
        negated = key.startswith("not") and key[3:4].isupper()
        base = key[3].lower() + key[4:] if negated else key
        if base not in _BUILDERS:
            raise ValueError(f"unknown field {key!r}")
        matcher = _BUILDERS[base]([str(v) for v in raw or []])
        out.append(_negate(matcher) if negated else matcher)
    return out


def _getter(key: str) -> Callable[[Request], str | None]:
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers[") : -1].lower()
        return lambda r: r.headers.get(name)
    getters: dict[str, Callable[[Request], str | None]] = {
        "source.ip": lambda r: r.src_ip,
        "remote.ip": lambda r: r.client_ip,
        "source.namespace": lambda r: r.src_namespace,
        "source.principal": lambda r: r.src_principal,
        "destination.ip": lambda r: r.dst_ip,
        "destination.port": lambda r: str(r.dst_port),
        "source.serviceAccount": lambda r: service_account_of(r.src_principal),
        "source.trustDomain": lambda r: trust_domain_of(r.src_principal),
        # Envoy's requested server name of the downstream TLS connection: the waypoint's
        # inner connections are plaintext HTTP, so there is none (notValues always pass).
        "connection.sni": lambda r: r.sni,
    }
    if key not in getters:
        raise KeyError(key)
    return getters[key]


_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


def _condition(cond: Mapping[str, Any]) -> Matcher:
    key = str(cond.get("key"))
    get = _getter(key)
    values = [str(v) for v in cond.get("values") or []]
    not_values = [str(v) for v in cond.get("notValues") or []]
    if key in _IP_KEYS:  # addresses and CIDRs, as the ztunnel reads them
        ips = _ips(values, lambda r: get(r) or "") if values else None
        not_ips = _ips(not_values, lambda r: get(r) or "") if not_values else None
        return lambda r: (ips is None or ips(r)) and not (not_ips is not None and not_ips(r))
    return lambda r: (
        (not values or any(string_match(v, get(r)) for v in values))
        and not any(string_match(v, get(r)) for v in not_values)
    )


def _compile_rule(rule: Mapping[str, Any], deny: bool) -> Matcher | None:
    sources = [dict(s.get("source") or {}) for s in rule.get("from") or []]
    operations = [dict(o.get("operation") or {}) for o in rule.get("to") or []]
    conditions = [dict(w) for w in rule.get("when") or []]
    unjudgeable = any(k in s for s in sources for k in UNSUPPORTED_SOURCE) or any(
        str(w.get("key", "")).startswith("request.auth.") for w in conditions
    )
    if unjudgeable and not deny:
        return None
    for s in sources:
        for k in UNSUPPORTED_SOURCE:
            s.pop(k, None)
    conditions = [w for w in conditions if not str(w.get("key", "")).startswith("request.auth.")]
    return rule_matcher(
        [_fields(s) for s in sources],
        [_fields(o) for o in operations],
        [_condition(w) for w in conditions],
    )


@dataclass(frozen=True)
class L7Policy:
    key: str  # "namespace/name"
    namespace: str
    action: str  # ALLOW | DENY (CUSTOM compiles to DENY) | AUDIT
    targets: frozenset[tuple[str, str]]  # (kind, name) in the policy's namespace
    rules: tuple[Matcher, ...] = field(default=())
    error: str = ""
    dry_run: bool = False

    def binds(self, namespace: str, gateway: str, services: Iterable[str] = ()) -> bool:
        """Bound to the waypoint `namespace/gateway`, or to one of the `services` it fronts
        (those in front of the destination)."""
        return self.namespace == namespace and (
            ("Gateway", gateway) in self.targets
            or any(("Service", service) in self.targets for service in services)
        )

    def matches(self, r: Request) -> bool:
        return (self.action == "DENY" and bool(self.error)) or any(rule(r) for rule in self.rules)


def _targets(spec: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    refs = list(spec.get("targetRefs") or []) + (
        [spec["targetRef"]] if spec.get("targetRef") else []
    )
    out = set()
    for ref in refs:
        kind, group = ref.get("kind"), ref.get("group", "")
        if (kind, group) in {("Gateway", GATEWAY_GROUP), ("Service", ""), ("Service", "core")}:
            out.add((str(kind), str(ref.get("name"))))
    return frozenset(out)


def compile_l7(obj: Obj) -> L7Policy | None:
    """None for policies that are not bound with targetRefs (those are ztunnel's)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    if not (spec.get("targetRefs") or spec.get("targetRef")):
        return None
    key, ns = f"{meta['namespace']}/{meta['name']}", meta["namespace"]
    targets = _targets(spec)
    action = spec.get("action", "ALLOW")
    deny = action in ("DENY", "CUSTOM")
    dry_run = bool(obj.get("dryRun"))
    try:
        rules = tuple(
            m for r in spec.get("rules") or [] if (m := _compile_rule(qualify(r, ns), deny))
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return L7Policy(key, ns, "DENY", targets, (), f"invalid: {exc}", dry_run)
    action = "DENY" if deny else action
    return L7Policy(key, ns, action, targets, rules, obj.get("invalid", ""), dry_run)


def evaluate_l7(
    policies: Iterable[L7Policy],
    namespace: str,
    gateway: str,
    services: Iterable[str],
    r: Request,
) -> Decision:
    """The decision for one request through the waypoint `namespace/gateway`, to a destination
    behind `services` (Services of that namespace; none for a workload no Service fronts)."""
    services = tuple(services)
    return decide([p for p in policies if p.binds(namespace, gateway, services)], r)
