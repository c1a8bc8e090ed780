"""Label and field selectors with the grammar of `k8s.io/apimachinery/pkg/labels` and `fields`.

Controllers filter their watches with selectors; a lab server that ignored or misparsed them
would hand a controller objects a real cluster never sends it. Parsing errors become 400
BadRequest like the real server's. This module matches values only; it must not know which
field labels a kind supports (the kind registry says that).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lbprovider.lab.errors import bad_request

logger = logging.getLogger(__name__)

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[A-Za-z0-9_.-]*"
_SET_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` value list."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _parse_requirement(text: str) -> Requirement:
    cmp_match = _CMP_RE.match(text)
    if cmp_match:
        key, op, value = cmp_match.groups()
        return Requirement(key, "!=" if op == "!=" else "=", (value,))
    set_match = _SET_RE.match(text)
    if not set_match:
        raise bad_request(f"unable to parse requirement: {text.strip()!r}")
    bang, key, op, values = set_match.groups()
    if bang and op:
        raise bad_request(f"unable to parse requirement: {text.strip()!r}")
    if bang:
        return Requirement(key, "!")
    if not op:
        return Requirement(key, "exists")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not items:
        raise bad_request(f"for '{op}' set operator, values set can't be empty")
    return Requirement(key, op, items)


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k`; an empty selector matches everything."""
    if not text:
        return []
    return [_parse_requirement(part) for part in _split_top_level(text)]


def labels_match(requirements: list[Requirement], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldTerm:
    field: str
    negate: bool
    value: str


def parse_field_selector(
    text: str | None, supported: Mapping[str, Callable[..., str]]
) -> list[FieldTerm]:
    """Parse `metadata.name=x,spec.type!=ClusterIP`, refusing field labels the kind lacks."""
    if not text:
        return []
    terms = []
    for part in text.split(","):
        match = re.match(r"^\s*([A-Za-z0-9_.\[\]]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match.groups()
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        terms.append(FieldTerm(field, op == "!=", value))
    return terms
