"""Loading declarations: SecretStore, ClusterSecretStore and ExternalSecret documents from files.

`load_declarations` reads files and directories (a directory is read like a mounted ConfigMap:
every `*.yaml`, `*.yml` and `*.json` file in it, skipping `..`-prefixed entries), parses
multi-document YAML, checks every document against `agent.models` and the documents against each
other (unknown store, duplicate target, unsafe secret key). It reports every problem at once as
`DeclarationErrors`, each naming the file, the document, the field path and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.errors import DeclarationError, DeclarationErrors
from agent.models import (
    API_VERSIONS,
    FILE_GID_ANNOTATION,
    FILE_MODE_ANNOTATION,
    FILE_UID_ANNOTATION,
    STORE_KINDS,
    ExternalSecretSpec,
    ObjectMeta,
    StoreSpec,
)
from agent.writer import FileOwnership, check_secret_key

DECLARATION_SUFFIXES = (".yaml", ".yml", ".json")
_TOP_LEVEL_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}

try:  # libyaml's loader is several times faster; PyYAML without it still works.
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _YamlLoader = yaml.SafeLoader


@dataclass(frozen=True)
class Origin:
    """Where a document came from, for error messages."""

    source: str
    document: int


@dataclass(frozen=True)
class StoreDeclaration:
    kind: str
    name: str
    spec: StoreSpec
    origin: Origin

    @property
    def ref(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def display_name(self) -> str:
        """The name used in messages, logs and metric labels."""
        return self.name if self.kind == "SecretStore" else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class ExternalSecretDeclaration:
    name: str
    namespace: str | None
    spec: ExternalSecretSpec
    metadata: ObjectMeta
    origin: Origin
    file_mode: int | None = None
    file_uid: int | None = None
    file_gid: int | None = None

    def ownership(self, default: FileOwnership) -> FileOwnership:
        """The file mode and owner for this target: the annotations over the agent-wide ones."""
        return FileOwnership(
            mode=default.mode if self.file_mode is None else self.file_mode,
            uid=default.uid if self.file_uid is None else self.file_uid,
            gid=default.gid if self.file_gid is None else self.file_gid,
        )

    @property
    def target(self) -> str:
        """The target name: a directory under the output directory."""
        return self.spec.target.name or self.name

    @property
    def store_ref(self) -> tuple[str, str]:
        return (self.spec.secret_store_ref.kind, self.spec.secret_store_ref.name)


@dataclass
class Declarations:
    """Every valid declaration, stores keyed by (kind, name), ExternalSecrets in file order."""

    stores: dict[tuple[str, str], StoreDeclaration] = field(default_factory=dict)
    external_secrets: list[ExternalSecretDeclaration] = field(default_factory=list)


def load_declarations(paths: Sequence[Path | str], *, allow_nested: bool = False) -> Declarations:
    """Load and check every declaration under `paths`; raise DeclarationErrors listing all problems.

    `allow_nested` admits secret keys with `/` (nested files), as the writer setting does.
    """
    errors: list[DeclarationError] = []
    documents = list(_read_documents(paths, errors))
    result = Declarations()
    for origin, document in documents:
        _add_document(result, origin, document, errors)
    _check_references(result, errors, allow_nested=allow_nested)
    if errors:
        raise DeclarationErrors(errors)
    return result


def declaration_files(paths: Sequence[Path | str]) -> list[Path]:
    """List the files a set of --config paths stands for, in a stable order."""
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name.startswith(".."):
                    continue  # the atomic writer's own entries in a mounted ConfigMap
                if child.suffix in DECLARATION_SUFFIXES and child.is_file():
                    files.append(child)
        else:
            files.append(path)
    return files


def _read_documents(
    paths: Sequence[Path | str], errors: list[DeclarationError]
) -> Iterable[tuple[Origin, Any]]:
    if not paths:
        errors.append(
            DeclarationError(
                "no declaration files given",
                fix="pass --config FILE_OR_DIR or set SECRETS_AGENT_CONFIG",
            )
        )
        return
    for path in declaration_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            errors.append(
                DeclarationError("file not found", source=str(path), fix="check the --config path")
            )
            continue
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            errors.append(DeclarationError(f"cannot read file: {reason}", source=str(path)))
            continue
        try:
            loaded = list(yaml.load_all(text, Loader=_YamlLoader))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or "invalid syntax"
            errors.append(
                DeclarationError(
                    f"invalid YAML{line}: {problem}",
                    source=str(path),
                    fix="fix the syntax; the file was not loaded",
                )
            )
            continue
        for index, document in enumerate(loaded, start=1):
            if document is None:
                continue  # an empty document between two `---` separators
            yield Origin(str(path), index), document


def _add_document(
    result: Declarations, origin: Origin, document: Any, errors: list[DeclarationError]
) -> None:
    def fail(
        problem: str, *, kind: str = "", name: str = "", field: str = "", fix: str = ""
    ) -> None:
        errors.append(
            DeclarationError(
                problem,
                source=origin.source,
                document=origin.document,
                kind=kind,
                name=name,
                field=field,
                fix=fix,
            )
        )

    if not isinstance(document, dict):
        fail(
            "expected a mapping with apiVersion, kind, metadata and spec",
            fix="check the document's indentation",
        )
        return
    kind = document.get("kind")
    metadata = document.get("metadata")
    name = metadata.get("name", "") if isinstance(metadata, dict) else ""
    name = name if isinstance(name, str) else ""
    kind_text = kind if isinstance(kind, str) else ""

    api_version = document.get("apiVersion")
    if api_version not in API_VERSIONS:
        fail(
            f"unsupported apiVersion {api_version!r}",
            kind=kind_text,
            name=name,
            field="apiVersion",
            fix=f"use one of {', '.join(sorted(API_VERSIONS))}",
        )
        return
    if kind not in (*STORE_KINDS, "ExternalSecret"):
        fail(
            f"unsupported kind {kind!r}",
            kind=kind_text,
            name=name,
            field="kind",
            fix="use SecretStore, ClusterSecretStore or ExternalSecret",
        )
        return
    for unknown in sorted(set(document) - _TOP_LEVEL_FIELDS):
        fail("field not supported", kind=kind, name=name, field=unknown, fix="remove it")

    try:
        meta = ObjectMeta.model_validate(metadata)
    except ValidationError as error:
        for problem, field_path in _describe(error, prefix="metadata"):
            fail(problem, kind=kind, name=name, field=field_path)
        return
    spec_model = StoreSpec if kind in STORE_KINDS else ExternalSecretSpec
    try:
        spec = spec_model.model_validate(document.get("spec"))
    except ValidationError as error:
        for problem, field_path in _describe(error, prefix="spec"):
            fail(problem, kind=kind, name=meta.name, field=field_path, fix=_fix_for(problem))
        return

    if isinstance(spec, StoreSpec):
        store = StoreDeclaration(kind=kind, name=meta.name, spec=spec, origin=origin)
        if store.ref in result.stores:
            first = result.stores[store.ref].origin
            fail(
                f"duplicate {kind} {meta.name!r}, first declared in {first.source} "
                f"document {first.document}",
                kind=kind,
                name=meta.name,
                field="metadata.name",
                fix="give each store a unique name",
            )
            return
        result.stores[store.ref] = store
        return

    try:
        overrides = _ownership_overrides(meta)
    except ValueError as error:
        fail(str(error), kind=kind, name=meta.name, field="metadata.annotations")
        return
    result.external_secrets.append(
        ExternalSecretDeclaration(
            name=meta.name,
            namespace=meta.namespace,
            spec=spec,
            metadata=meta,
            origin=origin,
            **overrides,
        )
    )


def _ownership_overrides(meta: ObjectMeta) -> dict[str, int]:
    """Read the per-target file mode, uid and gid annotations that are present."""
    overrides: dict[str, int] = {}
    for field_name, key, base in (
        ("file_mode", FILE_MODE_ANNOTATION, 8),
        ("file_uid", FILE_UID_ANNOTATION, 10),
        ("file_gid", FILE_GID_ANNOTATION, 10),
    ):
        if key not in meta.annotations:
            continue
        text = meta.annotations[key]
        example = '"0440"' if base == 8 else '"1000"'
        try:
            value = int(text, base)
        except ValueError:
            raise ValueError(f"{key}: invalid value {text!r}; use e.g. {example}") from None
        limit = 0o777 if base == 8 else 2**32 - 2
        if not 0 <= value <= limit:
            raise ValueError(f"{key}: value {text!r} is out of range; use e.g. {example}")
        overrides[field_name] = value
    return overrides


def _check_references(
    result: Declarations, errors: list[DeclarationError], *, allow_nested: bool
) -> None:
    targets: dict[str, ExternalSecretDeclaration] = {}
    for declaration in result.external_secrets:

        def fail(
            problem: str,
            *,
            field: str,
            fix: str = "",
            declaration: ExternalSecretDeclaration = declaration,
        ) -> None:
            errors.append(
                DeclarationError(
                    problem,
                    source=declaration.origin.source,
                    document=declaration.origin.document,
                    kind="ExternalSecret",
                    name=declaration.name,
                    field=field,
                    fix=fix,
                )
            )

        kind, store_name = declaration.store_ref
        if declaration.store_ref not in result.stores:
            known = ", ".join(sorted(f"{k} {n}" for k, n in result.stores)) or "none"
            fail(
                f"unknown {kind} {store_name!r}",
                field="spec.secretStoreRef.name",
                fix=f"declare it or fix the reference (declared stores: {known})",
            )

        target_reason = check_secret_key(declaration.target)
        if target_reason is not None:
            fail(
                f"target name {declaration.target!r} is not a safe directory name: {target_reason}",
                field="spec.target.name",
                fix="use a plain name such as payment-secrets",
            )
        elif declaration.target in targets:
            first = targets[declaration.target]
            fail(
                f"duplicate target {declaration.target!r}, also written by ExternalSecret "
                f"{first.name} ({first.origin.source} document {first.origin.document})",
                field="spec.target.name",
                fix="give each ExternalSecret its own target name",
            )
        else:
            targets[declaration.target] = declaration

        seen: dict[str, int] = {}
        for index, item in enumerate(declaration.spec.data):
            reason = check_secret_key(item.secret_key, allow_nested=allow_nested)
            if reason is not None:
                fail(
                    f"secret key {item.secret_key!r} is not a safe file name: {reason}",
                    field=f"spec.data[{index}].secretKey",
                    fix="use letters, digits, '-', '_' and '.' only",
                )
            elif item.secret_key in seen:
                fail(
                    f"secret key {item.secret_key!r} is declared twice "
                    f"(also spec.data[{seen[item.secret_key]}])",
                    field=f"spec.data[{index}].secretKey",
                    fix="remove one of them",
                )
            else:
                seen[item.secret_key] = index


def _describe(error: ValidationError, *, prefix: str) -> Iterable[tuple[str, str]]:
    """Turn pydantic's errors into (problem, field path) pairs in the manifest's own words."""
    for item in error.errors(include_url=False, include_input=False):
        field_path = prefix
        for part in item["loc"]:
            if isinstance(part, int):
                field_path += f"[{part}]"
            elif part not in ("function-after", "function-before"):
                field_path += f".{part}"
        yield _problem_text(item), field_path


def _problem_text(item: Any) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        return "field not supported by secrets-agent"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        return f"invalid value; expected {expected}"
    if kind in ("model_type", "dict_type"):
        return "expected a mapping"
    if kind == "list_type":
        return "expected a list"
    if kind in ("string_type", "string_too_short"):
        return "expected a non-empty string"
    if kind == "value_error":
        return str(item.get("ctx", {}).get("error", item["msg"]))
    return item["msg"]


def _fix_for(problem: str) -> str:
    if problem == "field not supported by secrets-agent":
        return "remove it; the README lists the supported fields"
    if problem == "required field is missing":
        return "add it"
    return ""
