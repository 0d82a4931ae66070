"""References resolved to mounted files, never outside the refs directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.models import SecretKeySelector, ServiceAccountSelector
from agent.refs import MissingReferenceError, Refs


@pytest.fixture
def refs(tmp_path: Path) -> Refs:
    mounted = tmp_path / "refs" / "vault-token"
    generation = mounted / "..2026_01_01_00_00_00.1"
    generation.mkdir(parents=True)
    (generation / "token").write_text("fake-token-value\n")
    os.symlink(generation.name, mounted / "..data")
    os.symlink("..data/token", mounted / "token")
    (tmp_path / "outside").write_text("fake-outside-value")
    return Refs(tmp_path / "refs", pod_token=tmp_path / "pod-token")


def selector(name: str, key: str) -> SecretKeySelector:
    return SecretKeySelector.model_construct(name=name, key=key, namespace=None)


def test_reads_kubelet_layout(refs: Refs):
    value = refs.read_secret(selector("vault-token", "token"), store="s", field="f")
    assert value == b"fake-token-value\n"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("..", "outside"),
        ("vault-token", "../../outside"),
        ("vault-token", "/etc/hostname"),
        (".", "x"),
        ("vault-token", ""),
        ("a/b", "token"),
    ],
)
def test_escaping_reference_rejected(refs: Refs, name: str, key: str):
    with pytest.raises(MissingReferenceError) as caught:
        refs.read_secret(selector(name, key), store="vault", field="spec.auth.tokenSecretRef")
    assert "spec.auth.tokenSecretRef" in str(caught.value)
    assert "fake-outside-value" not in str(caught.value)


def test_link_out_of_mount_rejected(refs: Refs, tmp_path: Path):
    os.symlink(tmp_path / "outside", tmp_path / "refs" / "vault-token" / "sneaky")
    with pytest.raises(MissingReferenceError) as caught:
        refs.read_secret(selector("vault-token", "sneaky"), store="s", field="f")
    assert "resolves outside" in str(caught.value)


def test_fifo_does_not_block(refs: Refs, tmp_path: Path):
    os.mkfifo(tmp_path / "refs" / "vault-token" / "pipe")
    with pytest.raises(MissingReferenceError) as caught:
        refs.read_secret(selector("vault-token", "pipe"), store="s", field="f")
    assert "not a regular file" in str(caught.value)


def test_service_account_name_checked(refs: Refs):
    bad = ServiceAccountSelector.model_construct(name="../..", namespace=None, audiences=[])
    with pytest.raises(MissingReferenceError):
        refs.read_token(bad, store="s", field="serviceAccountRef")


def test_missing_file_names_fix(refs: Refs):
    with pytest.raises(MissingReferenceError) as caught:
        refs.read_secret(selector("approle", "secret-id"), store="s", field="f")
    assert "mount Secret approle" in str(caught.value)
