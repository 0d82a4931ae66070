"""Secret keys that are Python keywords or Jinja2 names, as templates migrated from External
Secrets Operator use them: `{{ .pass }}` becomes `{{ pass }}`.

Python keywords are plain variables in Jinja2. The few names that Jinja2 reads as something
else (`true`, `none`, `not`, `self`, ...) are reported with the `data[...]` form, at load time
for `spec.data` secret keys and at render time for keys that `dataFrom` imports.
"""

from __future__ import annotations

import keyword
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from templates_helpers import (
    SSM_STORE,
    declaration_with_templates,
    external_secret,
    write_declarations,
)

from agent.declarations import load_declarations
from agent.errors import DeclarationErrors
from agent.templates import TemplateErrors, render_files

# Python keywords that Jinja2 reads as something else: its constants and the operator `not`.
JINJA_READS_OTHERWISE = {"True", "False", "None", "not"}
VARIABLE_KEYWORDS = sorted(set(keyword.kwlist + keyword.softkwlist) - JINJA_READS_OTHERWISE - {"_"})


def data_items(*keys: str) -> list[dict]:
    return [{"secretKey": key, "remoteRef": {"key": f"/payment/{key}"}} for key in keys]


def load_error(tmp_path: Path, templates: dict[str, str], *keys: str) -> str:
    document = external_secret(templates, data=data_items(*keys))
    path = write_declarations(tmp_path / "declarations.yaml", [SSM_STORE, document])
    with pytest.raises(DeclarationErrors) as caught:
        load_declarations([path])
    return str(caught.value)


def render_error(tmp_path: Path, template: str, data: dict[str, bytes]) -> str:
    extract = [{"extract": {"key": "/payment/"}}]
    declaration = declaration_with_templates(tmp_path, {"out": template}, data_from=extract)
    with pytest.raises(TemplateErrors) as caught:
        render_files(declaration, data)
    return str(caught.value)


@pytest.mark.parametrize("name", VARIABLE_KEYWORDS)
def test_keyword_key_is_variable(tmp_path: Path, name: str) -> None:
    templates = {"plain": f"{{{{ {name} }}}}", "filtered": f"{{{{ {name} | b64enc }}}}"}
    declaration = declaration_with_templates(tmp_path, templates, data=data_items(name))

    files = render_files(declaration, {name: b"fake-value-1"})

    assert files["plain"] == b"fake-value-1"
    assert files["filtered"] == b"ZmFrZS12YWx1ZS0x"


def test_pass_key_from_data_from(tmp_path: Path) -> None:
    extract = [{"extract": {"key": "/payment/"}}]
    template = "{% if pass %}{{ user }}:{{ pass }}{% endif %}"
    declaration = declaration_with_templates(tmp_path, {"dsn": template}, data_from=extract)

    files = render_files(declaration, {"user": b"fake-user-1", "pass": b"fake-pass-1"})

    assert files == {"dsn": b"fake-user-1:fake-pass-1"}


@pytest.mark.parametrize("name", ["true", "none", "False", "self"])
def test_shadowed_key_rejected_at_load(tmp_path: Path, name: str) -> None:
    message = load_error(tmp_path, {"out": f"value={{{{ {name} }}}}"}, name)

    assert f"secret key '{name}' cannot be read as a variable" in message
    assert f'data["{name}"]' in message
    assert "missing" not in message


def test_not_key_rejected_at_load(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"out": "{{ not }}"}, "not")

    assert "secret key 'not' cannot be read as a variable" in message
    assert 'data["not"]' in message


def test_constant_without_such_key_allowed(tmp_path: Path) -> None:
    template = "{% if password is not none and true %}{{ password }}{% endif %}"
    declaration = declaration_with_templates(tmp_path, {"out": template})

    files = render_files(declaration, {"password": b"fake-db-password-1"})

    assert files == {"out": b"fake-db-password-1"}


def test_none_test_with_none_key_allowed(tmp_path: Path) -> None:
    template = "{% if password is none %}unset{% else %}{{ data['none'] }}{% endif %}"
    declaration = declaration_with_templates(
        tmp_path, {"out": template}, data=data_items("password", "none")
    )

    files = render_files(declaration, {"password": b"fake-1", "none": b"fake-none-1"})

    assert files == {"out": b"fake-none-1"}


def test_self_key_rejected_at_render(tmp_path: Path) -> None:
    message = render_error(tmp_path, "{{ self }}", {"self": b"fake-self-1"})

    assert "secret key 'self' cannot be read as a variable" in message
    assert 'data["self"]' in message
    assert "fake-self-1" not in message
    assert "missing" not in message


def test_non_ascii_key_not_missing(tmp_path: Path) -> None:
    message = render_error(tmp_path, "{{ pa\u00df }}", {"pa\u00df": b"fake-value-1"})

    assert "secret key 'pa\u00df' cannot be read as a variable" in message
    assert 'data["pa\u00df"]' in message
    assert "missing" not in message


def test_absent_key_still_missing(tmp_path: Path) -> None:
    message = render_error(tmp_path, "{{ pass }}", {"user": b"fake-user-1"})

    assert "secret key 'pass' is missing" in message


def test_once_renders_keyword_key(aws: str, tmp_path: Path) -> None:
    ssm = boto3.client("ssm", endpoint_url=aws, region_name="us-east-1")
    ssm.put_parameter(Name="/payment/user", Value="fake-db-user-1", Type="String")
    ssm.put_parameter(Name="/payment/pass", Value="fake-db-password-1", Type="SecureString")
    document = external_secret({"dsn": "{{ user }}:{{ pass }}"}, data=data_items("user", "pass"))
    config = write_declarations(tmp_path / "declarations.yaml", [SSM_STORE, document])
    (tmp_path / "secrets").mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_AGENT_")}
    environment.update(
        SECRETS_AGENT_CONFIG=str(config),
        SECRETS_AGENT_OUTPUT_DIR=str(tmp_path / "secrets"),
        SECRETS_AGENT_REFS_DIR=str(tmp_path / "refs"),
    )

    result = subprocess.run(
        [sys.executable, "-m", "agent", "once", "--timeout", "5"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    dsn = (tmp_path / "secrets" / "payment" / "dsn").read_bytes()
    assert dsn == b"fake-db-user-1:fake-db-password-1"
