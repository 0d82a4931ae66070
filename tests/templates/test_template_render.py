"""Rendering `spec.target.template`: context, merge policies, errors and the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from templates_helpers import (
    SSM_STORE,
    declaration_with_templates,
    external_secret,
    write_declarations,
)

from agent.cli import EXIT_INVALID, main
from agent.declarations import load_declarations
from agent.errors import DeclarationErrors
from agent.templates import TemplateErrors, render_files, template_context

FAKE_VALUES = {
    "password": b"fake-db-password-1",
    "username": b"fake-db-user-1",
    "db-password": b"fake-dashed-password-1",
}


def render(tmp_path: Path, templates: dict[str, str], data=None, **options) -> dict[str, bytes]:
    declaration = declaration_with_templates(tmp_path, templates, **options)
    return dict(render_files(declaration, FAKE_VALUES if data is None else data))


def render_error(tmp_path: Path, templates: dict[str, str], data=None, **options):
    declaration = declaration_with_templates(tmp_path, templates, **options)
    with pytest.raises(TemplateErrors) as caught:
        render_files(declaration, FAKE_VALUES if data is None else data)
    return caught.value


def load_errors(tmp_path: Path, templates: dict[str, str], **options) -> list:
    path = write_declarations(
        tmp_path / "declarations.yaml", [SSM_STORE, external_secret(templates, **options)]
    )
    with pytest.raises(DeclarationErrors) as caught:
        load_declarations([path], allow_nested=options.pop("allow_nested", False))
    return caught.value.errors


# --- rendering -----------------------------------------------------------------------------------


def test_render_application_properties(tmp_path: Path) -> None:
    template = (
        "spring.datasource.username={{ username }}\n"
        "spring.datasource.password={{ password | properties }}\n"
        'legacy.password={{ data["db-password"] }}\n'
    )

    files = render(tmp_path, {"application.properties": template})

    assert files == {
        "application.properties": b"spring.datasource.username=fake-db-user-1\n"
        b"spring.datasource.password=fake-db-password-1\n"
        b"legacy.password=fake-dashed-password-1\n"
    }


def test_replace_writes_only_templates(tmp_path: Path) -> None:
    files = render(tmp_path, {"a.txt": "{{ password }}"}, merge_policy="Replace")

    assert set(files) == {"a.txt"}


def test_replace_is_the_default(tmp_path: Path) -> None:
    files = render(tmp_path, {"a.txt": "{{ password }}"})

    assert set(files) == {"a.txt"}


def test_merge_adds_templates_to_keys(tmp_path: Path) -> None:
    templates = {"a.txt": "{{ password }}", "username": "templated-{{ username }}"}

    files = render(tmp_path, templates, merge_policy="Merge")

    assert files["a.txt"] == b"fake-db-password-1"
    assert files["password"] == b"fake-db-password-1"
    assert files["db-password"] == b"fake-dashed-password-1"
    assert files["username"] == b"templated-fake-db-user-1", "the template wins a name clash"
    assert set(files) == {"a.txt", "password", "username", "db-password"}


def test_template_without_data_keeps_keys(tmp_path: Path) -> None:
    declaration = declaration_with_templates(tmp_path, {})

    assert render_files(declaration, FAKE_VALUES) == FAKE_VALUES


def test_no_template_keeps_keys(tmp_path: Path) -> None:
    declaration = declaration_with_templates(tmp_path, None)

    assert render_files(declaration, FAKE_VALUES) == FAKE_VALUES


def test_type_and_metadata_accepted(tmp_path: Path) -> None:
    document = external_secret({"a.txt": "{{ password }}"})
    document["spec"]["target"]["template"].update(
        {
            "engineVersion": "v2",
            "type": "kubernetes.io/tls",
            "metadata": {"labels": {"team": "payments"}, "annotations": {"a": "b"}},
        }
    )
    path = write_declarations(tmp_path / "declarations.yaml", [SSM_STORE, document])

    declaration = load_declarations([path]).external_secrets[0]

    assert render_files(declaration, FAKE_VALUES) == {"a.txt": b"fake-db-password-1"}


def test_trailing_newline_and_block_lines(tmp_path: Path) -> None:
    template = "{% for key in data | sort %}\n{{ key }}\n{% endfor %}\nend\n"

    files = render(tmp_path, {"keys.txt": template})

    assert files["keys.txt"] == b"db-password\npassword\nusername\nend\n"


CONTEXT_NAMES = [
    ("identifier", "db_password", True),
    ("dash", "db-password", False),
    ("dot", "app.properties", False),
    ("nested", "tls/key.pem", False),
    ("keyword", "class", True),
    ("jinja constant", "true", False),
    ("the mapping itself", "data", False),
    ("leading digit", "1password", False),
    ("non-ASCII", "pa\u00df", False),
]


@pytest.mark.parametrize(
    ("key", "is_variable"), [pytest.param(c[1], c[2], id=c[0]) for c in CONTEXT_NAMES]
)
def test_context_variables(key: str, is_variable: bool) -> None:
    context = template_context({key: b"fake-value"})

    assert context["data"][key] == "fake-value"
    assert (key in context and key != "data") == is_variable


def test_key_named_data_only_in_mapping(tmp_path: Path) -> None:
    files = render(tmp_path, {"a.txt": '{{ data["data"] }}'}, data={"data": b"fake-data-1"})

    assert files == {"a.txt": b"fake-data-1"}


def test_binary_value_through_b64encode(tmp_path: Path) -> None:
    files = render(tmp_path, {"key.b64": "{{ blob | b64encode }}"}, data={"blob": b"\xff\x00"})

    assert files == {"key.b64": b"/wA="}


def test_binary_value_as_text_fails(tmp_path: Path) -> None:
    error = render_error(tmp_path, {"key.txt": "{{ blob }}"}, data={"blob": b"\xff\x00"})

    message = str(error)
    assert "secret key 'blob' is not UTF-8 text" in message
    assert "b64encode" in message
    assert "key.txt" in message


# --- missing keys --------------------------------------------------------------------------------


def test_missing_variable_names_key_and_template(tmp_path: Path) -> None:
    template = "user={{ username }}\npassword={{ pasword }}\n"

    error = render_error(tmp_path, {"application.properties": template})

    [problem] = error.errors
    assert problem.key == "pasword"
    assert problem.template == "application.properties"
    assert problem.line == 2
    assert problem.external_secret == "payment"
    message = str(problem)
    assert "ExternalSecret payment" in message
    assert 'spec.target.template.data["application.properties"] line 2' in message
    assert "secret key 'pasword' is missing" in message
    assert "db-password, password, username" in message
    assert "<no value>" not in message


def test_missing_mapping_item_names_key(tmp_path: Path) -> None:
    error = render_error(tmp_path, {"a.txt": '{{ data["api-key"] }}'})

    [problem] = error.errors
    assert problem.key == "api-key"
    assert "secret key 'api-key' is missing" in str(problem)


def test_dashed_name_as_variable_hints_mapping(tmp_path: Path) -> None:
    error = render_error(tmp_path, {"a.txt": "{{ data.api_key }}{{ missing_key }}"})

    assert "secret key 'api_key' is missing" in str(error)


def test_every_failed_template_reported(tmp_path: Path) -> None:
    error = render_error(tmp_path, {"a.txt": "{{ first }}", "b.txt": "{{ second }}", "c.txt": "x"})

    assert [problem.key for problem in error.errors] == ["first", "second"]


def test_optional_key_with_default(tmp_path: Path) -> None:
    template = "{{ data.get('optional', 'none') }} {{ optional | default('d') }}"
    template += "{% if other is defined %}{{ other }}{% endif %}"

    files = render(tmp_path, {"a.txt": template})

    assert files == {"a.txt": b"none d"}


# --- sandbox -------------------------------------------------------------------------------------

SANDBOX_ESCAPES = [
    ("class of a string", "{{ ''.__class__ }}"),
    ("mro walk", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ("class of a value", "{{ password.__class__ }}"),
    ("function globals", "{{ cycler.__init__.__globals__ }}"),
    ("attr filter", "{{ password | attr('__class__') }}"),
    ("mapping mutation", "{{ data.update({'password': 'x'}) }}"),
    ("mapping pop", "{{ data.pop('password') }}"),
    ("list mutation", "{% set items = [1] %}{{ items.append(2) }}"),
    ("format string attribute", "{{ '{0.__class__}'.format(password) }}"),
]


@pytest.mark.parametrize("source", [pytest.param(c[1], id=c[0]) for c in SANDBOX_ESCAPES])
def test_sandbox_blocks_escape(tmp_path: Path, source: str) -> None:
    error = render_error(tmp_path, {"a.txt": source})

    [problem] = error.errors
    assert "sandbox blocked" in problem.problem
    assert problem.line == 1


def test_binary_bytes_not_readable(tmp_path: Path) -> None:
    error = render_error(tmp_path, {"a.txt": "{{ blob._raw }}"}, data={"blob": b"\xff"})

    assert "sandbox blocked" in str(error)


# --- no value in any error -----------------------------------------------------------------------

FAILING_TEMPLATES = [
    ("value as a key", "{{ data[password] }}"),
    ("value as an attribute", "{{ data | attr(password) }}"),
    ("value as an unsafe attribute", "{{ '' | attr('_' ~ password) }}"),
    ("value in a computed key", "{{ {'a': 1}[password ~ '-x'] }}"),
    ("failing b64decode", "{{ password | b64decode }}"),
    ("type error with a value", "{{ password + 1 }}"),
    ("format error", "{{ '%d' % password }}"),
    ("value error", "{{ password.index('zzz') }}"),
    ("int conversion", "{{ range(password) }}"),
    ("dict of values", "{{ data | dictsort | attr(password) }}"),
    ("properties of a mapping", "{{ data | properties }}"),
    ("binary value", "{{ blob ~ password }}"),
    ("missing then value", "{{ missing ~ password }}"),
]


@pytest.mark.parametrize("source", [pytest.param(c[1], id=c[0]) for c in FAILING_TEMPLATES])
def test_errors_carry_no_value(tmp_path: Path, source: str) -> None:
    data = dict(FAKE_VALUES, blob=b"\xfffake-binary-1")

    error = render_error(tmp_path, {"a.txt": source}, data=data)

    [problem] = error.errors
    for text in (str(error), problem.problem, problem.fix, str(problem.key)):
        assert "fake" not in text, "an error message contains a secret value"
    assert problem.line == 1


def test_value_looking_like_key_not_quoted(tmp_path: Path) -> None:
    data = {"password": b"api-key-fake-1"}

    error = render_error(tmp_path, {"a.txt": "{{ data[password] }}"}, data=data)

    assert "api-key-fake" not in str(error)
    assert "computed by the template" in str(error)


# --- checked at load time ------------------------------------------------------------------------

GO_TEMPLATES = [
    ("dot key", "password={{ .password }}"),
    ("dot key trimmed", "{{- .password -}}"),
    ("index", '{{ index . "db-password" }}'),
    ("pipeline", "{{ .password | b64dec }}"),
    ("range", "{{ range $k, $v := . }}{{ $k }}{{ end }}"),
    ("variable", "{{ $x := 1 }}"),
]


@pytest.mark.parametrize("source", [pytest.param(c[1], id=c[0]) for c in GO_TEMPLATES])
def test_go_template_rejected_with_fix(tmp_path: Path, source: str) -> None:
    [error] = load_errors(tmp_path, {"app.properties": "# header\n" + source})

    assert error.field == 'spec.target.template.data["app.properties"]'
    assert error.problem == "line 2: invalid Jinja2 syntax"
    assert "Go template" in error.fix
    assert "{{ password }}" in error.fix
    assert 'data["db-password"]' in error.fix


SYNTAX_ERRORS = [
    ("unclosed expression", "a\nb\n{{ password", 3, "unexpected end of template"),
    ("two names", "{{ password username }}", 1, "got 'username'"),
    ("unknown tag", "\n{% frobnicate %}", 2, "unknown tag 'frobnicate'"),
    ("unknown filter", "\n\n{{ password | nosuch }}", 3, "No filter named 'nosuch'"),
    ("unclosed block", "{% if password %}\nx", 2, "Unexpected end of template"),
    ("include", "x\n{% include 'other' %}", 2, "include is not supported"),
    ("import", "{% import 'macros' as m %}", 1, "import is not supported"),
    ("extends", "{% extends 'base' %}", 1, "extends is not supported"),
]


@pytest.mark.parametrize(
    ("source", "line", "problem"),
    [pytest.param(c[1], c[2], c[3], id=c[0]) for c in SYNTAX_ERRORS],
)
def test_syntax_error_at_load(tmp_path: Path, source: str, line: int, problem: str) -> None:
    [error] = load_errors(tmp_path, {"application.properties": source})

    assert error.field == 'spec.target.template.data["application.properties"]'
    assert error.problem.startswith(f"line {line}: ")
    assert problem in error.problem
    assert error.kind == "ExternalSecret"
    assert error.name == "payment"


def test_syntax_error_shows_no_literal_text(tmp_path: Path) -> None:
    source = "password=fake-literal-1 {% if %}"

    [error] = load_errors(tmp_path, {"a.txt": source})

    assert "fake-literal" not in str(error)


TEMPLATE_NAMES = [
    ("parent directory", "..", "is '..'"),
    ("path outside", "../app.properties", "contains '/'"),
    ("slash", "conf/app.properties", "contains '/' and nested keys are off"),
    ("reserved", "..data", "reserved for the writer"),
    ("empty", "", "is empty"),
]


@pytest.mark.parametrize(
    ("name", "problem"), [pytest.param(c[1], c[2], id=c[0]) for c in TEMPLATE_NAMES]
)
def test_unsafe_template_name(tmp_path: Path, name: str, problem: str) -> None:
    errors = load_errors(tmp_path, {name: "x"})

    assert len(errors) == 1
    assert errors[0].field.startswith("spec.target.template.data")
    assert problem in errors[0].problem
    assert "file name" in errors[0].fix


def test_plain_name_field_path(tmp_path: Path) -> None:
    [error] = load_errors(tmp_path, {"config": "{{ x"})

    assert error.field == "spec.target.template.data.config"


def test_nested_template_name_allowed(tmp_path: Path) -> None:
    path = write_declarations(
        tmp_path / "declarations.yaml",
        [SSM_STORE, external_secret({"conf/app.properties": "x={{ password }}"})],
    )

    declaration = load_declarations([path], allow_nested=True).external_secrets[0]

    assert render_files(declaration, FAKE_VALUES) == {
        "conf/app.properties": b"x=fake-db-password-1"
    }


def test_merge_file_directory_clash(tmp_path: Path) -> None:
    data = [{"secretKey": "conf/password", "remoteRef": {"key": "/app/password"}}]
    path = write_declarations(
        tmp_path / "declarations.yaml",
        [SSM_STORE, external_secret({"conf": "x"}, merge_policy="Merge", data=data)],
    )

    with pytest.raises(DeclarationErrors) as caught:
        load_declarations([path], allow_nested=True)

    [error] = caught.value.errors
    assert error.field == "spec.target.template.data.conf"
    assert "also a directory of spec.data secret key 'conf/password'" in error.problem


def test_replace_ignores_key_clash(tmp_path: Path) -> None:
    data = [{"secretKey": "conf/password", "remoteRef": {"key": "/app/password"}}]
    path = write_declarations(
        tmp_path / "declarations.yaml",
        [SSM_STORE, external_secret({"conf": "x"}, data=data)],
    )

    assert load_declarations([path], allow_nested=True).external_secrets


def test_check_command_reports_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_declarations(
        tmp_path / "declarations.yaml",
        [SSM_STORE, external_secret({"application.properties": "a=1\nb={{ .password }}\n"})],
    )

    code = main(["check", "--config", str(path)])

    assert code == EXIT_INVALID
    stderr = capsys.readouterr().err
    assert 'spec.target.template.data["application.properties"]: line 2' in stderr
    assert "Go template" in stderr


@pytest.mark.parametrize(
    "source",
    ['{{ "x" * 10**9 }}', "{{ [0] * 5000000 }}", "{{ 10 ** 100000 }}", '{{ 3000000 * "ab" }}'],
)
def test_sandbox_bounds_memory_hungry_operators(tmp_path: Path, source: str) -> None:
    errors = render_error(tmp_path, {"bomb.txt": source})
    assert "bomb.txt" in str(errors)


def test_small_repetition_still_allowed(tmp_path: Path) -> None:
    files = render(tmp_path, {"line.txt": '{{ "-" * 10 }}'})
    assert files["line.txt"] == b"----------"
