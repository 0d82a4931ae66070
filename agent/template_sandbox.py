"""The template sandbox: Jinja2's immutable sandbox with bounds on memory, output and CPU time.

Templates come from the declarations, and a careless or hostile one must not freeze the agent.
A big-int power or a `str.center(10**9)` runs as one C call that holds the GIL, so /livez,
SIGTERM and every other target stop with it. So every operation that can build a large value
in one call is checked with a size estimate *before* it runs:

- `*`, `**` and `+` on ints: the result may have at most `MAX_INT_BITS` bits.
- `*` and `+` on strings, lists and tuples, `~`, `%` formatting, every filter, every method
  or function call and every `{{ }}` output are checked. Each argument and the estimated
  result may hold at most `MAX_OUTPUT_BYTES` characters (items for a list). An int argument
  may not exceed it either (`center(10**9)`, `to_bytes(10**9)`, `indent(10**9)`). A format
  string's widths count as well (`"{:1000000000}"`), and so does each field that repeats an
  argument.
- List, tuple and dict literals are checked by their expanded size, which counts a value
  each time it occurs, so `[xs, xs]` nested a few levels deep cannot build a value that takes
  minutes to compare, sort or print in one C call. The arguments of one call count together.
- The values that calls, filters, operators and literals build in one rendering add up to at most
  `MAX_BUILT_BYTES`, so a loop of calls that are each under the bound cannot fill memory.
- One rendering may run for at most `MAX_RENDER_SECONDS`: every `{% for %}` loop checks the
  deadline each `_CHECK_EVERY` items, and every call, filter, operator and attribute lookup
  checks it too.

A template that crosses a bound raises `LimitExceeded` with a message that names the bound and
never a value. The bounds apply to one rendering, set up by `render_limits`.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

# Largest rendered file, in bytes: the size limit of a Kubernetes Secret (1 MiB), which also
# bounds every string or list a template builds on the way.
MAX_OUTPUT_BYTES = 1024 * 1024
# Largest int a template may compute: 8192 bits (about 2,466 decimal digits).
MAX_INT_BITS = 8192
# Time one rendering of one template may take, on the monotonic clock (so time spent waiting
# for the GIL counts too). Templates render small configuration files in milliseconds.
MAX_RENDER_SECONDS = 2.0
# Total size of the values that calls, filters and operators may build in one rendering, so a
# loop of calls that are each under the bound cannot fill memory before the deadline.
MAX_BUILT_BYTES = 64 * MAX_OUTPUT_BYTES
# Largest input, in characters or items as `size_of` estimates them, of a filter that serialises
# a value in pure Python (to_yaml, pprint) without checking the deadline on the way. to_yaml of
# 1,000,000 NUL characters took about 6 seconds and pprint of 200,000 ints about 1.6 seconds
# (Python 3.11, PyYAML 6.0.4, a 2-core VM), so a quarter of MAX_OUTPUT_BYTES stays well inside
# the deadline.
MAX_SERIALIZER_INPUT = MAX_OUTPUT_BYTES // 4
# Loops check the deadline once per this many items.
_CHECK_EVERY = 256


class LimitExceeded(SecurityError):
    """A rendering crossed one of the sandbox's bounds; `problem` and `fix` contain no value."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem)


@dataclass
class _Limits:
    deadline: float
    built: int = 0


_CURRENT: contextvars.ContextVar[_Limits | None] = contextvars.ContextVar(
    "template_limits", default=None
)


@contextlib.contextmanager
def render_limits() -> Iterator[None]:
    """Apply the deadline of one rendering (`MAX_RENDER_SECONDS` from now) inside the block."""
    token = _CURRENT.set(_Limits(deadline=time.monotonic() + MAX_RENDER_SECONDS))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def check_deadline() -> None:
    """Raise LimitExceeded when the current rendering is past its deadline."""
    limits = _CURRENT.get()
    if limits is not None and time.monotonic() > limits.deadline:
        raise LimitExceeded(
            f"rendering took longer than {MAX_RENDER_SECONDS:g} seconds",
            "make the template's loops shorter; templates should render a file in milliseconds",
        )


def _too_large(what: str) -> LimitExceeded:
    return LimitExceeded(
        f"{what} would be larger than {MAX_OUTPUT_BYTES} characters or items (1 MiB)",
        "keep every value and the rendered file under 1 MiB",
    )


def _int_too_large() -> LimitExceeded:
    return LimitExceeded(
        f"an integer would have more than {MAX_INT_BITS} bits",
        "use smaller numbers",
    )


def size_of(value: Any, *, limit: int = MAX_OUTPUT_BYTES) -> int:
    """Estimate the characters `str(value)` has, or the items it holds; stop past `limit`.

    Strings count their length, ints their decimal digits, containers the sum of their items
    (plus one per item for separators). Dict views and Jinja namespaces count as containers,
    because comparing or printing them walks their items too. The walk stops as soon as the sum
    passes `limit`, so it costs at most about `limit` steps even for a list that refers to one
    string many times.
    """
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    if isinstance(value, Namespace):
        # A namespace's repr() contains its attributes, so it is as large as their dict.
        value = value._Namespace__attrs
    if isinstance(value, Mapping | ItemsView):
        pairs = value.items() if isinstance(value, Mapping) else value
        items: Iterable[Any] = (part for pair in pairs for part in pair)
    elif isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView):
        items = value
    else:
        return 32  # floats, ranges and other small objects; their str() is short
    total = 2
    for item in items:
        total += size_of(item, limit=limit - total) + 2
        if total > limit:
            break
    return total


def _check_size(value: Any, what: str) -> None:
    if size_of(value) > MAX_OUTPUT_BYTES:
        raise _too_large(what)


def _check_result(value: Any, what: str) -> None:
    """Check a value a call built, and add its size to the rendering's total."""
    size = size_of(value)
    if size > MAX_OUTPUT_BYTES:
        raise _too_large(what)
    limits = _CURRENT.get()
    if limits is None or not isinstance(value, str | bytes | list | tuple | dict):
        return
    limits.built += size
    if limits.built > MAX_BUILT_BYTES:
        raise LimitExceeded(
            f"the template built more than {MAX_BUILT_BYTES // MAX_OUTPUT_BYTES} MiB of values",
            "make the template's loops shorter or its values smaller",
        )


def _check_arguments(args: Iterable[Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Reject an int argument above the output bound, and arguments above the size bound.

    The arguments count together, because a macro receives them as one `varargs` tuple that
    it can store in a namespace.
    """
    total = 0
    for argument in [*args, *kwargs.values()]:
        if isinstance(argument, int) and not isinstance(argument, bool):
            if abs(argument) > MAX_OUTPUT_BYTES:
                raise LimitExceeded(
                    f"{what} was given a number above {MAX_OUTPUT_BYTES}, which could build a "
                    "value larger than 1 MiB",
                    "use smaller widths, counts and lengths",
                )
        total += size_of(argument, limit=MAX_OUTPUT_BYTES - total)
        if total > MAX_OUTPUT_BYTES:
            raise _too_large(f"the arguments of {what}")


def _format_size(format_string: str, arguments: Iterable[Any]) -> int:
    """Estimate the length of `format_string` formatted with `arguments` (`%` or `str.format`).

    Every field may repeat the largest argument, and every number in the format string may be a
    width, so the estimate is: length + fields x largest argument + sum of all numbers.
    """
    largest = max((size_of(argument) for argument in arguments), default=0)
    fields = format_string.count("%") + format_string.count("{")
    numbers = 0
    digits = ""
    for character in format_string + " ":
        if character.isdigit():
            digits += character
            if len(digits) > 7:  # more than 9,999,999 is above any bound here
                return MAX_OUTPUT_BYTES + 1
        elif digits:
            numbers += int(digits)
            digits = ""
    return len(format_string) + fields * largest + numbers


def _check_format(format_string: str, arguments: Iterable[Any], what: str) -> None:
    if _format_size(format_string, list(arguments)) > MAX_OUTPUT_BYTES:
        raise _too_large(what)


def _arguments_of(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, tuple):
        return list(value)
    return [value]


def _estimate_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict) -> None:
    """Estimate the result of the str methods whose output can outgrow their inputs."""
    if not isinstance(owner, str):
        return
    if name in ("format", "format_map"):
        _check_format(owner, [*args, *kwargs.values(), *_flatten(args)], f"str.{name}")
    elif name == "join" and args:
        total = size_of(args[0]) + len(owner) * min(size_of(args[0]), MAX_OUTPUT_BYTES + 1)
        if total > MAX_OUTPUT_BYTES:
            raise _too_large("str.join")
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str):
            occurrences = len(owner) // max(len(old), 1) + 1
            if len(owner) + occurrences * len(new) > MAX_OUTPUT_BYTES:
                raise _too_large("str.replace")
    elif name == "expandtabs":
        width = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(width, int) and len(owner) * max(width, 1) > MAX_OUTPUT_BYTES:
            raise _too_large("str.expandtabs")


def _flatten(args: tuple[Any, ...]) -> list[Any]:
    # `"{0[a]}".format(mapping)` reaches items of a mapping argument.
    return [
        item for argument in args if isinstance(argument, Mapping) for item in argument.values()
    ]


# Filters whose output can be much larger than their input, with an estimate of its size.
def _estimate_filter(name: str, args: tuple[Any, ...], kwargs: dict) -> None:
    if not args:
        return
    value, rest = args[0], args[1:]
    if name == "join":
        separator = rest[0] if rest else kwargs.get("d", "")
        count = min(size_of(value), MAX_OUTPUT_BYTES + 1)
        if size_of(value) + size_of(separator) * count > MAX_OUTPUT_BYTES:
            raise _too_large("the join filter")
    elif name == "replace" and len(rest) >= 2 and isinstance(value, str):
        occurrences = len(value) // max(size_of(rest[0]), 1) + 1
        if len(value) + occurrences * size_of(rest[1]) > MAX_OUTPUT_BYTES:
            raise _too_large("the replace filter")
    elif name == "indent" and isinstance(value, str):
        prefix = rest[0] if rest else kwargs.get("width", 4)
        prefix_size = size_of(prefix) if isinstance(prefix, str) else max(int(prefix), 0)
        if len(value) + (value.count("\n") + 1) * prefix_size > MAX_OUTPUT_BYTES:
            raise _too_large("the indent filter")
    elif name == "wordwrap" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 79)
        wrapstring = rest[2] if len(rest) > 2 else kwargs.get("wrapstring")
        lines = len(value) // max(int(width), 1) + value.count("\n") + 1
        if len(value) + lines * size_of(wrapstring or "\n") > MAX_OUTPUT_BYTES:
            raise _too_large("the wordwrap filter")
    elif name == "format" and isinstance(value, str):
        _check_format(value, [*rest, *kwargs.values()], "the format filter")
    elif name in ("pprint", "to_yaml"):
        check_serializer_input(value, f"the {name} filter")


def check_serializer_input(value: Any, what: str) -> None:
    """Raise LimitExceeded when `value` is above MAX_SERIALIZER_INPUT for a Python serialiser."""
    if size_of(value, limit=MAX_SERIALIZER_INPUT) > MAX_SERIALIZER_INPUT:
        raise LimitExceeded(
            f"the input of {what} is larger than {MAX_SERIALIZER_INPUT} characters or items",
            "pass it a smaller value, or use to_json, whose output is valid YAML too",
        )


def _bounded_filter(name: str, function: Any) -> Any:
    """Wrap a filter with the deadline, argument and size checks, and check its result."""
    # NOTE: _PassArg is Jinja's private marker for filters that take the context or environment
    # first (Jinja 3.1); a Jinja release that renames it breaks this import, not the bounds.
    skip = 0 if _PassArg.from_obj(function) is None else 1
    what = f"the {name} filter"

    def bounded(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        values = args[skip:]
        _check_arguments(values, kwargs, what)
        _estimate_filter(name, values, kwargs)
        result = function(*args, **kwargs)
        _check_result(result, f"the output of {what}")
        return result

    bounded.__name__ = getattr(function, "__name__", name)
    bounded.__doc__ = function.__doc__
    pass_arg = _PassArg.from_obj(function)
    if pass_arg is not None:
        bounded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` and list, tuple and dict literals checked.

    `~` goes through `BoundedEnvironment.bounded_concat`. Jinja's own `visit_Concat` also
    handles autoescaping, which templates here never turn on. Every literal that builds a value
    (`[a, b]`, `(a, b)`, `{"k": a}`) goes through `BoundedEnvironment.checked_literal`.
    """

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.checked_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        # A tuple in a store context is an assignment target (`{% for a, b in ... %}`).
        if node.ctx != "load":
            super().visit_Tuple(node, frame)
            return
        self.write("environment.checked_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.checked_literal(")
        super().visit_Dict(node, frame)
        self.write(")")


def _checked_items(iterable: Iterable[Any]) -> Iterator[Any]:
    for index, item in enumerate(iterable):
        if index % _CHECK_EVERY == 0:
            check_deadline()
        yield item


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds of this module applied to every rendering."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        # lipsum(n) builds n paragraphs in a loop that no hook checks, and a secret file has no
        # use for placeholder text.
        del self.globals["lipsum"]

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        # `{% for x in items %}` becomes `{% for x in environment.checked_iterable(items) %}`.
        for loop in tree.find_all(nodes.For):
            function = nodes.EnvironmentAttribute("checked_iterable", lineno=loop.lineno)
            loop.iter = nodes.Call(function, [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    def bound_filters(self) -> None:
        """Wrap every filter registered so far with the bounds; call after adding filters."""
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    @staticmethod
    def _finalize(value: Any) -> Any:
        # Called on each `{{ }}` value before str(): a list of many references to one large
        # string is small in memory but huge as text.
        check_deadline()
        _check_size(value, "a value written by {{ }}")
        return value

    def checked_iterable(self, iterable: Any) -> Iterator[Any]:
        """Return a `{% for %}` loop's iterable that checks the deadline as it goes."""
        check_deadline()
        return _checked_items(iter(iterable))

    def checked_literal(self, value: Any) -> Any:
        """Check a list, tuple or dict literal's expanded size; return it unchanged.

        A literal can refer to one value many times (`[xs, xs, xs]`), and nesting such literals
        multiplies the size of the value while its memory stays small. Comparing, sorting,
        hashing or printing it then walks every item in one C call that no deadline can stop.
        `size_of` counts a shared item each time it occurs and stops past the bound, so no value
        a template can reach is expensive to walk.
        """
        check_deadline()
        _check_result(value, "a list, tuple or dict literal")
        return value

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        """Join the operands of `~`, as Jinja does, after checking their total size."""
        check_deadline()
        total = sum(size_of(value) for value in values)
        if total > MAX_OUTPUT_BYTES:
            raise _too_large("the result of ~")
        result = str_join(values)
        _check_result(result, "the result of ~")
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_deadline()
        if operator in ("*", "**", "+"):
            _check_arithmetic(operator, left, right)
        elif operator == "%" and isinstance(left, str):
            _check_arguments(_arguments_of(right), {}, "% formatting")  # `%*d` takes a width
            _check_format(left, _arguments_of(right), "% formatting")
        result = super().call_binop(context, operator, left, right)
        _check_result(result, f"the result of {operator}")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        check_deadline()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_deadline()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        check_deadline()
        what = f"the call of {_callable_name(__obj)}"
        _check_arguments(args, kwargs, what)
        # The sandbox hands out its own wrapper for `str.format`; `__wrapped__` is the method.
        method = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(method, "__self__", None)
        if owner is not None:
            _estimate_method(owner, getattr(method, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_result(result, f"the result of {what}")
        return result


def _callable_name(function: Any) -> str:
    # Functions and methods have `__name__`, a Jinja macro has only `name`.
    for attribute in ("__name__", "name"):
        name = getattr(function, attribute, None)
        if isinstance(name, str):
            return name
    return "a function"


def _check_arithmetic(operator: str, left: Any, right: Any) -> None:
    """Estimate the size of `left <operator> right` for ints and sequences before computing it."""
    if _is_int(left) and _is_int(right):
        if operator == "**":
            if right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
                raise _int_too_large()
        elif (
            max(left.bit_length(), right.bit_length())
            + (min(left.bit_length(), right.bit_length()) if operator == "*" else 1)
            > MAX_INT_BITS
        ):
            raise _int_too_large()
        return
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and _is_int(count):
                if size_of(sequence) * max(count, 0) > MAX_OUTPUT_BYTES:
                    raise _too_large("a repetition with *")
    elif operator == "+" and isinstance(left, str | list | tuple):
        if size_of(left) + size_of(right) > MAX_OUTPUT_BYTES:
            raise _too_large("the result of +")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
