"""Go regular expressions (RE2 syntax) run with Python's `re`, with Go's replacement rules.

`find.name.regexp` and `rewrite[].regexp` are Go regexps in External Secrets Operator, and a rewrite
target follows Go's `Regexp.ReplaceAllString`. This module holds:

- `translate(pattern)`: rewrite Go syntax into Python syntax with the same meaning. `(?<name>x)`
  becomes `(?P<name>x)`, `\\z` becomes `\\Z`, `\\Q...\\E` and `\\x{...}` become escaped characters,
  POSIX classes such as `[[:alpha:]]` are expanded, and `\\d`, `\\w`, `\\s`, `\\b` match ASCII only,
  as in Go. Python-only syntax that Go rejects (lookarounds, backreferences, atomic groups,
  possessive quantifiers, conditionals, comments, `{,n}` repeats) raises ValueError, so a
  declaration that passes `check` here compiles in Go too.
- `compile_regexp(pattern)`: translate and compile; raises ValueError worded "problem; fix".
- `replace_all(regexp, text, template)`: Go's ReplaceAllString. An empty match right after the
  previous match is not replaced, and `$name` in the template takes the longest run of letters,
  digits and `_`, so `$1x` names the group `1x`. `${1}x` is group 1 and then `x`, `$$` is `$`,
  a reference to a group that does not exist or did not take part expands to "", and a `$` that
  starts no reference stays as it is. Expansion never raises.

Messages never quote the pattern, because a pattern may be pasted from anywhere.
"""

from __future__ import annotations

import functools
import re

# Go repeats accept counts up to 1000 (regexp/syntax's maximum).
_MAX_REPEAT = 1000
_WORD = "0-9A-Za-z_"
_SPACE = "\\t\\n\\f\\r "
# Perl classes as Go defines them: ASCII only.
_PERL_CLASSES = {"d": "0-9", "w": _WORD, "s": _SPACE}
_WORD_BEFORE = f"(?<=[{_WORD}])"
_NO_WORD_BEFORE = f"(?<![{_WORD}])"
_WORD_AFTER = f"(?=[{_WORD}])"
_NO_WORD_AFTER = f"(?![{_WORD}])"
_ASCII_BOUNDARY = f"(?:{_WORD_BEFORE}{_NO_WORD_AFTER}|{_NO_WORD_BEFORE}{_WORD_AFTER})"
_ASCII_NON_BOUNDARY = f"(?:{_WORD_BEFORE}{_WORD_AFTER}|{_NO_WORD_BEFORE}{_NO_WORD_AFTER})"
# POSIX classes inside a bracket expression, as Go's regexp/syntax lists them.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": _WORD,
    "xdigit": "0-9A-Fa-f",
}
# Escapes Go accepts outside a class and Python reads the same way.
_SAME_ESCAPES = frozenset("afnrtvA")
_GO_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_HEX_BRACED = re.compile(r"\{([0-9A-Fa-f]{1,8})\}")
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")
_FLAGS = re.compile(r"\(\?([A-Za-z-]*)([):])")
_GO_FLAGS = frozenset("ims-")

_NOT_GO = "is not part of Go's regular expression syntax"
_FLAG_EXAMPLE = "(e.g. (?i) or (?s:x))"


class _Translator:
    """One pass over a Go pattern that emits the equivalent Python pattern."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.position = 0
        self.output: list[str] = []

    def run(self) -> str:
        pattern = self.pattern
        while self.position < len(pattern):
            character = pattern[self.position]
            if character == "\\":
                self.output.append(self._escape())
            elif character == "[":
                self.output.append(self._character_class())
            elif character == "(":
                self.output.append(self._group_opening())
            elif character == "{":
                self._brace()
            elif character in "*+?":
                self.position += 1
                self.output.append(character)
                self._check_not_possessive()
            else:
                self.position += 1
                self.output.append(character)
        return "".join(self.output)

    def _escape(self) -> str:
        """Translate the escape sequence at `position` (outside a class); advance past it."""
        pattern, start = self.pattern, self.position
        if start + 1 >= len(pattern):
            raise ValueError("the pattern ends with a lone backslash; escape it as \\\\")
        letter = pattern[start + 1]
        self.position = start + 2
        if letter == "Q":
            end = pattern.find("\\E", self.position)
            literal = pattern[self.position :] if end < 0 else pattern[self.position : end]
            self.position = len(pattern) if end < 0 else end + 2
            return re.escape(literal)
        if letter == "z":
            return "\\Z"
        if letter == "b":
            return _ASCII_BOUNDARY
        if letter == "B":
            return _ASCII_NON_BOUNDARY
        if letter.lower() in _PERL_CLASSES:
            negate = "^" if letter.isupper() else ""
            return f"[{negate}{_PERL_CLASSES[letter.lower()]}]"
        if letter == "x":
            return self._hex_escape()
        if self._is_octal_escape(letter):
            return self._octal_escape(start)
        return self._plain_escape(letter, inside_class=False)

    def _is_octal_escape(self, letter: str) -> bool:
        # Go reads `\0` and `\12` as octal escapes, and `\1` alone as a backreference (rejected).
        following = self.pattern[self.position : self.position + 1]
        return letter == "0" or (
            letter in "1234567" and following != "" and following in "01234567"
        )

    def _octal_escape(self, start: int) -> str:
        digits = re.match(r"[0-7]{1,3}", self.pattern[start + 1 :])
        assert digits is not None  # the caller saw an octal digit there
        self.position = start + 1 + len(digits.group())
        return re.escape(chr(int(digits.group(), 8)))

    def _hex_escape(self) -> str:
        rest = self.pattern[self.position :]
        braced = _HEX_BRACED.match(rest)
        if braced is not None:
            code = int(braced.group(1), 16)
            if code > 0x10FFFF:
                raise ValueError("\\x{...} names no Unicode character; use at most \\x{10FFFF}")
            self.position += braced.end()
            return re.escape(chr(code))
        if re.match(r"[0-9A-Fa-f]{2}", rest):
            self.position += 2
            return re.escape(chr(int(rest[:2], 16)))
        raise ValueError("invalid \\x escape; write two hex digits (\\x41) or \\x{41}")

    def _plain_escape(self, letter: str, *, inside_class: bool) -> str:
        if letter in _SAME_ESCAPES and not (inside_class and letter == "A"):
            return "\\" + letter
        if letter.isascii() and not letter.isalnum():
            return re.escape(letter)  # an escaped punctuation character is itself, in both
        if letter in "pP":
            raise ValueError(
                "Unicode character classes (\\p, \\P) are not supported by secrets-agent yet; "
                "list the characters in a class such as [a-z]"
            )
        if letter == "Z":
            raise ValueError(f"\\Z {_NOT_GO}; write \\z for the end of the text")
        if letter.isdigit():
            raise ValueError(
                f"backreferences (\\1) {_NOT_GO}; match the text again, or write an octal "
                "escape with two or more digits (\\012)"
            )
        raise ValueError(f"the escape \\{letter} {_NOT_GO}; remove the backslash or fix it")

    def _character_class(self) -> str:
        """Translate a bracket expression `[...]`; advance past its closing `]`."""
        pattern = self.pattern
        self.position += 1
        output = ["["]
        if pattern.startswith("^", self.position):
            output.append("^")
            self.position += 1
        if pattern.startswith("]", self.position):  # a leading `]` is literal in both syntaxes
            output.append("\\]")
            self.position += 1
        while self.position < len(pattern) and pattern[self.position] != "]":
            output.append(self._class_item())
        if self.position >= len(pattern):
            raise ValueError("a character class has no closing ]; close it or escape the [")
        self.position += 1
        output.append("]")
        return "".join(output)

    def _class_item(self) -> str:
        pattern, start = self.pattern, self.position
        character = pattern[start]
        posix = _POSIX_CLASS.match(pattern, start)
        if posix is not None:
            self.position = posix.end()
            negated, name = posix.groups()
            if name not in _POSIX_CLASSES:
                raise ValueError(
                    f"unknown POSIX class [:{name}:]; use one of {', '.join(_POSIX_CLASSES)}"
                )
            if negated:
                raise ValueError(
                    "negated POSIX classes ([:^name:]) are not supported by secrets-agent yet; "
                    "negate the whole class instead, as in [^[:digit:]]"
                )
            return _POSIX_CLASSES[name]
        if character != "\\":
            self.position += 1
            # Python warns about `[`, `&&`, `||` and `~~` inside a class (future set syntax).
            return "\\" + character if character in "[&|~" else character
        if start + 1 >= len(pattern):
            raise ValueError("the pattern ends with a lone backslash; escape it as \\\\")
        letter = pattern[start + 1]
        self.position = start + 2
        if letter in _PERL_CLASSES:
            return _PERL_CLASSES[letter]
        if letter in "DWS":
            # NOTE: Python has no ASCII-only negated class inside a bracket expression, so these
            # keep Python's Unicode meaning; they differ from Go only for non-ASCII characters.
            return "\\" + letter
        if letter == "x":
            return self._hex_escape()
        if self._is_octal_escape(letter):
            return self._octal_escape(start)
        return self._plain_escape(letter, inside_class=True)

    def _group_opening(self) -> str:
        """Translate `(` or a `(?...` group opening; advance past it."""
        pattern, start = self.pattern, self.position
        if not pattern.startswith("(?", start):
            self.position += 1
            return "("
        rest = pattern[start + 2 : start + 4]
        if rest.startswith("P<"):
            self.position = start + 4
            return "(?P<"
        if rest.startswith("<") and rest[1:2] not in ("=", "!"):
            self.position = start + 3
            return "(?P<"
        if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
            raise ValueError(f"lookahead and lookbehind assertions {_NOT_GO}; remove them")
        if rest.startswith("P="):
            raise ValueError(f"backreferences ((?P=name)) {_NOT_GO}; remove them")
        if rest[:1] in (">", "#", "("):
            kind = {">": "atomic groups", "#": "comments", "(": "conditional groups"}[rest[:1]]
            raise ValueError(f"{kind} {_NOT_GO}; remove them")
        flags = _FLAGS.match(pattern, start)
        if flags is None:
            raise ValueError("invalid group; Go accepts (?:x), (?P<name>x), (?<name>x) and (?i)")
        letters = flags.group(1)
        if "U" in letters:
            raise ValueError(
                "the U flag (ungreedy) is not supported by secrets-agent yet; make each "
                "repetition lazy instead, as in .*?"
            )
        if not set(letters) <= _GO_FLAGS:
            raise ValueError(f"invalid flag; Go accepts the flags i, m, s and U {_FLAG_EXAMPLE}")
        self.position = flags.end()
        return flags.group()

    def _brace(self) -> None:
        """Emit a Go repeat `{n}`, `{n,}` or `{n,m}`, or a literal `{` where there is none."""
        repeat = _GO_REPEAT.match(self.pattern, self.position)
        if repeat is None:
            # Go reads any other `{` as a literal. Python would read `{,n}` as a repeat.
            self.position += 1
            self.output.append("\\{")
            return
        low, high = repeat.group(1), repeat.group(3)
        counts = [int(low)] + ([int(high)] if high else [])
        if max(counts) > _MAX_REPEAT or (high and int(high) < int(low)):
            raise ValueError(
                f"invalid repeat count; Go accepts counts up to {_MAX_REPEAT}, with the "
                "minimum first, as in {2,5}"
            )
        self.position = repeat.end()
        self.output.append(repeat.group())
        self._check_not_possessive()

    def _check_not_possessive(self) -> None:
        """Reject `*+`, `++`, `?+` and `{n}+`, which Python reads as possessive and Go rejects."""
        following = self.position
        if self.pattern.startswith("?", following):
            self.output.append("?")
            following += 1
            self.position = following
        if self.pattern.startswith("+", following):
            raise ValueError(f"possessive repetitions such as *+ {_NOT_GO}; remove the +")


def translate(pattern: str) -> str:
    """Return the Python pattern that means what the Go pattern `pattern` means.

    Raises ValueError, worded "problem; fix", for syntax that Go rejects or that secrets-agent
    does not translate. Errors that both syntaxes share (an unclosed group) surface from
    `compile_regexp`.
    """
    return _Translator(pattern).run()


@functools.lru_cache(maxsize=256)
def compile_regexp(pattern: str) -> re.Pattern[str]:
    """Translate and compile a Go regexp; raise ValueError worded "problem; fix".

    NOTE: `$` keeps Python's meaning, which also matches before a newline at the end of the
    text; Go's `$` without the m flag matches only at the very end. Python's `re` backtracks,
    so a pattern such as `(a+)+$` can take exponential time where RE2 takes linear time.
    """
    translated = translate(pattern)
    try:
        return re.compile(translated)
    except re.error as error:
        # error.msg carries no position: positions in the translation would mislead.
        raise ValueError(f"invalid regular expression ({error.msg}); fix the pattern") from None
    except RecursionError:
        raise ValueError("the regular expression is nested too deeply; simplify it") from None


def replace_all(regexp: re.Pattern[str], text: str, template: str) -> str:
    """Replace every match of `regexp` in `text` with `template`, as Go's ReplaceAllString does.

    Matches are found left to right without overlapping. After each match the search goes on
    at its end, or one character further for an empty match. An empty match that starts where
    the previous match ended is not replaced, unless it is at the start of the text.
    """
    pieces: list[str] = []
    copied_up_to = 0
    search_from = 0
    while search_from <= len(text):
        match = regexp.search(text, search_from)
        if match is None:
            break
        start, end = match.span()
        pieces.append(text[copied_up_to:start])
        if end > copied_up_to or start == 0:
            pieces.append(expand(template, match))
        copied_up_to = end
        search_from = end if end > search_from else search_from + 1
    pieces.append(text[copied_up_to:])
    return "".join(pieces)


def expand(template: str, match: re.Match[str]) -> str:
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
        pieces.append(_group_text(match, name))


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


def _group_text(match: re.Match[str], name: str) -> str:
    """Return the text of group `name` (a number or a name), or "" when there is no such group."""
    if name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0")):
        number = int(name)
        if number > match.re.groups:
            return ""
        return match.group(number) or ""
    index = match.re.groupindex.get(name)
    if index is None:
        return ""
    return match.group(index) or ""
