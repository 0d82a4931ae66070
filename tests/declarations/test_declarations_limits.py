"""Bounds on declaration files: a size limit checked before parsing, a node limit checked before
composing YAML, and messages for files that are not YAML text."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from declaration_manifests import EXTERNAL_SECRET, base_documents, dump, load_errors, write

from agent.declarations import (
    MAX_FILE_BYTES,
    MAX_YAML_NODES_PER_DOCUMENT,
    load_declarations,
)


def many_external_secrets(count: int) -> str:
    documents = base_documents()
    template = documents.pop(EXTERNAL_SECRET - 1)
    for index in range(count):
        document = copy.deepcopy(template)
        document["metadata"]["name"] = f"payment-{index}"
        document["spec"]["target"]["name"] = f"payment-secrets-{index}"
        documents.append(document)
    return dump(documents)


def test_file_over_size_limit(tmp_path: Path) -> None:
    # Valid YAML, so only the size can be the problem.
    text = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    path = write(tmp_path, "huge.yaml", text)

    [error] = load_errors(path)

    assert error.source == str(path)
    assert error.problem.startswith(f"file is {len(text)} bytes, more than the {MAX_FILE_BYTES}")
    assert "split the declarations into several files" in error.fix


def test_file_at_size_limit_loads(tmp_path: Path) -> None:
    text = many_external_secrets(3)
    text += "#" * (MAX_FILE_BYTES - len(text.encode()) - 1) + "\n"
    path = write(tmp_path, "full.yaml", text)

    declarations = load_declarations([path])

    assert len(declarations.external_secrets) == 3


def test_realistic_large_file_loads(tmp_path: Path) -> None:
    text = many_external_secrets(300)
    assert len(text.encode()) < MAX_FILE_BYTES
    path = write(tmp_path, "many.yaml", text)

    declarations = load_declarations([path])

    assert len(declarations.external_secrets) == 300


def test_long_list_rejected_before_composing(tmp_path: Path) -> None:
    # As a tester wrote it, scaled to stay under the size limit: 250,000 list items.
    path = write(tmp_path, "list.yaml", "a: [" + ",".join(["1"] * 250_000) + "]\n")

    [error] = load_errors(path)

    assert error.source == str(path)
    expected = f"document 1 has more than {MAX_YAML_NODES_PER_DOCUMENT} YAML nodes"
    assert error.problem.startswith(expected)
    assert "alias" not in error.problem + error.fix
    assert "split it into more documents" in error.fix


def test_node_limit_counts_per_document(tmp_path: Path) -> None:
    half = ",".join(["1"] * (MAX_YAML_NODES_PER_DOCUMENT // 2))
    over = ",".join(["1"] * MAX_YAML_NODES_PER_DOCUMENT)
    text = f"a: [{half}]\n---\na: [{half}]\n---\na: [{over}]\n"
    path = write(tmp_path, "documents.yaml", text)

    [error] = load_errors(path)

    assert error.problem.startswith("document 3 has more than")


def test_json_over_node_limit_names_no_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "list.json", json.dumps({"a": [1] * 120_000}))

    [error] = load_errors(path)

    assert "more than 100000 values" in error.problem
    assert "alias" not in error.fix


@pytest.mark.parametrize(
    ("content", "offset", "character"),
    [
        (b"kind: Ext\x00\x01ernal\n", 9, "U+0000"),
        ("m\u00e9tadata: \x07\n".encode(), 11, "U+0007"),
    ],
    ids=["ascii", "after two-byte character"],
)
def test_binary_file_names_byte_offset(
    tmp_path: Path, content: bytes, offset: int, character: str
) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(content)

    [error] = load_errors(path)

    assert error.source == str(path)
    assert error.problem == (
        f"not YAML text: control character {character} at byte offset {offset}, which YAML does "
        "not allow"
    )
    assert "not a binary file" in error.fix
    assert "ReaderError" not in str(error)


def test_deep_nesting_rejected_before_composing(tmp_path: Path) -> None:
    # Block mappings, 200 levels deep: `a:` inside `a:` inside `a:` ...
    text = "".join("  " * level + "a:\n" for level in range(200)) + "  " * 200 + "b: 1\n"
    path = write(tmp_path, "deep.yaml", text)

    [error] = load_errors(path)

    assert error.problem == "document 1 is nested more than 64 levels deep"
