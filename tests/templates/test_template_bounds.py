"""The sandbox's bounds: big ints, large strings and lists, rendered file size and CPU deadline.

Each hostile template below would, without the bounds, hold the GIL for hours or build
gigabytes in one C call. The tests check that rendering stops with a message naming the
ExternalSecret, the template and the bound, and never a value; none of them measures time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from templates_helpers import declaration_with_templates

from agent import template_sandbox
from agent.models import TargetTemplate
from agent.template_sandbox import MAX_OUTPUT_BYTES
from agent.templates import TemplateErrors, check_template, render_files

FAKE_VALUES = {"password": b"fake-db-password-1", "username": b"fake-db-user-1"}
TOO_LARGE = "larger than 1048576"
NUMBER_TOO_LARGE = "a number above 1048576"

HOSTILE_CASES = [
    # (template, words the problem contains)
    ("{{ ((10**1000)**1000)**1000 }}", "more than 8192 bits"),
    ("{{ 3 ** 100000 }}", "more than 8192 bits"),
    ("{{ (2 ** 8000) * (2 ** 8000) }}", "more than 8192 bits"),
    ("{{ password.center(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ password.ljust(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ password.zfill(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ (1).to_bytes(10**9, 'big') }}", NUMBER_TOO_LARGE),
    ("{{ ('\t' * 100000).expandtabs(1000) }}", TOO_LARGE),
    ("{{ '{:1000000000}'.format(password) }}", TOO_LARGE),
    ("{{ '{:{}}'.format(password, 10**9) }}", NUMBER_TOO_LARGE),
    ("{{ '{0}{0}{0}'.format('x' * 1000000) }}", TOO_LARGE),
    ("{{ '%1000000000s' % password }}", TOO_LARGE),
    ("{{ '%*s' % (10**9, password) }}", NUMBER_TOO_LARGE),
    ("{{ '%*s' | format(10**9, password) }}", NUMBER_TOO_LARGE),
    ("{{ password | center(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ password | indent(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ ('x\n' * 500000) | indent('    ') }}", TOO_LARGE),
    ("{{ password | wordwrap(2, wrapstring='x' * 1000000) }}", TOO_LARGE),
    ("{{ password | truncate(10**9) }}", NUMBER_TOO_LARGE),
    ("{{ password * 10**9 }}", TOO_LARGE),
    ("{{ [password] * 10**9 }}", TOO_LARGE),
    ("{% set s = 'x' * 1000 %}{{ s.replace('x', s * 2) }}", TOO_LARGE),
    ("{% set s = 'x' * 1000 %}{{ s | replace('x', s * 2) }}", TOO_LARGE),
    ("{% set s = 'x' * 1000000 %}{{ s ~ s }}", TOO_LARGE),
    ("{% set s = 'x' * 1000000 %}{{ [s, s] }}", TOO_LARGE),
    ("{% set s = 'x' * 1000000 %}{{ [s, s] | join }}", TOO_LARGE),
    ("{% set s = 'x' * 1000 %}{{ (range(2000) | map('string')) | join(s) }}", TOO_LARGE),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
        TOO_LARGE,
    ),
    ("{{ range(100000) | map('center', 1000000) | list | length }}", "more than 64 MiB"),
    ("{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}", "rendered file is larger"),
    ("{{ lipsum(10**6) }}", "lipsum"),
]


def render(tmp_path: Path, template: str) -> dict[str, bytes]:
    declaration = declaration_with_templates(tmp_path, {"app.conf": template})
    return dict(render_files(declaration, FAKE_VALUES))


def render_error(tmp_path: Path, template: str) -> str:
    declaration = declaration_with_templates(tmp_path, {"app.conf": template})
    with pytest.raises(TemplateErrors) as caught:
        render_files(declaration, FAKE_VALUES)
    return str(caught.value)


@pytest.mark.parametrize(("template", "problem"), HOSTILE_CASES)
def test_hostile_template_stopped(tmp_path: Path, template: str, problem: str) -> None:
    message = render_error(tmp_path, template)

    assert problem in message
    assert "ExternalSecret payment" in message
    assert "spec.target.template.data" in message
    assert "app.conf" in message
    for value in FAKE_VALUES.values():
        assert value.decode() not in message


def nested_lists(prefix: str, *, literal: str = "[{}]") -> str:
    """Build `{prefix}h`: ten references to `{prefix}g` and so on down to a 1,000-item list.

    The value takes little memory, but walking it would visit 10**10 items in one C call.
    """
    names = "abcdefgh"
    statements = [f"{{% set {prefix}a = range(1000) | list %}}"]
    for level in range(1, len(names)):
        items = ", ".join([prefix + names[level - 1]] * 10)
        statements.append(f"{{% set {prefix}{names[level]} = {literal.format(items)} %}}")
    return "".join(statements)


NESTED = nested_lists("x") + nested_lists("y")
LITERAL_TOO_LARGE = "a list, tuple or dict literal would be larger than 1048576"

NESTED_CASES = [
    # (template, words the problem contains)
    (NESTED + "{{ xh == yh }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh != yh }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xa in yh }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xa not in yh }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh < yh }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh | sort | length }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh | string | length }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh | unique | list | length }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh | max | length }}", LITERAL_TOO_LARGE),
    (NESTED + "{{ xh | sum(start=[]) | length }}", LITERAL_TOO_LARGE),
    (nested_lists("x", literal="({},)") + "{{ xh == xh }}", LITERAL_TOO_LARGE),
    (nested_lists("x", literal="{{'k': [{}]}}") + "{{ xh == xh }}", LITERAL_TOO_LARGE),
    # Values built without a literal are checked where they are built.
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set xe = dict(a=xc, b=xc, c=xc, d=xc, e=xc, f=xc, g=xc, h=xc, i=xc, j=xc) %}"
        "{{ xe == xe }}",
        TOO_LARGE,
    ),
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set ns = namespace(v=[xc, xc, xc, xc, xc, xc, xc, xc, xc, xc]) %}{{ ns.v == ns.v }}",
        LITERAL_TOO_LARGE,
    ),
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set ns = namespace(v=0) %}{% set ns.v = [xc, xc, xc, xc, xc, xc, xc, xc, xc, xc] %}"
        "{{ ns.v == ns.v }}",
        LITERAL_TOO_LARGE,
    ),
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set ns = namespace(v=0) %}{% macro keep() %}{% set ns.v = varargs %}{% endmacro %}"
        "{{ keep(xc, xc, xc, xc, xc, xc, xc, xc, xc, xc) }}{{ ns.v == ns.v }}",
        "the arguments of the call of keep would be larger than 1048576",
    ),
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set n1 = namespace(v=xc) %}{% set l1 = [n1, n1, n1, n1, n1, n1, n1, n1, n1, n1] %}"
        "{{ l1 | string | length }}",
        LITERAL_TOO_LARGE,
    ),
    (
        nested_lists("x").split("{% set xd")[0]
        + "{% set d1 = {'k': xc} %}{% set l1 = [d1.items(), d1.values(), d1.keys(), d1.items()] %}"
        "{{ l1 | string | length }}",
        LITERAL_TOO_LARGE,
    ),
    (
        "{{ ('\\x00' * 1000000) | to_yaml }}",
        "the input of the to_yaml filter is larger than 262144",
    ),
    (
        "{{ (range(100000) | list) | pprint }}",
        "the input of the pprint filter is larger than 262144",
    ),
    (
        "{{ ('\\U0001F600' * 1000000) | properties }}",
        "the output of the properties filter would be larger than 1048576",
    ),
]


@pytest.mark.parametrize(("template", "problem"), NESTED_CASES)
def test_shared_references_stopped(tmp_path: Path, template: str, problem: str) -> None:
    message = render_error(tmp_path, template)

    assert problem in message
    assert "app.conf" in message


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real deadline is 2 s; a shorter one keeps the suite fast and tests the same path.
    monkeypatch.setattr(template_sandbox, "MAX_RENDER_SECONDS", 0.2)


DEADLINE_CASES = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 1000000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% for i in range(100000) %}{{ f }}{% endfor %}{% endmacro %}"
    "{% for i in range(100000) %}{{ f(i) | length }}{% endfor %}",
    "{{ range(100000) | map('string') | map('length') | sum }}"
    "{% for i in range(100000) %}{{ (range(1000) | map('string') | list)[0] }}{% endfor %}",
]


@pytest.mark.parametrize("template", DEADLINE_CASES)
def test_slow_template_hits_deadline(tmp_path: Path, short_deadline: None, template: str) -> None:
    message = render_error(tmp_path, template)

    assert "rendering took longer than 0.2 seconds" in message
    assert "app.conf" in message


def test_deadline_is_per_rendering(tmp_path: Path, short_deadline: None) -> None:
    # Two quick renderings in a row each get their own deadline.
    quick = "{% for i in range(1000) %}{{ i % 10 }}{% endfor %}"

    first = render(tmp_path, quick)
    second = render(tmp_path, quick)

    assert first == second
    assert len(first["app.conf"]) == 1000


ALLOWED_CASES = [
    # (template, expected output)
    ("{{ 2 ** 1000 > 10 ** 300 }}", "True"),
    ("{{ (7 ** 100) % 13 }}", str(7**100 % 13)),
    ("{{ 2 ** -2 }}", "0.25"),
    ("{{ 1 ** (10 ** 30) }}", "1"),
    ("{{ ('ab' * 3) }}", "ababab"),
    ("{{ password.center(22, '*') }}", "**fake-db-password-1**"),
    ("{{ '%-20s|' % username }}", "fake-db-user-1      |"),
    ("{{ '{:>16}'.format(username) }}", "  fake-db-user-1"),
    ("{{ 'a\nb' | indent(2, first=true) }}", "  a\n  b"),
    ("{{ [username, password] | join(',') }}", "fake-db-user-1,fake-db-password-1"),
    ("{{ password | replace('-', '_') }}", "fake_db_password_1"),
    ("{{ username ~ ':' ~ password }}", "fake-db-user-1:fake-db-password-1"),
    ("{% for k, v in data | dictsort %}{{ k }}={{ v }};{% endfor %}", None),
    ("{% set xs = [1, 2] %}{% set t = (xs, xs) %}{{ t == ([1, 2], [1, 2]) }}", "True"),
    ("{% set d = {'a': [1], 'b': (2,)} %}{{ d['a'] ~ d['b'] }}", "[1](2,)"),
    ("{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }};{% endfor %}", "3;7;"),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}", "12"),
    ("{% set ns = namespace(v=[1]) %}{{ [ns.v, {'a': 2}.items() | list] }}", "[[1], [('a', 2)]]"),
    ("{{ {'k': [username]} | to_yaml }}", "k:\n- fake-db-user-1"),
    ("{{ ('\\x00' * 3) | to_yaml }}", '"\\0\\0\\0"'),
]


@pytest.mark.parametrize(("template", "expected"), ALLOWED_CASES)
def test_ordinary_template_renders(tmp_path: Path, template: str, expected: str | None) -> None:
    rendered = render(tmp_path, template)["app.conf"].decode()

    if expected is not None:
        assert rendered == expected
    else:
        assert rendered == "password=fake-db-password-1;username=fake-db-user-1;"


def test_output_limit_is_inclusive(tmp_path: Path) -> None:
    exactly = "{{ 'x' * 1048576 }}"

    assert len(render(tmp_path, exactly)["app.conf"]) == MAX_OUTPUT_BYTES


def test_output_limit_counts_bytes(tmp_path: Path) -> None:
    # 524,289 two-byte characters: under the bound in characters, over it in UTF-8 bytes.
    message = render_error(tmp_path, "{{ '\u00e9' * 524289 }}")

    assert "rendered file is larger than 1048576 bytes" in message


def test_output_limit_across_pieces(tmp_path: Path) -> None:
    # Many small pieces, none of them large, add up past the bound.
    template = "{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}"

    message = render_error(tmp_path, template)

    assert "rendered file is larger than 1048576 bytes" in message


def test_other_templates_still_reported(tmp_path: Path) -> None:
    declaration = declaration_with_templates(
        tmp_path, {"big.txt": "{{ 'x' * 10**9 }}", "ok.txt": "{{ password }}", "bad.txt": "{{ x }}"}
    )

    with pytest.raises(TemplateErrors) as caught:
        render_files(declaration, FAKE_VALUES)

    names = [error.template for error in caught.value.errors]
    assert names == ["big.txt", "bad.txt"]


def test_long_missing_name_shortened(tmp_path: Path) -> None:
    name = "n" * 5000
    message = render_error(tmp_path, "{{ " + name + " }}")

    assert "n" * 100 + "… (5000 characters)" in message
    assert "n" * 101 not in message


def test_long_template_name_shortened() -> None:
    template = TargetTemplate.model_validate({"data": {"t" * 5000: "{{ password }}"}})

    problems = check_template(template, secret_keys=["password"], allow_nested=False)

    assert len(problems) == 1
    assert "t" * 100 + "… (5000 characters)" in problems[0].problem
    assert "t" * 101 not in problems[0].problem
    assert "t" * 101 not in problems[0].field
