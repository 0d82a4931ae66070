"""Go regular expressions (RE2 syntax) matched by RE2, with Go's replacement rules.

`find.name.regexp`, `rewrite[].regexp` and a store's `conditions[].namespaceRegexes` are Go
regexps in External Secrets Operator, and a rewrite target follows Go's
`Regexp.ReplaceAllString`. Matching uses Google's RE2 (the `google-re2` package), the engine
that Go's `regexp` package follows. RE2 runs in time linear in the text, so no pattern and no
remote key name can make a match backtrack for hours, as `(a+)+$` can with Python's `re`.

- `compile_regexp(pattern)`: compile a Go regexp; raise ValueError worded "problem; fix". RE2
  accepts two things Go rejects, so both are rejected here too: `\\C` (any single byte) and two
  groups with the same name. RE2's own messages quote the pattern, so they are replaced.
- `replace_all(regexp, text, template)`: Go's ReplaceAllString. An empty match right after the
  previous match is not replaced, and `$name` in the template takes the longest run of letters,
  digits and `_`, so `$1x` names the group `1x`. `${1}x` is group 1 and then `x`, `$$` is `$`,
  a reference to a group that does not exist or did not take part expands to "", and a `$` that
  starts no reference stays as it is. Expansion itself never raises, but with `max_bytes`,
  `replace_all` raises ReplacementTooLong as soon as the result passes that many bytes.

Texts are matched as UTF-8 bytes, as Go matches strings, so `\\d`, `\\w`, `\\s` and `\\b` are
ASCII only, and `$` without the m flag matches only at the very end of the text.
Messages never quote the pattern, because a pattern may be pasted from anywhere.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import re2

_NOT_GO = "is not part of Go's regular expression syntax"
_NOT_GO_PLURAL = "are not part of Go's regular expression syntax"
_MAX_REPEAT = 1000  # Go's and RE2's maximum repeat count, also for nested repeats multiplied
_POSIX_NAMES = (
    "alnum, alpha, ascii, blank, cntrl, digit, graph, lower, print, punct, space, upper, word, "
    "xdigit"
)
# A group name as Go accepts it: ASCII letters, digits and `_` (RE2 also accepts other letters).
_GO_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")
_GROUP_NAME = re.compile(r"\(\?P?<([^>]*)>")


class GoRegexp:
    """A compiled Go regexp. `pattern` is the Go pattern as written in the declaration."""

    __slots__ = ("pattern", "_regexp", "_names")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:
        self.pattern = pattern
        self._regexp = compiled
        self._names = {name.decode("utf-8"): index for name, index in compiled.groupindex.items()}

    def search(self, text: str) -> Any:
        """Return the first match in `text` (spans are UTF-8 byte offsets), or None."""
        return self._regexp.search(_encode(text))


def _encode(text: str) -> bytes:
    # A lone surrogate (possible in a JSON property name) keeps its place instead of raising.
    return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=256)
def compile_regexp(pattern: str) -> GoRegexp:
    """Compile a Go regexp with RE2; raise ValueError worded "problem; fix".

    The problem never quotes the pattern. Syntax that Go rejects is rejected, including the
    two things RE2 alone accepts (`\\C`, and a group name used twice).
    """
    import re2  # about 4 ms, so only for declarations that have a regexp

    options = re2.Options()
    options.log_errors = False  # RE2 would print the pattern to stderr
    try:
        compiled = re2.compile(_encode(pattern), options)
    except re2.error as error:
        raise ValueError(_describe_error(_error_text(error), pattern)) from None
    _check_go_only(pattern)
    return GoRegexp(pattern, compiled)


def _error_text(error: Exception) -> str:
    text = error.args[0] if error.args else ""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _describe_error(text: str, pattern: str) -> str:
    """Turn RE2's "kind: fragment" message into ours; the fragment is read, never shown."""
    kind, _, fragment = text.partition(": ")
    if kind == "invalid escape sequence":
        return _describe_escape(fragment)
    if kind == "invalid perl operator":
        return _describe_group(fragment, pattern)
    if kind == "bad repetition operator":
        if fragment.endswith("+") and len(fragment) > 1:
            return f"possessive repetitions such as *+ {_NOT_GO_PLURAL}; remove the +"
        return (
            "a repetition operator follows another (as in a** or a{2}{3}), which Go rejects; "
            "group the inner repetition, as in (?:a*)*"
        )
    if kind == "invalid repetition size":
        return (
            f"invalid repeat count; Go accepts counts up to {_MAX_REPEAT} (nested repeats "
            "multiplied), with the minimum first, as in {2,5}"
        )
    if kind == "invalid character class range":
        if fragment.startswith("[:"):
            return f"unknown POSIX class; use one of {_POSIX_NAMES}, as in [[:alpha:]]"
        if fragment.startswith(("\\p", "\\P")):
            return (
                "unknown Unicode class; use a category such as \\pL or \\p{Lu}, or a script "
                "such as \\p{Greek}"
            )
        return "invalid character class range; write the lower end first, as in [a-z]"
    return _SIMPLE_PROBLEMS.get(kind) or f"invalid regular expression ({kind}); fix the pattern"


_SIMPLE_PROBLEMS = {
    "missing ]": "a character class has no closing ]; close it or escape the [ as \\[",
    "missing )": "invalid regular expression (missing ), unterminated group); fix the pattern",
    "unexpected )": "invalid regular expression (unbalanced parenthesis); fix the pattern",
    "missing (": "invalid regular expression (unbalanced parenthesis); fix the pattern",
    "trailing \\": "the pattern ends with a lone backslash; escape it as \\\\",
    "no argument for repetition operator": "a repetition operator (*, +, ? or {n}) has nothing "
    "to repeat; escape it, as in \\*",
    "invalid character class": "invalid character class; fix it or escape the [ as \\[",
    "invalid named capture group": "invalid group name; write (?P<name>x) or (?<name>x) with "
    "ASCII letters, digits and _ in the name",
    "invalid UTF-8": "the pattern is not valid UTF-8 text; fix the pattern",
    "pattern too large - compile failed": "the regular expression is too large to compile; use "
    "smaller repeat counts or a shorter pattern",
    "pattern too large - reverse compile failed": "the regular expression is too large to "
    "compile; use smaller repeat counts or a shorter pattern",
}


def _describe_escape(fragment: str) -> str:
    letter = fragment[1:2]
    if letter == "x":
        if re.fullmatch(r"\\x\{[0-9A-Fa-f]+\}?", fragment):
            return "\\x{...} names no Unicode character; use at most \\x{10FFFF}"
        return "invalid \\x escape; write two hex digits (\\x41) or \\x{41}"
    if letter == "Z":
        return f"\\Z {_NOT_GO}; write \\z for the end of the text"
    if letter.isdigit():
        return (
            f"backreferences (\\1) {_NOT_GO_PLURAL}; match the text again, or write an octal "
            "escape with two or more digits (\\012)"
        )
    if letter.isascii() and letter.isalpha():
        return f"the escape \\{letter} {_NOT_GO}; remove the backslash or fix it"
    return f"an escape sequence {_NOT_GO}; remove the backslash or fix it"


def _describe_group(fragment: str, pattern: str) -> str:
    rest = fragment[2:]
    if rest[:1] in ("=", "!") or rest[:2] in ("<=", "<!"):
        return f"lookahead and lookbehind assertions {_NOT_GO_PLURAL}; remove them"
    if rest == "P" and "(?P=" in pattern:
        return f"backreferences ((?P=name)) {_NOT_GO_PLURAL}; remove them"
    kinds = {">": "atomic groups", "#": "comments", "(": "conditional groups"}
    if rest[:1] in kinds:
        return f"{kinds[rest[:1]]} {_NOT_GO_PLURAL}; remove them"
    if rest and rest[-1] not in "imsU-" and re.fullmatch(r"[A-Za-z-]+", rest):
        return "invalid flag; Go accepts the flags i, m, s and U (e.g. (?i) or (?s:x))"
    return "invalid group; Go accepts (?:x), (?P<name>x), (?<name>x) and (?i)"


def _check_go_only(pattern: str) -> None:
    """Reject what RE2 compiles but Go does not: `\\C`, non-ASCII or repeated group names.

    Runs on a pattern RE2 accepted, so its syntax is valid; `\\Q...\\E` is literal text.
    """
    names: set[str] = set()
    position = 0
    while position < len(pattern):
        if pattern.startswith("\\Q", position):
            end = pattern.find("\\E", position + 2)
            position = len(pattern) if end < 0 else end + 2
            continue
        if pattern.startswith("\\C", position):
            raise ValueError(f"\\C (any single byte) {_NOT_GO}; use . to match any character")
        if pattern[position] == "\\":
            position += 2
            continue
        if pattern[position] == "[":
            position = _class_end(pattern, position)
            continue
        group = _GROUP_NAME.match(pattern, position)
        if group is not None:
            name = group.group(1)
            if not _GO_GROUP_NAME.fullmatch(name):
                raise ValueError(_SIMPLE_PROBLEMS["invalid named capture group"])
            if name in names:
                raise ValueError(
                    "two groups have the same name, which Go rejects; rename one of them"
                )
            names.add(name)
            position = group.end()
            continue
        position += 1


def _class_end(pattern: str, start: int) -> int:
    """Return the position after the bracket expression that starts at `start`."""
    position = start + 1
    if pattern.startswith("^", position):
        position += 1
    if pattern.startswith("]", position):  # a leading ] is literal
        position += 1
    while position < len(pattern) and pattern[position] != "]":
        if pattern.startswith("[:", position):
            end = pattern.find(":]", position + 2)
            if end >= 0:
                position = end + 2
                continue
        position += 2 if pattern[position] == "\\" else 1
    return position + 1


class ReplacementTooLong(ValueError):
    """`replace_all` stopped because its result would pass `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"the result would be longer than {max_bytes} bytes in UTF-8")


def replace_all(regexp: GoRegexp, text: str, template: str, *, max_bytes: int | None = None) -> str:
    """Replace every match of `regexp` in `text` with `template`, as Go's ReplaceAllString does.

    Matches are found left to right without overlapping. After each match the search goes on
    at its end, or one character further for an empty match. An empty match that starts where
    the previous match ended is not replaced, unless it is at the start of the text.
    With `max_bytes`, raises ReplacementTooLong as soon as the result passes that many bytes,
    so a pattern that matches empty text between every character cannot build a huge result.
    """
    source = _encode(text)
    pieces: list[bytes] = []
    length = 0
    copied_up_to = 0
    search_from = 0
    while search_from <= len(source):
        match = regexp._regexp.search(source, search_from)
        if match is None:
            break
        start, end = match.span()
        pieces.append(source[copied_up_to:start])
        length += start - copied_up_to
        if end > copied_up_to or start == 0:
            pieces.append(_encode(expand(template, match, regexp)))
            length += len(pieces[-1])
        if max_bytes is not None and length > max_bytes:
            raise ReplacementTooLong(max_bytes)
        copied_up_to = end
        search_from = end if end > search_from else search_from + _character_width(source, end)
    pieces.append(source[copied_up_to:])
    if max_bytes is not None and length + len(source) - copied_up_to > max_bytes:
        raise ReplacementTooLong(max_bytes)
    return _decode(b"".join(pieces))


def _character_width(source: bytes, position: int) -> int:
    """Return the UTF-8 length of the character at `position` (1 at the end of the text)."""
    if position >= len(source):
        return 1
    lead = source[position]
    if lead >= 0xF0:
        return 4
    if lead >= 0xE0:
        return 3
    if lead >= 0xC0:
        return 2
    return 1


def expand(template: str, match: Any, regexp: GoRegexp) -> str:
    """Expand `$1`, `${1}`, `$name`, `${name}` and `$$` in `template` for one match, as Go does."""
    pieces: list[str] = []
    position = 0
    while True:
        dollar = template.find("$", position)
        if dollar < 0:
            pieces.append(template[position:])
            return "".join(pieces)
        pieces.append(template[position:dollar])
        if template.startswith("$", dollar + 1):
            pieces.append("$")
            position = dollar + 2
            continue
        reference = _reference(template, dollar + 1)
        if reference is None:
            pieces.append("$")  # Go keeps a `$` that starts no valid reference
            position = dollar + 1
            continue
        name, position = reference
        pieces.append(_group_text(match, regexp, name))


def _reference(template: str, start: int) -> tuple[str, int] | None:
    """Read the group name after a `$` at `start`; return it and the position after it."""
    braced = template.startswith("{", start)
    position = start + 1 if braced else start
    end = position
    while end < len(template) and _is_name_character(template[end]):
        end += 1
    if end == position:
        return None
    if braced:
        if not template.startswith("}", end):
            return None
        return template[position:end], end + 1
    return template[position:end], end


def _is_name_character(character: str) -> bool:
    # Go's unicode.IsLetter is category L (str.isalpha), unicode.IsDigit is category Nd.
    return character.isalpha() or character.isdecimal() or character == "_"


def _group_text(match: Any, regexp: GoRegexp, name: str) -> str:
    """Return the text of group `name` (a number or a name), or "" when there is no such group."""
    if name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0")):
        number = int(name)
        if number > regexp._regexp.groups:
            return ""
    else:
        index = regexp._names.get(name)
        if index is None:
            return ""
        number = index
    raw = match.group(number)
    return _decode(raw) if raw else ""
