"""The cohort filter language: parsed, checked against the columns, compiled to parameters.

A filter is a boolean expression over the columns of ``user_insights`` (and the few the
cohort view adds)::

    purchase_percentile >= 80 and interest('Outdoor') >= 0.3
    segment in ('At risk', 'Hibernating') and orders_lifetime > 0
    churn_probability between 40% and 90% or not is_identified
    top_brand is not null and in_cohort('Ready to buy')

Comparisons ``= != <> < <= > >=``, ``between .. and ..``, ``[not] in (..)``, ``is [not]
null``, ``and``, ``or``, ``not`` and parentheses. Literals are numbers (``30%`` is 0.30),
quoted strings, ``true``, ``false`` and ``null``. Functions: ``interest(name)`` is the
user's strength in [0, 1] of a top interest whose value is ``name`` or below it in the
category path (``'Outdoor'`` matches ``'Outdoor > Tents'``), 0 when it is not among their
top interests; ``in_cohort(name)`` is true when the model placed the user in that
predictive cohort. ``:name`` is a placeholder bound by the caller (``per_category``).

A name the data cannot hold is refused rather than matching nobody: the caller passes the
known values of the functions and of closed text columns (``names``), so
``interest('Outdor')`` or ``segment = 'Champion'`` fails with the closest known names.

The text never reaches SQL: column names come from the known list and every literal is a
bound parameter, so ``x'; drop table users; --`` is a syntax error, not a statement.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEYWORDS = {"and", "or", "not", "in", "between", "is", "null", "true", "false"}
FUNCTIONS = {"interest": "number", "in_cohort": "boolean"}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?|\.\d+%?)
      | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<param>:[A-Za-z_][A-Za-z0-9_]*)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


class FilterError(ValueError):
    """A filter that cannot be used, with where and why."""


@dataclass(frozen=True)
class Names:
    """The values a function's argument or a text column can take (``label`` names them in
    an error: "category or brand")."""

    label: str
    values: frozenset[str]


@dataclass
class Compiled:
    """SQL text built only from known column names and placeholders, plus its parameters."""

    sql: str
    params: list[Any] = field(default_factory=list)
    columns: set[str] = field(default_factory=set)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise FilterError(f"unexpected character {text[pos]!r} at position {pos + 1} in filter: {text}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        tokens.append((kind, value, match.start(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, columns: dict[str, str], bindings: dict[str, Any], names: dict[str, Names]) -> None:
        self.text = text
        self.names = names
        self.tokens = _tokenize(text)
        self.pos = 0
        self.columns = columns
        self.bindings = bindings
        self.params: list[Any] = []
        self.used: set[str] = set()

    # --- token helpers -------------------------------------------------------------
    def _peek(self, offset: int = 0) -> tuple[str, str, int] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def _is_word(self, word: str, offset: int = 0) -> bool:
        token = self._peek(offset)
        return token is not None and token[0] == "name" and token[1].lower() == word

    def _fail(self, message: str, token: tuple[str, str, int] | None = None) -> FilterError:
        token = token or self._peek()
        where = f"at position {token[2] + 1}" if token else "at the end"
        return FilterError(f"{message} {where} in filter: {self.text}")

    def _expect(self, kind: str, value: str | None = None) -> tuple[str, str, int]:
        token = self._peek()
        if token is None or token[0] != kind or (value is not None and token[1].lower() != value):
            wanted = repr(value) if value else kind
            found = repr(token[1]) if token else "nothing"
            raise self._fail(f"expected {wanted}, found {found}")
        self.pos += 1
        return token

    # --- grammar -------------------------------------------------------------------
    def parse(self) -> str:
        if not self.tokens:
            raise FilterError("empty filter")
        sql = self._or()
        if self._peek() is not None:
            raise self._fail(f"unexpected {self._peek()[1]!r}")
        return sql

    def _chain(self, word: str, operand: Callable[[], str]) -> str:
        parts = [operand()]
        while self._is_word(word):
            self.pos += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else "(" + f" {word.upper()} ".join(parts) + ")"

    def _or(self) -> str:
        return self._chain("or", self._and)

    def _and(self) -> str:
        return self._chain("and", self._not)

    def _not(self) -> str:
        if self._is_word("not"):
            self.pos += 1
            return f"(NOT {self._not()})"
        return self._primary()

    def _primary(self) -> str:
        token = self._peek()
        if token is None:
            raise self._fail("expected a condition")
        if token[0] == "punct" and token[1] == "(":
            self.pos += 1
            inner = self._or()
            self._expect("punct", ")")
            return f"({inner})"
        left_sql, left_type, left_token = self._operand()
        nxt = self._peek()
        if nxt is None or (nxt[0] == "name" and nxt[1].lower() in ("and", "or")) or nxt[1] == ")":
            if left_type != "boolean":
                raise self._fail(f"{left_token[1]!r} is {left_type}, not a condition; compare it", left_token)
            return f"coalesce({left_sql}, false)"
        if nxt[0] == "op":
            self.pos += 1
            right_sql = self._value(left_type, left_token)
            op = "<>" if nxt[1] == "!=" else nxt[1]
            if op in ("=", "<>"):
                self._check_name(left_token)
            return f"({left_sql} {op} {right_sql})"
        negate = False
        if self._is_word("not") and (self._is_word("in", 1) or self._is_word("between", 1)):
            negate = True
            self.pos += 1
        if self._is_word("between"):
            self.pos += 1
            low = self._value(left_type, left_token)
            self._expect("name", "and")
            high = self._value(left_type, left_token)
            return f"({left_sql} {'NOT ' if negate else ''}BETWEEN {low} AND {high})"
        if self._is_word("in"):
            self.pos += 1
            self._expect("punct", "(")
            values = [self._value(left_type, left_token)]
            self._check_name(left_token)
            while self._peek() is not None and self._peek()[1] == ",":
                self.pos += 1
                values.append(self._value(left_type, left_token))
                self._check_name(left_token)
            self._expect("punct", ")")
            return f"({left_sql} {'NOT ' if negate else ''}IN ({', '.join(values)}))"
        if self._is_word("is"):
            self.pos += 1
            is_not = False
            if self._is_word("not"):
                is_not = True
                self.pos += 1
            self._expect("name", "null")
            return f"({left_sql} IS {'NOT ' if is_not else ''}NULL)"
        raise self._fail(f"expected a comparison after {left_token[1]!r}, found {nxt[1]!r}")

    def _operand(self) -> tuple[str, str, tuple[str, str, int]]:
        token = self._peek()
        if token is None or token[0] != "name" or token[1].lower() in KEYWORDS:
            found = repr(token[1]) if token else "nothing"
            raise self._fail(f"expected a column or a function, found {found}")
        self.pos += 1
        name = token[1]
        nxt = self._peek()
        if nxt is not None and nxt[1] == "(":
            func = name.lower()
            if func not in FUNCTIONS:
                raise self._fail(f"unknown function {name!r}; known: {', '.join(sorted(FUNCTIONS))}", token)
            self.pos += 1
            argument = self._value("text", token)
            self._check_name(token)
            self._expect("punct", ")")
            if func == "interest":
                self.used.add("top_interests")
                sql = (
                    "coalesce(list_max(list_transform(list_filter(top_interests, lambda x: "
                    f"x.value = {argument} OR starts_with(x.value, {argument} || ' > ')), lambda x: x.strength)), 0)"
                )
            else:
                self.used.add("cohorts")
                sql = f"list_contains(cohorts, {argument})"
            return sql, FUNCTIONS[func], token
        column = name.lower()
        if column not in self.columns:
            close = difflib.get_close_matches(column, list(self.columns), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise self._fail(f"unknown column {name!r}{hint}; known columns: {', '.join(sorted(self.columns))}", token)
        self.used.add(column)
        return f'"{column}"', self.columns[column], token

    def _check_name(self, about: tuple[str, str, int]) -> None:
        """Refuse the value just read when ``about`` (a function or column) has known names
        and it is not one of them."""
        known = self.names.get(about[1].lower())
        value = self.params[-1]
        if known is None or not known.values or not isinstance(value, str) or value in known.values:
            return
        by_lower: dict[str, list[str]] = {}
        for name in known.values:
            by_lower.setdefault(name.lower(), []).append(name)
        close = by_lower.get(value.lower()) or [
            original
            for lowered in difflib.get_close_matches(value.lower(), list(by_lower), n=3, cutoff=0.6)
            for original in by_lower[lowered]
        ]
        hint = f" (did you mean {', '.join(repr(c) for c in close[:3])}?)" if close else ""
        shown = sorted(known.values)
        more = f" and {len(shown) - 12:,} more" if len(shown) > 12 else ""
        raise self._fail(
            f"{about[1]}: no {known.label} is called {value!r}{hint}; known: {', '.join(shown[:12])}{more}",
            self.tokens[self.pos - 1],
        )

    def _value(self, expected: str, about: tuple[str, str, int]) -> str:
        token = self._peek()
        if token is None:
            raise self._fail("expected a value")
        self.pos += 1
        kind, text = token[0], token[1]
        if kind == "param":
            if text[1:] not in self.bindings:
                raise self._fail(f"placeholder {text} has no value", token)
            value = self.bindings[text[1:]]
        elif kind == "number":
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        elif kind == "string":
            value = text[1:-1].replace(text[0] * 2, text[0])
        elif kind == "name" and text.lower() in ("true", "false"):
            value = text.lower() == "true"
        elif kind == "name" and text.lower() == "null":
            raise self._fail("compare with null using 'is null' or 'is not null'", token)
        else:
            raise self._fail(f"expected a value, found {text!r}", token)
        actual = "boolean" if isinstance(value, bool) else "number" if isinstance(value, float | int) else "text"
        if expected == "timestamp" and actual == "text":
            actual = "timestamp"
        if expected != actual:
            raise self._fail(f"{about[1]!r} is {expected}, but {text!r} is {actual}", token)
        self.params.append(value)
        return f"${len(self.params)}"


def category_levels(path: str) -> list[str]:
    """A category path and every level above it (``'A > B'`` -> ``['A', 'A > B']``): what
    ``interest()`` and the read API's category rules match."""
    parts = path.split(" > ")
    return [" > ".join(parts[: i + 1]) for i in range(len(parts))]


def column_types(described: list[tuple[Any, ...]]) -> dict[str, str]:
    """The filter's type of each column from DuckDB ``describe`` rows (name, type, ...);
    lists are left out (they are reached through functions)."""
    kinds: dict[str, str] = {}
    for name, duck_type, *_ in described:
        upper = duck_type.upper()
        if upper.endswith("[]") or upper.startswith(("STRUCT", "MAP")):
            continue
        if upper == "BOOLEAN":
            kinds[name] = "boolean"
        elif upper.startswith(("TIMESTAMP", "DATE")):
            kinds[name] = "timestamp"
        elif upper.startswith(("VARCHAR", "TEXT", "STRING")):
            kinds[name] = "text"
        else:
            kinds[name] = "number"
    return kinds


def compile_filter(
    text: str,
    columns: dict[str, str],
    bindings: dict[str, Any] | None = None,
    names: dict[str, Names] | None = None,
) -> Compiled:
    """Parse and check ``text`` against ``columns`` (name -> number/text/boolean/timestamp)
    and ``names`` (function or column -> the values it can take; an empty set is not checked).

    Raises FilterError naming the position and what is wrong (an unknown column lists the
    known ones, an unknown name the closest)."""
    if len(text) > 4000:
        raise FilterError("filter longer than 4,000 characters")
    parser = _Parser(text, columns, bindings or {}, names or {})
    sql = parser.parse()
    return Compiled(sql, parser.params, parser.used)


def compile_sort(text: str, columns: dict[str, str]) -> str:
    """``'col [asc|desc], ...'`` to an ORDER BY list of known columns (nulls last)."""
    parts = []
    for piece in text.split(","):
        words = piece.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise FilterError(f"sort: expected '<column> [asc|desc]', got {piece.strip()!r}")
        column = words[0].lower()
        if column not in columns:
            raise FilterError(f"sort: unknown column {words[0]!r}; known columns: {', '.join(sorted(columns))}")
        direction = words[1].upper() if len(words) == 2 else "ASC"
        parts.append(f'"{column}" {direction} NULLS LAST')
    return ", ".join(parts + ['"user_id" ASC'])
