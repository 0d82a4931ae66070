"""Loading declarations: SecretStore, ClusterSecretStore, ExternalSecret and NotifyTarget documents.

`load_declarations` reads files and directories, parses multi-document YAML and JSON, checks every
document against `agent.models` and the documents against each other (unknown store, duplicate
target, duplicate or unsafe secret key). It reports every problem at once as `DeclarationErrors`.
Each error names the file, the document, the kind and name, the field path in the manifest's
camelCase (`spec.data[0].remoteRef.key`) and the fix. `load_manifest` checks one object read from
the Kubernetes API as the controller reads it, and `load_controller_manifests` applies the same
checks to files, for `secrets-agent check --controller`.

Messages quote kinds, object names, secret keys and field names, but never a field's value, so a
credential pasted into a manifest cannot reach a log through an error.

A directory is read like a mounted ConfigMap: every `*.yaml`, `*.yml` and `*.json` entry, in name
order, skipping `..`-prefixed entries. The kubelet's visible names are links into `..data`, and
they are followed. When `..data` switches to a new generation during the read, the directory is
read again, so documents from two versions of a ConfigMap are not mixed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from agent.errors import DeclarationError, DeclarationErrors
from agent.generators import GeneratorDeclaration, VaultDynamicSecretSpec
from agent.models import (
    API_VERSIONS,
    DEFAULT_ONLY_FIELDS,
    FILE_GID_ANNOTATION,
    FILE_MODE_ANNOTATION,
    FILE_UID_ANNOTATION,
    GENERATOR_API_VERSIONS,
    GENERATOR_KINDS,
    NOTIFY_TARGET_API_VERSION,
    NOTIFY_TARGET_KIND,
    POD_ONLY_PROBLEMS,
    STORE_KINDS,
    UNSUPPORTED_FIELDS,
    ClusterStoreSpec,
    ExternalSecretSpec,
    NotifyTargetSpec,
    ObjectMeta,
    StoreSpec,
)
from agent.writer import FileOwnership, check_secret_key

DECLARATION_SUFFIXES = (".yaml", ".yml", ".json")
KINDS = (*STORE_KINDS, "ExternalSecret", NOTIFY_TARGET_KIND, *GENERATOR_KINDS)
# `status` is accepted and ignored so that the output of `kubectl get -o yaml` loads.
_TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# A declaration is a few levels deep and has dozens of values, so these limits are far above any
# real one. They stop YAML aliases that expand a small file exponentially, and alias cycles.
_MAX_DEPTH = 64
_MAX_NODES_PER_DOCUMENT = 100_000
# Limits checked before a file is composed into Python objects, so that a huge or generated file
# is rejected before it costs memory. Composing costs about 350 bytes per YAML node: a list of
# 520,000 numbers took a running agent from 78 to 260 MiB RSS. An ExternalSecret document is
# under 1 KiB with tens of nodes, so 512 KiB (half of what a ConfigMap holds) fits several
# hundred of them in one file, and 20,000 nodes fit a `data` list of thousands of secret keys.
MAX_FILE_BYTES = 512 * 1024
MAX_YAML_NODES_PER_DOCUMENT = 20_000
# How often a directory is read again when its `..data` link switched during the read.
_GENERATION_ATTEMPTS = 3
_MAX_SHOWN_LENGTH = 80
_MAX_ID = 2**32 - 2  # as the writer accepts: (uid_t)-1 means "unchanged" to chown(2)
_PLAIN_FIELD_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Kubernetes kinds are CamelCase words. Anything else in `kind` is not quoted in a message.
_KIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
_LIST_INDEX = re.compile(r"\[\d+\]")
# A notify target's name is a metric label and a log field, so it follows Kubernetes' rule for
# object names (a DNS subdomain), which every applied manifest meets anyway.
_NOTIFY_TARGET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Annotations in secrets-agent's own domain; only these are read, on an ExternalSecret.
_OWN_ANNOTATION_DOMAIN = "secrets-agent.io"
_OWN_ANNOTATIONS = (FILE_MODE_ANNOTATION, FILE_UID_ANNOTATION, FILE_GID_ANNOTATION)
# One part of a field path: `[0]`, `["quoted/key"]` or a field name.
_FIELD_PATH_PART = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.?([^.\[]+)')

try:  # libyaml's parser is several times faster; PyYAML without it still works.
    _BaseLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader
_YAML_STR = "tag:yaml.org,2002:str"
_YAML_SEQ = "tag:yaml.org,2002:seq"
_YAML_MAP = "tag:yaml.org,2002:map"


@dataclass(frozen=True)
class Origin:
    """The file and 1-based document index a declaration was read from, for error messages."""

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
        """Return the file mode and owner for this target: the annotations over `default`."""
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
    def store_ref(self) -> tuple[str, str] | None:
        """The store as (kind, name); None when only generators fill the target."""
        ref = self.spec.secret_store_ref
        return None if ref is None else (ref.kind, ref.name)


@dataclass(frozen=True)
class NotifyTargetDeclaration:
    """A NotifyTarget document: whom to tell, and how, after a target's content changed."""

    name: str
    spec: NotifyTargetSpec
    origin: Origin


@dataclass
class Declarations:
    """Every valid declaration, stores keyed by (kind, name), the others in file order."""

    stores: dict[tuple[str, str], StoreDeclaration] = field(default_factory=dict)
    external_secrets: list[ExternalSecretDeclaration] = field(default_factory=list)
    notify_targets: list[NotifyTargetDeclaration] = field(default_factory=list)
    # Generators (agent.generators) keyed by (kind, name).
    generators: dict[tuple[str, str], GeneratorDeclaration] = field(default_factory=dict)


def load_declarations(paths: Sequence[Path | str], *, allow_nested: bool = False) -> Declarations:
    """Load and check every declaration under `paths`; raise DeclarationErrors listing all problems.

    `allow_nested` admits secret keys with `/` (nested files), as the writer setting does.
    Nothing is returned unless every document is valid.
    """
    checker = _Checker(allow_nested=allow_nested)
    for origin, document in _read_documents(paths, checker.errors):
        checker.add_document(origin, document)
    checker.check_references()
    if checker.errors:
        raise DeclarationErrors(checker.sorted_errors())
    return checker.result


def load_manifest(
    document: Mapping[str, Any], *, source: str
) -> StoreDeclaration | ExternalSecretDeclaration | GeneratorDeclaration:
    """Check one SecretStore, ClusterSecretStore, ExternalSecret or VaultDynamicSecret read from
    the Kubernetes API.

    The controller calls this, so an object means what the same document means in a file. The
    checks of one document apply (fields, target name, `spec.data` secret keys), and a
    ClusterSecretStore may carry `spec.conditions`. Raises DeclarationErrors.
    """
    found, errors = _check_manifest(document, Origin(source, 1), check_templates=False)
    if errors:
        raise DeclarationErrors(errors)
    assert found is not None
    return found


ControllerObject = StoreDeclaration | ExternalSecretDeclaration | GeneratorDeclaration


def load_controller_manifests(paths: Sequence[Path | str]) -> list[ControllerObject]:
    """Load declaration files as the controller reads the objects applied from them.

    Each document gets the checks of `load_manifest`, so a ClusterSecretStore may carry
    `spec.conditions` and a secret key may not contain `/`. The templates are checked too, and
    the apiVersion must be the one the controller watches. References between documents are not
    checked, because the store an ExternalSecret names is often applied from another repository.
    Raises DeclarationErrors listing every problem, or saying that `paths` hold no such object.
    """
    # agent.controller holds only constants, so this imports neither kopf nor a backend.
    from agent.controller import API_VERSION

    errors: list[DeclarationError] = []
    found: list[ControllerObject] = []
    for origin, document in _read_documents(paths, errors):
        problem = _controller_header_problem(origin, document, api_version=API_VERSION)
        if problem is not None:
            errors.append(problem)
            if problem.field == "kind":
                # The controller has no CRD for this kind, so its fields are not checked.
                continue
        declaration, problems = _check_manifest(document, origin, check_templates=True)
        errors.extend(problems)
        if declaration is not None:
            found.append(declaration)
    if not found and not errors:
        problem = "no SecretStore, ClusterSecretStore, ExternalSecret or VaultDynamicSecret found"
        fix = "check the --config paths"
        errors.append(DeclarationError(problem, source=", ".join(str(p) for p in paths), fix=fix))
    if errors:
        raise DeclarationErrors(errors)
    return found


def _controller_header_problem(
    origin: Origin, document: Any, *, api_version: str
) -> DeclarationError | None:
    """Report a kind or apiVersion that the loader accepts but the controller never reads."""
    if not isinstance(document, dict):
        return None  # `_check_manifest` reports it
    kind = document.get("kind")
    subject = _Subject(
        origin,
        kind=kind if isinstance(kind, str) and _KIND_NAME.fullmatch(kind) else "",
        name=_name_text(_metadata_name(document)),
    )
    if kind == NOTIFY_TARGET_KIND:
        problem = "NotifyTarget is read only by the agent in a pod, not by the controller"
        fix = "move it to the declarations of the pod's agent"
        return subject.error(problem, field="kind", fix=fix)
    found = document.get("apiVersion")
    known = API_VERSIONS | GENERATOR_API_VERSIONS
    if kind in KINDS and found in known and found != api_version:
        # External Secrets Operator keeps reconciling an object of its own group.
        problem = f"the controller reads only {api_version} objects, not {found}"
        return subject.error(problem, field="apiVersion", fix=f"use {api_version}")
    return None


def _check_manifest(
    document: Any, origin: Origin, *, check_templates: bool
) -> tuple[ControllerObject | None, list[DeclarationError]]:
    """Check one document as the controller reads it; return the declaration or the problems."""
    checker = _Checker(allow_nested=False, kubernetes=True)
    checker.store_specs["ClusterSecretStore"] = ClusterStoreSpec
    try:
        copied = _Pruner().copy(document, depth=0)
    except _SyntaxProblem as problem:
        return None, [DeclarationError(str(problem), source=origin.source)]
    checker.add_document(origin, copied)
    for declaration in checker.result.external_secrets:
        subject = _Subject(origin, kind="ExternalSecret", name=declaration.name)
        checker._check_target(subject, declaration, {})
        checker._check_secret_keys(subject, _secret_keys(declaration))
        if check_templates:
            checker._check_template(subject, declaration)
    found = [
        *checker.result.stores.values(),
        *checker.result.external_secrets,
        *checker.result.generators.values(),
    ]
    if not checker.errors and len(found) != 1:
        problem = "not a SecretStore, ClusterSecretStore, ExternalSecret or VaultDynamicSecret"
        checker.errors.append(DeclarationError(problem, source=origin.source, field="kind"))
    if checker.errors:
        return None, checker.sorted_errors()
    return found[0], []


def declaration_files(paths: Sequence[Path | str]) -> list[Path]:
    """List the files that a set of --config paths names, in a stable order.

    A directory contributes its `*.yaml`, `*.yml` and `*.json` entries sorted by name. It skips
    `..`-prefixed entries (the kubelet's `..data` and generation directories) and dangling links,
    which the kubelet leaves for a moment when a key is removed from a ConfigMap. A directory that
    cannot be listed contributes nothing; `load_declarations` reports it. Any other path is listed
    as it is, even when it does not exist, so that reading it reports the problem.
    """
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if not path.is_dir():
            files.append(path)
            continue
        try:
            files.extend(_directory_files(path))
        except OSError:
            continue
    return files


# --- reading files -------------------------------------------------------------------------------


def _directory_files(directory: Path) -> list[Path]:
    """List the declaration files of one directory; raise OSError when it cannot be listed."""
    files = []
    for child in sorted(directory.iterdir()):
        if child.name.startswith(".."):
            continue
        if child.suffix in DECLARATION_SUFFIXES and child.is_file():
            files.append(child)
    return files


def _read_documents(
    paths: Sequence[Path | str], errors: list[DeclarationError]
) -> Iterator[tuple[Origin, Any]]:
    """Yield every non-empty document under `paths` with its origin; append reading problems."""
    if not paths:
        errors.append(
            DeclarationError(
                "no declaration files given",
                fix="pass --config FILE_OR_DIR or set SECRETS_AGENT_CONFIG",
            )
        )
        return
    seen: set[Path] = set()
    for entry in paths:
        for path, text in _read_path(Path(entry), errors):
            resolved = path.resolve()
            if resolved in seen:
                continue  # the same file named twice, e.g. a directory and a file in it
            seen.add(resolved)
            yield from _parse_documents(path, text, errors)


def _read_path(path: Path, errors: list[DeclarationError]) -> list[tuple[Path, str]]:
    if path.is_dir():
        return _read_directory(path, errors)
    try:
        return [(path, _read_text(path))]
    except DeclarationError as error:
        errors.append(error)
        return []


def _read_directory(directory: Path, errors: list[DeclarationError]) -> list[tuple[Path, str]]:
    """Read every declaration file of a directory, all from one `..data` generation if it has one.

    If `..data` keeps switching, the result of the last attempt is used.
    """
    for _attempt in range(_GENERATION_ATTEMPTS):
        generation = _generation(directory)
        try:
            files = _directory_files(directory)
        except OSError as error:
            problem = f"cannot list directory: {error.strerror or error}"
            errors.append(DeclarationError(problem, source=str(directory), fix=_access_fix(error)))
            return []
        texts: list[tuple[Path, str]] = []
        problems: list[DeclarationError] = []
        for path in files:
            try:
                texts.append((path, _read_text(path)))
            except DeclarationError as error:
                problems.append(error)
        if _generation(directory) == generation:
            break
    if not files:
        problem = "directory contains no *.yaml, *.yml or *.json files"
        problems.append(DeclarationError(problem, source=str(directory), fix="check --config"))
    errors.extend(problems)
    return texts


def _generation(directory: Path) -> str | None:
    """Return where the kubelet's `..data` link points, or None when there is no such link."""
    try:
        return os.readlink(directory / "..data")
    except OSError:
        return None


def _read_text(path: Path) -> str:
    """Read a declaration file as UTF-8, dropping a byte order mark.

    Raises DeclarationError when the file cannot be read, is not UTF-8, or is larger than
    MAX_FILE_BYTES (it is then not read further)."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            content = stream.read(MAX_FILE_BYTES + 1)
            if len(content) > MAX_FILE_BYTES:
                size = os.fstat(stream.fileno()).st_size
                raise DeclarationError(
                    f"file is {size} bytes, more than the {MAX_FILE_BYTES} bytes (512 KiB) a "
                    "declaration file may have",
                    source=source,
                    fix="split the declarations into several files, or remove this file from "
                    "--config if it is not a declaration file",
                )
        return content.decode("utf-8-sig")
    except FileNotFoundError:
        raise DeclarationError(
            "file or directory not found", source=source, fix="check the --config path"
        ) from None
    except UnicodeDecodeError as error:
        raise DeclarationError(
            f"not UTF-8 text (invalid byte at offset {error.start})",
            source=source,
            fix="save the file as UTF-8",
        ) from None
    except OSError as error:
        raise DeclarationError(
            f"cannot read file: {error.strerror or error}", source=source, fix=_access_fix(error)
        ) from None


def _access_fix(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "make it readable by the agent's user"
    return "check the --config path"


# --- parsing YAML and JSON -----------------------------------------------------------------------


class _SyntaxProblem(Exception):
    """A file could not be parsed. The message names the position, never the content, and `fix`
    replaces the usual advice to fix the syntax when that advice does not apply."""

    def __init__(self, problem: str, *, fix: str = "") -> None:
        super().__init__(problem)
        self.fix = fix


def _parse_documents(
    path: Path, text: str, errors: list[DeclarationError]
) -> Iterator[tuple[Origin, Any]]:
    """Yield the non-empty documents of one file, or append the syntax problem and yield none."""
    try:
        documents = _json_documents(text) if path.suffix == ".json" else _yaml_documents(text)
    except _SyntaxProblem as problem:
        fix = problem.fix or "fix the syntax"
        errors.append(
            DeclarationError(
                str(problem), source=str(path), fix=f"{fix} (nothing in this file was loaded)"
            )
        )
        return
    for index, document in enumerate(documents, start=1):
        origin = Origin(str(path), index)
        try:
            document = _Pruner().copy(document, depth=0)
        except _SyntaxProblem as problem:
            if path.suffix == ".json":
                fix = "check the document's nesting and size"
            else:
                fix = "check the document's YAML aliases (&name and *name) and nesting"
            errors.append(
                DeclarationError(str(problem), source=origin.source, document=index, fix=fix)
            )
            continue
        if document is not None:  # an empty document, e.g. between two `---` lines
            yield origin, document


def _yaml_documents(text: str) -> list[Any]:
    _check_yaml_size(text)
    loader = _BaseLoader(text)
    try:
        documents = []
        while loader.check_node():
            documents.append(_yaml_value(loader, loader.get_node(), {}))
        return documents
    except yaml.reader.ReaderError as error:
        raise _reader_problem(error, text) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "invalid syntax"
        raise _SyntaxProblem(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as error:  # pragma: no cover - PyYAML marks its parse errors
        raise _SyntaxProblem(f"invalid YAML: {type(error).__name__}") from None
    except RecursionError:
        raise _SyntaxProblem(
            f"invalid YAML: nested too deeply; the limit is {_MAX_DEPTH}"
        ) from None
    finally:
        loader.dispose()


def _check_yaml_size(text: str) -> None:
    """Raise _SyntaxProblem when a document has more than MAX_YAML_NODES_PER_DOCUMENT nodes or
    is nested deeper than _MAX_DEPTH.

    This reads the parser's events one at a time and keeps none of them, so a huge file costs
    time but no memory, and it stops at the first document over a limit. Syntax errors are left
    to the composing pass, which reports them with their position.
    """
    loader = _BaseLoader(text)
    nodes = depth = document = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                document += 1
                nodes = 0
            elif isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise _SyntaxProblem(
                        f"document {document} is nested more than {_MAX_DEPTH} levels deep"
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_YAML_NODES_PER_DOCUMENT:
                    raise _SyntaxProblem(
                        f"document {document} has more than {MAX_YAML_NODES_PER_DOCUMENT} YAML "
                        "nodes (values, lists and mappings), far more than any declaration",
                        fix="check that this is a declaration file, or split it into more "
                        "documents",
                    )
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def _reader_problem(error: yaml.reader.ReaderError, text: str) -> _SyntaxProblem:
    """Describe a character YAML does not allow (a binary file, usually) by its byte offset."""
    if _BaseLoader is yaml.SafeLoader:  # pragma: no cover - PyYAML without libyaml
        offset = len(text[: error.position].encode("utf-8", errors="replace"))
    else:
        offset = error.position  # libyaml counts bytes of the UTF-8 text
    # NOTE: the offset counts from after a byte order mark, when the file starts with one.
    character = error.character
    shown = f" U+{character:04X}" if isinstance(character, int) else ""
    return _SyntaxProblem(
        f"not YAML text: control character{shown} at byte offset {offset}, which YAML does not "
        "allow",
        fix="check that this is a text file of declarations and not a binary file",
    )


def _yaml_value(loader: Any, node: yaml.Node, built: dict[int, Any]) -> Any:
    """Build the Python value of a YAML node, as PyYAML's safe loader would.

    Strings, lists and mappings are built here, which is faster than PyYAML's generic
    constructor. Other scalars (numbers, booleans, null, timestamps) and collections with an
    explicit tag go to PyYAML's safe constructor, so it rejects the same tags. `built` maps
    nodes already built to their values, so an alias shares its anchor's value.
    """
    if isinstance(node, yaml.ScalarNode):
        return node.value if node.tag == _YAML_STR else loader.construct_object(node)
    if id(node) in built:
        return built[id(node)]
    if isinstance(node, yaml.SequenceNode) and node.tag == _YAML_SEQ:
        items: list[Any] = []
        built[id(node)] = items
        items.extend(_yaml_value(loader, item, built) for item in node.value)
        return items
    if isinstance(node, yaml.MappingNode) and node.tag == _YAML_MAP:
        return _yaml_mapping(loader, node, built)
    return loader.construct_object(node, deep=True)


def _yaml_mapping(loader: Any, node: yaml.MappingNode, built: dict[int, Any]) -> dict[Any, Any]:
    """Build a mapping. A key repeated in the mapping is an error, as it is for kubectl.

    PyYAML would keep the last value silently. Keys brought in by a merge key (`<<: *base`)
    may be overridden, as YAML intends.
    """
    seen: set[tuple[str, str]] = set()
    for key_node, _value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and not key_node.tag.endswith(":merge"):
            key = (key_node.tag, key_node.value)
            if key in seen:
                problem = f"duplicate key {_shown(key_node.value)}"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
    mapping: dict[Any, Any] = {}
    built[id(node)] = mapping
    loader.flatten_mapping(node)  # puts merged keys first, so the mapping's own keys win
    for key_node, value_node in node.value:
        key = _yaml_value(loader, key_node, built)
        if isinstance(key, dict | list):
            problem = "found a mapping or list as a key"
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        mapping[key] = _yaml_value(loader, value_node, built)
    return mapping


def _json_documents(text: str) -> list[Any]:
    """Parse a JSON file, which contains one document."""
    try:
        return [json.loads(text, object_pairs_hook=_unique_keys)]
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise _SyntaxProblem(f"invalid JSON at {where}: {error.msg}") from None
    except RecursionError:
        raise _SyntaxProblem(
            f"invalid JSON: nested too deeply; the limit is {_MAX_DEPTH}"
        ) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _SyntaxProblem(f"invalid JSON: duplicate key {_shown(key)}")
        result[key] = value
    return result


class _Pruner:
    """A copier of loaded documents that drops null values in mappings.

    The Kubernetes API server drops them from custom resources too, so `target:` with nothing
    after it means the default target.

    Raises _SyntaxProblem when the copy would be deeper than _MAX_DEPTH (an alias cycle) or larger
    than _MAX_NODES_PER_DOCUMENT (aliases expanding exponentially).
    """

    def __init__(self) -> None:
        self.nodes = 0

    def copy(self, value: Any, *, depth: int) -> Any:
        self.nodes += 1
        if depth > _MAX_DEPTH:
            raise _SyntaxProblem(f"document is nested more than {_MAX_DEPTH} levels deep")
        if self.nodes > _MAX_NODES_PER_DOCUMENT:
            raise _SyntaxProblem(f"document has more than {_MAX_NODES_PER_DOCUMENT} values")
        if isinstance(value, dict):
            return {
                key: self.copy(item, depth=depth + 1)
                for key, item in value.items()
                if item is not None
            }
        if isinstance(value, list):
            return [self.copy(item, depth=depth + 1) for item in value]
        return value


# --- checking documents --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    """The document a problem is about: its origin and, once known, its kind and name."""

    origin: Origin
    kind: str = ""
    name: str = ""

    def error(self, problem: str, *, field: str = "", fix: str = "") -> DeclarationError:
        return DeclarationError(
            problem,
            source=self.origin.source,
            document=self.origin.document,
            kind=self.kind,
            name=self.name,
            field=field,
            fix=fix,
        )


class _Checker:
    """The checks of one load: `add_document` fills `result`, then `check_references` runs.

    Both append every problem to `errors`.
    """

    def __init__(self, *, allow_nested: bool, kubernetes: bool = False) -> None:
        self.allow_nested = allow_nested
        # Objects read by the controller: their secret keys become Kubernetes Secret keys.
        self.kubernetes = kubernetes
        self.result = Declarations()
        self.errors: list[DeclarationError] = []
        # Stores whose documents are invalid: a reference to one is not reported as unknown too.
        self.invalid_stores: set[tuple[str, str]] = set()
        # The same for generators.
        self.invalid_generators: set[tuple[str, str]] = set()
        # The model of each store kind's `spec`; the controller reads ClusterSecretStore conditions.
        self.store_specs: dict[str, type[StoreSpec]] = dict.fromkeys(STORE_KINDS, StoreSpec)
        # Store references of ExternalSecrets that failed validation, for `check_references`.
        self.unchecked_store_refs: list[tuple[_Subject, tuple[str, str]]] = []
        # Files in reading order and the documents read, for `sorted_errors`.
        self.source_order: dict[str, int] = {}
        self.documents: dict[tuple[str, int], Any] = {}
        self._errors_noted = 0

    def sorted_errors(self) -> list[DeclarationError]:
        """Return every error sorted by file (in reading order), document and field position."""
        self._note_sources()

        def order(error: DeclarationError) -> tuple[int, int, tuple[int, ...]]:
            rank = self.source_order.get(error.source, -1)
            document = error.document or 0
            raw = self.documents.get((error.source, document))
            return rank, document, _field_position(raw, error.field)

        return sorted(self.errors, key=order)

    def _note_sources(self) -> None:
        """Record the files named by errors added since the last call (reading problems)."""
        for error in self.errors[self._errors_noted :]:
            if error.source:
                self.source_order.setdefault(error.source, len(self.source_order))
        self._errors_noted = len(self.errors)

    def add_document(self, origin: Origin, document: Any) -> None:
        first_error = len(self.errors)
        self._add_document(origin, document)
        if isinstance(document, dict):
            self._drop_nothing_to_fetch(document, first_error)

    def _add_document(self, origin: Origin, document: Any) -> None:
        self._note_sources()
        self.source_order.setdefault(origin.source, len(self.source_order))
        self.documents[(origin.source, origin.document)] = document
        first_error = len(self.errors)
        subject = self._check_header(origin, document)
        if subject is None:
            return
        meta = self._validate(ObjectMeta, document, "metadata", subject)
        is_store = subject.kind in STORE_KINDS
        spec = self._validate(self._spec_model(subject.kind), document, "spec", subject)
        if meta is not None:
            self._check_own_annotations(subject, meta)
        if meta is None or spec is None:
            if is_store:
                self.invalid_stores.add((subject.kind, _metadata_name(document)))
            if subject.kind in GENERATOR_KINDS:
                self.invalid_generators.add((subject.kind, _metadata_name(document)))
            if subject.kind == "ExternalSecret":
                reported = {error.field for error in self.errors[first_error:]}
                self._check_invalid_external_secret(subject, document, reported)
            return
        if isinstance(spec, StoreSpec):
            self._add_store(subject, meta, spec)
        elif isinstance(spec, VaultDynamicSecretSpec):
            self._add_generator(subject, meta, spec)
        elif isinstance(spec, NotifyTargetSpec):
            self._add_notify_target(subject, meta, spec)
        else:
            self._add_external_secret(subject, meta, spec)

    def _check_header(self, origin: Origin, document: Any) -> _Subject | None:
        """Check kind, apiVersion and top-level fields; return the subject if checking goes on."""
        if not isinstance(document, dict):
            problem = "expected a mapping with apiVersion, kind, metadata and spec"
            fix = "check the document's indentation"
            self.errors.append(_Subject(origin).error(problem, fix=fix))
            return None
        kind = document.get("kind")
        kind_text = kind if isinstance(kind, str) and _KIND_NAME.fullmatch(kind) else ""
        subject = _Subject(origin, kind=kind_text, name=_name_text(_metadata_name(document)))
        if kind not in KINDS:
            problem = _kind_problem(kind)
            fix = (
                "a declaration file holds only SecretStore, ClusterSecretStore, ExternalSecret, "
                "NotifyTarget and VaultDynamicSecret"
            )
            self.errors.append(subject.error(problem, field="kind", fix=fix))
            return None
        api_version = document.get("apiVersion")
        if kind == NOTIFY_TARGET_KIND and api_version in API_VERSIONS - {NOTIFY_TARGET_API_VERSION}:
            problem = "not supported for NotifyTarget, a secrets-agent kind"
            fix = f"use {NOTIFY_TARGET_API_VERSION}"
            self.errors.append(subject.error(problem, field="apiVersion", fix=fix))
            return None
        versions = GENERATOR_API_VERSIONS if kind in GENERATOR_KINDS else API_VERSIONS
        if not isinstance(api_version, str) or api_version not in versions:
            problem = "required field is missing" if api_version is None else "not supported"
            fix = f"use one of {', '.join(sorted(versions))}"
            self.errors.append(subject.error(problem, field="apiVersion", fix=fix))
            return None
        for unknown in sorted(str(key) for key in document if key not in _TOP_LEVEL_FIELDS):
            self.errors.append(self._top_level_field_error(subject, unknown))
        return subject

    def _spec_model(self, kind: str) -> type[BaseModel]:
        """Return the model of `spec` for a supported kind."""
        if kind == NOTIFY_TARGET_KIND:
            return NotifyTargetSpec
        if kind in GENERATOR_KINDS:
            return VaultDynamicSecretSpec
        if kind in STORE_KINDS:
            return self.store_specs[kind]
        return ExternalSecretSpec

    def _top_level_field_error(self, subject: _Subject, name: str) -> DeclarationError:
        """Report a top-level field other than apiVersion, kind, metadata, spec and status.

        A field of `spec` or `metadata` written at the top level is wrongly indented, so the
        fix is to indent it, not to remove it.
        """
        for part, model in (("spec", self._spec_model(subject.kind)), ("metadata", ObjectMeta)):
            if name in _field_names(model, ()):
                problem = f"{part} field written at the top level"
                fix = f"indent it under {part}, as {part}.{name}"
                return subject.error(problem, field=name, fix=fix)
        fix = "remove it (a declaration has only apiVersion, kind, metadata and spec)"
        return subject.error("field not supported", field=name, fix=fix)

    def _drop_nothing_to_fetch(self, document: dict[Any, Any], first_error: int) -> None:
        """Drop "spec: nothing to fetch" from this document's errors when its `data` or
        `dataFrom` is at the top level, where the error about that field gives the fix."""
        if "data" not in document and "dataFrom" not in document:
            return
        for index in range(len(self.errors) - 1, first_error - 1, -1):
            error = self.errors[index]
            if error.field == "spec" and error.problem == "nothing to fetch":
                del self.errors[index]

    def _validate(
        self, model: type[BaseModel], document: dict[Any, Any], part: str, subject: _Subject
    ) -> Any:
        """Validate `document[part]` against `model`; return the model or None after errors."""
        if part not in document:
            self.errors.append(subject.error("required field is missing", field=part, fix="add it"))
            return None
        try:
            return model.model_validate(document[part], by_alias=True, by_name=False)
        except ValidationError as error:
            for problem, field_path, fix in _describe(error, model, prefix=part):
                self.errors.append(subject.error(problem, field=field_path, fix=fix))
            return None

    def _add_store(self, subject: _Subject, meta: ObjectMeta, spec: StoreSpec) -> None:
        store = StoreDeclaration(
            kind=subject.kind, name=meta.name, spec=spec, origin=subject.origin
        )
        self._add_unique(subject, self.result.stores, store, noun="store")

    def _add_generator(
        self, subject: _Subject, meta: ObjectMeta, spec: VaultDynamicSecretSpec
    ) -> None:
        generator = GeneratorDeclaration(
            kind=subject.kind, name=meta.name, spec=spec, origin=subject.origin
        )
        self._add_unique(subject, self.result.generators, generator, noun="generator")

    def _add_unique(
        self,
        subject: _Subject,
        table: dict[tuple[str, str], Any],
        declaration: StoreDeclaration | GeneratorDeclaration,
        *,
        noun: str,
    ) -> None:
        """Add a declaration under its (kind, name), or report the duplicate."""
        first = table.get(declaration.ref)
        if first is not None:
            self.errors.append(
                subject.error(
                    f"duplicate {declaration.kind} {_shown(declaration.name)}, first declared "
                    f"in {first.origin.source} document {first.origin.document}",
                    field="metadata.name",
                    fix=f"give each {noun} a unique name, or remove one of them",
                )
            )
            return
        table[declaration.ref] = declaration

    def _add_external_secret(
        self, subject: _Subject, meta: ObjectMeta, spec: ExternalSecretSpec
    ) -> None:
        # Added even when an annotation is invalid, so that `check_references` reports the
        # document's other problems too. Any error keeps the whole load from returning.
        overrides = self._ownership_overrides(subject, meta)
        declaration = ExternalSecretDeclaration(
            name=meta.name,
            namespace=meta.namespace,
            spec=spec,
            metadata=meta,
            origin=subject.origin,
            **overrides,
        )
        self.result.external_secrets.append(declaration)

    def _add_notify_target(
        self, subject: _Subject, meta: ObjectMeta, spec: NotifyTargetSpec
    ) -> None:
        if not _NOTIFY_TARGET_NAME.fullmatch(meta.name):
            problem = f"invalid notify target name {_shown(meta.name)}"
            fix = "use lowercase letters, digits, '-' and '.', e.g. spring-refresh"
            self.errors.append(subject.error(problem, field="metadata.name", fix=fix))
            return
        for first in self.result.notify_targets:
            if first.name == meta.name:
                problem = (
                    f"duplicate NotifyTarget {_shown(meta.name)}, first declared in "
                    f"{first.origin.source} document {first.origin.document}"
                )
                fix = "give each notify target a unique name, or remove one of them"
                self.errors.append(subject.error(problem, field="metadata.name", fix=fix))
                return
        notify_target = NotifyTargetDeclaration(name=meta.name, spec=spec, origin=subject.origin)
        self.result.notify_targets.append(notify_target)

    def _ownership_overrides(self, subject: _Subject, meta: ObjectMeta) -> dict[str, int]:
        """Read the valid file mode, uid and gid annotations; report the invalid ones."""
        overrides: dict[str, int] = {}
        for field_name, key in (
            ("file_mode", FILE_MODE_ANNOTATION),
            ("file_uid", FILE_UID_ANNOTATION),
            ("file_gid", FILE_GID_ANNOTATION),
        ):
            if key not in meta.annotations:
                continue
            value = _annotation_number(meta.annotations[key], octal=field_name == "file_mode")
            if value is None:
                problem, fix = _ANNOTATION_PROBLEMS[field_name]
                field_path = f"metadata.annotations[{_quoted_key(key)}]"
                self.errors.append(subject.error(problem, field=field_path, fix=fix))
            else:
                overrides[field_name] = value
        return overrides

    def _check_own_annotations(self, subject: _Subject, meta: ObjectMeta) -> None:
        """Reject annotations in secrets-agent's domain that it does not read, such as typos."""
        known = _OWN_ANNOTATIONS if subject.kind == "ExternalSecret" else ()
        names = ", ".join(_OWN_ANNOTATIONS)
        for key in meta.annotations:
            domain = key.split("/", 1)[0] if "/" in key else ""
            if key in known or not (
                domain == _OWN_ANNOTATION_DOMAIN or domain.endswith("." + _OWN_ANNOTATION_DOMAIN)
            ):
                continue
            # Compare the names after the domain, which every candidate shares.
            local_names = [known_key.split("/", 1)[1] for known_key in _OWN_ANNOTATIONS]
            import difflib  # only for a misspelled name, so valid declarations never load it

            close = difflib.get_close_matches(key.split("/", 1)[1], local_names, n=1)
            if not known:
                fix = f"remove it; secrets-agent reads its annotations ({names}) on ExternalSecrets"
            elif close:
                fix = f"did you mean {_OWN_ANNOTATION_DOMAIN}/{close[0]}?"
            else:
                fix = f"remove it (secrets-agent reads only {names})"
            field_path = f"metadata.annotations[{_quoted_key(key)}]"
            problem = "unknown secrets-agent annotation"
            self.errors.append(subject.error(problem, field=field_path, fix=fix))

    def _check_invalid_external_secret(
        self, subject: _Subject, document: dict[Any, Any], reported: set[str]
    ) -> None:
        """Check what can still be checked of an ExternalSecret whose metadata or spec is invalid.

        Reporting these together with the validation errors saves the user a round of fixes.
        Fields in `reported` already have an error and are skipped.
        """
        spec = document.get("spec")
        if not isinstance(spec, dict):
            return
        if "spec" not in reported and not spec.get("data") and not spec.get("dataFrom"):
            fix = "add spec.data or spec.dataFrom entries"
            self.errors.append(subject.error("nothing to fetch", field="spec", fix=fix))
        target = spec.get("target")
        target_name = target.get("name") if isinstance(target, dict) else None
        field_path = "spec.target.name"
        if not (isinstance(target_name, str) and target_name):
            target_name, field_path = _metadata_name(document), "metadata.name"
        if isinstance(target_name, str) and target_name and field_path not in reported:
            self._check_target_name(subject, target_name, field_path)
        store_ref = spec.get("secretStoreRef")
        if isinstance(store_ref, dict) and not any(
            field.startswith("spec.secretStoreRef") for field in reported
        ):
            name, kind = store_ref.get("name"), store_ref.get("kind", "SecretStore")
            if isinstance(name, str) and name and kind in STORE_KINDS:
                self.unchecked_store_refs.append((subject, (kind, name)))
        data = spec.get("data")
        if isinstance(data, list):
            keys = [
                (index, item["secretKey"])
                for index, item in enumerate(data)
                if isinstance(item, dict)
                and isinstance(item.get("secretKey"), str)
                and f"spec.data[{index}]" not in reported
                and f"spec.data[{index}].secretKey" not in reported
            ]
            self._check_secret_keys(subject, keys)

    def check_references(self) -> None:
        """Check the references between documents: stores, targets and secret keys."""
        targets: dict[str, ExternalSecretDeclaration] = {}
        for declaration in self.result.external_secrets:
            subject = _Subject(declaration.origin, kind="ExternalSecret", name=declaration.name)
            self._check_store_ref(subject, declaration)
            self._check_generator_refs(subject, declaration)
            self._check_target(subject, declaration, targets)
            self._check_secret_keys(subject, _secret_keys(declaration))
            self._check_template(subject, declaration)
        for subject, store_ref in self.unchecked_store_refs:
            self._check_known_store(subject, store_ref)
        for notify_target in self.result.notify_targets:
            self._check_watched_targets(notify_target, targets)

    def _check_watched_targets(
        self, notify_target: NotifyTargetDeclaration, targets: dict[str, ExternalSecretDeclaration]
    ) -> None:
        """Check that every target a notify target watches is written by an ExternalSecret."""
        subject = _Subject(notify_target.origin, kind=NOTIFY_TARGET_KIND, name=notify_target.name)
        known = ", ".join(sorted(targets)) or "none"
        for index, target in enumerate(notify_target.spec.targets or ()):
            if target not in targets:
                problem = f"unknown target {_shown(target)}"
                fix = f"name a target of an ExternalSecret (declared targets: {known})"
                self.errors.append(subject.error(problem, field=f"spec.targets[{index}]", fix=fix))

    def _check_store_ref(self, subject: _Subject, declaration: ExternalSecretDeclaration) -> None:
        if declaration.store_ref is None:
            spec = declaration.spec
            if spec.data or any(item.source_ref is None for item in spec.data_from):
                problem = "required field is missing"
                fix = (
                    "add it: spec.data, dataFrom.extract and dataFrom.find read from a store "
                    "(only dataFrom.sourceRef.generatorRef entries need none)"
                )
                self.errors.append(subject.error(problem, field="spec.secretStoreRef", fix=fix))
            return
        self._check_known_store(subject, declaration.store_ref)

    def _check_known_store(self, subject: _Subject, store_ref: tuple[str, str]) -> None:
        """Report a `spec.secretStoreRef` that names no declared store."""
        stores = self.result.stores
        if store_ref in stores or store_ref in self.invalid_stores:
            return
        kind, name = store_ref
        other_kind = "ClusterSecretStore" if kind == "SecretStore" else "SecretStore"
        if (other_kind, name) in stores:
            fix = f"set spec.secretStoreRef.kind to {other_kind}"
        else:
            known = ", ".join(sorted(f"{k} {n}" for k, n in stores)) or "none"
            fix = f"declare that store or fix the name (declared stores: {known})"
        problem = f"unknown {kind} {_shown(name)}"
        self.errors.append(subject.error(problem, field="spec.secretStoreRef.name", fix=fix))

    def _check_generator_refs(
        self, subject: _Subject, declaration: ExternalSecretDeclaration
    ) -> None:
        """Check that every `dataFrom[].sourceRef.generatorRef` names a declared generator."""
        generators = self.result.generators
        for index, item in enumerate(declaration.spec.data_from):
            if item.source_ref is None:
                continue
            ref = item.source_ref.generator_ref
            named = (ref.kind, ref.name)
            if named in generators or named in self.invalid_generators:
                continue
            known = ", ".join(sorted(f"{k} {n}" for k, n in generators)) or "none"
            problem = f"unknown {ref.kind} {_shown(ref.name)}"
            fix = f"declare that generator or fix the name (declared generators: {known})"
            field_path = f"spec.dataFrom[{index}].sourceRef.generatorRef.name"
            self.errors.append(subject.error(problem, field=field_path, fix=fix))

    def _check_target(
        self,
        subject: _Subject,
        declaration: ExternalSecretDeclaration,
        targets: dict[str, ExternalSecretDeclaration],
    ) -> None:
        target = declaration.target
        field_path = "spec.target.name" if declaration.spec.target.name else "metadata.name"
        if not self._check_target_name(subject, target, field_path):
            return
        first = targets.setdefault(target, declaration)
        if first is not declaration:
            problem = (
                f"duplicate target {_shown(target)}, also written by ExternalSecret "
                f"{first.name} ({first.origin.source} document {first.origin.document})"
            )
            fix = "give each ExternalSecret its own spec.target.name"
            self.errors.append(subject.error(problem, field=field_path, fix=fix))

    def _check_target_name(self, subject: _Subject, target: str, field_path: str) -> bool:
        """Check that a target name is a plain directory name; return False after reporting it."""
        # A target is one directory: the writer's rule for secret keys, never nested.
        reason = "contains '/'" if "/" in target else check_secret_key(target)
        if reason is None:
            return True
        problem = f"target name {_shown(target)} {reason}"
        fix = "use a plain directory name such as payment-secrets"
        self.errors.append(subject.error(problem, field=field_path, fix=fix))
        return False

    def _check_secret_keys(self, subject: _Subject, keys: list[tuple[int, str]]) -> None:
        """Check `spec.data[].secretKey` values, given as (index, key): each a safe file name,
        unique, and never both a file and a directory.

        Secret keys imported by `dataFrom` are known only after fetching; the snapshot checks them.
        """
        files: dict[str, int] = {}
        directories: dict[str, int] = {}
        for index, key in keys:
            field_path = f"spec.data[{index}].secretKey"
            problem, fix = self._secret_key_problem(key, files, directories)
            if problem is not None:
                self.errors.append(subject.error(problem, field=field_path, fix=fix))
                continue
            files[key] = index
            for parent in _parents(key):
                directories.setdefault(parent, index)

    def _check_template(self, subject: _Subject, declaration: ExternalSecretDeclaration) -> None:
        """Check `spec.target.template`: template names and syntax (see agent.templates)."""
        if declaration.spec.target.template is None:
            return
        # agent.templates loads Jinja2 (about 2 MiB and 40 ms), so only for declared templates.
        from agent.templates import check_template

        secret_keys = [item.secret_key for item in declaration.spec.data]
        for problem in check_template(
            declaration.spec.target.template,
            secret_keys=secret_keys,
            allow_nested=self.allow_nested,
        ):
            self.errors.append(subject.error(problem.problem, field=problem.field, fix=problem.fix))

    def _secret_key_problem(
        self, key: str, files: dict[str, int], directories: dict[str, int]
    ) -> tuple[str | None, str]:
        if self.kubernetes and "/" in key:
            return (
                f"secret key {_shown(key)} is invalid: a Kubernetes Secret key cannot contain '/'",
                "use a plain name such as db-password",
            )
        reason = check_secret_key(key, allow_nested=self.allow_nested)
        if reason is not None:
            fix = "use a plain file name such as db-password"
            if "/" in key and not self.allow_nested:
                fix += ", or turn on nested keys (--nested-keys)"
            return f"secret key {_shown(key)} {reason}", fix
        if key in files:
            problem = f"secret key {_shown(key)} is declared twice (also spec.data[{files[key]}])"
            return problem, "remove one of the entries or rename its secretKey"
        if key in directories:
            problem = (
                f"secret key {_shown(key)} is also a directory of spec.data[{directories[key]}]"
            )
            return problem, "rename one of them, because a name is either a file or a directory"
        for parent in _parents(key):
            if parent in files:
                problem = (
                    f"secret key {_shown(key)} is inside {_shown(parent)}, "
                    f"a file of spec.data[{files[parent]}]"
                )
                return problem, "rename one of them, because a name is either a file or a directory"
        return None, ""


def _kind_problem(kind: Any) -> str:
    if kind is None:
        return "required field is missing"
    if isinstance(kind, str) and _KIND_NAME.fullmatch(kind):
        return f"{kind} is not supported"
    return "not a supported kind"


def _secret_keys(declaration: ExternalSecretDeclaration) -> list[tuple[int, str]]:
    """Return (index, secret key) for each `spec.data` entry."""
    return [(index, item.secret_key) for index, item in enumerate(declaration.spec.data)]


def _field_position(document: Any, field_path: str) -> tuple[int, ...]:
    """Return where `field_path` is in `document`: the index of each part within its parent.

    Sorting errors by this puts them in the manifest's order. A part that is missing from the
    document (a required field) counts as after every part that is present.
    """
    positions: list[int] = []
    node = document
    for match in _FIELD_PATH_PART.finditer(field_path):
        index, quoted, name = match.groups()
        if index is not None:
            position = int(index)
            node = node[position] if isinstance(node, list) and position < len(node) else None
        elif isinstance(node, dict):
            part = json.loads(quoted) if quoted is not None else name
            keys = list(node)
            names = [str(key) for key in keys]
            position = names.index(part) if part in names else len(names)
            node = node[keys[position]] if position < len(keys) else None
        else:
            position, node = 0, None
        positions.append(position)
    return tuple(positions)


def _parents(key: str) -> list[str]:
    """Return the directories a nested secret key lives in: `a/b/c` gives `a` and `a/b`."""
    parts = key.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts))]


_ANNOTATION_PROBLEMS = {
    "file_mode": ("invalid file mode", 'use octal permission bits such as "0440"'),
    "file_uid": ("invalid file uid", f'use a number from 0 to {_MAX_ID} such as "1000"'),
    "file_gid": ("invalid file gid", f'use a number from 0 to {_MAX_ID} such as "1000"'),
}


def _annotation_number(text: str, *, octal: bool) -> int | None:
    """Parse a file mode (octal) or id annotation; return None if it is invalid or out of range."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        value = int(text, 8 if octal else 10)
    except ValueError:  # an 8 or 9 in an octal mode
        return None
    return value if value <= (0o777 if octal else _MAX_ID) else None


# --- turning pydantic's errors into the manifest's words -----------------------------------------

_GENERIC_PROBLEMS = {
    "missing": ("required field is missing", "add it"),
    "string_type": (
        "expected a string",
        "quote the value if YAML reads it as a number, boolean or date",
    ),
    "string_too_short": ("must not be empty", "give it a value"),
    "bool_type": ("expected true or false", "write true or false without quotes"),
    "bool_parsing": ("expected true or false", "write true or false without quotes"),
    "model_type": ("expected a mapping", "check the indentation"),
    "model_attributes_type": ("expected a mapping", "check the indentation"),
    "dict_type": ("expected a mapping", "check the indentation"),
    "list_type": ("expected a list", "start each entry with '- '"),
    "too_short": ("must not be empty", "add at least one entry"),
    "int_type": ("expected a whole number", "write a number without quotes, e.g. 3"),
    "float_type": ("expected a number", "write a number without quotes, e.g. 5 or 0.5"),
}


def _describe(
    error: ValidationError, model: type[BaseModel], *, prefix: str
) -> Iterator[tuple[str, str, str]]:
    """Turn pydantic's errors for `model` into (problem, field path, fix), in the manifest's words.

    `prefix` is the path of the validated part (`spec`). Inputs are never included.
    """
    for item in error.errors(include_url=False, include_input=False):
        loc = item["loc"]
        if loc[-1:] == ("[key]",):  # pydantic marks a problem with a map key this way
            field_path = f"{_field_path(prefix, loc[:-2])}[{_quoted_key(loc[-2])}]"
            yield "map key must be a string", field_path, "quote the key"
            continue
        if item["type"] == "invalid_key":  # the last part is a field name, not a list index
            field_path = f"{_field_path(prefix, loc[:-1])}[{_quoted_key(loc[-1])}]"
            yield "field name must be a string", field_path, "quote it or remove the field"
            continue
        field_path = _field_path(prefix, loc)
        problem, fix = _explain(item, model, field_path)
        yield problem, field_path, fix


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_FIELD_NAME.fullmatch(part):
            path += f".{part}"
        else:  # a map key such as an annotation name, or an odd field name
            path += f"[{_quoted_key(part)}]"
    return path


def _explain(item: Any, model: type[BaseModel], field_path: str) -> tuple[str, str]:
    kind = item["type"]
    pattern = _LIST_INDEX.sub("[]", field_path)
    if kind == "extra_forbidden":
        return _explain_unknown_field(item["loc"], model, pattern)
    if kind == "literal_error":
        expected = item["ctx"]["expected"]
        fix = _lookup(DEFAULT_ONLY_FIELDS, pattern)
        if fix is not None:
            return f"only the default {expected} is supported by secrets-agent yet", fix
        return "invalid value", f"use {expected}"
    if kind == "value_error":
        # The validators in agent.models word their messages as "problem; fix".
        problem, _, fix = str(item["ctx"]["error"]).partition("; ")
        return problem, fix
    return _GENERIC_PROBLEMS.get(kind, (item["msg"], ""))


def _explain_unknown_field(
    loc: tuple[int | str, ...], model: type[BaseModel], pattern: str
) -> tuple[str, str]:
    # A model may bring its own table (a generator's provider has other paths than a store's).
    fix = _lookup(getattr(model, "unsupported_fields", UNSUPPORTED_FIELDS), pattern)
    if fix is not None:
        return _lookup(POD_ONLY_PROBLEMS, pattern) or "not supported by secrets-agent yet", fix
    names = _field_names(model, loc[:-1])
    import difflib  # only for a misspelled name, so valid declarations never load it

    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return "unknown field", f"did you mean {close[0]}? Field names are case-sensitive"
    if names:
        return (
            "field not supported by secrets-agent",
            f"remove it (the fields supported here are {', '.join(names)})",
        )
    return "field not supported by secrets-agent", "remove it"


def _lookup(table: dict[str, str], pattern: str) -> str | None:
    """Find the entry of `table` whose key ends `pattern` (`x.*` stands for any field of `x`)."""
    parent = pattern.rsplit(".", 1)[0]
    for candidate in (pattern, f"{parent}.*"):
        for key, text in table.items():
            if candidate == key or candidate.endswith(f".{key}"):
                return text
    return None


def _field_names(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Return the manifest names of the fields allowed at `loc` inside `model`."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        info = fields.get(part)
        current = _model_in(info.annotation) if info is not None else None
    if current is None:
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """Find the model inside an annotation such as `Target`, `list[DataItem]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _metadata_name(document: dict[Any, Any]) -> Any:
    """Return `metadata.name` as it was loaded, whatever its type, or None."""
    metadata = document.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


def _name_text(value: Any) -> str:
    """Return a name for messages when `value` is a printable string, else ""."""
    return value if isinstance(value, str) and value.isprintable() else ""


def _quoted_key(key: Any) -> str:
    """Quote a map key for a field path: `metadata.annotations["example.com/owner"]`."""
    text = str(key)
    if len(text) > _MAX_SHOWN_LENGTH:
        text = text[:_MAX_SHOWN_LENGTH] + "..."
    return json.dumps(text)


def _shown(value: Any) -> str:
    """Quote a name (kind, object name, secret key, field) for a message, shortened if long."""
    if not isinstance(value, str):
        return f"(a {type(value).__name__})"
    if len(value) > _MAX_SHOWN_LENGTH:
        value = value[:_MAX_SHOWN_LENGTH] + "..."
    return repr(value)
