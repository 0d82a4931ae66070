"""Go regexp semantics: ReplaceAllString, template expansion and RE2 syntax, table-driven.

The expected values follow the behaviour that Go's regexp package documents for
`Regexp.ReplaceAllString`, `Regexp.Expand` and the RE2 syntax. The four `a(x*)b` cases are
the examples of `ReplaceAllString`'s documentation. Cases marked "Python gives" show where
Python's `re.sub` differs.
"""

from __future__ import annotations

import pytest

from agent.goregexp import compile_regexp, replace_all, translate

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
    ("(?U)a*", "U flag"),
    (r"\p{Greek}", "Unicode character classes"),
    (r"\e", "escape \\e"),
    (r"[[:^digit:]]", "negated POSIX"),
    (r"[[:letter:]]", "unknown POSIX class"),
    ("a{1001}", "repeat count"),
    ("a{3,2}", "repeat count"),
    ("(", "invalid regular expression"),
    ("[a", "no closing ]"),
    ("a\\", "lone backslash"),
    (r"\x{110000}", "no Unicode character"),
    (r"\xZ", "invalid \\x escape"),
]


@pytest.mark.parametrize(("pattern", "problem"), REJECTED_CASES)
def test_non_go_syntax_rejected(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_regexp(pattern)

    message = str(caught.value)
    assert problem in message
    assert "; " in message, "every message says what to do"


def test_translation_keeps_plain_patterns() -> None:
    assert translate("^db_(.*)$") == "^db_(.*)$"
    assert translate("[a-z]+|x{2,3}?") == "[a-z]+|x{2,3}?"


def test_missing_group_reference_never_raises() -> None:
    regexp = compile_regexp("^(?<a>x)?(y)$")

    assert replace_all(regexp, "y", "<$a|$1|$2|$3|${b}|$>") == "<||y|||$>"
