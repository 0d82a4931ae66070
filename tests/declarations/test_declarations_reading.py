"""Reading declaration files: paths, directories, ConfigMap mounts, documents, syntax errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from declaration_manifests import base_documents, dump, error_at, load_errors, write

import agent.declarations
from agent.declarations import declaration_files, load_declarations
from agent.errors import DeclarationErrors


def mount_config_map(directory: Path, files: dict[str, str], *, generation: str) -> None:
    """Lay out `files` as the kubelet mounts a ConfigMap, or switch it to a new generation.

    The files live in `..<generation>/`, `..data` links to that directory, and each visible
    name links to `..data/<name>`.
    """
    generation_dir = directory / f"..{generation}"
    generation_dir.mkdir(parents=True)
    for name, text in files.items():
        (generation_dir / name).write_text(text, encoding="utf-8")
    (directory / "..data_tmp").symlink_to(generation_dir.name)
    os.rename(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


# --- paths and directories -----------------------------------------------------------------------


def test_config_map_layout_loads(tmp_path: Path) -> None:
    store, vault, external_secret = base_documents()
    files = {"stores.yaml": dump([store, vault]), "payment.yml": dump([external_secret])}
    mount_config_map(tmp_path, files, generation="2024_05_01_10_00_00.123456789")

    declarations = load_declarations([tmp_path])

    assert len(declarations.stores) == 2
    assert len(declarations.external_secrets) == 1
    assert declarations.external_secrets[0].origin.source == str(tmp_path / "payment.yml")
    assert declaration_files([tmp_path]) == [tmp_path / "payment.yml", tmp_path / "stores.yaml"]


def test_directory_skips_other_entries(tmp_path: Path) -> None:
    write(tmp_path, "declarations.yaml", dump(base_documents()))
    write(tmp_path, "README.md", "not a declaration")
    write(tmp_path, "..hidden.yaml", "not: [valid")
    write(tmp_path, "subdirectory/other.yaml", "not: [valid")
    (tmp_path / "removed.yaml").symlink_to("..data/removed.yaml")  # dangling, being removed

    declarations = load_declarations([tmp_path])

    assert len(declarations.external_secrets) == 1
    assert declaration_files([tmp_path]) == [tmp_path / "declarations.yaml"]


def test_directory_read_from_one_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ConfigMap update between two file reads makes the loader read the directory again."""
    store, vault, external_secret = base_documents()
    old = {"a-stores.yaml": dump([store]), "b-payment.yaml": dump([external_secret])}
    moved = {**external_secret, "spec": {**external_secret["spec"]}}
    moved["spec"]["secretStoreRef"] = {"name": "vault", "kind": "ClusterSecretStore"}
    new = {"a-stores.yaml": dump([vault]), "b-payment.yaml": dump([moved])}
    mount_config_map(tmp_path, old, generation="1")
    read_text = agent.declarations._read_text
    reads: list[Path] = []

    def read_and_update(path: Path) -> str:
        text = read_text(path)
        reads.append(path)
        if len(reads) == 1:  # the kubelet switches generations after the first file was read
            mount_config_map(tmp_path, new, generation="2")
        return text

    monkeypatch.setattr(agent.declarations, "_read_text", read_and_update)

    declarations = load_declarations([tmp_path])

    assert list(declarations.stores) == [("ClusterSecretStore", "vault")]
    assert declarations.external_secrets[0].store_ref == ("ClusterSecretStore", "vault")
    assert len(reads) == 4


def test_same_file_named_twice_loads_once(tmp_path: Path) -> None:
    path = write(tmp_path, "declarations.yaml", dump(base_documents()))

    declarations = load_declarations([tmp_path, path, str(path)])

    assert len(declarations.external_secrets) == 1


def test_files_in_several_paths(tmp_path: Path) -> None:
    store, vault, external_secret = base_documents()
    stores = write(tmp_path / "platform", "stores.yaml", dump([store, vault]))
    app = write(tmp_path / "app", "payment.json", json.dumps(external_secret))

    declarations = load_declarations([stores, app.parent])

    assert declarations.external_secrets[0].origin.source == str(app)


@pytest.mark.parametrize(
    ("name", "problem", "fix"),
    [
        ("missing.yaml", "file or directory not found", "check the --config path"),
        ("missing-directory/declarations.yaml", "not found", "check the --config path"),
        ("file.yaml/declarations.yaml", "cannot read file", "check the --config path"),
    ],
    ids=["missing file", "missing directory", "path through a file"],
)
def test_unreadable_path_named(tmp_path: Path, name: str, problem: str, fix: str) -> None:
    write(tmp_path, "file.yaml", dump(base_documents()))
    path = tmp_path / name

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].source == str(path)
    assert problem in errors[0].problem
    assert fix in errors[0].fix
    assert errors[0].document is None


def test_no_paths_given() -> None:
    errors = load_errors()

    assert len(errors) == 1
    assert errors[0].problem == "no declaration files given"
    assert "--config" in errors[0].fix


@pytest.mark.parametrize("content", [None, "README.md"], ids=["empty", "no declaration files"])
def test_directory_without_declarations(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        write(tmp_path, content, "text")

    errors = load_errors(tmp_path)

    assert len(errors) == 1
    assert errors[0].source == str(tmp_path)
    assert "no *.yaml, *.yml or *.json files" in errors[0].problem


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(dump(base_documents()).replace("payment", "paymënt").encode("latin-1"))

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].source == str(path)
    assert "not UTF-8" in errors[0].problem
    assert "UTF-8" in errors[0].fix


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(base_documents()[0]).encode())

    declarations = load_declarations([path])

    assert list(declarations.stores) == [("SecretStore", "aws-ssm")]


def test_errors_of_all_files_reported_together(tmp_path: Path) -> None:
    store, vault, external_secret = base_documents()
    del store["spec"]["provider"]["aws"]["service"]
    external_secret["spec"]["refreshInterval"] = "1 h"
    write(tmp_path, "a.yaml", dump([store]))
    write(tmp_path, "b.yaml", "kind: [")
    write(tmp_path, "c.yaml", dump([vault, external_secret]))

    errors = load_errors(tmp_path)

    assert [(Path(e.source).name, e.document, e.field) for e in errors] == [
        ("a.yaml", 1, "spec.provider.aws.service"),
        ("b.yaml", None, ""),
        ("c.yaml", 2, "spec.refreshInterval"),
    ]


# --- documents -----------------------------------------------------------------------------------


def test_documents_numbered_by_position(tmp_path: Path) -> None:
    store, vault, external_secret = base_documents()
    text = "# stores first\n---\n" + dump([store]) + "---\n---\n" + dump([vault, external_secret])
    path = write(tmp_path, "declarations.yaml", text)

    declarations = load_declarations([path])

    assert declarations.stores[("SecretStore", "aws-ssm")].origin.document == 1
    assert declarations.stores[("ClusterSecretStore", "vault")].origin.document == 3
    assert declarations.external_secrets[0].origin.document == 4


def test_empty_file_declares_nothing(tmp_path: Path) -> None:
    write(tmp_path, "empty.yaml", "# nothing here yet\n")
    write(tmp_path, "declarations.yaml", dump(base_documents()))

    declarations = load_declarations([tmp_path])

    assert len(declarations.external_secrets) == 1


@pytest.mark.parametrize(
    "document",
    ["just a string", "[apiVersion, kind]", "42"],
    ids=["string", "list", "number"],
)
def test_document_not_a_mapping(tmp_path: Path, document: str) -> None:
    path = write(tmp_path, "declarations.yaml", dump(base_documents()) + "---\n" + document + "\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].source == str(path)
    assert errors[0].document == 4
    assert "expected a mapping with apiVersion, kind" in errors[0].problem
    assert "indentation" in errors[0].fix


# --- syntax errors -------------------------------------------------------------------------------

YAML_ERRORS = [
    (
        "unclosed flow sequence",
        "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {name: [a\n",
        "line 4, column 1",
    ),
    ("tab indentation", "spec:\n\tprovider: {}\n", "line 2, column 1"),
    ("mapping in a scalar", "kind: SecretStore\nmetadata: name: x\n", "line 2, column 15"),
    ("unknown tag", "kind: !vault SecretStore\n", "line 1, column 7"),
    (
        "duplicate key",
        "kind: SecretStore\nmetadata:\n  name: a\n  name: b\n",
        "line 4, column 3: duplicate key 'name'",
    ),
]


@pytest.mark.parametrize(
    ("text", "where"),
    [(text, where) for _, text, where in YAML_ERRORS],
    ids=[case for case, _, _ in YAML_ERRORS],
)
def test_yaml_syntax_error_position(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, "broken.yaml", text)

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].source == str(path)
    assert errors[0].problem.startswith("invalid YAML at ")
    assert where in errors[0].problem
    assert "fix the syntax" in errors[0].fix


def test_yaml_syntax_error_in_later_document(tmp_path: Path) -> None:
    text = dump(base_documents()) + "---\nkind: [\n"
    path = write(tmp_path, "broken.yaml", text)
    line_count = text.count("\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert f"line {line_count + 1}, column 1" in errors[0].problem
    assert "nothing in this file was loaded" in errors[0].fix


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"kind": "SecretStore",\n  "metadata": }', "invalid JSON at line 2, column 15"),
        ('{"kind": "SecretStore", "kind": "ExternalSecret"}', "duplicate key 'kind'"),
        ('{"kind": "SecretStore"}\n{"kind": "SecretStore"}', "invalid JSON at line 2, column 1"),
    ],
    ids=["syntax", "duplicate key", "two documents"],
)
def test_json_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, "declarations.json", text)

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].source == str(path)
    assert problem in errors[0].problem
    assert "fix the syntax" in errors[0].fix


def test_alias_expansion_limited(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):  # 10**8 values once expanded
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    lines.append("kind: ExternalSecret")
    path = write(tmp_path, "laughs.yaml", "\n".join(lines) + "\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert errors[0].document == 1
    assert "more than 100000 values" in errors[0].problem
    assert "YAML aliases" in errors[0].fix


def test_alias_cycle_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "cycle.yaml", "kind: ExternalSecret\nspec: &spec\n  data: [*spec]\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert "nested more than 64 levels" in errors[0].problem


def test_deeply_nested_document(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.yaml", "spec: " + "[" * 200 + "]" * 200 + "\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert "nested" in errors[0].problem


def test_error_rendering_names_everything(tmp_path: Path) -> None:
    documents = base_documents()
    documents[2]["spec"]["data"][0]["remoteRef"]["key"] = ""
    path = write(tmp_path, "declarations.yaml", dump(documents))

    with pytest.raises(DeclarationErrors) as caught:
        load_declarations([path])

    error = error_at(caught.value.errors, "spec.data[0].remoteRef.key")
    assert str(error) == (
        f"{path}, document 3, ExternalSecret payment: spec.data[0].remoteRef.key: "
        "must not be empty; give it a value"
    )
    assert str(caught.value).startswith("1 invalid declaration(s):")


YAML_SAMPLES = {
    "scalars": "a: yes\nb: off\nc: ~\nd: 0o17\ne: 0x1f\nf: 1_000\ng: 1.5e3\nh: .inf\ni: '1'\n",
    "timestamps": "date: 2024-05-01\ntime: 2024-05-01T10:00:00Z\n",
    "explicit tags": "a: !!str 123\nb: !!int '7'\nc: !!binary aGVsbG8=\nd: !!float 1\n",
    "block strings": "a: |\n  line one\n  line two\nb: >-\n  folded\n  text\n",
    "anchors": "base: &b {x: 1, y: [1, 2]}\nuse: *b\nlist: &l [a, b]\nagain: *l\n",
    "merge keys": "base: &b {x: 1, y: 2}\nd: {<<: *b, y: 3}\ne:\n  <<: [*b, {z: 4}]\n",
    "collection tags": "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\n",
    "non-string keys": "1: one\ntrue: yes\n~: null key\n",
    "several documents": "---\na: 1\n---\n---\n- x\n- y\n",
    "unicode": 'name: zahlungsdienst-ü\nemoji: "\\u263A"\n',
}


@pytest.mark.parametrize("text", YAML_SAMPLES.values(), ids=YAML_SAMPLES.keys())
def test_yaml_values_match_pyyaml(text: str) -> None:
    assert agent.declarations._yaml_documents(text) == list(yaml.load_all(text, yaml.SafeLoader))


def test_yaml_anchor_shared_not_copied() -> None:
    [document] = agent.declarations._yaml_documents("a: &x {k: v}\nb: *x\n")

    assert document["a"] is document["b"]


def test_yaml_mapping_as_key_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "key.yaml", "? {a: 1}\n: value\n")

    errors = load_errors(path)

    assert len(errors) == 1
    assert "line 1, column 3: found a mapping or list as a key" in errors[0].problem
