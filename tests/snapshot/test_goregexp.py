"""Go regexp semantics: ReplaceAllString, template expansion and RE2 syntax, table-driven.

The expected values follow the behaviour that Go's regexp package documents for
`Regexp.ReplaceAllString`, `Regexp.Expand` and the RE2 syntax. The four `a(x*)b` cases are
the examples of `ReplaceAllString`'s documentation. Cases marked "Python gives" show where
Python's `re.sub` differs.
"""

from __future__ import annotations

import pytest

from agent.declarations import ExternalSecretDeclaration, Origin
from agent.goregexp import ReplacementTooLong, compile_regexp, replace_all
from agent.models import ExternalSecretSpec, ObjectMeta
from agent.snapshot import build_snapshot

REPLACE_CASES = [
    # (pattern, text, template, Go's result)
    # An empty match right after a match is not replaced (Python gives x-dbx-).
    ("(.*)", "db", "x-$1", "x-db"),
    ("(.*)", "", "x-$1", "x-"),
    # Python gives XbXXcX.
    ("a*", "baaac", "X", "XbXcX"),
    ("x*", "ab", "-", "-a-b-"),
    ("^", "db", "prefix_", "prefix_db"),
    ("$", "db", "_suffix", "db_suffix"),
    # Go's documented examples for ReplaceAllString.
    ("a(x*)b", "-ab-axxb-", "T", "-T-T-"),
    ("a(x*)b", "-ab-axxb-", "$1", "--xx-"),
    ("a(x*)b", "-ab-axxb-", "$1W", "---"),
    ("a(x*)b", "-ab-axxb-", "${1}W", "-W-xxW-"),
    # `$name` takes the longest run of letters, digits and `_`.
    ("^(db)_(.*)$", "db_password", "$1x", ""),
    ("^(db)_(.*)$", "db_password", "${1}x", "dbx"),
    ("^(db)_(.*)$", "db_password", "$2_$1", "db"),
    ("^(db)_(.*)$", "db_password", "${2}_$1", "password_db"),
    ("^(db)_(.*)$", "db_password", "$0!", "db_password!"),
    # `$$` is a literal `$`; a `$` that starts no reference stays as it is.
    ("^(db)", "db", "$$1", "$1"),
    ("^(db)", "db", "a$", "a$"),
    ("^(db)", "db", "$-x", "$-x"),
    ("^(db)", "db", "${1", "${1"),
    ("^(db)", "db", "${}", "${}"),
    # Missing groups expand to "": a number past the last group, an unknown name, a leading 0,
    # and a group that did not take part in the match.
    ("^(db)", "db", "[$9]", "[]"),
    ("^(db)", "db", "[${name}]", "[]"),
    ("^(db)", "db", "[$01]", "[]"),
    ("^(db)|(x)", "db", "[$2]", "[]"),
    # Named groups in both spellings; Go 1.22 accepts (?<name>...).
    ("^(?P<env>[a-z]+)/(?P<key>.*)$", "prod/db", "${key}-${env}", "db-prod"),
    ("^(?<env>[a-z]+)/(?<key>.*)$", "prod/db", "${key}-${env}", "db-prod"),
    ("^(?<env>[a-z]+)/(?<key>.*)$", "prod/db", "$key_$env", "prod"),
    # RE2 syntax that Python spells differently.
    (r"\Q.*\E", "a.*b", "-", "a-b"),
    (r"\x{2f}", "a/b", "_", "a_b"),
    (r"[[:upper:]]", "DbPass", "_", "_b_ass"),
    (r"[^[:alnum:]]", "db.pass-1", "_", "db_pass_1"),
    (r"\d", "a1\u0663", "#", "a#\u0663"),  # \d is ASCII only in Go
    (r"\w+", "caf\u00e9", "x", "x\u00e9"),
    (r"\bdb\b", "db mydb db", "X", "X mydb X"),
    (r"db\z", "db_db", "X", "db_X"),
    (r"a{,2}", "a{,2}", "X", "X"),  # `{,2}` is literal in Go
    (r"a{2}", "aaa", "X", "Xa"),
    (r"\012", "a\nb", "_", "a_b"),
    # Syntax Go has and Python's re lacks, now matched as Go does.
    (r"(?U)a+", "aaa", "X", "XXX"),
    (r"\pL+", "db-\u00e9t\u00e9", "X", "X-X"),
    (r"\p{Greek}", "a\u03b1b", "_", "a_b"),
    (r"[[:^digit:]]", "a1b2", "_", "_1_2"),
    ("db$", "db\n", "X", "db\n"),  # without the m flag, $ is only the end of the text
    ("(?m)db$", "db\n", "X", "X\n"),
    # An empty match after a multi-byte character advances by the whole character.
    ("x*", "\u00e9\U0001f600", "-", "-\u00e9-\U0001f600-"),
    ("(.)", "\u00e9!", "[$1]", "[\u00e9][!]"),
]


@pytest.mark.parametrize(("pattern", "text", "template", "expected"), REPLACE_CASES)
def test_replace_all_matches_go(pattern: str, text: str, template: str, expected: str) -> None:
    assert replace_all(compile_regexp(pattern), text, template) == expected


REJECTED_CASES = [
    # (pattern, words the problem contains)
    ("a(?=b)", "lookahead and lookbehind"),
    ("a(?!b)", "lookahead and lookbehind"),
    ("(?<=a)b", "lookahead and lookbehind"),
    ("(?<!a)b", "lookahead and lookbehind"),
    (r"(a)\1", "backreferences"),
    ("(?P<x>a)(?P=x)", "backreferences"),
    ("(?>a)", "atomic groups"),
    ("(?#note)a", "comments"),
    ("(a)?(?(1)b|c)", "conditional groups"),
    ("a*+", "possessive"),
    ("a++", "possessive"),
    ("a{2}+", "possessive"),
    ("a*?+", "possessive"),
    (r"db\Z", "\\Z"),
    ("(?x)a b", "invalid flag"),
    (r"\e", "escape \\e"),
    (r"[[:letter:]]", "unknown POSIX class"),
    ("a{1001}", "repeat count"),
    ("a{3,2}", "repeat count"),
    ("(", "invalid regular expression"),
    ("[a", "no closing ]"),
    ("a\\", "lone backslash"),
    (r"\x{110000}", "no Unicode character"),
    (r"\xZ", "invalid \\x escape"),
    # RE2 accepts these, Go does not.
    (r"\C", "\\C (any single byte)"),
    ("(?P<a>x)(?P<a>y)", "same name"),
    ("(?P<\u00e9>x)", "invalid group name"),
    # Further problems RE2 reports, each with our own wording.
    (")", "unbalanced parenthesis"),
    ("*a", "nothing to repeat"),
    ("a**", "follows another"),
    ("[z-a]", "class range"),
    (r"\pX", "unknown Unicode class"),
    ("(?P<>x)", "invalid group name"),
    ("(a{1000}){1000}", "repeat count"),
]


@pytest.mark.parametrize(("pattern", "problem"), REJECTED_CASES)
def test_non_go_syntax_rejected(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_regexp(pattern)

    message = str(caught.value)
    assert problem in message
    assert "; " in message, "every message says what to do"


def test_compiled_regexp_keeps_pattern() -> None:
    assert compile_regexp("^db_(.*)$").pattern == "^db_(.*)$"
    assert compile_regexp("[a-z]+|x{2,3}?").pattern == "[a-z]+|x{2,3}?"


def test_rejection_never_quotes_pattern() -> None:
    for pattern in ("fake-secret-[z-a]", "fake-secret-(", "fake-secret-\\e", "(?=fake-secret)"):
        with pytest.raises(ValueError) as caught:
            compile_regexp(pattern)

        assert "fake-secret" not in str(caught.value)


def test_literal_text_skipped_by_go_checks() -> None:
    # `\Q...\E` is literal text, so a `\C` or group syntax inside it is no problem.
    regexp = compile_regexp(r"\Q\C(?P<a>\E(?P<a>x)")

    assert replace_all(regexp, "\\C(?P<a>x", "$a") == "x"
    # A bracket expression is skipped as well, `]` and `\]` inside it included.
    assert compile_regexp(r"[]\](?P<a>](?P<a>x)").search("]x") is not None


def test_catastrophic_pattern_returns() -> None:
    # Python's re needs about 2**40 steps for this name; RE2 is linear in the name's length.
    regexp = compile_regexp("^/t/re/(a+)+$")
    name = "/t/re/" + "a" * 40 + "!"

    assert regexp.search(name) is None
    assert regexp.search("/t/re/" + "a" * 40) is not None
    assert replace_all(compile_regexp("(a+)+$"), "a" * 5000 + "!", "x") == "a" * 5000 + "!"


def test_lone_surrogate_kept() -> None:
    # A JSON property name can hold a lone surrogate; it is neither matched nor lost.
    assert replace_all(compile_regexp("-"), "a-\ud800-b", "_") == "a_\ud800_b"


def test_missing_group_reference_never_raises() -> None:
    regexp = compile_regexp("^(?<a>x)?(y)$")

    assert replace_all(regexp, "y", "<$a|$1|$2|$3|${b}|$>") == "<||y|||$>"


def test_find_with_catastrophic_regexp_returns() -> None:
    # The name filter of dataFrom.find meets a name that makes Python's re backtrack for hours.
    spec = ExternalSecretSpec.model_validate(
        {
            "secretStoreRef": {"name": "store"},
            "dataFrom": [{"find": {"path": "/t/re", "name": {"regexp": "^/t/re/(a+)+$"}}}],
        }
    )
    declaration = ExternalSecretDeclaration(
        name="payment",
        namespace=None,
        spec=spec,
        metadata=ObjectMeta(name="payment"),
        origin=Origin("test.yaml", 1),
    )
    hostile = "/t/re/" + "a" * 40 + "!"

    def read_prefix(path: str) -> dict[str, bytes]:
        return {hostile: b"fake-hostile", "/t/re/aaa": b"fake-value-1"}

    snapshot = build_snapshot(declaration, store_name="s", fetched={}, read_prefix=read_prefix)

    assert snapshot.data == {"aaa": b"fake-value-1"}


def test_replace_all_stops_at_max_bytes():
    regexp = compile_regexp("x*")
    with pytest.raises(ReplacementTooLong) as caught:
        replace_all(regexp, "a" * 100, "y" * 1000, max_bytes=4096)
    assert caught.value.max_bytes == 4096
    assert "longer than 4096 bytes" in str(caught.value)


def test_replace_all_within_max_bytes():
    regexp = compile_regexp("x*")
    assert replace_all(regexp, "ab", "-", max_bytes=5) == "-a-b-"
    with pytest.raises(ReplacementTooLong):
        replace_all(regexp, "ab", "-", max_bytes=4)


def test_replace_all_counts_unmatched_tail():
    regexp = compile_regexp("^a")
    with pytest.raises(ReplacementTooLong):
        replace_all(regexp, "a" + "b" * 10, "c", max_bytes=10)
    assert replace_all(regexp, "a" + "b" * 10, "c", max_bytes=11) == "c" + "b" * 10


def test_lookaround_message_grammar():
    with pytest.raises(ValueError, match="assertions are not part of Go"):
        compile_regexp("a(?=b)")
