"""Label selectors as the Kubernetes API server parses and matches them, for the API emulator.

`parse_label_selector` accepts exactly the strings that `labels.Parse` of k8s.io/apimachinery
accepts (read from its `pkg/labels/selector.go` and `pkg/util/validation`) and means the same:

- requirements joined by commas, all of which must match; an empty selector matches everything;
- `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists),
  `!key` (does not exist), `key>N` and `key<N` (the label value read as an integer);
- `!=` and `notin` also match objects without the key; `=`, `==`, `in`, `>` and `<` need it;
- whitespace may surround every token. `key=` and `key in ()` name the empty value, and so
  does an empty entry in a value list (`(a,,b)`, `(a,)`);
- keys must be qualified names (an optional DNS subdomain prefix and `/`, then at most 63
  letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit), values valid
  label values (the same rule, or empty), and the operand of `>` and `<` a decimal integer.

Anything else raises `LabelSelectorError`, which the emulator answers with 400 Bad Request as the
API server does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The lexer's special characters and whitespace; every other character belongs to an identifier.
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_OPERATORS = {
    "=": "in",
    "==": "in",
    "!=": "notin",
    "in": "in",
    "notin": "notin",
    ">": "gt",
    "<": "lt",
}
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_NAME = 63
_MAX_PREFIX = 253
_INT64 = range(-(2**63), 2**63)

# Token kinds. An identifier spelled `in` or `notin` is a keyword where an operator may stand,
# and an identifier where a key or a value may stand, as in apimachinery's parser.
_IDENTIFIER = "identifier"
_END = "end of string"


class LabelSelectorError(ValueError):
    """The label selector is invalid; the message names the token where parsing failed."""


@dataclass(frozen=True)
class LabelRequirement:
    """One requirement of a selector: `operator` is in, notin, exists, !exists, gt or lt."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator == "in":
            return present and labels[self.key] in self.values
        if self.operator == "notin":
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        label = _integer(labels[self.key])
        if label is None:
            return False
        (operand,) = self.values
        return label > int(operand) if self.operator == "gt" else label < int(operand)


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse a label selector; raise LabelSelectorError when the API server would reject it."""
    return _Parser(_tokens(text)).selector()


def labels_match(requirements: list[LabelRequirement], labels: Mapping[str, str]) -> bool:
    return all(requirement.matches(labels) for requirement in requirements)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split a selector into (kind, literal) tokens; kind is an operator's literal or a name."""
    tokens = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in _WHITESPACE:
            position += 1
        elif char in _SPECIAL:
            # The longest operator wins: `!=` and `==` are single tokens, `!(` is two.
            pair = text[position : position + 2]
            literal = pair if pair in ("!=", "==") else char
            tokens.append((literal, literal))
            position += len(literal)
        else:
            end = position
            while end < len(text) and text[end] not in _SPECIAL and text[end] not in _WHITESPACE:
                end += 1
            literal = text[position:end]
            tokens.append((literal if literal in ("in", "notin") else _IDENTIFIER, literal))
            position = end
    tokens.append((_END, ""))
    return tokens


class _Parser:
    """A recursive descent over the tokens, following apimachinery's grammar."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self._tokens = tokens
        self._position = 0

    def selector(self) -> list[LabelRequirement]:
        requirements: list[LabelRequirement] = []
        if self._peek() == _END:
            return requirements
        while True:
            if self._peek() not in (_IDENTIFIER, "!"):
                raise self._error("!, identifier, or end of string")
            requirements.append(self._requirement())
            kind, literal = self._next()
            if kind == _END:
                return requirements
            if kind != ",":
                raise LabelSelectorError(f"found {literal!r}, expected: ',' or end of string")

    def _requirement(self) -> LabelRequirement:
        kind, key = self._next()
        negated = kind == "!"
        if negated:
            kind, key = self._next()
        if kind != _IDENTIFIER:
            raise LabelSelectorError(f"found {key!r}, expected: identifier")
        _check_key(key)
        if self._peek() in (_END, ","):
            return LabelRequirement(key, "!exists" if negated else "exists")
        if negated:
            raise self._error("',' or end of string")
        kind, literal = self._next(operator=True)
        if kind not in _OPERATORS:
            raise LabelSelectorError(f"found {literal!r}, expected: an operator")
        operator = _OPERATORS[kind]
        values = self._value_set() if kind in ("in", "notin") else self._exact_value()
        for value in values:
            _check_value(key, value)
        if operator in ("gt", "lt"):
            (value,) = values
            if _integer(value) is None:
                raise LabelSelectorError(f"{key}: {value!r} is not an integer, as > and < need")
        return LabelRequirement(key, operator, frozenset(values))

    def _value_set(self) -> set[str]:
        kind, literal = self._next()
        if kind != "(":
            raise LabelSelectorError(f"found {literal!r}, expected: '('")
        if self._peek() == ")":
            self._next()
            return {""}
        if self._peek() not in (_IDENTIFIER, ","):
            raise self._error("',', ')' or identifier")
        # apimachinery reads an empty entry (`(,a)`, `(a,,b)`, `(a,)`) as the empty value. It
        # rejects some spellings of one, such as `(,,)` and `(a,,)`, and this loop does too.
        values: set[str] = set()
        while True:
            kind, literal = self._next()
            if kind == _IDENTIFIER:
                values.add(literal)
                if self._peek() == ")":
                    break
                if self._peek() != ",":
                    raise self._error("',' or ')'")
            elif kind == ",":
                if not values:
                    values.add("")
                if self._peek() == ")":
                    values.add("")
                    break
                if self._peek() == ",":
                    self._next()
                    values.add("")
            else:
                raise LabelSelectorError(f"found {literal!r}, expected: ',' or identifier")
        self._next()  # the ")"
        return values

    def _exact_value(self) -> set[str]:
        if self._peek() in (_END, ","):
            return {""}
        kind, literal = self._next()
        if kind != _IDENTIFIER:
            raise LabelSelectorError(f"found {literal!r}, expected: identifier")
        return {literal}

    def _peek(self) -> str:
        kind = self._tokens[self._position][0]
        return _IDENTIFIER if kind in ("in", "notin") else kind

    def _next(self, *, operator: bool = False) -> tuple[str, str]:
        kind, literal = self._tokens[self._position]
        self._position += 1
        if not operator and kind in ("in", "notin"):
            kind = _IDENTIFIER
        return kind, literal

    def _error(self, expected: str) -> LabelSelectorError:
        literal = self._tokens[self._position][1]
        return LabelSelectorError(f"found {literal!r}, expected: {expected}")


def _check_key(key: str) -> None:
    """Raise LabelSelectorError unless `key` is a qualified name, as label keys must be."""
    prefix, slash, name = key.rpartition("/")
    if slash and (
        not prefix
        or "/" in prefix
        or len(prefix) > _MAX_PREFIX
        or not _DNS_SUBDOMAIN.fullmatch(prefix)
    ):
        raise LabelSelectorError(f"{key!r}: the prefix must be a DNS subdomain")
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise LabelSelectorError(
            f"{key!r}: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )


def _check_value(key: str, value: str) -> None:
    if value and (len(value) > _MAX_NAME or not _NAME.fullmatch(value)):
        raise LabelSelectorError(
            f"{key}: {value!r} is not a valid label value (at most 63 letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit)"
        )


def _integer(text: str) -> int | None:
    """Read `text` as Go's strconv.ParseInt(text, 10, 64) does; None when it fails."""
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if number in _INT64 else None
