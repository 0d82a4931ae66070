"""`provider.aws.role` and `provider.aws.region` are checked when the declarations load.

Without these checks `secrets-agent check` passed a role name or a misspelt region, and the
mistake showed only when the agent reached AWS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from declaration_manifests import (
    DECLARATIONS_FILE,
    SSM_STORE,
    base_documents,
    dump,
    error_at,
    load_errors,
    with_field,
    write,
)

from agent.declarations import load_declarations

AWS = "spec.provider.aws"


def load_with_aws_field(tmp_path: Path, name: str, value: str) -> Path:
    documents = base_documents()
    with_field(documents[SSM_STORE - 1], f"{AWS}.{name}", value)
    return write(tmp_path, DECLARATIONS_FILE, dump(documents))


@pytest.mark.parametrize(
    "role",
    [
        "arn:aws:iam::123456789012:role/payment-reader",
        "arn:aws:iam::123456789012:role/team/payments/reader",
        "arn:aws-cn:iam::123456789012:role/payment",
        "arn:aws-us-gov:iam::123456789012:role/payment",
        "arn:aws-iso-b:iam::123456789012:role/payment",
    ],
)
def test_role_arn_accepted(tmp_path: Path, role: str) -> None:
    declarations = load_declarations([load_with_aws_field(tmp_path, "role", role)])

    store = declarations.stores[("SecretStore", "aws-ssm")]
    assert store.spec.provider.aws.role == role


@pytest.mark.parametrize(
    "role",
    [
        "payment-role",
        "arn:aws:iam::123456789012:user/payment",
        "arn:aws:iam::12345:role/payment",
        "arn:aws:sts::123456789012:assumed-role/payment/session",
        "arn:aws:iam::123456789012:role/",
        "",
    ],
)
def test_role_not_an_arn_rejected(tmp_path: Path, role: str) -> None:
    errors = load_errors(load_with_aws_field(tmp_path, "role", role))

    error = error_at(errors, f"{AWS}.role")
    assert error.problem == "not an IAM role ARN"
    assert "arn:<partition>:iam::<12-digit account>:role/<name>" in error.fix
    assert "arn:aws:iam::123456789012:role/payment-reader" in error.fix
    assert len(errors) == 1


def test_role_value_not_repeated(tmp_path: Path) -> None:
    errors = load_errors(load_with_aws_field(tmp_path, "role", "fake-role-name-xyz"))

    assert "fake-role-name-xyz" not in str(errors[0])


@pytest.mark.parametrize(
    "region",
    [
        "eu-west-1",
        "us-east-1",
        "us-gov-west-1",
        "cn-north-1",
        "ap-southeast-4",
        "il-central-1",
        "us-isob-east-1",
    ],
)
def test_region_accepted(tmp_path: Path, region: str) -> None:
    declarations = load_declarations([load_with_aws_field(tmp_path, "region", region)])

    store = declarations.stores[("SecretStore", "aws-ssm")]
    assert store.spec.provider.aws.region == region


@pytest.mark.parametrize(
    "region",
    ["eu-west1", "euwest-1", "EU-WEST-1", "eu_west_1", "eu-west-", "eu-west-1a", "", "ireland"],
)
def test_region_typo_rejected(tmp_path: Path, region: str) -> None:
    errors = load_errors(load_with_aws_field(tmp_path, "region", region))

    error = error_at(errors, f"{AWS}.region")
    assert error.problem == "not an AWS region name"
    assert "eu-west-1" in error.fix
    assert len(errors) == 1
