"""The template filters, table-driven, and read back by the real readers where one is at hand.

`properties` output is loaded by Java's `Properties.load(InputStream)`, `dotenv` output by
python-dotenv and `shell` output by `sh`, so the escaping is checked against what applications
actually read, not against a second copy of the rules.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values
from templates_helpers import declaration_with_templates

from agent.templates import (
    FILTERS,
    BinaryValue,
    b64decode,
    b64encode,
    dotenv,
    from_json,
    properties,
    render_files,
    shell,
    to_json,
    to_yaml,
)

# --- properties ----------------------------------------------------------------------------------

PROPERTIES_VALUES = [
    ("plain", "plain", "plain"),
    ("empty", "", ""),
    ("separators", "a=b:c", "a\\=b\\:c"),
    ("comment marks", "#not!comment", "\\#not\\!comment"),
    ("backslash", "C:\\temp\\new", "C\\:\\\\temp\\\\new"),
    ("leading space", " padded", "\\ padded"),
    ("two leading spaces", "  padded", "\\  padded"),
    ("inner and trailing spaces", "a b ", "a b "),
    ("newlines", "line1\nline2\r\n", "line1\\nline2\\r\\n"),
    ("tab and form feed", "a\tb\fc", "a\\tb\\fc"),
    ("latin-1", "caf\u00e9", "caf\\u00E9"),
    ("euro sign", "\u20ac5", "\\u20AC5"),
    ("outside the BMP", "\U0001f600", "\\uD83D\\uDE00"),
    ("control character", "a\x01b", "a\\u0001b"),
    ("delete character", "a\x7fb", "a\\u007Fb"),
    ("quotes kept", 'it\'s "x"', 'it\'s "x"'),
]
PROPERTIES_KEYS = [
    ("key with spaces", "my key", "my\\ key"),
    ("key with separators", "a:b=c", "a\\:b\\=c"),
    ("key with unicode", "cl\u00e9", "cl\\u00E9"),
]


def _cases(table: list[tuple]) -> list:
    """Turn (id, input, expected output) rows into pytest parameters."""
    return [pytest.param(value, expected, id=case_id) for case_id, value, expected in table]


@pytest.mark.parametrize(("value", "expected"), _cases(PROPERTIES_VALUES))
def test_properties_value_escaping(value: str, expected: str) -> None:
    assert properties(value) == expected


@pytest.mark.parametrize(("key", "expected"), _cases(PROPERTIES_KEYS))
def test_properties_key_escaping(key: str, expected: str) -> None:
    assert properties(key, key=True) == expected


PROPERTIES_READER = """\
import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.TreeSet;

public class PropertiesReader {
    public static void main(String[] args) throws Exception {
        Properties properties = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            properties.load(in);
        }
        for (String name : new TreeSet<>(properties.stringPropertyNames())) {
            StringBuilder hex = new StringBuilder();
            for (byte b : properties.getProperty(name).getBytes(StandardCharsets.UTF_8)) {
                hex.append(String.format("%02x", b));
            }
            StringBuilder keyHex = new StringBuilder();
            for (byte b : name.getBytes(StandardCharsets.UTF_8)) {
                keyHex.append(String.format("%02x", b));
            }
            System.out.println(keyHex + " " + hex);
        }
    }
}
"""


def test_properties_read_back_by_java(tmp_path: Path) -> None:
    values = {f"value{index}": case[1] for index, case in enumerate(PROPERTIES_VALUES)}
    keys = {case[1]: f"key{index}" for index, case in enumerate(PROPERTIES_KEYS)}
    lines = [f"{name}={properties(value)}" for name, value in values.items()]
    lines += [f"{properties(key, key=True)}={value}" for key, value in keys.items()]
    # The file is written as UTF-8, as the agent writes rendered templates.
    (tmp_path / "app.properties").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    (tmp_path / "PropertiesReader.java").write_text(PROPERTIES_READER)

    result = subprocess.run(
        ["java", str(tmp_path / "PropertiesReader.java"), str(tmp_path / "app.properties")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    loaded = {}
    for line in result.stdout.splitlines():
        key_hex, _, value_hex = line.partition(" ")
        loaded[bytes.fromhex(key_hex).decode()] = bytes.fromhex(value_hex).decode()
    for name, value in values.items():
        assert loaded[name] == value, f"Java read {name} differently"
    for key, value in keys.items():
        assert loaded[key] == value, f"Java read the key of {value} differently"


# --- dotenv --------------------------------------------------------------------------------------

DOTENV_VALUES = [
    ("plain", "plain", '"plain"'),
    ("empty", "", '""'),
    ("double quote", 'say "hi"', '"say \\"hi\\""'),
    ("backslash", "a\\b", '"a\\\\b"'),
    ("newline", "line1\nline2", '"line1\\nline2"'),
    ("carriage return", "a\r\nb", '"a\\r\\nb"'),
    ("single quote and hash", "it's #1", '"it\'s #1"'),
    ("dollar kept", "pa$word", '"pa$word"'),
    ("spaces kept", "  a b  ", '"  a b  "'),
    ("unicode kept", "caf\u00e9", '"caf\u00e9"'),
]


@pytest.mark.parametrize(("value", "expected"), _cases(DOTENV_VALUES))
def test_dotenv_quoting(value: str, expected: str) -> None:
    assert dotenv(value) == expected


def test_dotenv_read_back_by_python_dotenv() -> None:
    values = {f"VALUE_{index}": case[1] for index, case in enumerate(DOTENV_VALUES)}
    text = "".join(f"{name}={dotenv(value)}\n" for name, value in values.items())

    loaded = dotenv_values(stream=io.StringIO(text), interpolate=False)

    for name, value in values.items():
        assert loaded[name] == value, f"python-dotenv read {name} differently"


# --- shell ---------------------------------------------------------------------------------------

SHELL_VALUES = [
    ("plain", "plain", "plain"),
    ("empty", "", "''"),
    ("spaces", "a b", "'a b'"),
    ("single quote", "it's", "'it'\"'\"'s'"),
    ("command substitution", "$(id) `id`", "'$(id) `id`'"),
    ("newline", "a\nb", "'a\nb'"),
]


@pytest.mark.parametrize(("value", "expected"), _cases(SHELL_VALUES))
def test_shell_quoting(value: str, expected: str) -> None:
    assert shell(value) == expected


def test_shell_read_back_by_sh(tmp_path: Path) -> None:
    values = {f"VALUE_{index}": case[1] for index, case in enumerate(SHELL_VALUES)}
    script = tmp_path / "secrets.env"
    script.write_text("".join(f"{name}={shell(value)}\n" for name, value in values.items()))
    printer = " ".join(f'"${name}"' for name in values)

    result = subprocess.run(
        ["sh", "-c", f'. "$1"; printf "%s\\0" {printer}', "sh", str(script)],
        capture_output=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    loaded = result.stdout.decode().split("\0")[:-1]
    assert loaded == list(values.values())


# --- base64 --------------------------------------------------------------------------------------

B64_ENCODE_CASES = [
    ("text", "fake-db-password-1", "ZmFrZS1kYi1wYXNzd29yZC0x"),
    ("empty", "", ""),
    ("unicode as UTF-8", "\u00e9", "w6k="),
    ("binary value", BinaryValue(b"\xff\x00\x01", source="secret key 'blob'"), "/wAB"),
]


@pytest.mark.parametrize(
    ("value", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in B64_ENCODE_CASES]
)
def test_b64encode(value, expected: str) -> None:
    assert b64encode(value) == expected


B64_DECODE_CASES = [
    ("padded", "ZmFrZS1kYi1wYXNzd29yZC0x", "fake-db-password-1"),
    ("missing padding", "w6k", "\u00e9"),
    ("line breaks", "ZmFrZS1k\nYi1wYXNz\nd29yZC0x\n", "fake-db-password-1"),
    ("empty", "", ""),
]


@pytest.mark.parametrize(
    ("value", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in B64_DECODE_CASES]
)
def test_b64decode(value: str, expected: str) -> None:
    assert b64decode(value) == expected


def test_b64decode_binary_stays_binary() -> None:
    decoded = b64decode("/wAB")

    assert isinstance(decoded, BinaryValue)
    assert b64encode(decoded) == "/wAB"
    assert "ff" not in repr(decoded)


# --- JSON and YAML -------------------------------------------------------------------------------

TO_JSON_CASES = [
    ("string", 'fake "quoted" <b>', '"fake \\"quoted\\" <b>"'),
    ("unicode kept", "caf\u00e9", '"caf\u00e9"'),
    ("newline", "a\nb", '"a\\nb"'),
    (
        "mapping",
        {"user": "fake-user", "password": "fake-pw"},
        '{"user": "fake-user", "password": "fake-pw"}',
    ),
    ("list", ["a", "b"], '["a", "b"]'),
]


@pytest.mark.parametrize(
    ("value", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in TO_JSON_CASES]
)
def test_to_json(value, expected: str) -> None:
    assert to_json(value) == expected
    assert json.loads(to_json(value)) == value


def test_from_json_invalid() -> None:
    # The filter's own error type is private to the module.
    with pytest.raises(Exception, match="not valid JSON") as caught:
        from_json("fake-not-json-1")

    assert "fake-not-json" not in str(caught.value)


def test_to_json_indent_and_sort() -> None:
    assert (
        to_json({"b": "1", "a": "2"}, indent=2, sort_keys=True) == '{\n  "a": "2",\n  "b": "1"\n}'
    )


TO_YAML_VALUES = [
    ("plain", "fake-password"),
    ("looks like a boolean", "yes"),
    ("looks like a number", "0123"),
    ("colon and hash", "a: b # c"),
    ("quotes", 'it\'s "x"'),
    ("newlines", "line1\nline2\n"),
    ("leading space", " x"),
    ("unicode", "caf\u00e9 \U0001f600"),
    ("empty", ""),
]


@pytest.mark.parametrize("value", [pytest.param(c[1], id=c[0]) for c in TO_YAML_VALUES])
def test_to_yaml_scalar_round_trip(value: str) -> None:
    rendered = to_yaml(value)

    assert "\n" not in rendered
    assert yaml.safe_load(f"key: {rendered}\n") == {"key": value}


def test_to_yaml_mapping_is_a_block() -> None:
    value = {"user": "fake-user", "password": "fake: pw\nline2", "port": "5432"}

    rendered = to_yaml(value)

    assert not rendered.endswith("\n")
    assert rendered.splitlines()[0] == "user: fake-user"
    assert yaml.safe_load(rendered) == value


# --- through a template --------------------------------------------------------------------------


def test_every_filter_is_registered() -> None:
    expected = {"b64encode", "b64decode", "b64enc", "b64dec", "to_json", "from_json", "to_yaml"}
    expected |= {"properties", "dotenv", "shell"}
    assert set(FILTERS) == expected


FILTER_TEMPLATES = [
    ("b64encode", "{{ password | b64encode }}", "ZmFrZS1wdw=="),
    ("b64enc alias", "{{ password | b64enc }}", "ZmFrZS1wdw=="),
    ("b64decode", "{{ encoded | b64decode }}", "fake-pw"),
    ("b64dec alias", "{{ encoded | b64dec }}", "fake-pw"),
    (
        "to_json of data",
        "{{ data | to_json(sort_keys=true) }}",
        '{"config": "{\\"db\\": {\\"user\\": \\"fake-user\\"}}", '
        '"encoded": "ZmFrZS1wdw==", "password": "fake-pw"}',
    ),
    ("from_json", "{{ (config | from_json).db.user }}", "fake-user"),
    ("to_yaml", "password: {{ password | to_yaml }}", 'password: "fake-pw"'),
    ("properties", "db.password={{ password | properties }}", "db.password=fake-pw"),
    ("dotenv", "DB_PASSWORD={{ password | dotenv }}", 'DB_PASSWORD="fake-pw"'),
    ("shell", "export DB_PASSWORD={{ password | shell }}", "export DB_PASSWORD=fake-pw"),
    ("built-in indent", "key:\n  {{ 'a\nb' | indent(2) }}", "key:\n  a\n  b"),
    ("built-in trim", "[{{ '  x  ' | trim }}]", "[x]"),
]


@pytest.mark.parametrize(
    ("source", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in FILTER_TEMPLATES]
)
def test_filter_in_template(tmp_path: Path, source: str, expected: str) -> None:
    declaration = declaration_with_templates(tmp_path, {"out.txt": source})
    data = {
        "password": b"fake-pw",
        "encoded": b"ZmFrZS1wdw==",
        "config": b'{"db": {"user": "fake-user"}}',
    }

    files = render_files(declaration, data)

    assert files == {"out.txt": expected.encode()}
