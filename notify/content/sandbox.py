"""What a template may cost: the sandbox that refuses huge values, and a watchdog for time.

jinja2's sandbox keeps a template away from Python's internals, but not from the machine: nested
`range(100000)` loops never end, and `"x" * 300000000` takes gigabytes. So:
- every operation that builds a string, a list or an integer from a size is refused past the output
  budget ([send] render_max_bytes) before anything is allocated: `*` (of sequences, and of integers:
  repeated squaring), `**`, `%` (each conversion's width and precision, `*` taking its value from the
  arguments, and each value printed), `+`, `~`, the concatenation of a block or a macro's output,
  str.center/ljust/rjust/zfill/expandtabs/replace/join/translate, str.format and format_map (each
  field's width once its nested fields are filled in), the center/indent (an integer or string
  width)/wordwrap (its wrapstring)/truncate/replace/join/format/batch/slice filters, and lipsum. A list
  weighs what printing it would (a million references to one long string weigh a million copies).
  Nothing else in the sandbox grows faster than its inputs (range is capped at 100,000 items by
  jinja2, and the immutable sandbox has no append), so a render's memory is a small multiple of the
  budget;
- the output is counted as it is produced, and refused past the budget;
- a watchdog thread interrupts a render that runs past its time ([send] render_timeout) with an
  asynchronous exception, which the interpreter delivers between bytecodes: jinja2's templates
  are Python code, and every operation that could take long in C is bounded by the sizes above.
"""

from __future__ import annotations

import ctypes
import re
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TIMEOUT = 2.0  # seconds a message's templates may take ([send] render_timeout)
DEFAULT_MAX_BYTES = 1_000_000  # characters one part may produce ([send] render_max_bytes)


class BudgetExceeded(Exception):
    """A render went past its time or output budget."""


class _Interrupted(BudgetExceeded):
    """Raised inside the rendering thread by the watchdog; its reason is on the budget."""


_NUMBER = re.compile(r"\d+")


class Namespace(dict[str, Any]):
    """`campaign` and `recipient` in templates: a dict that knows its name, for error messages. The
    Sandbox looks its keys up before any attribute, so a column named `items` or `label` is the column
    (`recipient.get("x", "")` still works where there is no column named get)."""

    def __init__(self, label: str, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.label = label


class _Generator(CodeGenerator):
    """`a ~ b` through Sandbox.bounded_join, which measures before it joins."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_join(")
        if frame.eval_ctx.volatile:
            self.write("(markup_join if context.eval_ctx.volatile else str_join)")
        else:
            self.write("markup_join" if frame.eval_ctx.autoescape else "str_join")
        self.write(", (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _size(value: Any, depth: int = 0) -> int:
    """What a value weighs once printed: a string its length, a list or tuple the weight of its items (a list
    of a million references to one long string weighs what printing it would), anything else its text."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + (sum(_size(v, depth + 1) for v in value) if depth < 8 else 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() * 3 // 10 + 1  # its decimal digits, without building them
    return len(str(value))


# A %-conversion: its mapping key, flags, width and precision (each a number or *), and its type.
_PERCENT = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")


def _percent_cost(fmt: str, values: Any) -> int:
    """What `fmt % values` can build, at most: its text, each conversion's width and precision (a `*` takes
    the next value, as Python does), and each value printed."""
    args = list(values) if isinstance(values, tuple) else [values]
    mapping = values if isinstance(values, dict) else None
    cost, i = len(fmt), 0
    for m in _PERCENT.finditer(fmt):
        if m.group(4) == "%":
            continue
        widths = []
        for part in (m.group(2), m.group(3)):
            if part == "*":
                widths.append(abs(args[i]) if i < len(args) and isinstance(args[i], int) else 0)
                i += 1
            elif part:
                widths.append(int(part))
        value = mapping.get(m.group(1)[1:-1]) if mapping is not None and m.group(1) else args[i] if i < len(args) else ""
        i += 0 if mapping is not None else 1
        cost += max(widths, default=0) + _size(value)
    return cost


class Sandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with a size budget on what an operation may build, and namespaces of
    our own whose keys are never shadowed by attributes (`recipient.items` is the column)."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])
    code_generator_class = _Generator

    def __init__(self, *args: Any, max_bytes: int = DEFAULT_MAX_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_bytes = max_bytes
        for name in ("center", "truncate", "batch", "slice"):
            self.filters[name] = self._bounded(self.filters[name], f"the {name} filter")
        replace, join = self.filters["replace"], self.filters["join"]
        indent, wordwrap, format_ = self.filters["indent"], self.filters["wordwrap"], self.filters["format"]
        lipsum = cast(Callable[..., Any], self.globals["lipsum"])

        def bounded_indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
            pad = len(width) if isinstance(width, str) else abs(width) if isinstance(width, int) else 0
            text = str(s)
            self._check_size(len(text) + (text.count("\n") + 1) * pad, "the indent filter")
            return indent(s, width, *args, **kwargs)

        def bounded_wordwrap(env: Any, s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                             *args: Any, **kwargs: Any) -> Any:
            text, joint = str(s), len(wrapstring) if isinstance(wrapstring, str) else 2
            lines = len(text) // max(1, width if isinstance(width, int) else 1) + text.count(" ") + text.count("\n") + 1
            self._check_size(len(text) + lines * joint, "the wordwrap filter")
            return wordwrap(env, s, width, break_long_words, wrapstring, *args, **kwargs)

        def bounded_format(value: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_size(_percent_cost(str(value), kwargs or args), "the format filter")
            return format_(value, *args, **kwargs)

        def bounded_lipsum(*args: Any, **kwargs: Any) -> Any:
            n, most = args[0] if args else kwargs.get("n", 5), args[3] if len(args) > 3 else kwargs.get("max", 100)
            self._check_size((abs(n) if isinstance(n, int) else 0) * (abs(most) if isinstance(most, int) else 0) * 12,
                             "lipsum")  # paragraphs of up to `max` words
            return lipsum(*args, **kwargs)

        for plain, bounded_f in ((indent, bounded_indent), (wordwrap, bounded_wordwrap), (format_, bounded_format)):
            bounded_f.__dict__.update(plain.__dict__)  # jinja2's pass_environment marks
        self.filters["indent"], self.filters["wordwrap"], self.filters["format"] = bounded_indent, bounded_wordwrap, bounded_format
        self.globals["lipsum"] = bounded_lipsum

        def bounded_replace(ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
            self._check_replace(str(s), str(old), str(new), "the replace filter")
            return replace(ctx, s, old, new, count)

        def bounded_join(ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
            items = list(value)
            if attribute is None:
                self._check_size(sum(_size(v) for v in items) + len(str(d)) * len(items), "the join filter")
            return join(ctx, items, d, attribute)

        bounded_replace.__dict__.update(replace.__dict__)
        bounded_join.__dict__.update(join.__dict__)
        self.filters["replace"], self.filters["join"] = bounded_replace, bounded_join

    def concat(self, chunks: Any) -> str:  # jinja2's is "".join; compiled templates call it
        """The output of a block, a macro or a {% set %} block, measured before it is joined."""
        parts = list(chunks)
        self._check_size(sum(map(len, parts)), "a block's output")
        return "".join(parts)

    def bounded_join(self, join: Callable[[Any], str], items: tuple[Any, ...]) -> str:
        self._check_size(sum(_size(v) for v in items), "a concatenation (~)")
        return join(items)

    def _check_replace(self, s: str, old: str, new: str, what: str) -> None:
        if len(new) > len(old):
            grows = (s.count(old) if old else len(s) + 1) * (len(new) - len(old))
            self._check_size(len(s) + grows, what)

    def _check_size(self, n: float, what: str) -> None:
        if n > self.max_bytes:
            raise BudgetExceeded(f"{what} would build {int(n):,} characters, more than the output budget of "
                                 f"{self.max_bytes:,} ([send] render_max_bytes)")

    def _bounded(self, f: Callable[..., Any], what: str) -> Callable[..., Any]:
        def bounded(*args: Any, **kwargs: Any) -> Any:
            for v in (*args[1:], *kwargs.values()):
                if isinstance(v, int) and not isinstance(v, bool):
                    self._check_size(abs(v), what)
            return f(*args, **kwargs)
        bounded.__dict__.update(f.__dict__)  # keeps jinja2's pass_context / pass_eval_context marks
        return bounded

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            self._check_size(_size(left) + _size(right), "a concatenation (+)")
        elif operator == "*" and ints:
            # Its digits, before they are computed: repeated squaring doubles them each time, in C, holding the GIL.
            self._check_size((abs(left).bit_length() + abs(right).bit_length()) * 3 // 10, "a multiplication")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    self._check_size(_size(seq) * n, "a repetition")
        elif operator == "**" and ints and abs(left) > 1 and right > 0:
            self._check_size(right * abs(left).bit_length() / 3.3, "a power")  # its decimal digits
        elif operator == "%" and isinstance(left, str):
            self._check_size(_percent_cost(left, right), "a %-format")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, as jinja2's sandbox wraps them, with every field's width and precision
        measured once its nested fields are filled in (`"{:{}}".format("x", 900000000)`)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner, is_map = value.__self__, value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            values = args[0] if is_map and args else kwargs
            positional = () if is_map else args
            self._check_size(_format_cost(owner, positional, values), f"str.{value.__name__}")
            return wrapped(*args, **kwargs)
        return bounded

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if name in ("center", "ljust", "rjust", "zfill"):
                for v in (*args, *kwargs.values()):
                    if isinstance(v, int):
                        __self._check_size(abs(v), f"str.{name}")
            elif name == "expandtabs":
                width = next((v for v in (*args, *kwargs.values()) if isinstance(v, int)), 8)
                __self._check_size(len(owner) + owner.count("\t") * abs(width), "str.expandtabs")
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, str(args[0]), str(args[1]), "str.replace")
            elif name == "join" and args:
                items = list(args[0])
                __self._check_size(sum(_size(v) for v in items) + len(owner) * len(items), "str.join")
                args = (items, *args[1:])
            elif name == "translate" and args and isinstance(args[0], dict):
                longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
                __self._check_size(len(owner) * max(1, longest), "str.translate")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is Namespace and dict.__contains__(obj, attribute):
            return dict.__getitem__(obj, attribute)  # the column or variable, before any attribute of the dict
        return super().getattr(obj, attribute)


def _format_cost(fmt: str, args: tuple[Any, ...], kwargs: Any) -> int:
    """What `fmt.format(*args, **kwargs)` can build, at most: its text, and each field's value printed or its
    width and precision, whichever is more; a nested field in a spec (`{:{}}`) is filled in first, with the
    value it takes, as Python takes it."""
    cost, auto = len(fmt), 0

    def value(name: str) -> Any:
        nonlocal auto
        key = name.split(".", 1)[0].split("[", 1)[0]
        if key == "":
            key, auto = str(auto), auto + 1
        try:
            return args[int(key)] if key.isdigit() else kwargs.get(key) if hasattr(kwargs, "get") else None
        except IndexError:
            return None

    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return cost  # str.format will refuse it itself
    for _, name, spec, _ in fields:
        if name is None:
            continue
        printed = value(name)
        spec = spec or ""
        for nested in re.findall(r"\{([^{}]*)\}", spec):
            filled = value(nested)
            spec = spec.replace("{" + nested + "}", str(abs(filled)) if isinstance(filled, int) else "0", 1)
        cost += max([_size(printed), *(int(m) for m in _NUMBER.findall(spec))])
    return cost


def render(template: jinja2.Template, context: dict[str, Any], max_bytes: int) -> str:
    """The template's output, counted as it is produced."""
    out, size = [], 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > max_bytes:
            raise BudgetExceeded(f"the output passed the budget of {max_bytes:,} characters ([send] render_max_bytes)")
        out.append(chunk)
    return "".join(out)


# --- the watchdog -----------------------------------------------------------------------------------

class _Armed:
    __slots__ = ("thread", "deadline", "reason")

    def __init__(self, thread: int, deadline: float) -> None:
        self.thread, self.deadline = thread, deadline
        self.reason: str | None = None  # set when the watchdog interrupted it


_lock = threading.Lock()
_wake = threading.Condition(_lock)
_armed: dict[int, _Armed] = {}
_watchdog: threading.Thread | None = None


def _interrupt(armed: _Armed, reason: str) -> None:
    """Raises _Interrupted in the rendering thread at its next bytecode; call holding _lock."""
    armed.reason = reason
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(armed.thread), ctypes.py_object(_Interrupted))


def _watch() -> None:
    """Sleeps until the earliest deadline of a render under way (woken early when one is armed), and
    interrupts every render past its own."""
    with _lock:
        while True:
            now = time.monotonic()
            for a in _armed.values():
                if a.reason is None and now > a.deadline:
                    _interrupt(a, "took longer than the time budget")
            pending = [a.deadline for a in _armed.values() if a.reason is None]
            _wake.wait(max(0.0, min(pending) - now) + 0.001 if pending else None)


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Interrupts the code inside with BudgetExceeded once it runs longer than `seconds`."""
    global _watchdog
    me = threading.get_ident()
    armed = _Armed(me, time.monotonic() + seconds)
    with _lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="notify-render-watchdog", daemon=True)
            _watchdog.start()
        _armed[me] = armed
        _wake.notify()
    where = None
    try:
        yield
    except _Interrupted as e:
        where = e.__traceback__  # reported below, with its reason and where it was
    finally:
        while True:  # the interruption may arrive here, before the lock is ours: then again
            try:
                with _lock:
                    _armed.pop(me, None)
                    if armed.reason is not None:
                        # It may not have been delivered yet (the render ended first): take it back.
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(me), None)
                break
            except _Interrupted:
                continue
    if armed.reason is not None:
        raise BudgetExceeded(f"rendering {armed.reason} ({seconds:g} s, [send] render_timeout)").with_traceback(where)
