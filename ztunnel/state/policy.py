"""L4 AuthorizationPolicy and PeerAuthentication, compiled once per revision, evaluated per
connection. Pure: no I/O, no clock. Semantics are Istio's (security.istio.io/v1):

- Scope: a policy applies to a workload in its namespace whose labels match `selector`
  (no selector: every workload of the namespace); in the root namespace, to every namespace.
  Policies with `targetRefs` belong to a waypoint and are ignored here.
- Order: any matching DENY denies; else, if ALLOW policies apply, one must match; else allow.
  AUDIT never decides. CUSTOM is skipped, as Istio's ztunnel does: its waypoint enforces it.
- `istio.io/dry-run: "true"` (the controller's `dryRun`): evaluated, reported in the decision's
  `shadow`, never enforced.
- A policy with no rules matches nothing (an ALLOW with no rules therefore allows nothing);
  an empty rule `{}` matches everything.
- L7-only attributes (methods, paths, hosts, request principals, request.* conditions …) cannot be
  judged at L4: an ALLOW rule that uses them is dropped, a DENY rule loses them (it matches more).
  Either way the result is more restrictive, as Istio's ztunnel does.
- A policy we cannot compile (bad CIDR, bad port) denies every workload it selects (fail closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from api.ambient import ROOT_NAMESPACE
from api.objects import Obj

L7_SOURCE = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
L7_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
UNSPECIFIED = "0.0.0.0"  # noqa: S104 - an address to compare, not to bind
# Istio's ztunnel knows the first five; the identity ones it treats as HTTP attributes (an ALLOW
# rule using them is dropped) though the peer certificate holds them: we judge them here.
L4_CONDITIONS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "source.serviceAccount",
    "source.trustDomain",
)


@dataclass(frozen=True)
class Connection:
    """What L4 policy may look at."""

    src_ip: str
    src_principal: str | None  # `td/ns/x/sa/y`; None for plaintext
    dst_ip: str
    dst_port: int

    @property
    def src_namespace(self) -> str | None:
        return namespace_of(self.src_principal)


def _parts(principal: str | None) -> list[str] | None:
    parts = (principal or "").split("/")
    return parts if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None


def namespace_of(principal: str | None) -> str | None:
    """The namespace of a principal `td/ns/<ns>/sa/<sa>`."""
    parts = _parts(principal)
    return parts[2] if parts else None


def service_account_of(principal: str | None) -> str | None:
    """`<ns>/<sa>` of a principal `td/ns/<ns>/sa/<sa>`, the form `serviceAccounts` match."""
    parts = _parts(principal)
    return f"{parts[2]}/{parts[4]}" if parts else None


def trust_domain_of(principal: str | None) -> str | None:
    parts = _parts(principal)
    return parts[0] if parts else None


def _qualified(values: Iterable[Any], namespace: str) -> list[str]:
    return [str(v) if "/" in str(v) else f"{namespace}/{v}" for v in values]


def qualify(rule: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The rule with its service accounts as `<ns>/<sa>`: in Istio's `serviceAccounts` and
    `source.serviceAccount`, a bare `sa` is of the policy's namespace (matched exactly; its
    webhook refuses wildcards there)."""
    out = dict(rule)
    if rule.get("from"):
        out["from"] = []
        for entry in rule["from"]:
            source = dict(entry.get("source") or {})
            for k in ("serviceAccounts", "notServiceAccounts"):
                if k in source:
                    source[k] = _qualified(source[k] or [], namespace)
            out["from"].append({**entry, "source": source})
    if rule.get("when"):
        out["when"] = [
            {**w, **{k: _qualified(w.get(k) or [], namespace) for k in ("values", "notValues")}}
            if w.get("key") == "source.serviceAccount"
            else w
            for w in rule["when"]
        ]
    return out


@dataclass(frozen=True)
class Shadow:
    """What a dry-run engine would have decided (Envoy's RBAC shadow rules, as Istio builds
    them: one engine for the dry-run ALLOW policies, one for the dry-run DENY ones)."""

    engine: str  # "allow" | "deny"
    allowed: bool
    policy: str  # the effective policy "ns/name", or ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str  # "ns/name" of the deciding policy, or "" (default)
    reason: str  # for the `reason` metric label and the access log
    shadow: tuple[Shadow, ...] = ()  # dry-run verdicts, when dry-run policies apply


Matcher = Callable[[Connection], bool]
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


def string_match(pattern: str, value: str | None) -> bool:
    """Istio's string match: exact, prefix `abc*`, suffix `*abc`, or `*` (present)."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def _ports(values: Iterable[Any]) -> set[int]:
    ports = {int(v) for v in values}
    if any(not 0 < p < 65536 for p in ports):
        raise ValueError(f"ports must be 1-65535: {sorted(ports)}")
    return ports


def _in(nets: list[Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in n for n in nets)


def _principal_in(patterns: list[str]) -> Matcher:
    return lambda c: any(string_match(p, c.src_principal) for p in patterns)


def _namespace_in(patterns: list[str]) -> Matcher:
    return lambda c: any(string_match(p, c.src_namespace) for p in patterns)


def _source_in(values: list[str]) -> Matcher:
    nets = _networks(values)
    return lambda c: _in(nets, c.src_ip)


def _service_account_in(values: list[str]) -> Matcher:
    wanted = set(values)
    return lambda c: service_account_of(c.src_principal) in wanted


def _trust_domain_in(patterns: list[str]) -> Matcher:
    return lambda c: any(string_match(p, trust_domain_of(c.src_principal)) for p in patterns)


def _port_in(values: list[str]) -> Matcher:
    ports = _ports(values)
    return lambda c: c.dst_port in ports


def _negate(matcher: Matcher) -> Matcher:
    return lambda c: not matcher(c)


_FIELDS: dict[str, tuple[Callable[[list[str]], Matcher], bool]] = {
    "principals": (_principal_in, False),
    "notPrincipals": (_principal_in, True),
    "namespaces": (_namespace_in, False),
    "notNamespaces": (_namespace_in, True),
    "serviceAccounts": (_service_account_in, False),
    "notServiceAccounts": (_service_account_in, True),
    "trustDomains": (_trust_domain_in, False),
    "notTrustDomains": (_trust_domain_in, True),
    "ipBlocks": (_source_in, False),
    "notIpBlocks": (_source_in, True),
    "ports": (_port_in, False),
    "notPorts": (_port_in, True),
}


def _field_matchers(spec: Mapping[str, Any]) -> list[Matcher]:
    """Every present field must match (AND); values within a field are alternatives (OR)."""
    out: list[Matcher] = []
    for key, raw in spec.items():
        if key not in _FIELDS:
            raise ValueError(f"unknown field {key!r}")
        build, negated = _FIELDS[key]
        matcher = build([str(v) for v in raw or []])
        out.append(_negate(matcher) if negated else matcher)
    return out


def _condition(cond: Mapping[str, Any]) -> Matcher:
    key = cond.get("key")
    values, not_values = list(cond.get("values") or []), list(cond.get("notValues") or [])
    getters: dict[str, Callable[[Connection], str | None]] = {
        "source.ip": lambda c: c.src_ip,
        "source.namespace": lambda c: c.src_namespace,
        "source.principal": lambda c: c.src_principal,
        "destination.ip": lambda c: c.dst_ip,
        "destination.port": lambda c: str(c.dst_port),
        "source.serviceAccount": lambda c: service_account_of(c.src_principal),
        "source.trustDomain": lambda c: trust_domain_of(c.src_principal),
    }
    get = getters[str(key)]
    if key in ("source.ip", "destination.ip"):
        nets, not_nets = _networks(values), _networks(not_values)
        return lambda c: (
            (not nets or _in(nets, get(c) or UNSPECIFIED))
            and not (not_nets and _in(not_nets, get(c) or UNSPECIFIED))
        )
    return lambda c: (
        (not values or any(string_match(v, get(c)) for v in values))
        and not any(string_match(v, get(c)) for v in not_values)
    )


def _compile_rule(rule: Mapping[str, Any], deny: bool) -> Matcher | None:
    """A rule's matcher; None when an ALLOW rule needs L7 (dropped: matches nothing)."""
    sources = [dict(s.get("source") or {}) for s in rule.get("from") or []]
    operations = [dict(o.get("operation") or {}) for o in rule.get("to") or []]
    conditions = [dict(w) for w in rule.get("when") or []]
    uses_l7 = (
        any(k in s for s in sources for k in L7_SOURCE)
        or any(k in o for o in operations for k in L7_OPERATION)
        or any(w.get("key") not in L4_CONDITIONS for w in conditions)
    )
    if uses_l7 and not deny:
        return None
    for s in sources:
        for k in L7_SOURCE:
            s.pop(k, None)
    for o in operations:
        for k in L7_OPERATION:
            o.pop(k, None)
    conditions = [w for w in conditions if w.get("key") in L4_CONDITIONS]
    return rule_matcher(
        [_field_matchers(s) for s in sources],
        [_field_matchers(o) for o in operations],
        [_condition(w) for w in conditions],
    )


def rule_matcher(
    from_any: list[list[Callable[[T], bool]]],
    to_any: list[list[Callable[[T], bool]]],
    when_all: list[Callable[[T], bool]],
) -> Callable[[T], bool]:
    """A rule (shared with the waypoint's L7 rules): one `from` entry whose fields all match
    (or none given), one `to` entry likewise, and every `when` condition."""

    def match(subject: T) -> bool:
        return (
            (not from_any or any(all(m(subject) for m in ms) for ms in from_any))
            and (not to_any or any(all(m(subject) for m in ms) for ms in to_any))
            and all(m(subject) for m in when_all)
        )

    return match


@dataclass(frozen=True)
class CompiledPolicy:
    key: str  # "namespace/name"
    namespace: str
    action: str  # ALLOW | DENY (CUSTOM compiles to DENY) | AUDIT
    selector: Mapping[str, str] | None
    rules: tuple[Matcher, ...] = field(default=())
    error: str = ""  # compile failure: the policy denies every selected workload
    dry_run: bool = False  # `istio.io/dry-run`: evaluated and reported, never enforced

    def selects(self, namespace: str, labels: Mapping[str, str], root: str) -> bool:
        if self.namespace not in (namespace, root):
            return False
        return self.selector is None or all(labels.get(k) == v for k, v in self.selector.items())

    def matches(self, c: Connection) -> bool:
        # A policy that failed to compile here denies everything; a stand-in for an invalid
        # object (controller/config/invalid) carries its reason and rules that fail closed.
        return (self.action == "DENY" and bool(self.error)) or any(rule(c) for rule in self.rules)


def compile_policy(obj: Obj) -> CompiledPolicy | None:
    """None for waypoint policies (targetRefs); a failing compile yields an `error` policy."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    if spec.get("targetRefs") or spec.get("targetRef"):
        return None
    key = f"{meta['namespace']}/{meta['name']}"
    selector = (spec.get("selector") or {}).get("matchLabels") if "selector" in spec else None
    action = spec.get("action", "ALLOW")
    if action == "CUSTOM":
        return None  # as Istio's ztunnel: "ztunnel does not support the CUSTOM action"
    deny = action == "DENY"
    dry_run = bool(obj.get("dryRun"))
    try:
        rules = tuple(
            m
            for r in spec.get("rules") or []
            if (m := _compile_rule(qualify(r, meta["namespace"]), deny))
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        error = f"invalid: {exc}"
        return CompiledPolicy(key, meta["namespace"], "DENY", selector, (), error, dry_run)
    invalid = obj.get("invalid", "")
    return CompiledPolicy(key, meta["namespace"], action, selector, rules, invalid, dry_run)


def evaluate(
    policies: Iterable[CompiledPolicy],
    namespace: str,
    labels: Mapping[str, str],
    c: Connection,
    root: str = ROOT_NAMESPACE,
) -> Decision:
    return decide([p for p in policies if p.selects(namespace, labels, root)], c)


class Judged(Protocol[T_contra]):
    """A compiled policy, L4 or L7 (frozen dataclasses: read-only fields)."""

    @property
    def key(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def error(self) -> str: ...
    @property
    def dry_run(self) -> bool: ...

    def matches(self, subject: T_contra, /) -> bool: ...


def decide(applicable: Sequence[Judged[T]], subject: T) -> Decision:
    """Istio's order over the enforced policies that apply (shared with the waypoint): a
    matching DENY denies; else, when ALLOW policies apply, one must match; else allow. The
    dry-run ones are judged beside, into `shadow`."""
    decision = _enforce([p for p in applicable if not p.dry_run], subject)
    if dry := [p for p in applicable if p.dry_run]:
        return replace(decision, shadow=_shadows(dry, subject))
    return decision


def _shadows(dry: Sequence[Judged[T]], subject: T) -> tuple[Shadow, ...]:
    out = []
    for engine, action in (("allow", "ALLOW"), ("deny", "DENY")):
        engaged = [p for p in dry if p.action == action]
        if not engaged:
            continue
        hit = next((p for p in engaged if p.matches(subject)), None)
        allowed = (hit is not None) if action == "ALLOW" else hit is None
        out.append(Shadow(engine, allowed, hit.key if hit else ""))
    return tuple(out)


def _enforce(applicable: Sequence[Judged[T]], subject: T) -> Decision:
    for p in applicable:
        if p.action == "DENY" and p.matches(subject):
            return Decision(False, p.key, "policy_invalid" if p.error else "denied_by_policy")
    allows = [p for p in applicable if p.action == "ALLOW"]
    if not allows:
        return Decision(True, "", "no_policy")
    for p in allows:
        if p.matches(subject):
            return Decision(True, p.key, "allowed_by_policy")
    # No ALLOW matched: when an invalid one applies, it is the likely reason; name it.
    broken = next((p for p in allows if p.error), None)
    return (
        Decision(False, broken.key, "policy_invalid")
        if broken
        else Decision(False, "", "no_allow_match")
    )


def mtls_mode(
    peer_auths: Iterable[Obj],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root: str = ROOT_NAMESPACE,
) -> str:
    """Effective PeerAuthentication mode: workload (port level first) > namespace > mesh >
    PERMISSIVE. UNSET defers to the next level."""
    workload, ns_wide, mesh = [], [], []
    for pa in peer_auths:
        spec, pa_ns = pa.get("spec") or {}, pa["metadata"]["namespace"]
        selector = (spec.get("selector") or {}).get("matchLabels")
        if pa_ns == namespace and selector:
            if all(labels.get(k) == v for k, v in selector.items()):
                workload.append(spec)
        elif pa_ns == namespace:
            ns_wide.append(spec)
        elif pa_ns == root and not selector:
            mesh.append(spec)
    for spec in workload:
        port_mode = (
            (spec.get("portLevelMtls") or {}).get(port)
            or (spec.get("portLevelMtls") or {}).get(str(port))
            or {}
        ).get("mode")
        if port_mode and port_mode != "UNSET":
            return str(port_mode)
    for level in (workload, ns_wide, mesh):
        for spec in level:
            mode = (spec.get("mtls") or {}).get("mode", "UNSET")
            if mode != "UNSET":
                return str(mode)
    return "PERMISSIVE"
