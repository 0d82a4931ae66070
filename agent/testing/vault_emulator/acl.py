"""ACL policies: path patterns with capabilities, and the check Vault makes before a handler runs.

A policy maps path patterns to capability sets. A pattern may end in `*` (prefix glob) and may
contain `+` segments (exactly one path segment). When a token has several policies, the rules for
the same pattern are merged, and `deny` on a pattern overrides everything on that pattern. For a
request path the single most specific matching pattern decides, using Vault's documented order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CAPABILITIES = frozenset(
    {"create", "read", "update", "patch", "delete", "list", "sudo", "deny", "subscribe"}
)

# The rules Vault's built-in `default` policy grants that matter to a client of this emulator.
DEFAULT_POLICY_RULES: dict[str, list[str]] = {
    "auth/token/lookup-self": ["read"],
    "auth/token/renew-self": ["update"],
    "auth/token/revoke-self": ["update"],
    "sys/capabilities-self": ["update"],
    "sys/leases/lookup": ["update"],
    "sys/leases/renew": ["update"],
    "sys/renew": ["update"],
    "sys/internal/ui/resultant-acl": ["read"],
    "cubbyhole/*": ["create", "read", "update", "delete", "list"],
}


class PolicyError(ValueError):
    """A policy document that cannot be parsed or names an unknown capability."""


@dataclass(frozen=True)
class Policy:
    name: str
    rules: Mapping[str, frozenset[str]]
    text: str = ""

    @classmethod
    def from_rules(cls, name: str, rules: Mapping[str, Iterable[str]]) -> Policy:
        parsed: dict[str, frozenset[str]] = {}
        for pattern, capabilities in rules.items():
            if isinstance(capabilities, str):
                raise PolicyError(f"policy {name!r}: capabilities of {pattern!r} must be a list")
            capability_set = frozenset(capabilities)
            unknown = capability_set - CAPABILITIES
            if unknown:
                raise PolicyError(
                    f"policy {name!r}: unknown capabilities {sorted(unknown)} on {pattern!r}"
                )
            parsed[pattern.lstrip("/")] = capability_set
        return cls(name=name, rules=parsed, text=render_policy(parsed))


_HCL_PATH = re.compile(r'path\s+"([^"]*)"\s*\{([^}]*)\}', re.DOTALL)
_HCL_CAPABILITIES = re.compile(r"capabilities\s*=\s*\[([^\]]*)\]", re.DOTALL)


def parse_policy_text(name: str, text: str) -> Policy:
    """Parse a policy written as JSON or as the `path "x" { capabilities = [...] }` HCL subset."""
    rules: dict[str, list[str]] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise PolicyError(f"failed to parse policy: {error}") from error
        for pattern, block in (document.get("path") or {}).items():
            rules[pattern] = list(block.get("capabilities") or [])
    else:
        for match in _HCL_PATH.finditer(text):
            capabilities = _HCL_CAPABILITIES.search(match.group(2))
            items = capabilities.group(1) if capabilities else ""
            rules[match.group(1)] = re.findall(r'"([^"]*)"', items)
    if not rules and stripped:
        raise PolicyError("failed to parse policy: no path blocks found")
    policy = Policy.from_rules(name, rules)
    return Policy(name=policy.name, rules=policy.rules, text=text)


def render_policy(rules: Mapping[str, Iterable[str]]) -> str:
    blocks = []
    for pattern, capabilities in rules.items():
        listed = ", ".join(f'"{capability}"' for capability in sorted(capabilities))
        blocks.append(f'path "{pattern}" {{\n  capabilities = [{listed}]\n}}')
    return "\n\n".join(blocks)


@dataclass
class ACL:
    """The merged rules of a token's policies."""

    rules: dict[str, frozenset[str]] = field(default_factory=dict)
    root: bool = False

    @classmethod
    def from_policies(cls, policies: Iterable[Policy], *, root: bool = False) -> ACL:
        merged: dict[str, frozenset[str]] = {}
        for policy in policies:
            for pattern, capabilities in policy.rules.items():
                combined = merged.get(pattern, frozenset()) | capabilities
                merged[pattern] = frozenset({"deny"}) if "deny" in combined else combined
        return cls(rules=merged, root=root)

    def capabilities(self, path: str) -> frozenset[str]:
        """Return the capabilities granted on `path` by its most specific matching pattern."""
        if self.root:
            return CAPABILITIES - {"deny"}
        if path in self.rules:
            return self.rules[path]
        matches = [pattern for pattern in self.rules if _pattern_matches(pattern, path)]
        if not matches:
            return frozenset()
        return self.rules[max(matches, key=_priority)]

    def allows(self, path: str, capability: str) -> bool:
        granted = self.capabilities(path)
        return "deny" not in granted and capability in granted

    def has_access_under(self, prefix: str) -> bool:
        """Return whether any rule grants something at or below `prefix` (a mount path)."""
        if self.root:
            return True
        for pattern, capabilities in self.rules.items():
            if "deny" in capabilities or not capabilities:
                continue
            literal = _literal_prefix(pattern)
            if literal.startswith(prefix) or (pattern.endswith("*") and prefix.startswith(literal)):
                return True
        return False


def _literal_prefix(pattern: str) -> str:
    cut = len(pattern)
    for marker in ("*", "+"):
        index = pattern.find(marker)
        if index >= 0:
            cut = min(cut, index)
    return pattern[:cut]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    glob = pattern.endswith("*")
    body = pattern[:-1] if glob else pattern
    parts = ["[^/]*" if segment == "+" else re.escape(segment) for segment in body.split("/")]
    return re.compile("/".join(parts) + (".*" if glob else ""), re.DOTALL)


def _pattern_matches(pattern: str, path: str) -> bool:
    return _pattern_regex(pattern).fullmatch(path) is not None


def _priority(pattern: str) -> tuple[int, int, int, int, str]:
    """Sort key: a higher key is the more specific pattern (Vault's five tie-break rules)."""
    positions = [index for index in (pattern.find("+"), pattern.find("*")) if index >= 0]
    first_wildcard = min(positions) if positions else len(pattern)
    return (
        first_wildcard,
        0 if pattern.endswith("*") else 1,
        -pattern.split("/").count("+"),
        len(pattern),
        pattern,
    )
