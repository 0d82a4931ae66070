"""`check` reports every independent error of a document at once, sorted as the files read.

Errors found by different stages (field validation, secret key and target name rules,
references between documents) come together, ordered by file, document and the position of
the field in the manifest.
"""

from __future__ import annotations

from pathlib import Path

from declaration_manifests import (
    DECLARATIONS_FILE,
    EXTERNAL_SECRET,
    base_documents,
    dump,
    load_errors,
    with_field,
    write,
)

BAD_SECRET_KEYS = ["..a", "..b", "a/b", ".", "..", "x" * 256, "tab\tkey", " padded"]


def test_all_bad_secret_keys_reported_with_field_errors(tmp_path: Path) -> None:
    documents = base_documents()
    external_secret = documents[EXTERNAL_SECRET - 1]
    with_field(external_secret, "spec.refreshInterval", "1 h")
    with_field(external_secret, "spec.target.name", "..payment")
    with_field(
        external_secret,
        "spec.data",
        [
            {"secretKey": key, "remoteRef": {"key": f"/k{i}"}}
            for i, key in enumerate(BAD_SECRET_KEYS)
        ],
    )
    file = write(tmp_path, DECLARATIONS_FILE, dump(documents))

    errors = load_errors(file)

    fields = [error.field for error in errors]
    expected_keys = [f"spec.data[{index}].secretKey" for index in range(len(BAD_SECRET_KEYS))]
    assert fields == ["spec.refreshInterval", "spec.target.name", *expected_keys]


def test_empty_data_reported_with_other_errors(tmp_path: Path) -> None:
    documents = base_documents()
    external_secret = documents[EXTERNAL_SECRET - 1]
    with_field(external_secret, "spec.data", [])
    with_field(external_secret, "spec.refreshInterval", "1ms")
    file = write(tmp_path, DECLARATIONS_FILE, dump(documents))

    errors = load_errors(file)

    problems = {error.field: error.problem for error in errors}
    assert set(problems) == {"spec", "spec.refreshInterval"}
    assert problems["spec"] == "nothing to fetch"
    assert "shorter than 1s" in problems["spec.refreshInterval"]


def test_annotation_and_secret_key_reported_together(tmp_path: Path) -> None:
    documents = base_documents()
    external_secret = documents[EXTERNAL_SECRET - 1]
    with_field(external_secret, 'metadata.annotations["secrets-agent.io/file-mode"]', "rw")
    with_field(external_secret, "spec.data[1].secretKey", "..db-user")
    file = write(tmp_path, DECLARATIONS_FILE, dump(documents))

    errors = load_errors(file)

    fields = [error.field for error in errors]
    assert fields == [
        'metadata.annotations["secrets-agent.io/file-mode"]',
        "spec.data[1].secretKey",
    ]


def test_errors_sorted_by_file_document_and_field(tmp_path: Path) -> None:
    first = base_documents()
    # Document 3: a reference error (found after every document is read), and a secret key
    # error that is reported although a later field (dataFrom) fails validation.
    with_field(first[EXTERNAL_SECRET - 1], "spec.secretStoreRef.name", "missing-store")
    with_field(first[EXTERNAL_SECRET - 1], "spec.data[0].secretKey", "..db-password")
    first[EXTERNAL_SECRET - 1]["spec"]["dataFrom"] = [{"find": {"name": {"regexp": "("}}}]
    # Document 1: a field error.
    with_field(first[0], "spec.provider.aws.service", "CertificateManager")
    second = base_documents()
    for document in second:
        document["metadata"]["name"] += "-second"
    with_field(second[EXTERNAL_SECRET - 1], "spec.secretStoreRef.name", "aws-ssm-second")
    with_field(second[EXTERNAL_SECRET - 1], "spec.target.name", "second-secrets")
    with_field(second[EXTERNAL_SECRET - 1], "spec.data[1].secretKey", "..db-user")
    directory = tmp_path / "config"
    write(directory, "b.yaml", dump(second))
    write(directory, "a.yaml", dump(first))

    errors = load_errors(directory)

    order = [(Path(error.source).name, error.document, error.field) for error in errors]
    assert order == [
        ("a.yaml", 1, "spec.provider.aws.service"),
        ("a.yaml", 3, "spec.secretStoreRef.name"),
        ("a.yaml", 3, "spec.data[0].secretKey"),
        ("a.yaml", 3, "spec.dataFrom[0].find.name.regexp"),
        ("b.yaml", 3, "spec.data[1].secretKey"),
    ]
