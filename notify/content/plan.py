"""Render plans: each version rendered once, then every recipient's notice by substitution.

Sandboxed jinja2 costs about 90 us a message for the shipped notice, more than half of building it.
But a notice only prints a recipient's fields and tests whether they are empty; everything else in
it is the same for every recipient of a version. So when the templates provably use `recipient` in
only those two ways, a version is rendered once with a probe value in each printed field, and each
recipient's text is the probe rendering with their values put back (escaped where the probe came out
escaped): the same text jinja2 would produce, for a few microseconds.

The proof is structural, over every template a version loads (its three parts and whatever they
extend, include or import, by constant name): `recipient` may appear only as

    {{ recipient.x }}                   a whole output expression, outside macros, call blocks,
                                        filter blocks and {% set %} blocks (whose output a template
                                        can transform), and
    {% if recipient.x %} / {% if not recipient.x %} / {% elif ... %}   a test of emptiness.

A block's output can be taken as a value (self.title(), super(), caller(), loop()); such a call
must itself be a whole output expression, outside those same constructs. With those rules the
output is a function of which tested fields are empty plus the printed values passed through str()
or HTML escaping, so one probe rendering per (version, emptiness pattern, day) decides everything.
Anything else (a filter on a recipient field, a comparison, a loop over it, a dynamic template
name) means no plan: every recipient is rendered by jinja2, as before. The first recipient of each
plan is also rendered by jinja2 and compared; a difference abandons the plan for the whole run.
tests/test_plan.py holds both the equivalence and the refusals.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from markupsafe import escape

OPAQUE = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)  # output a template can transform
_RETURNS_OUTPUT = {"super", "caller", "loop"}  # called, these return rendered template output (as self.x() does)
_GUARDED = {"recipient", "self", "super", "caller"}  # names allowed only in the shapes a plan keeps (loop.index is fine)
_PROBE = re.compile("\ue000([0-9]+)(<|&lt;)\ue001")


class NotPlannable(Exception):
    """The templates use `recipient` in a way a plan cannot reproduce; the message says where."""


@dataclass(frozen=True)
class Usage:
    """Which recipient fields the templates print and which they test for emptiness."""

    printed: frozenset[str]  # fields printed as {{ recipient.x }}
    tested: tuple[str, ...]  # fields tested for emptiness, in a fixed order


def _field(expr: nodes.Node) -> str | None:
    """`recipient.x` or `recipient['x']` -> "x"; anything else -> None."""
    if isinstance(expr, nodes.Getattr) and isinstance(expr.node, nodes.Name) and expr.node.name == "recipient":
        return expr.attr
    if (isinstance(expr, nodes.Getitem) and isinstance(expr.node, nodes.Name) and expr.node.name == "recipient"
            and isinstance(expr.arg, nodes.Const) and isinstance(expr.arg.value, str)):
        return expr.arg.value
    return None


def _is_block_call(expr: nodes.Node) -> bool:
    if not isinstance(expr, nodes.Call):
        return False
    f = expr.node
    return ((isinstance(f, nodes.Name) and f.name in _RETURNS_OUTPUT)
            or (isinstance(f, nodes.Getattr) and isinstance(f.node, nodes.Name) and f.node.name == "self"))


def usage(sources: Iterable[tuple[str, nodes.Template]]) -> Usage:
    """How the parsed templates use `recipient`; raises NotPlannable naming the first use a plan cannot keep."""
    printed: set[str] = set()
    tested: set[str] = set()

    def visit(node: nodes.Node, name: str, opaque: bool) -> None:
        if isinstance(node, nodes.Output):
            for expr in node.nodes:
                field = _field(expr)
                if field is not None and not opaque:
                    printed.add(field)
                elif _is_block_call(expr) and not opaque:
                    for arg in expr.iter_child_nodes():  # the call's arguments (loop(items)) are still checked
                        if arg is not getattr(expr, "node", None):  # _is_block_call: expr is a Call
                            visit(arg, name, opaque)
                else:
                    visit(expr, name, opaque)
            return
        if isinstance(node, nodes.If):
            test = node.test.node if isinstance(node.test, nodes.Not) else node.test
            field = _field(test)
            if field is not None:
                tested.add(field)
            else:
                visit(node.test, name, opaque)
            for child in (*node.body, *node.elif_, *node.else_):
                visit(child, name, opaque)
            return
        if isinstance(node, nodes.Name) and node.name in _GUARDED:
            raise NotPlannable(f"{name}:{node.lineno}: uses {node.name} other than as a whole {{{{ }}}} or {{% if %}}")
        if isinstance(node, nodes.Call) and _is_block_call(node):
            raise NotPlannable(f"{name}:{node.lineno}: a block's output is used inside an expression or a macro")
        inner = opaque or isinstance(node, OPAQUE)
        for child in node.iter_child_nodes():
            visit(child, name, inner)

    for name, tree in sources:
        visit(tree, name, False)
    return Usage(frozenset(printed), tuple(sorted(tested)))


def referenced(tree: nodes.Template, name: str) -> list[str]:
    """The templates a template extends, includes or imports; NotPlannable if a name is not constant."""
    out = []
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        if not isinstance(node, (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            continue  # find_all yields only these; the check tells the type checker
        t = node.template
        names = t.value if isinstance(t, nodes.Const) else None
        if isinstance(names, str):
            out.append(names)
        elif isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            out.extend(names)
        else:
            raise NotPlannable(f"{name}:{node.lineno}: a template name computed at render time")
    return out


@dataclass(frozen=True)
class Text:
    """One part's text with holes: pieces[0] + value(slots[0]) + pieces[1] + ... + pieces[-1]."""

    pieces: tuple[str, ...]
    slots: tuple[tuple[str, bool], ...]  # (field, HTML-escaped)

    @classmethod
    def from_probe(cls, probe: str, fields: list[str]) -> Text:
        pieces, slots, at = [], [], 0
        for m in _PROBE.finditer(probe):
            pieces.append(probe[at:m.start()])
            slots.append((fields[int(m.group(1))], m.group(2) != "<"))
            at = m.end()
        pieces.append(probe[at:])
        if any("\ue000" in p or "\ue001" in p for p in pieces):
            raise NotPlannable("a probe value came out changed (or the template holds U+E000/U+E001)")
        return cls(tuple(pieces), tuple(slots))

    def fill(self, raw: dict[str, str], escaped: dict[str, str]) -> str:
        out = [self.pieces[0]]
        for (field, esc), piece in zip(self.slots, self.pieces[1:], strict=True):
            out.append(escaped[field] if esc else raw[field])
            out.append(piece)
        return "".join(out)


Probe = Callable[[dict[str, Any], dt.date], tuple[str, str, str]]  # (recipient, today) -> parts as jinja2 renders them


class Plans:
    """One version's plans, by emptiness pattern of the tested fields and by day (templates print today)."""

    def __init__(self, use: Usage, render: Probe) -> None:
        self.use = use
        self.fields = sorted(use.printed | set(use.tested))
        self.render = render
        self.plans: dict[tuple[Any, ...], tuple[Text, Text, Text] | None] = {}  # (today, emptiness) -> plan
        self.abandoned = 0  # plans dropped because jinja2 disagreed (a bug in the proof; tests assert 0)

    def _key(self, recipient: dict[str, Any], today: dt.date) -> tuple[dict[str, str], tuple[Any, ...]] | None:
        raw = {}
        for f in self.fields:
            v = recipient.get(f)
            if type(v) is not str:
                return None  # missing (jinja2 reports it) or not text: jinja2 renders it
            raw[f] = v
        return raw, (today, tuple(bool(raw[f]) for f in self.use.tested))

    def fill(self, recipient: dict[str, Any], today: dt.date) -> tuple[str, str, str] | None:
        """(subject, text, html) for this recipient as jinja2 would render them, or None when jinja2 must:
        a field missing or not a string, no plan for this pattern, or the plan's first recipient (the
        caller renders it and calls verify)."""
        found = self._key(recipient, today)
        if found is None:
            return None
        raw, key = found
        if key not in self.plans:
            self.plans[key] = self._plan(key, recipient)
            return None
        plan = self.plans[key]
        if plan is None:
            return None
        escaped = {f: str(escape(raw[f])) for part in plan for f, esc in part.slots if esc}
        return plan[0].fill(raw, escaped), plan[1].fill(raw, escaped), plan[2].fill(raw, escaped)

    def _plan(self, key: tuple[Any, ...], like: dict[str, Any]) -> tuple[Text, Text, Text] | None:
        today, pattern = key
        empty = {f for f, truthy in zip(self.use.tested, pattern, strict=True) if not truthy}
        probe = dict(like)
        for i, f in enumerate(self.fields):
            probe[f] = "" if f in empty else f"\ue000{i}<\ue001"  # an empty field is printed as "" exactly
        try:
            subject, text, html = self.render(probe, today)
            return (Text.from_probe(subject, self.fields), Text.from_probe(text, self.fields),
                    Text.from_probe(html, self.fields))
        except Exception:  # noqa: BLE001 - whatever failed, jinja2 renders each recipient and reports it
            return None

    def verify(self, recipient: dict[str, Any], today: dt.date, expected: tuple[str, str, str]) -> None:
        """After jinja2 rendered a plan's first recipient: the plan must give the same text, or it is dropped."""
        found = self._key(recipient, today)
        if found is not None and self.plans.get(found[1]) is not None and self.fill(recipient, today) != expected:
            self.plans[found[1]] = None
            self.abandoned += 1
