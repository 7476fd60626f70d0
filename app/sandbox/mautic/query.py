"""`GET /api/contacts`: the search string, `where[]`, ordering and paging (reference §1.2)."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from typing import Any

from app.sandbox.mautic import errors
from app.sandbox.mautic.model import Contact, Instance

Predicate = Callable[[Contact], bool]

CATCH_ALL = ("firstname", "lastname", "email", "company", "city", "state", "zipcode", "country")
EXPRS = frozenset(
    [
        "eq",
        "neq",
        "lt",
        "lte",
        "gt",
        "gte",
        "like",
        "notLike",
        "in",
        "notIn",
        "between",
        "notBetween",
        "isNull",
        "isNotNull",
        "isEmpty",
        "isNotEmpty",
        "andX",
        "orX",
    ]
)


def sql_date(ts: float | None) -> str | None:
    """How a DATETIME column compares: `Y-m-d H:i:s` in UTC."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def column(instance: Instance, contact: Contact, name: str) -> Any:
    """The value of DB column `name` (`l.` prefix allowed) for `contact`."""
    name = name.removeprefix("l.")
    if name == "id":
        return contact.id
    if name in ("date_added", "dateAdded"):
        return sql_date(contact.date_added)
    if name in ("date_modified", "dateModified"):
        return sql_date(contact.date_modified)
    if name in ("date_identified", "dateIdentified"):
        return sql_date(contact.date_identified)
    if name in ("last_active", "lastActive"):
        return sql_date(contact.last_active)
    if name in ("owner_id", "owner"):
        return contact.owner_id
    if name in ("stage_id", "stage"):
        return contact.stage_id
    if name == "points":
        return contact.points
    if name in ("is_published", "isPublished"):
        return 1
    if name in instance.fields:
        return contact.values.get(name)
    raise errors.controller(400, f"Unknown column {name}.")  # DBAL would fail the query


def like(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (case-insensitive, `%` and `_` wildcards) as a regex."""
    out = []
    for char in pattern:
        if char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE | re.DOTALL)


def _cmp_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float):
        return (0, float(value))
    text = str(value)
    try:
        return (0, float(text))
    except ValueError:
        return (1, text.lower())


def _eq(a: Any, b: Any) -> bool:
    if a is None:
        return False
    ka, kb = _cmp_key(a), _cmp_key(b)
    return ka == kb


def _where(instance: Instance, clause: Any) -> Predicate:
    if not isinstance(clause, dict):
        raise errors.controller(400, "Invalid where clause.")
    expr = clause.get("expr")
    if expr not in EXPRS:
        raise errors.controller(400, f"{expr} is not a valid expression.")
    val = clause.get("val")
    if expr in ("andX", "orX"):
        parts = val.values() if isinstance(val, dict) else (val or [])
        preds = [_where(instance, p) for p in parts]
        if expr == "andX":
            return lambda c: all(p(c) for p in preds)
        return lambda c: any(p(c) for p in preds)
    col = clause.get("col")
    if not isinstance(col, str) or not col:
        raise errors.controller(400, "A where clause needs a column.")
    column(instance, Contact(id=0, date_added=0.0), col)  # unknown column → 400 now

    def get(c: Contact) -> Any:
        return column(instance, c, col)

    if expr == "eq":
        return lambda c: _eq(get(c), val)
    if expr == "neq":
        return lambda c: get(c) is not None and not _eq(get(c), val)
    if expr in ("lt", "lte", "gt", "gte"):
        ops: dict[str, Callable[[Any, Any], bool]] = {
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
        }
        op = ops[expr]
        target = _cmp_key(val)

        def compare(c: Contact) -> bool:
            value = get(c)
            if value is None:
                return False
            key = _cmp_key(value)
            return key[0] == target[0] and op(key[1], target[1])

        return compare
    if expr in ("like", "notLike"):
        rx = like(str(val))
        if expr == "like":
            return lambda c: get(c) is not None and bool(rx.match(str(get(c))))
        return lambda c: get(c) is not None and not rx.match(str(get(c)))
    if expr in ("in", "notIn"):
        items = (
            val
            if isinstance(val, list)
            else list(val.values())
            if isinstance(val, dict)
            else str(val).split(",")
        )
        keys = {_cmp_key(str(i).strip()) for i in items}
        if expr == "in":
            return lambda c: get(c) is not None and _cmp_key(get(c)) in keys
        return lambda c: get(c) is not None and _cmp_key(get(c)) not in keys
    if expr in ("between", "notBetween"):
        bounds = (
            val
            if isinstance(val, list)
            else list(val.values())
            if isinstance(val, dict)
            else str(val).split(",")
        )
        if len(bounds) != 2:
            raise errors.controller(400, "between needs two values.")
        lo, hi = _cmp_key(bounds[0]), _cmp_key(bounds[1])

        def between(c: Contact) -> bool:
            value = get(c)
            if value is None:
                return False
            inside = lo <= _cmp_key(value) <= hi
            return inside if expr == "between" else not inside

        return between
    if expr == "isNull":
        return lambda c: get(c) is None
    if expr == "isNotNull":
        return lambda c: get(c) is not None
    if expr == "isEmpty":
        return lambda c: get(c) in (None, "")
    return lambda c: get(c) not in (None, "")  # isNotEmpty


def where_predicates(instance: Instance, where: Any) -> list[Predicate]:
    """`where[i][col|expr|val]`; entries keyed `internal` are stripped as the controller does."""
    if where in (None, "", []):
        return []
    items = where.items() if isinstance(where, dict) else enumerate(where)
    return [_where(instance, clause) for key, clause in items if key != "internal"]


def indexed_candidates(instance: Instance, where: Any) -> list[Contact] | None:
    """A top-level `email eq` or `id eq|in` narrows the scan (the predicates still apply)."""
    if not where:
        return None
    items = list(where.values()) if isinstance(where, dict) else where
    if not isinstance(items, list):
        return None
    for clause in items:
        if not isinstance(clause, dict):
            continue
        col = str(clause.get("col") or "").removeprefix("l.")
        expr, val = clause.get("expr"), clause.get("val")
        if col == "email" and expr == "eq" and isinstance(val, str):
            return sorted(instance.with_email(val), key=lambda c: c.id)
        if col == "id" and expr in ("eq", "in") and val is not None:
            raw = val if isinstance(val, list) else str(val).split(",")
            ids = {int(v) for v in (str(x).strip() for x in raw) if v.isdigit()}
            return [instance.contacts[i] for i in sorted(ids) if i in instance.contacts]
    return None


def _search_term(instance: Instance, token: str) -> Predicate:
    negate = token.startswith("!")
    if negate:
        token = token[1:]
    cmd, sep, arg = token.partition(":")
    if not sep:
        rx = like(f"%{token}%")

        def catch_all(c: Contact) -> bool:
            return any(
                c.values.get(a) is not None and rx.match(str(c.values.get(a))) for a in CATCH_ALL
            )

        pred: Predicate = catch_all
    else:
        strict = arg.startswith("+")
        if strict:
            arg = arg[1:]
        # A command's string is a prefix LIKE unless strict (LeadRepository, reference §1.2).
        rx = like(arg if strict else f"{arg}%")
        cmd = cmd.lower()
        if cmd == "ids":
            ids = {i.strip() for i in arg.split(",")}
            pred = lambda c: str(c.id) in ids  # noqa: E731
        elif cmd == "tag":
            pred = lambda c: any(rx.match(t) for t in c.tags)  # noqa: E731
        elif cmd in ("segment", "list"):
            members = set()
            for s in instance.segments.values():
                if rx.match(s.alias):
                    members |= set(s.members)
            pred = lambda c: c.id in members  # noqa: E731
        elif cmd == "name":
            pred = lambda c: any(  # noqa: E731
                rx.match(str(c.values.get(a) or "")) for a in ("firstname", "lastname")
            )
        elif cmd == "is":
            what = arg.lower()
            if what == "anonymous":
                pred = lambda c: c.anonymous()  # noqa: E731
            elif what == "unowned":
                pred = lambda c: c.owner_id is None  # noqa: E731
            else:
                pred = lambda c: True  # noqa: E731 - is:published, is:mine (one user)
        elif cmd == "owner":
            pred = lambda c: (  # noqa: E731
                c.owner_id is not None
                and any(
                    rx.match(u.username) or rx.match(u.full_name)
                    for u in instance.users.values()
                    if u.id == c.owner_id
                )
            )
        elif cmd == "stage":
            pred = lambda c: (  # noqa: E731
                c.stage_id is not None and bool(rx.match(instance.stages[c.stage_id].name))
            )
        elif cmd in instance.fields:
            pred = lambda c: (  # noqa: E731
                c.values.get(cmd) is not None and bool(rx.match(str(c.values.get(cmd))))
            )
        else:
            whole = like(f"%{token}%")
            pred = lambda c: any(  # noqa: E731
                c.values.get(a) is not None and whole.match(str(c.values.get(a))) for a in CATCH_ALL
            )
    if negate:
        inner = pred
        return lambda c: not inner(c)
    return pred


def search_predicates(instance: Instance, search: str) -> list[Predicate]:
    """The search box: space-separated terms, all of which must hold."""
    if not search.strip():
        return []
    try:
        tokens = shlex.split(search)
    except ValueError:
        tokens = search.split()
    return [_search_term(instance, t) for t in tokens if t.lower() not in ("and",)]


def order_key(instance: Instance, columns: list[tuple[str, str]]) -> Callable[[Contact], Any]:
    """A sort key for `ORDER BY` with MySQL's NULL placement (first ASC, last DESC)."""

    def key(c: Contact) -> tuple[Any, ...]:
        parts: list[Any] = []
        for col, direction in columns:
            value = column(instance, c, col)
            null = value is None
            k = _cmp_key(value) if not null else (0, 0.0)
            if direction == "DESC":
                parts.append(_Desc((not null, k)))
            else:
                parts.append((not null, k))
        parts.append(c.id)
        return tuple(parts)

    return key


class _Desc:
    """Reverses the order of the wrapped value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(self.value > other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)
