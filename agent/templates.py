"""Templates: files rendered from `spec.target.template.data` with sandboxed Jinja2.

Each entry of `spec.target.template.data` maps a file name to a Jinja2 template. The template's
context contains every secret key of the snapshot in `data` (`{{ data["db-password"] }}`), and
each secret key that is an ASCII identifier also as a variable (`{{ password }}`, `{{ pass }}`),
except the names Jinja2 reads otherwise (`true`, `not`, `self`, ...). A template that writes one
of those as a variable while a secret key has that name is an error. Values are UTF-8
text. A value that is not valid UTF-8 can only go through `b64encode`, and any other use of it is
an error.
`mergePolicy: Replace` (the default) makes the rendered files the whole target. `Merge` writes
them next to the fetched secret keys, and a template wins over a secret key with the same name.
A template without any `data` leaves the fetched secret keys as they are, as External Secrets
Operator does.

Guarantees:
- Templates run in `ImmutableSandboxedEnvironment`: no attribute starting with `_`, no method
  that modifies a value, no `include`, `import` or `extends`.
- Every rendering is bounded (`agent.template_sandbox`): a rendered file has at most 1 MiB,
  no value built on the way is larger, ints have at most 8192 bits, and one rendering stops
  after 2 seconds. A template that crosses a bound fails like any other template error.
- A missing secret key is an error (`StrictUndefined`), never `<no value>` or an empty string.
  Every error names the ExternalSecret, the template and, where it applies, the line and the
  missing secret key. `render_files` then raises and the target keeps its previous generation.
- Error messages never contain a value. Jinja's own message is shown only for syntax errors,
  whose token quotes come from the template text (a name inside `{{ }}` or `{% %}`), never
  from a secret value. A runtime error shows only the line and the kind of error, because
  Python's messages can quote the operand (`invalid literal for int(): '...'`).

Templates are Jinja2, not External Secrets Operator's Go templates: `{{ .password }}` and
`{{ index . "db-password" }}` are syntax errors here, and `check_template` names the fix.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import re
import shlex
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from jinja2 import nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import (
    TemplateError as JinjaTemplateError,
)
from jinja2.runtime import StrictUndefined, Undefined
from jinja2.utils import missing

from agent.errors import AgentError, shorten_name
from agent.models import TargetTemplate
from agent.template_sandbox import (
    MAX_OUTPUT_BYTES,
    BoundedEnvironment,
    LimitExceeded,
    check_deadline,
    check_serializer_input,
    render_limits,
)
from agent.writer import check_secret_key

if TYPE_CHECKING:
    from jinja2 import Template

    from agent.declarations import ExternalSecretDeclaration

TEMPLATE_FIELD = "spec.target.template.data"
# The context variable that contains every secret key. A secret key with this name is only in it.
DATA_VARIABLE = "data"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Names that Jinja2 reads as something other than a context variable, so a secret key with such
# a name is only in `data`. Python keywords are not among them: Jinja2 compiles each template
# name to a prefixed Python name, so `{{ pass }}` reads the variable `pass` (Jinja2 3.1).
_JINJA_MEANINGS = {
    **{name: f"the constant {name}" for name in ("true", "false", "none", "True", "False", "None")},
    "not": "the operator not",
    "self": "the template itself",
    DATA_VARIABLE: "the mapping of every secret key",
}
# The names above that still compile where a value is expected, so using one renders something
# other than the secret key without an error. `data` is left out because it is documented.
_SHADOWED_NAMES = frozenset(set(_JINJA_MEANINGS) - {"not", DATA_VARIABLE})
# External Secrets Operator's Go template actions: `{{ .key }}`, `{{ $var }}`, `{{ index . "k" }}`,
# `{{ range ... }}` and `{{ end }}`. Checked only when Jinja2 rejects the template.
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.|\$|index\s|printf\s|range\s|with\s|define\s|template\s|end\s*-?\}\})"
)
_MAX_KEYS_LISTED = 20
# Filters written as Python loops over characters check the deadline once per this many.
_CHECK_EVERY_CHARACTERS = 4096
_ANY_GO_HINT = (
    "this looks like an External Secrets Operator Go template, but secrets-agent renders "
    'Jinja2: write {{ password }} or {{ data["db-password"] }} instead of {{ .password }} or '
    '{{ index . "db-password" }}, and {% for %}...{% endfor %} instead of {{ range }}...{{ end }}'
)


# --- errors --------------------------------------------------------------------------------------


class TemplateError(AgentError):
    """A template of one ExternalSecret failed to compile or render. The message has no value.

    `template` is the file name in `spec.target.template.data`, `line` the 1-based line in the
    template when known, `key` the missing secret key when that was the problem.
    """

    # Rendering again gives the same result until the declaration or a remote value changes.
    transient = False

    def __init__(
        self,
        problem: str,
        *,
        external_secret: str,
        template: str,
        line: int | None = None,
        key: str | None = None,
        fix: str = "",
    ) -> None:
        self.problem = problem
        self.external_secret = external_secret
        self.template = template
        self.line = line
        self.key = key
        self.fix = fix
        where = f"ExternalSecret {external_secret}: {template_field(shorten_name(template))}"
        if line is not None:
            where += f" line {line}"
        text = f"{where}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class TemplateErrors(AgentError):
    """Every template of one target that failed in one rendering."""

    transient = False

    def __init__(self, errors: list[TemplateError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


@dataclass(frozen=True)
class TemplateProblem:
    """A problem `check_template` found, in the loader's terms: field path, problem and fix."""

    field: str
    problem: str
    fix: str


def template_field(name: str) -> str:
    """Return the field path of one template: `spec.target.template.data["app.properties"]`."""
    if _PLAIN_NAME.fullmatch(name):
        return f"{TEMPLATE_FIELD}.{name}"
    return f"{TEMPLATE_FIELD}[{json.dumps(name)}]"


class _ShownProblem(Exception):
    """A rendering problem whose message was written here and contains no value."""

    def __init__(self, problem: str, *, fix: str = "", key: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        self.key = key
        super().__init__(problem)


# --- values in the context -----------------------------------------------------------------------


class BinaryValue:
    """A secret value that is not valid UTF-8, so it cannot be placed in text as it is.

    `b64encode` accepts it; using it as text raises an error that names its source. The bytes
    are in a private attribute, which the sandbox keeps templates from reading.
    """

    __slots__ = ("_raw", "_source")

    def __init__(self, raw: bytes, *, source: str) -> None:
        self._raw = raw
        self._source = source

    def __str__(self) -> str:
        raise _ShownProblem(
            f"{self._source} is not UTF-8 text, so it cannot be written into a template",
            fix="pass it through b64encode, or store the value as text",
        )

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"<binary value: {self._source}, {len(self._raw)} bytes>"


def _template_value(raw: bytes, *, source: str) -> str | BinaryValue:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return BinaryValue(raw, source=source)


def variable_problem(key: str) -> str | None:
    """Return why secret key `key` is not also a template variable, or None when it is one."""
    if not key.isidentifier():
        return "it is not an identifier (letters, digits and '_', not starting with a digit)"
    if not key.isascii():
        # Python folds non-ASCII identifiers (NFKC), so two secret keys might become one variable.
        return "it contains characters outside ASCII"
    meaning = _JINJA_MEANINGS.get(key)
    if meaning is not None:
        return f"Jinja2 reads {key} as {meaning}"
    return None


def is_variable_name(key: str) -> bool:
    """True when secret key `key` is also available as a variable of its own in templates."""
    return variable_problem(key) is None


def _not_a_variable(key: str, line: int | None) -> _RenderFailure:
    """Report a template that names secret key `key`, which is not a variable, as a variable."""
    shown = shorten_name(key)
    return _RenderFailure(
        f"secret key {shown!r} cannot be read as a variable, because {variable_problem(key)}",
        fix=f'write data["{shown}"] to read the secret key',
        line=line,
        key=key,
    )


def template_context(data: Mapping[str, bytes]) -> dict[str, Any]:
    """Build a template's context: `data` with every secret key, and a variable per name."""
    values = {
        key: _template_value(raw, source=f"secret key {shorten_name(key)!r}")
        for key, raw in data.items()
    }
    context: dict[str, Any] = {key: value for key, value in values.items() if is_variable_name(key)}
    context[DATA_VARIABLE] = values
    return context


# --- filters -------------------------------------------------------------------------------------


def b64encode(value: Any) -> str:
    """Encode a value (text as UTF-8, or a binary value as it is) in standard base64."""
    if isinstance(value, BinaryValue):
        raw = value._raw
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = str(value).encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def b64decode(value: Any) -> str | BinaryValue:
    """Decode standard base64 (line breaks and missing padding allowed) into text.

    Returns a BinaryValue when the decoded bytes are not UTF-8, so they can still be encoded
    again but never written as text by accident.
    """
    text = "".join(_text(value, "b64decode").split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _ShownProblem(
            "b64decode was given a value that is not valid base64",
            fix="check that the secret value is base64 encoded, or remove b64decode",
        ) from None
    return _template_value(raw, source="the output of b64decode")


def to_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """Render a value as JSON: strings quoted and escaped, mappings and lists as JSON too.

    Unlike Jinja2's built-in `tojson`, it does not escape `<`, `>`, `&` and `'` for HTML.
    """
    return json.dumps(
        _plain(value, "to_json"), indent=indent, sort_keys=sort_keys, ensure_ascii=False
    )


def from_json(value: Any) -> Any:
    """Parse a JSON text (for example a secret value holding a JSON object) into a value."""
    try:
        return json.loads(_text(value, "from_json"))
    except json.JSONDecodeError:
        # The decoder's message gives a position only, but the value stays out of it anyway.
        raise _ShownProblem(
            "from_json was given a value that is not valid JSON",
            fix="check that the secret value is JSON, or remove from_json",
        ) from None


class _DeadlineStream(io.StringIO):
    """A text buffer that checks the rendering's deadline on every write of PyYAML's emitter."""

    def write(self, text: str) -> int:
        check_deadline()
        return super().write(text)


def to_yaml(value: Any) -> str:
    """Render a value as YAML: a string as one double-quoted scalar, a mapping or list as a block.

    The result has no trailing newline, so `key: {{ password | to_yaml }}` stays on one line.
    Raises LimitExceeded for an input above MAX_SERIALIZER_INPUT, and checks the deadline as it
    writes.
    """
    check_serializer_input(value, "the to_yaml filter")
    plain = _plain(value, "to_yaml")
    stream = _DeadlineStream()
    if isinstance(plain, str):
        yaml.safe_dump(plain, stream, default_style='"', allow_unicode=True, width=float("inf"))
    else:
        yaml.safe_dump(
            plain,
            stream,
            default_flow_style=False,
            allow_unicode=True,
            sort_keys=False,
            width=float("inf"),
        )
    text = stream.getvalue()
    # A scalar document ends with the "..." marker line, which a value inside a file must not have.
    return text.removesuffix("\n").removesuffix("\n...").rstrip("\n")


# Characters Java's Properties.store() escapes with a backslash in keys and values.
_PROPERTIES_SPECIAL = {
    "\\": "\\\\",
    "\t": "\\t",
    "\n": "\\n",
    "\r": "\\r",
    "\f": "\\f",
    "=": "\\=",
    ":": "\\:",
    "#": "\\#",
    "!": "\\!",
}


def properties(value: Any, key: bool = False) -> str:
    """Escape a value (or, with `key=True`, a key) for a Java `.properties` file.

    Follows Java's `Properties.store()`. `\\`, `=`, `:`, `#` and `!` get a backslash. Tab,
    newline, carriage return and form feed become `\\t`, `\\n`, `\\r` and `\\f`. A leading
    space (every space in a key) becomes `\\ `. Every other character outside printable ASCII
    becomes `\\uXXXX`, or two such escapes (a UTF-16 surrogate pair) above U+FFFF. The output
    is pure ASCII, so it reads the same whether the reader expects ISO-8859-1, as
    `Properties.load(InputStream)` does, or UTF-8.
    """
    text = _text(value, "properties")
    out: list[str] = []
    length = 0  # characters in out[:counted]
    counted = 0
    for index, char in enumerate(text):
        # One character can become 12 (a surrogate pair of \\uXXXX), and the loop is Python,
        # so a 1 MiB value needs the deadline and an output bound on the way.
        if index % _CHECK_EVERY_CHARACTERS == 0:
            check_deadline()
            length += sum(len(piece) for piece in out[counted:])
            counted = len(out)
            if length > MAX_OUTPUT_BYTES:
                raise LimitExceeded(
                    f"the output of the properties filter would be larger than "
                    f"{MAX_OUTPUT_BYTES} characters (1 MiB)",
                    "pass a smaller value to properties",
                )
        if char in _PROPERTIES_SPECIAL:
            out.append(_PROPERTIES_SPECIAL[char])
        elif char == " ":
            out.append("\\ " if key or index == 0 else " ")
        elif " " < char <= "~":
            out.append(char)
        else:
            out.extend(f"\\u{unit:04X}" for unit in _utf16_units(char))
    return "".join(out)


def _utf16_units(char: str) -> Iterator[int]:
    encoded = char.encode("utf-16-be", "surrogatepass")
    for offset in range(0, len(encoded), 2):
        yield int.from_bytes(encoded[offset : offset + 2], "big")


_DOTENV_SPECIAL = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def dotenv(value: Any) -> str:
    """Quote a value for a `.env` file: double quotes, with `\\\\`, `\\"`, `\\n` and `\\r`.

    This is the form python-dotenv and the dotenv readers like it decode. `$` is left as it
    is, because no escape for it works in every reader (see docs/templates.md).
    """
    text = _text(value, "dotenv")
    return '"' + "".join(_DOTENV_SPECIAL.get(char, char) for char in text) + '"'


def shell(value: Any) -> str:
    """Quote a value for a POSIX shell, such as a file the application runs with `.` (source)."""
    return shlex.quote(_text(value, "shell"))


FILTERS: dict[str, Callable[..., Any]] = {
    "b64encode": b64encode,
    "b64decode": b64decode,
    # The names External Secrets Operator's templates use, so a migrated template keeps them.
    "b64enc": b64encode,
    "b64dec": b64decode,
    "to_json": to_json,
    "from_json": from_json,
    "to_yaml": to_yaml,
    "properties": properties,
    "dotenv": dotenv,
    "shell": shell,
}


def _text(value: Any, filter_name: str) -> str:
    if isinstance(value, BinaryValue):
        str(value)  # raises the error that names the value's source
    if isinstance(value, StrictUndefined):
        str(value)  # raises the missing-key error
    if not isinstance(value, str):
        raise _ShownProblem(
            f"{filter_name} expects text, not {_kind(value)}",
            fix="apply it to one value, e.g. {{ password | " + filter_name + " }}",
        )
    return value


def _plain(value: Any, filter_name: str) -> Any:
    """Copy `value` into plain JSON types, raising for binary values and other objects."""
    if isinstance(value, BinaryValue | StrictUndefined):
        str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item, filter_name) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [_plain(item, filter_name) for item in value]
    raise _ShownProblem(f"{filter_name} cannot render {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a value of type {type(value).__name__}"


# --- the environment -----------------------------------------------------------------------------


class _MissingName(UndefinedError):
    """A template used a name or item that does not exist; `owner` is what it was looked up in."""

    def __init__(self, name: Any, owner: Any) -> None:
        self.name = name
        self.owner = owner
        super().__init__("undefined name")


class _Blocked(SecurityError):
    """A template used an attribute or method that the sandbox does not allow."""

    def __init__(self, name: Any) -> None:
        self.name = name
        super().__init__("unsafe attribute")


class _MissingKey(StrictUndefined):
    """StrictUndefined that raises _MissingName, which carries the missing name."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if issubclass(self._undefined_exception, SecurityError):
            # The sandbox returns an undefined value of this kind for an unsafe attribute.
            raise _Blocked(self._undefined_name)
        raise _MissingName(self._undefined_name, self._undefined_obj)


# Jinja2 binds the operators of Undefined (`__str__`, `__add__`, `__iter__`, ...) to its own
# `_fail_with_undefined_error` function, so overriding the method alone would not reach them.
for _name, _member in [*vars(Undefined).items(), *vars(StrictUndefined).items()]:
    if _member is Undefined._fail_with_undefined_error:
        setattr(_MissingKey, _name, _MissingKey._fail_with_undefined_error)


def _environment() -> BoundedEnvironment:
    environment = BoundedEnvironment(
        undefined=_MissingKey,
        autoescape=False,
        # A file template ends with the newline its author wrote.
        keep_trailing_newline=True,
        # A block tag on a line of its own leaves no blank line or indentation behind.
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    environment.bound_filters()
    return environment


_ENVIRONMENT = _environment()
_NOT_ALLOWED_NODES = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


@dataclass(frozen=True)
class _Compiled:
    """One template compiled, or the reason it could not be."""

    name: str
    source: str
    template: Template | None
    problem: str = ""
    fix: str = ""
    line: int | None = None
    # Where the template uses a name that Jinja2 reads as something other than a variable (the
    # constants and `self`, or `not` when the template does not compile), with the line.
    value_names: tuple[tuple[str, int], ...] = ()


def _value_names(source: str, names: frozenset[str]) -> tuple[tuple[str, int], ...]:
    """Find where `source` uses one of `names` where a value is expected, with the line.

    A name after `.` or `|` is an attribute or a filter, and one after `is` or `is not` is a
    test (`x is none`), so those are skipped.
    """
    try:
        tokens = [token for token in _ENVIRONMENT.lex(source) if token[1] != "whitespace"]
    except TemplateSyntaxError:
        return ()
    found = []
    for index, (line, kind, value) in enumerate(tokens):
        if kind != "name" or value not in names:
            continue
        before = [token[1:] for token in tokens[max(0, index - 2) : index]]
        if before[-1:] in ([("operator", ".")], [("operator", "|")], [("name", "is")]):
            continue
        if before == [("name", "is"), ("name", "not")]:
            continue
        found.append((value, line))
    return tuple(found)


def _compile(name: str, source: str) -> _Compiled:
    filename = template_field(name)
    try:
        tree = _ENVIRONMENT.parse(source, name=name, filename=filename)
        for node in tree.find_all(_NOT_ALLOWED_NODES):
            statement = type(node).__name__.lower().replace("fromimport", "from ... import")
            return _Compiled(
                name,
                source,
                None,
                f"{statement} is not supported",
                "write everything the file needs in this template",
                node.lineno,
            )
        code = _ENVIRONMENT.compile(source, name=name, filename=filename)
    except TemplateSyntaxError as error:
        go_action = _GO_ACTION.search(source)
        if go_action is not None:
            line = source.count("\n", 0, go_action.start()) + 1
            return _Compiled(name, source, None, "invalid Jinja2 syntax", _ANY_GO_HINT, line)
        problem = f"invalid Jinja2 syntax: {error.message}"
        # `{{ not }}`, converted from `{{ .not }}`, is a syntax error because `not` is an operator.
        operators = _value_names(source, frozenset({"not"}))
        return _Compiled(
            name, source, None, problem, "fix the template", error.lineno, value_names=operators
        )
    template = _ENVIRONMENT.template_class.from_code(
        _ENVIRONMENT, code, _ENVIRONMENT.make_globals(None)
    )
    return _Compiled(name, source, template, value_names=_value_names(source, _SHADOWED_NAMES))


@functools.lru_cache(maxsize=512)
def _compiled(name: str, source: str) -> _Compiled:
    """Compile each distinct template once; the sync loop renders it every refresh."""
    return _compile(name, source)


# --- checking declarations -----------------------------------------------------------------------


def check_template(
    template: TargetTemplate | None, *, secret_keys: Sequence[str], allow_nested: bool
) -> list[TemplateProblem]:
    """Check a declaration's templates before anything is fetched: names and syntax.

    Each template name must be a safe secret key (the writer's rule) and, with mergePolicy
    Merge, must not be a file where a `spec.data` secret key needs a directory or the reverse.
    Each template must compile. `secret_keys` are the declaration's `spec.data` secret keys.
    """
    if template is None:
        return []
    problems: list[TemplateProblem] = []
    names = list(template.data)
    for name in names:
        field = template_field(shorten_name(name))
        reason = check_secret_key(name, allow_nested=allow_nested)
        if reason is not None:
            fix = "use a plain file name such as application.properties"
            if "/" in name and not allow_nested:
                fix += ", or turn on nested keys (--nested-keys)"
            problem = f"template name {shorten_name(name)!r} {reason}"
            problems.append(TemplateProblem(field, problem, fix))
            continue
        clash = _directory_clash(name, names, secret_keys, merge=template.merge_policy == "Merge")
        if clash:
            fix = "rename one of them, because a name is either a file or a directory"
            problems.append(TemplateProblem(field, clash, fix))
        compiled = _compiled(name, template.data[name])
        if compiled.template is None:
            where = f"line {compiled.line}: " if compiled.line is not None else ""
            problems.append(TemplateProblem(field, where + compiled.problem, compiled.fix))
        # Only `spec.data` secret keys are known before fetching; rendering checks the others.
        for key, line in compiled.value_names:
            if key in secret_keys:
                failure = _not_a_variable(key, line)
                problems.append(
                    TemplateProblem(field, f"line {line}: {failure.problem}", failure.fix)
                )
    return problems


def _directory_clash(
    name: str, names: Sequence[str], secret_keys: Sequence[str], *, merge: bool
) -> str:
    """Describe a name that is a file of one entry and a directory of another, or return ""."""
    others = [("template", other) for other in names if other != name]
    if merge:
        others += [("spec.data secret key", key) for key in secret_keys]
    shown = repr(shorten_name(name))
    for kind, other in others:
        other_shown = repr(shorten_name(other))
        if other.startswith(name + "/"):
            return f"template name {shown} is also a directory of {kind} {other_shown}"
        if name.startswith(other + "/"):
            return f"template name {shown} is inside {other_shown}, a file of {kind} {other_shown}"
    return ""


# --- rendering -----------------------------------------------------------------------------------


def render_files(
    declaration: ExternalSecretDeclaration, data: Mapping[str, bytes]
) -> Mapping[str, bytes]:
    """Return the files of a target: `data` with the declaration's templates applied.

    Without templates (no `spec.target.template`, or one without `data`) this returns `data`.
    Raises TemplateErrors, naming every failed template, when any template fails.
    """
    template = declaration.spec.target.template
    if template is None or not template.data:
        return data
    context = template_context(data)
    files: dict[str, bytes] = dict(data) if template.merge_policy == "Merge" else {}
    errors: list[TemplateError] = []
    for name, source in template.data.items():
        try:
            files[name] = render_one(name, source, context)
        except _RenderFailure as failure:
            errors.append(
                TemplateError(
                    failure.problem,
                    external_secret=declaration.name,
                    template=name,
                    line=failure.line,
                    key=failure.key,
                    fix=failure.fix,
                )
            )
    if errors:
        raise TemplateErrors(errors)
    return files


class _RenderFailure(Exception):
    def __init__(self, problem: str, *, fix: str, line: int | None, key: str | None = None):
        self.problem = problem
        self.fix = fix
        self.line = line
        self.key = key
        super().__init__(problem)


def render_one(name: str, source: str, context: Mapping[str, Any]) -> bytes:
    """Render one template with a `template_context` to UTF-8 bytes.

    Raises _RenderFailure, whose message contains no value.
    """
    compiled = _compiled(name, source)
    data = context[DATA_VARIABLE]
    for key, line in compiled.value_names:
        if key in data:
            raise _not_a_variable(key, line)
    if compiled.template is None:
        raise _RenderFailure(compiled.problem, fix=compiled.fix, line=compiled.line)
    try:
        with render_limits():
            return _generate(compiled.template, context)
    except Exception as error:  # every failure becomes a message without the error's own text
        raise _describe_failure(error, compiled, context[DATA_VARIABLE]) from None


def _generate(template: Template, context: Mapping[str, Any]) -> bytes:
    """Render `template` piece by piece, stopping once the file passes MAX_OUTPUT_BYTES."""
    pieces: list[str] = []
    length = 0
    for piece in template.generate(context):
        length += len(piece)  # characters; each is at least one byte of UTF-8
        if length > MAX_OUTPUT_BYTES:
            raise _output_too_large()
        pieces.append(piece)
    rendered = "".join(pieces).encode("utf-8")
    if len(rendered) > MAX_OUTPUT_BYTES:
        raise _output_too_large()
    return rendered


def _output_too_large() -> LimitExceeded:
    return LimitExceeded(
        f"the rendered file is larger than {MAX_OUTPUT_BYTES} bytes (1 MiB)",
        "write less into one file, or split it into several templates",
    )


def _describe_failure(
    error: Exception, compiled: _Compiled, data: Mapping[str, Any]
) -> _RenderFailure:
    line = _template_line(error, template_field(compiled.name))
    if isinstance(error, _MissingName):
        return _missing_name(error, compiled.source, data, line)
    if isinstance(error, _ShownProblem):
        return _RenderFailure(error.problem, fix=error.fix, line=line, key=error.key)
    if isinstance(error, LimitExceeded):
        return _RenderFailure(error.problem, fix=error.fix, line=line)
    if isinstance(error, SecurityError):
        name = getattr(error, "name", None)
        in_source = isinstance(name, str) and name in compiled.source
        shown = f" {shorten_name(name)!r}" if in_source else ""
        return _RenderFailure(
            f"the sandbox blocked the attribute or method{shown}",
            fix="templates may not use names starting with '_' or methods that change a value",
            line=line,
        )
    if isinstance(error, UnicodeEncodeError):
        return _RenderFailure(
            "the output is not valid Unicode text", fix="check string escapes", line=line
        )
    if isinstance(error, JinjaTemplateError):
        kind = type(error).__name__
    else:
        kind = f"{type(error).__name__} while evaluating an expression"
    # Python's messages can quote an operand, so only the kind of error is reported.
    return _RenderFailure(
        f"{kind} (the details are not shown because they may contain a secret value)",
        fix="check the expressions on that line",
        line=line,
    )


def _missing_name(
    error: _MissingName, source: str, data: Mapping[str, Any], line: int | None
) -> _RenderFailure:
    # A name computed by the template (`data[password]`) may be a value: quote only names that
    # are written in the template.
    name = error.name if isinstance(error.name, str) and error.name in source else None
    shown = repr(shorten_name(name)) if name is not None else "(a name computed by the template)"
    owner = error.owner
    if owner is missing and name is not None and name in data:
        # The secret key exists but has no variable (a non-ASCII name, for example).
        return _not_a_variable(name, line)
    if owner is missing or owner is data:
        available = sorted(data)
        keys = ", ".join(shorten_name(key) for key in available[:_MAX_KEYS_LISTED]) or "none"
        if len(available) > _MAX_KEYS_LISTED:
            keys += f" and {len(available) - _MAX_KEYS_LISTED} more"
        fix = (
            "check the name, and declare it in spec.data or spec.dataFrom "
            f"(secret keys of this target: {keys})"
        )
        if name is not None and not is_variable_name(name) and name != DATA_VARIABLE:
            fix += f'; a name that is not a valid variable needs data["{shorten_name(name)}"]'
        return _RenderFailure(f"secret key {shown} is missing", fix=fix, line=line, key=name)
    return _RenderFailure(
        f"{_kind(owner)} has no attribute or item {shown}",
        fix="check the expression",
        line=line,
    )


def _template_line(error: BaseException, filename: str) -> int | None:
    """Find the template line an error happened on; Jinja2 maps its frames to template lines."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line
