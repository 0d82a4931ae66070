"""Building the target Secret: what it should contain, and the smallest patch that gets it there.

`plan_write` compares the Secret as it is with the snapshot and returns nothing to do,
a whole Secret to create, or a JSON merge patch conditional on the current resourceVersion. An
unchanged Secret is never written, so its resourceVersion stays the same and Stakater Reloader
(or anyone watching it) sees no event.

Creation policies, with External Secrets Operator's meaning:
- Owner: the controller creates the Secret with an owner reference to the ExternalSecret, so
  Kubernetes deletes it with the ExternalSecret. The data is exactly the snapshot. An existing
  Secret of that name is taken over (its data replaced, the owner reference added) unless another
  object controls it (an owner reference with `controller: true`), which is reported instead.
- Orphan: the same without the owner reference; an existing Secret of that name is taken over.
- Merge: the Secret must exist; only the ExternalSecret's keys are written, other keys are kept.
- None: nothing is written.

Every managed Secret carries the labels `secrets-agent.io/managed: "true"` (the controller watches
only these) and, when the controller created it, `app.kubernetes.io/managed-by: secrets-agent`; the
annotations `secrets-agent.io/data-hash` (SHA-256 of the managed keys and values),
`secrets-agent.io/managed-keys` (which ExternalSecret wrote which keys) and
`reloader.stakater.com/match: "true"`; `secrets-agent.io/leases` when an ExternalSecret uses
dynamic secrets (see `agent.controller.dynamic`); and the labels and annotations of
`spec.target.template.metadata`. The keys of those are listed in the annotation
`secrets-agent.io/template-metadata`, so that a label or annotation removed from the template is
removed from the Secret, while the ones others set stay.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.controller import (
    API_VERSION,
    DATA_HASH_ANNOTATION,
    LEASES_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_KEYS_ANNOTATION,
    MANAGED_LABEL,
    RELOADER_MATCH_ANNOTATION,
    TEMPLATE_METADATA_ANNOTATION,
)
from agent.declarations import ExternalSecretDeclaration

# Kubernetes accepts these names as Secret keys (validation of Secret and ConfigMap keys).
SECRET_KEY_PATTERN = re.compile(r"[-._a-zA-Z0-9]+")
MAX_SECRET_KEY_LENGTH = 253
# The API server rejects a Secret whose data (keys and decoded values) exceeds 1 MiB
# (MaxSecretSize in Kubernetes' core validation).
MAX_SECRET_BYTES = 1024 * 1024
DEFAULT_TYPE = "Opaque"
# The API group of External Secrets Operator's ExternalSecret, whose Secrets a migration takes over.
ESO_GROUP = "external-secrets.io"


class SecretConflictError(Exception):
    """The target Secret cannot be written as declared; the message says why and what to do."""


class SecretTooLargeError(SecretConflictError):
    """The Secret would exceed Kubernetes' size limit; the message names the largest keys."""


def check_secret_key(key: str) -> str | None:
    """Return why `key` is not a valid Kubernetes Secret key, or None when it is."""
    if len(key) > MAX_SECRET_KEY_LENGTH:
        return f"is longer than {MAX_SECRET_KEY_LENGTH} characters"
    if not SECRET_KEY_PATTERN.fullmatch(key):
        return "contains characters other than letters, digits, '-', '_' and '.'"
    if key in (".", ".."):
        return "is . or .."
    return None


def data_hash(data: Mapping[str, bytes]) -> str:
    """SHA-256 over the sorted keys and their values, with lengths so no two sets collide."""
    digest = hashlib.sha256()
    for key in sorted(data):
        value = data[key]
        digest.update(f"{len(key)}:{key}:{len(value)}:".encode())
        digest.update(value)
    return digest.hexdigest()


def decoded_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """Return a Secret's data as bytes; a value that is not base64 counts as empty."""
    result = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            result[key] = base64.b64decode(value or "", validate=True)
        except (ValueError, TypeError):
            result[key] = b""
    return result


def managed_keys(secret: Mapping[str, Any]) -> dict[str, list[str]]:
    """Return the managed-keys annotation: ExternalSecret name -> the secret keys it wrote."""
    text = ((secret.get("metadata") or {}).get("annotations") or {}).get(MANAGED_KEYS_ANNOTATION)
    try:
        parsed = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        str(name): [str(key) for key in keys]
        for name, keys in parsed.items()
        if isinstance(keys, list)
    }


def owns_whole_secret(secret: Mapping[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def drifted(secret: Mapping[str, Any]) -> bool:
    """Tell whether someone else changed the managed data of a Secret since the controller wrote
    it: the data-hash annotation no longer matches, or a whole-owned Secret gained a key."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    expected = annotations.get(DATA_HASH_ANNOTATION)
    if expected is None:
        return True
    data = decoded_data(secret)
    keys = {key for keys in managed_keys(secret).values() for key in keys}
    if owns_whole_secret(secret) and set(data) != keys:
        return True
    return data_hash({key: data.get(key, b"") for key in keys}) != expected


@dataclass(frozen=True)
class Owner:
    """The ExternalSecret a Secret belongs to."""

    name: str
    uid: str


@dataclass(frozen=True)
class SecretWrite:
    """What to send: `create` a whole Secret, `patch` (a JSON merge patch) an existing one, or
    `replace` it: delete the existing Secret and create `body`, because the API server rejects
    changing its `type`, or the data of an immutable Secret, in place."""

    action: str  # "create", "patch" or "replace"
    body: dict[str, Any]


def plan_write(
    declaration: ExternalSecretDeclaration,
    *,
    owner: Owner,
    data: Mapping[str, bytes],
    existing: Mapping[str, Any] | None,
    leases: list[dict[str, Any]] | None = None,
) -> SecretWrite | None:
    """Return the write that makes the target Secret match `data`, or None when it already does.

    `leases` are the owner's lease records for the leases annotation; an empty list removes
    the owner's entry. Raises SecretConflictError when the policy forbids the write (a foreign
    Secret controlled by another object under Owner, a missing Secret under Merge, a type or
    immutable data that only deleting the Secret could change under Merge).
    """
    policy = declaration.spec.target.creation_policy
    if policy == "None":
        return _release_owner_reference(owner, existing)
    if existing is None:
        if policy == "Merge":
            raise SecretConflictError(
                f"Secret {declaration.target} does not exist, and creationPolicy Merge only "
                "writes into an existing Secret; create it, or use creationPolicy Owner"
            )
        body = _new_secret(declaration, owner=owner, data=data)
        if leases:
            body["metadata"]["annotations"][LEASES_ANNOTATION] = lease_annotation(
                None, owner=owner.name, records=leases
            )
        _check_size(declaration, body)
        return SecretWrite("create", body)
    if policy == "Owner":
        _check_ownership(declaration, owner, existing)
    desired = _desired(declaration, owner=owner, data=data, existing=existing)
    if leases is not None:
        _set_annotation(
            desired["metadata"]["annotations"],
            LEASES_ANNOTATION,
            lease_annotation(existing, owner=owner.name, records=leases),
        )
    _check_size(declaration, desired)
    if _needs_replacement(existing, desired):
        if policy == "Merge":
            raise SecretConflictError(_replacement_problem(declaration, existing, desired))
        return SecretWrite("replace", _replacement(declaration, existing, desired))
    patch = _merge_patch(existing, desired)
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
    return SecretWrite("patch", patch)


def lease_annotation(
    existing: Mapping[str, Any] | None, *, owner: str, records: list[dict[str, Any]]
) -> str | None:
    """Return the leases annotation with `owner`'s records replaced; None when it is empty."""
    text = (((existing or {}).get("metadata") or {}).get("annotations") or {}).get(
        LEASES_ANNOTATION
    )
    try:
        saved = json.loads(text) if text else {}
    except json.JSONDecodeError:
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    if records:
        saved[owner] = records
    else:
        saved.pop(owner, None)
    return json.dumps(saved, sort_keys=True) if saved else None


def plan_lease_records(
    *, owner: Owner, records: list[dict[str, Any]], existing: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Return the patch that updates only `owner`'s lease records on a Secret, or None."""
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    wanted = lease_annotation(existing, owner=owner.name, records=records)
    if annotations.get(LEASES_ANNOTATION) == wanted:
        return None
    return {
        "metadata": {
            "resourceVersion": existing["metadata"]["resourceVersion"],
            "annotations": {LEASES_ANNOTATION: wanted},
        }
    }


def plan_removal(
    declaration: ExternalSecretDeclaration | None,
    *,
    owner: Owner,
    existing: Mapping[str, Any],
    keep_data: bool = False,
) -> dict[str, Any] | None:
    """Return the patch that takes an ExternalSecret out of a Secret it wrote, or None.

    The patch removes the ExternalSecret's entry from the managed-keys, leases and
    template-metadata annotations, its template labels and annotations, and its owner reference.
    Its secret keys are removed too, unless `keep_data` (an Orphan Secret keeps its data) or
    another ExternalSecret also lists them. When no other ExternalSecret is left, the managed
    labels and annotations go as well, so the controller stops watching the Secret.
    """
    written = managed_keys(existing)
    keys = written.pop(owner.name, None)
    if keys is None:
        return None
    data = decoded_data(existing)
    remaining = {key for names in written.values() for key in names}
    patch: dict[str, Any] = {
        "metadata": {
            "resourceVersion": existing["metadata"]["resourceVersion"],
            "annotations": {
                MANAGED_KEYS_ANNOTATION: json.dumps(written, sort_keys=True) if written else None,
                DATA_HASH_ANNOTATION: data_hash({k: data.get(k, b"") for k in remaining})
                if written
                else None,
                LEASES_ANNOTATION: lease_annotation(existing, owner=owner.name, records=[]),
            },
        },
    }
    if not keep_data:
        patch["data"] = {key: None for key in keys if key not in remaining}
    stale_labels, stale_annotations, record = _template_record(
        existing, owner=owner.name, declaration=None
    )
    patch["metadata"]["labels"] = dict.fromkeys(stale_labels)
    patch["metadata"]["annotations"].update(dict.fromkeys(stale_annotations))
    patch["metadata"]["annotations"][TEMPLATE_METADATA_ANNOTATION] = record
    if not written:
        patch["metadata"]["labels"][MANAGED_LABEL] = None
        patch["metadata"]["labels"][MANAGED_BY_LABEL] = None
        patch["metadata"]["annotations"][RELOADER_MATCH_ANNOTATION] = None
    if _owned_by(existing, owner):
        patch["metadata"]["ownerReferences"] = _foreign_references(existing, owner)
    return patch


def merge_conflicts(
    declaration: ExternalSecretDeclaration,
    *,
    owner: Owner,
    data: Mapping[str, bytes],
    existing: Mapping[str, Any] | None,
) -> dict[str, str]:
    """Return the secret keys of `data` that another ExternalSecret already merged into the
    target Secret, each with that ExternalSecret's name (creationPolicy Merge only).

    The managed-keys annotation decides: the ExternalSecret that wrote a key first keeps it.
    """
    if existing is None or declaration.spec.target.creation_policy != "Merge":
        return {}
    conflicts: dict[str, str] = {}
    for name, keys in sorted(managed_keys(existing).items()):
        if name == owner.name:
            continue
        for key in keys:
            if key in data:
                conflicts.setdefault(key, name)
    return conflicts


def owned_by(secret: Mapping[str, Any], owner: Owner) -> bool:
    """Tell whether the Secret has an owner reference to this ExternalSecret."""
    return _owned_by(secret, owner)


# --- building the desired Secret -----------------------------------------------------------------


def _new_secret(
    declaration: ExternalSecretDeclaration, *, owner: Owner, data: Mapping[str, bytes]
) -> dict[str, Any]:
    template = declaration.spec.target.template
    metadata: dict[str, Any] = {
        "name": declaration.target,
        "namespace": declaration.namespace,
        "labels": {**_template_labels(declaration), **_our_labels(whole=True)},
        "annotations": {
            **_template_annotations(declaration),
            **_our_annotations({owner.name: sorted(data)}, data),
        },
    }
    _set_annotation(
        metadata["annotations"],
        TEMPLATE_METADATA_ANNOTATION,
        _template_record(None, owner=owner.name, declaration=declaration)[2],
    )
    if declaration.spec.target.creation_policy == "Owner":
        metadata["ownerReferences"] = [_owner_reference(owner)]
    if template is not None and template.metadata.finalizers:
        metadata["finalizers"] = list(template.metadata.finalizers)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": (template.type if template is not None else None) or DEFAULT_TYPE,
        "data": _encoded(data),
    }
    if declaration.spec.target.immutable:
        body["immutable"] = True
    return body


def _desired(
    declaration: ExternalSecretDeclaration,
    *,
    owner: Owner,
    data: Mapping[str, bytes],
    existing: Mapping[str, Any],
) -> dict[str, Any]:
    """Return the Secret as it should be, starting from `existing` so foreign fields stay."""
    policy = declaration.spec.target.creation_policy
    current = decoded_data(existing)
    written = managed_keys(existing)
    if policy == "Merge":
        previous = set(written.get(owner.name, []))
        others = {key for name, keys in written.items() if name != owner.name for key in keys}
        new_data = {k: v for k, v in current.items() if k not in previous or k in others}
        new_data.update(data)
        written[owner.name] = sorted(data)
        managed = {key for keys in written.values() for key in keys}
        hashed = {key: new_data.get(key, b"") for key in managed}
    else:
        new_data = dict(data)
        written = {owner.name: sorted(data)}
        hashed = dict(data)
    metadata = existing.get("metadata") or {}
    stale_labels, stale_annotations, record = _template_record(
        existing, owner=owner.name, declaration=declaration
    )
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in stale_labels}
    labels.update(_template_labels(declaration))
    labels.update(_our_labels(whole=policy != "Merge"))
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in stale_annotations
    }
    annotations.update(_template_annotations(declaration))
    annotations.update(_our_annotations(written, hashed))
    _set_annotation(annotations, TEMPLATE_METADATA_ANNOTATION, record)
    desired_metadata: dict[str, Any] = {"labels": labels, "annotations": annotations}
    if policy == "Owner":
        foreign = [
            reference
            for reference in metadata.get("ownerReferences") or []
            if reference.get("uid") != owner.uid
        ]
        desired_metadata["ownerReferences"] = [*foreign, _owner_reference(owner)]
    elif _owned_by(existing, owner):
        # Orphan, Merge and None must outlive the ExternalSecret, so an owner reference left
        # from an earlier creationPolicy Owner goes; Kubernetes would otherwise delete the
        # Secret with the ExternalSecret.
        desired_metadata["ownerReferences"] = _foreign_references(existing, owner)
    template = declaration.spec.target.template
    if template is not None and template.metadata.finalizers:
        finalizers = list(metadata.get("finalizers") or [])
        finalizers += [f for f in template.metadata.finalizers if f not in finalizers]
        desired_metadata["finalizers"] = finalizers
    desired: dict[str, Any] = {"metadata": desired_metadata, "data": _encoded(new_data)}
    if template is not None and template.type:
        desired["type"] = template.type
    if declaration.spec.target.immutable or existing.get("immutable"):
        # Merge leaves an immutable Secret immutable; the others follow the declaration.
        desired["immutable"] = declaration.spec.target.immutable or policy == "Merge"
    return desired


def _owned_by(secret: Mapping[str, Any] | None, owner: Owner) -> bool:
    references = ((secret or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") == owner.uid for reference in references)


def _foreign_references(secret: Mapping[str, Any], owner: Owner) -> list[dict[str, Any]]:
    references = (secret.get("metadata") or {}).get("ownerReferences") or []
    return [reference for reference in references if reference.get("uid") != owner.uid]


def _release_owner_reference(
    owner: Owner, existing: Mapping[str, Any] | None
) -> SecretWrite | None:
    """Under creationPolicy None, remove an owner reference left from creationPolicy Owner, so
    that deleting the ExternalSecret does not delete the Secret."""
    if not _owned_by(existing, owner):
        return None
    assert existing is not None
    metadata = {
        "resourceVersion": existing["metadata"]["resourceVersion"],
        "ownerReferences": _foreign_references(existing, owner),
    }
    return SecretWrite("patch", {"metadata": metadata})


def _check_size(declaration: ExternalSecretDeclaration, desired: Mapping[str, Any]) -> None:
    """Raise SecretTooLargeError when the Secret would exceed Kubernetes' size limit.

    The API server rejects a Secret whose data (keys plus decoded values) is above 1 MiB. This
    counts the data that way and adds the annotations, so it is an estimate that errs on the
    large side, because the API server checks annotations against a separate limit.
    """
    sizes = {
        key: len(key) + _decoded_length(value) for key, value in (desired.get("data") or {}).items()
    }
    annotations = (desired.get("metadata") or {}).get("annotations") or {}
    metadata_size = sum(len(key) + len(value or "") for key, value in annotations.items())
    total = sum(sizes.values()) + metadata_size
    if total <= MAX_SECRET_BYTES:
        return
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:3]
    shown = ", ".join(f"{key!r} ({_kib(size)})" for key, size in largest)
    raise SecretTooLargeError(
        f"Secret {declaration.target} would hold about {_kib(total)} (an estimate: data plus "
        f"annotations), above Kubernetes' limit of {_kib(MAX_SECRET_BYTES)} for a Secret; the "
        f"largest secret keys are {shown}. Split the ExternalSecret into several with their own "
        "spec.target.name, or leave the large values out"
    )


def _decoded_length(encoded: str) -> int:
    return len(encoded) * 3 // 4 - (len(encoded) - len(encoded.rstrip("=")))


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB"


def _merge_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Return the merge patch from `existing` to `desired` for the fields `desired` names."""
    patch: dict[str, Any] = {}
    metadata = existing.get("metadata") or {}
    metadata_patch: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        changes = _map_changes(metadata.get(field) or {}, desired["metadata"][field])
        if changes:
            metadata_patch[field] = changes
    for field in ("ownerReferences", "finalizers"):
        wanted = desired["metadata"].get(field)
        if wanted is not None and wanted != (metadata.get(field) or []):
            metadata_patch[field] = wanted
    if metadata_patch:
        patch["metadata"] = metadata_patch
    data_changes = _map_changes(existing.get("data") or {}, desired["data"])
    if data_changes:
        patch["data"] = data_changes
    if "type" in desired and desired["type"] != existing.get("type", DEFAULT_TYPE):
        patch["type"] = desired["type"]
    if desired.get("immutable") and not existing.get("immutable"):
        patch["immutable"] = True
    return patch


def _map_changes(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """Merge-patch entries that turn `current` into `wanted` (None removes a key)."""
    changes: dict[str, Any] = {k: v for k, v in wanted.items() if current.get(k) != v}
    changes.update({k: None for k in current if k not in wanted})
    return changes


def _check_ownership(
    declaration: ExternalSecretDeclaration, owner: Owner, existing: Mapping[str, Any]
) -> None:
    metadata = existing.get("metadata") or {}
    controllers = [
        reference
        for reference in metadata.get("ownerReferences") or []
        if reference.get("controller")
    ]
    # As External Secrets Operator does: a Secret without a controller reference is taken over,
    # one controlled by another object is not.
    others = [reference for reference in controllers if reference.get("uid") != owner.uid]
    if others:
        raise SecretConflictError(_ownership_problem(declaration, others[0]))


def _ownership_problem(declaration: ExternalSecretDeclaration, reference: Mapping[str, Any]) -> str:
    """Describe a Secret that another object controls, naming that object with its apiVersion,
    because an ExternalSecret of External Secrets Operator often has the same kind and name."""
    kind = reference.get("kind") or "object"
    name = reference.get("name") or "(unnamed)"
    api_version = reference.get("apiVersion") or "unknown apiVersion"
    problem = (
        f"Secret {declaration.target} is controlled by {kind} {name} ({api_version}), so "
        "creationPolicy Owner does not take it over"
    )
    group = str(api_version).partition("/")[0]
    if group == ESO_GROUP and kind == "ExternalSecret":
        # The migration guide's order: the secrets-agent ExternalSecret is applied first. Deleting
        # ESO's then lets the garbage collector delete the Secret, and a retry here creates it.
        namespace = f" -n {declaration.namespace}" if declaration.namespace else ""
        return (
            f"{problem}. It belongs to External Secrets Operator, so to migrate it, delete that "
            f"ExternalSecret (kubectl delete externalsecrets.{ESO_GROUP} {name}{namespace}), "
            "which also deletes its Secret, and this controller then creates the Secret again. "
            "To keep both during the migration, rename spec.target.name instead"
        )
    return f"{problem}; rename spec.target.name, or delete the Secret"


def _needs_replacement(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Tell whether `desired` changes what the API server rejects changing in place: the type,
    and the data or the `immutable` flag of an immutable Secret."""
    if "type" in desired and desired["type"] != existing.get("type", DEFAULT_TYPE):
        return True
    if not existing.get("immutable"):
        return False
    return (existing.get("data") or {}) != desired["data"] or not desired.get("immutable")


def _replacement_problem(
    declaration: ExternalSecretDeclaration,
    existing: Mapping[str, Any],
    desired: Mapping[str, Any],
) -> str:
    if "type" in desired and desired["type"] != existing.get("type", DEFAULT_TYPE):
        return (
            f"Secret {declaration.target} has type {existing.get('type', DEFAULT_TYPE)}, not "
            f"{desired['type']}, and a Secret's type cannot change; creationPolicy Merge never "
            "deletes the Secret, so delete it or change spec.target.template.type"
        )
    return (
        f"Secret {declaration.target} is immutable and its data or spec.target.immutable is out "
        "of date; creationPolicy Merge never deletes the Secret, so delete it to have it written"
    )


def _replacement(
    declaration: ExternalSecretDeclaration,
    existing: Mapping[str, Any],
    desired: Mapping[str, Any],
) -> dict[str, Any]:
    """Return the Secret that replaces `existing`: the desired one with the existing metadata
    that others set (labels, annotations, owner references, finalizers)."""
    metadata = {
        key: value
        for key, value in desired["metadata"].items()
        if key in ("labels", "annotations", "ownerReferences", "finalizers")
    }
    for key in ("ownerReferences", "finalizers"):
        current = (existing.get("metadata") or {}).get(key)
        if key not in metadata and current:
            metadata[key] = list(current)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": declaration.target,
            "namespace": declaration.namespace,
            **metadata,
        },
        "type": desired.get("type", existing.get("type", DEFAULT_TYPE)),
        "data": desired["data"],
    }
    if declaration.spec.target.immutable:
        body["immutable"] = True
    return body


def template_metadata(secret: Mapping[str, Any] | None) -> dict[str, dict[str, list[str]]]:
    """Return the template-metadata annotation: ExternalSecret name -> the label and annotation
    keys its template set on the Secret."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    try:
        parsed = json.loads(annotations.get(TEMPLATE_METADATA_ANNOTATION) or "{}")
    except json.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    result = {}
    for name, entry in parsed.items():
        if isinstance(entry, dict):
            result[str(name)] = {
                field: [str(key) for key in entry.get(field) or [] if isinstance(key, str)]
                for field in ("labels", "annotations")
            }
    return result


def _template_record(
    existing: Mapping[str, Any] | None,
    *,
    owner: str,
    declaration: ExternalSecretDeclaration | None,
) -> tuple[set[str], set[str], str | None]:
    """Compare what `owner`'s template set before with what it sets now (None: nothing).

    Returns the label keys and annotation keys to remove, because the template no longer sets
    them and no other ExternalSecret's template does, and the new template-metadata annotation
    (None when it would be empty).
    """
    recorded = template_metadata(existing)
    previous = recorded.pop(owner, {})
    labels = _template_labels(declaration) if declaration is not None else {}
    annotations = _template_annotations(declaration) if declaration is not None else {}
    others = {
        field: {key for entry in recorded.values() for key in entry.get(field, [])}
        for field in ("labels", "annotations")
    }
    stale_labels = set(previous.get("labels", [])) - set(labels) - others["labels"]
    stale_annotations = (
        set(previous.get("annotations", [])) - set(annotations) - others["annotations"]
    )
    if labels or annotations:
        recorded[owner] = {"labels": sorted(labels), "annotations": sorted(annotations)}
    record = json.dumps(recorded, sort_keys=True) if recorded else None
    return stale_labels, stale_annotations, record


def _set_annotation(annotations: dict[str, Any], key: str, value: str | None) -> None:
    if value is None:
        annotations.pop(key, None)
    else:
        annotations[key] = value


def _template_labels(declaration: ExternalSecretDeclaration) -> dict[str, str]:
    template = declaration.spec.target.template
    return dict(template.metadata.labels) if template is not None else {}


def _template_annotations(declaration: ExternalSecretDeclaration) -> dict[str, str]:
    template = declaration.spec.target.template
    return dict(template.metadata.annotations) if template is not None else {}


def _our_labels(*, whole: bool) -> dict[str, str]:
    labels = {MANAGED_LABEL: "true"}
    if whole:
        labels[MANAGED_BY_LABEL] = MANAGED_BY
    return labels


def _our_annotations(
    written: Mapping[str, list[str]], hashed: Mapping[str, bytes]
) -> dict[str, str]:
    return {
        DATA_HASH_ANNOTATION: data_hash(hashed),
        MANAGED_KEYS_ANNOTATION: json.dumps(dict(written), sort_keys=True),
        RELOADER_MATCH_ANNOTATION: "true",
    }


def _owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ExternalSecret",
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _encoded(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}
