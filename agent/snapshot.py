"""Snapshots: the full set of secret keys and bytes of one target, built from remote values.

This module gives a declaration its meaning: which remote keys it needs, how `property`,
`decodingStrategy`, `dataFrom.extract`, `dataFrom.find` and `rewrite` turn remote values into
secret keys, and in which order entries override each other (`dataFrom` in order, then `data`).
Both the agent and the controller build snapshots here, so they cannot disagree. The last step
applies `spec.target.template` (`agent.templates`), so rendered files are part of the snapshot.

A snapshot is all or nothing: `build_snapshot` raises `SnapshotError` listing every failed key
when any required key is missing, so a partial set is never published.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent.declarations import ExternalSecretDeclaration
from agent.errors import (
    AgentError,
    InvalidValueError,
    RemoteKeyNotFoundError,
    StoreError,
    shorten_name,
)
from agent.goregexp import GoRegexp, ReplacementTooLong, compile_regexp, replace_all
from agent.models import DecodingStrategy, RemoteRef
from agent.stores import RemoteKey, RemoteValue
from agent.writer import MAX_PATH_BYTES, check_secret_key

if TYPE_CHECKING:
    from agent.templates import TemplateError

# Reads every remote key beneath a path, as `Store.fetch_prefix` does; results may be cached.
PrefixReader = Callable[[str], Mapping[str, RemoteValue]]
# Longest name, in bytes of UTF-8, that a rewrite may build between two steps. A pattern that
# matches empty text (`x*`) inserts its target between every two characters, so each step could
# multiply the length. The final name must then pass check_secret_key like every imported name.
MAX_REWRITTEN_NAME_BYTES = MAX_PATH_BYTES


@dataclass(frozen=True)
class Snapshot:
    """The secret keys of one target and their bytes, at one moment."""

    target: str
    data: Mapping[str, bytes]
    leases: tuple[LeaseUse, ...] = field(default=())


@dataclass(frozen=True)
class GeneratedValue:
    """The response for one `dataFrom[].sourceRef.generatorRef` entry (see agent.leases).

    `data` maps each top-level field of the response to its value, `lease` is the lease it came
    from (opaque here) and `source` names the generator in messages.
    """

    data: Mapping[str, Any]
    lease: Any
    source: str


@dataclass(frozen=True)
class LeaseUse:
    """A generator response inside a snapshot: its lease, and the secret key each field became."""

    lease: Any
    secret_keys: Mapping[str, str]


class SnapshotError(AgentError):
    """A target could not be built; `errors` are the per-key and per-template failures, none
    with a value."""

    def __init__(self, target: str, errors: Sequence[StoreError | TemplateError]) -> None:
        self.target = target
        self.errors = errors
        # Two secret keys reading one remote key fail with the same error, so it is listed once.
        details = "; ".join(dict.fromkeys(str(error) for error in errors))
        super().__init__(f"target {target}: {details}")

    @property
    def transient(self) -> bool:
        """True when every failure may go away by itself, so a retry is worthwhile."""
        return all(error.transient for error in self.errors)


def remote_keys(declaration: ExternalSecretDeclaration) -> list[RemoteKey]:
    """List the single remote keys a declaration reads (`data` and `dataFrom.extract`)."""
    keys: dict[RemoteKey, None] = {}
    for item in declaration.spec.data_from:
        if item.extract is not None:
            keys[RemoteKey(item.extract.key, item.extract.version)] = None
    for data_item in declaration.spec.data:
        keys[RemoteKey(data_item.remote_ref.key, data_item.remote_ref.version)] = None
    return list(keys)


def build_snapshot(
    declaration: ExternalSecretDeclaration,
    *,
    store_name: str,
    fetched: Mapping[RemoteKey, RemoteValue | Exception],
    read_prefix: PrefixReader,
    allow_nested: bool = False,
    generated: Mapping[int, GeneratedValue | StoreError] | None = None,
) -> Snapshot:
    """Build the snapshot of one declaration from the values its store returned.

    `fetched` holds every key of `remote_keys(declaration)`; `read_prefix` is called for
    `dataFrom.find` and for an `extract` key that names a path prefix rather than one value.
    `generated` holds the response of each generatorRef entry by its `dataFrom` index; each field
    of a response becomes a secret key, and `Snapshot.leases` records which leases were used.
    Raises SnapshotError when any entry or template fails.
    """
    builder = _Builder(declaration, store_name=store_name, allow_nested=allow_nested)
    for index, item in enumerate(declaration.spec.data_from):
        field_path = f"spec.dataFrom[{index}]"
        if item.source_ref is not None:
            builder.generated(index, (generated or {}).get(index), item.rewrite, field_path)
            continue
        if item.extract is not None:
            imported = builder.extract(item.extract, fetched, read_prefix, field_path)
        else:
            assert item.find is not None
            imported = builder.find(item.find, read_prefix, field_path)
        if imported:
            builder.merge(builder.rewrite(imported, item.rewrite, field_path), field_path)
    for index, data_item in enumerate(declaration.spec.data):
        builder.single(data_item.secret_key, data_item.remote_ref, fetched, f"spec.data[{index}]")
    snapshot = builder.finish()
    if declaration.spec.target.template is None:
        return snapshot
    # agent.templates loads Jinja2 (about 2 MiB and 40 ms), so only for declared templates.
    from agent.templates import TemplateErrors, render_files

    try:
        files = render_files(declaration, snapshot.data)
    except TemplateErrors as error:
        raise SnapshotError(declaration.target, error.errors) from None
    return replace(snapshot, data=files)


class _Builder:
    """Accumulates secret keys and per-key errors for one snapshot."""

    def __init__(
        self, declaration: ExternalSecretDeclaration, *, store_name: str, allow_nested: bool
    ) -> None:
        self.declaration = declaration
        self.store_name = store_name
        self.allow_nested = allow_nested
        self.data: dict[str, bytes] = {}
        self.errors: list[StoreError] = []
        self.leases: list[LeaseUse] = []

    def fail(self, error: Exception, field_path: str) -> None:
        if isinstance(error, StoreError):
            self.errors.append(error)
        else:
            self.errors.append(InvalidValueError(f"{field_path}: {error}", store=self.store_name))

    def single(
        self,
        secret_key: str,
        ref: RemoteRef,
        fetched: Mapping[RemoteKey, RemoteValue | Exception],
        field_path: str,
    ) -> None:
        value = fetched.get(RemoteKey(ref.key, ref.version))
        if value is None:
            value = RemoteKeyNotFoundError("not fetched", store=self.store_name, remote_key=ref.key)
        if isinstance(value, Exception):
            self.fail(value, field_path)
            return
        try:
            selected = select_property(
                value, ref.property_path, remote_key=ref.key, store_name=self.store_name
            )
            self.data[secret_key] = decode(
                selected, ref.decoding_strategy, remote_key=ref.key, store_name=self.store_name
            )
        except StoreError as error:
            self.fail(error, field_path)

    def extract(
        self,
        ref: RemoteRef,
        fetched: Mapping[RemoteKey, RemoteValue | Exception],
        read_prefix: PrefixReader,
        field_path: str,
    ) -> dict[str, bytes] | None:
        value = fetched.get(RemoteKey(ref.key, ref.version))
        if isinstance(value, RemoteKeyNotFoundError) and ref.version is None:
            # The key may name a path prefix: import every remote key beneath it. When the
            # prefix cannot be listed either, the user is told about the missing key, unless
            # the listing failed for a transient reason worth a retry.
            try:
                values = read_prefix(ref.key)
            except StoreError as error:
                values = {}
                if error.transient:
                    value = error
            if values:
                return self.import_values(ref.key, values, ref.decoding_strategy, field_path)
        if value is None or isinstance(value, Exception):
            self.fail(
                value
                or RemoteKeyNotFoundError("not fetched", store=self.store_name, remote_key=ref.key),
                field_path,
            )
            return None
        try:
            if ref.property_path is not None:
                value = _parse_json(
                    select_property(
                        value, ref.property_path, remote_key=ref.key, store_name=self.store_name
                    ),
                    remote_key=ref.key,
                    store_name=self.store_name,
                )
            fields = _as_object(value, remote_key=ref.key, store_name=self.store_name)
            return {
                name: decode(
                    _render(item),
                    ref.decoding_strategy,
                    remote_key=ref.key,
                    store_name=self.store_name,
                )
                for name, item in fields.items()
            }
        except StoreError as error:
            self.fail(error, field_path)
            return None

    def find(self, find: Any, read_prefix: PrefixReader, field_path: str) -> dict[str, bytes]:
        path = find.path or "/"
        pattern = compile_regexp(find.name.regexp) if find.name is not None else None
        imported = self.prefix(
            path, read_prefix, find.decoding_strategy, field_path, name_filter=pattern
        )
        return imported or {}

    def prefix(
        self,
        path: str,
        read_prefix: PrefixReader,
        strategy: DecodingStrategy,
        field_path: str,
        *,
        name_filter: GoRegexp | None = None,
    ) -> dict[str, bytes] | None:
        try:
            values = read_prefix(path)
        except StoreError as error:
            self.fail(error, field_path)
            return None
        return self.import_values(path, values, strategy, field_path, name_filter=name_filter)

    def import_values(
        self,
        path: str,
        values: Mapping[str, RemoteValue],
        strategy: DecodingStrategy,
        field_path: str,
        *,
        name_filter: GoRegexp | None = None,
    ) -> dict[str, bytes]:
        imported: dict[str, bytes] = {}
        for remote_key, value in sorted(values.items()):
            if name_filter is not None and name_filter.search(remote_key) is None:
                continue
            try:
                raw = value if isinstance(value, bytes) else _render(dict(value))
                imported[relative_key_name(path, remote_key)] = decode(
                    raw, strategy, remote_key=remote_key, store_name=self.store_name
                )
            except StoreError as error:
                self.fail(error, field_path)
        return imported

    def merge(
        self, imported: Mapping[str, bytes], field_path: str, *, source: str | None = None
    ) -> None:
        """Add imported secret keys; `source` names a generator in errors instead of the store."""
        for name, value in imported.items():
            reason = check_secret_key(name, allow_nested=self.allow_nested)
            if reason is not None:
                self.fail(
                    InvalidValueError(
                        f"{field_path}: imported secret key {shorten_name(name)!r} is not a "
                        f"safe file name ({reason})",
                        store=source or self.store_name,
                        fix="add a rewrite.regexp that maps it to a plain name",
                    ),
                    field_path,
                )
                continue
            self.data[name] = value

    def generated(
        self,
        index: int,
        value: GeneratedValue | StoreError | None,
        rewrites: list[Any],
        field_path: str,
    ) -> None:
        """Import every field of a generator's response, renamed by `rewrite`."""
        if value is None:
            value = StoreError(
                f"{field_path}: no lease manager supplies generator values here",
                store=self.store_name,
            )
        if isinstance(value, StoreError):
            self.fail(value, field_path)
            return
        names = self.rewrite_names(list(value.data), rewrites, field_path)
        if names is None:
            return
        imported = {names[name]: _render(item) for name, item in value.data.items()}
        self.merge(imported, field_path, source=value.source)
        self.leases.append(LeaseUse(lease=value.lease, secret_keys=names))

    def rewrite(
        self, imported: Mapping[str, bytes], rewrites: list[Any], field_path: str
    ) -> dict[str, bytes]:
        """Rename imported secret keys by `rewrite`; on failure record one error, import none."""
        names = self.rewrite_names(list(imported), rewrites, field_path)
        if names is None:
            return {}
        return {names[name]: value for name, value in imported.items()}

    def rewrite_names(
        self, names: list[str], rewrites: list[Any], field_path: str
    ) -> dict[str, str] | None:
        """Map each name to its rewritten name, or record an error and return None.

        The first name that grows past MAX_REWRITTEN_NAME_BYTES fails the whole entry, so one
        bad rewrite gives one error and not one per imported name.
        """
        renamed: dict[str, str] = {}
        for name in names:
            try:
                renamed[name] = _rewrite_name(name, rewrites)
            except _RewriteTooLong as error:
                step = f"{field_path}.rewrite[{error.index}]"
                self.fail(
                    InvalidValueError(
                        f"ExternalSecret {self.declaration.name}: {step}: the rewritten name of "
                        f"secret key {shorten_name(name)!r} would be longer than "
                        f"{MAX_REWRITTEN_NAME_BYTES} bytes, because regexp.source matches "
                        "empty text or regexp.target is long",
                        store=self.store_name,
                        fix=f"make {step}.regexp.source match at least one character (x+ "
                        "instead of x*, a instead of a?), or shorten its target",
                    ),
                    field_path,
                )
                return None
        return renamed

    def finish(self) -> Snapshot:
        if self.errors:
            raise SnapshotError(self.declaration.target, self.errors)
        return Snapshot(
            target=self.declaration.target, data=dict(self.data), leases=tuple(self.leases)
        )


def relative_key_name(prefix: str, remote_key: str) -> str:
    """Name a remote key found beneath `prefix`: its path relative to it, `/` becoming `_`.

    `/production/payment` + `/production/payment/db/password` gives `db_password`.
    """
    trimmed = prefix.rstrip("/")
    relative = remote_key[len(trimmed) :] if remote_key.startswith(trimmed) else remote_key
    return relative.strip("/").replace("/", "_")


def select_property(
    value: RemoteValue, property_path: str | None, *, remote_key: str, store_name: str
) -> bytes:
    """Select `property` from a remote value and return it as bytes.

    Without a property, bytes stay as they are and an object becomes its JSON. With one, the
    value must be a JSON object: an exact top-level key wins, else the property is a dotted path
    (`db.password`, `hosts.0.name`).
    """
    if property_path is None:
        return value if isinstance(value, bytes) else _render(dict(value))
    document = (
        _parse_json(value, remote_key=remote_key, store_name=store_name)
        if isinstance(value, bytes)
        else value
    )
    if isinstance(document, Mapping) and property_path in document:
        return _render(document[property_path])
    current: Any = document
    for part in property_path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise RemoteKeyNotFoundError(
                f"property {property_path!r} not found ({_describe_shape(document)})",
                store=store_name,
                remote_key=remote_key,
                fix="check remoteRef.property",
            )
    return _render(current)


def _describe_shape(document: Any) -> str:
    """Describe a remote value for an error without any of its field names or values.

    Field names can be sensitive too (a user name used as a key), and their number is unbounded.
    """
    if isinstance(document, Mapping):
        count = len(document)
        return f"the value is a JSON object with {count} top-level field{'' if count == 1 else 's'}"
    if isinstance(document, list):
        return "the value is a JSON array, not an object"
    return "the value is a JSON scalar, not an object"


def decode(raw: bytes, strategy: DecodingStrategy, *, remote_key: str, store_name: str) -> bytes:
    """Apply `decodingStrategy` to a selected value."""
    if strategy == "None":
        return raw
    compact = b"".join(raw.split())
    padded = compact + b"=" * (-len(compact) % 4)
    alphabets = {"Base64": [b"+/"], "Base64URL": [b"-_"], "Auto": [b"+/", b"-_"]}[strategy]
    for alphabet in alphabets:
        try:
            return base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
    if strategy == "Auto":
        return raw
    raise InvalidValueError(
        f"value is not valid {strategy}",
        store=store_name,
        remote_key=remote_key,
        fix="set decodingStrategy to None or store the value encoded",
    )


class _RewriteTooLong(Exception):
    """Rewrite number `index` would build a name longer than MAX_REWRITTEN_NAME_BYTES."""

    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(f"rewrite[{index}] result too long")


def _rewrite_name(name: str, rewrites: list[Any]) -> str:
    """Apply each `rewrite[].regexp` in order to one imported secret key name, as Go does.

    Raises _RewriteTooLong as soon as a step's result passes MAX_REWRITTEN_NAME_BYTES.
    """
    for index, rewrite in enumerate(rewrites):
        regexp = compile_regexp(rewrite.regexp.source)
        try:
            name = replace_all(
                regexp, name, rewrite.regexp.target, max_bytes=MAX_REWRITTEN_NAME_BYTES
            )
        except ReplacementTooLong:
            raise _RewriteTooLong(index) from None
    return name


def _parse_json(value: RemoteValue, *, remote_key: str, store_name: str) -> Any:
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidValueError(
            "value is not JSON, so a property or extract cannot be applied",
            store=store_name,
            remote_key=remote_key,
            fix="store a JSON object or remove the property",
        ) from None


def _as_object(value: Any, *, remote_key: str, store_name: str) -> Mapping[str, Any]:
    document = _parse_json(value, remote_key=remote_key, store_name=store_name)
    if not isinstance(document, Mapping):
        raise InvalidValueError(
            "value is not a JSON object, so dataFrom.extract cannot import its fields",
            store=store_name,
            remote_key=remote_key,
            fix="store a JSON object or use spec.data with a secretKey",
        )
    return document


def _render(value: Any) -> bytes:
    """Render a selected value: strings as their UTF-8 bytes, anything else as compact JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode()
