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
from agent.template_sandbox import MAX_OUTPUT_BYTES
from agent.templates import TemplateErrors, render_files

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
