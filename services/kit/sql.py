"""SQLAlchemy Core statements, compiled once per dialect and run on the raw driver.

Schemas and statements are written with SQLAlchemy Core, as everywhere in the project; what
changes is how they run. SQLAlchemy's async layer costs about 1.2 ms of CPU for a two-insert
transaction on aiosqlite (one worker-thread hop per statement, result wrapping, compiling),
against 0.035 ms for the same transaction on `sqlite3` (docs/architecture.md, "Performance").
So a `Statement` is compiled the first time a dialect runs it and never again: the SQL text, the
order of its parameters and SQLAlchemy's own type processors (e.g. datetime to text on SQLite)
are kept, and each execution only converts the values and hands them to the driver.

Statements use named `bindparam`s; an `expanding=True` bindparam (an `IN` list) is expanded per
list length, and each length is compiled once too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ClauseElement, Table, bindparam, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

DialectName = Literal["sqlite", "postgresql"]

#: The dialects statements are compiled for: the drivers the kit runs them on.
DIALECTS: Mapping[str, Dialect] = {
    "sqlite": pysqlite.dialect(),
    "postgresql": postgresql_asyncpg.dialect(),  # type: ignore[no-untyped-call]
}

Processor = Callable[[Any], Any] | None
Row = dict[str, Any]

#: Marks a parameter the caller must give (a `bindparam` without a value).
_REQUIRED: Any = object()


@dataclass(frozen=True)
class Compiled:
    """A statement as one dialect's driver runs it."""

    sql: str
    #: Parameter names in the order the driver takes them.
    names: tuple[str, ...]
    #: SQLAlchemy's conversion of each parameter's value, or None.
    binds: tuple[Processor, ...]
    #: The value a parameter has when the caller gives none (literals in the statement).
    defaults: tuple[Any, ...]
    #: Names and conversions of the result columns (empty for statements without rows;
    #: None for textual SQL, whose columns only the driver's answer names).
    columns: tuple[str, ...] | None
    results: tuple[Processor, ...]

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        result = []
        for name, process, default in zip(self.names, self.binds, self.defaults, strict=True):
            value = values.get(name, default)
            if value is _REQUIRED:
                raise TypeError(f"statement needs parameter {name!r}: {self.sql}")
            result.append(value if process is None or value is None else process(value))
        return result

    def row(self, values: Sequence[Any], names: Sequence[str] = ()) -> Row:
        if self.columns is None:
            return dict(zip(names, values, strict=True))
        return {
            name: value if process is None or value is None else process(value)
            for name, value, process in zip(self.columns, values, self.results, strict=True)
        }


class Statement:
    """A Core statement (or a function of the dialect name that builds one), compiled lazily.

    Build statements once, at import time, as module constants: the compiled forms are cached
    on the object.
    """

    def __init__(self, build: ClauseElement | Callable[[DialectName], ClauseElement]) -> None:
        self._build = build
        self._compiled: dict[str, SQLCompiler] = {}
        self._forms: dict[tuple[str, tuple[int, ...]], Compiled] = {}
        self._expanding: dict[str, tuple[str, ...]] = {}

    def _compiler(self, dialect: DialectName) -> SQLCompiler:
        compiler = self._compiled.get(dialect)
        if compiler is None:
            element = self._build(dialect) if callable(self._build) else self._build
            compiled = element.compile(dialect=DIALECTS[dialect])
            assert isinstance(compiled, SQLCompiler)
            compiler = compiled
            self._compiled[dialect] = compiler
            self._expanding[dialect] = tuple(
                name for name, bind in compiler.binds.items() if bind.expanding
            )
        return compiler

    def for_dialect(self, dialect: DialectName, values: Mapping[str, Any]) -> Compiled:
        """The compiled form for this dialect and, for `IN` lists, these list lengths."""
        compiler = self._compiler(dialect)
        expanding = self._expanding[dialect]
        lengths = tuple(len(values[name]) for name in expanding)
        form = self._forms.get((dialect, lengths))
        if form is None:
            form = _form(compiler, DIALECTS[dialect], expanding, values)
            self._forms[(dialect, lengths)] = form
        return form

    def flat(self, dialect: DialectName, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """`values` with each `IN` list spread into the names the expanded form uses."""
        expanding = self._expanding.get(dialect) or ()
        if not expanding:
            return values
        flat = dict(values)
        for name in expanding:
            for i, item in enumerate(flat.pop(name), start=1):
                flat[f"{name}_{i}"] = item
        return flat


def _form(
    compiler: SQLCompiler, dialect: Dialect, expanding: tuple[str, ...], values: Mapping[str, Any]
) -> Compiled:
    sql = compiler.string
    names = tuple(compiler.positiontup or ())
    if expanding:
        state = compiler.construct_expanded_state({name: values[name] for name in expanding})
        sql = state.statement
        names = tuple(state.positiontup or ())
    binds: list[Processor] = []
    defaults: list[Any] = []
    for name in names:
        base = name
        if base not in compiler.binds:  # an expanded `name_<n>` of an IN list
            base = name.rsplit("_", 1)[0]
        bind = compiler.binds[base]
        binds.append(bind.type.dialect_impl(dialect).bind_processor(dialect))
        defaults.append(_REQUIRED if bind.required or base != name else bind.value)
    statement: Any = compiler.statement
    # A SELECT's columns, or an INSERT/UPDATE/DELETE's RETURNING columns (none without).
    if hasattr(statement, "selected_columns"):
        columns = list(statement.selected_columns)
    elif hasattr(statement, "exported_columns"):
        columns = list(statement.exported_columns)
    else:  # text(): the driver will say
        return Compiled(sql, names, tuple(binds), tuple(defaults), None, ())
    keys = tuple(column.key for column in columns)
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
    )
    return Compiled(sql, names, tuple(binds), tuple(defaults), keys, results)


def _values(table: Table) -> dict[str, Any]:
    """A parameter per column, named after it; columns the database numbers are left out."""
    return {
        c.name: bindparam(c.name)
        for c in table.columns
        if not (c.primary_key and c.autoincrement is True)
    }


def insert_row(table: Table) -> Statement:
    """INSERT of one row with a parameter per column, named after the column."""
    return Statement(insert(table).values(_values(table)))


def insert_ignoring_conflicts(table: Table, *index_elements: str, returning: str = "") -> Statement:
    """INSERT … ON CONFLICT (index_elements) DO NOTHING, in each dialect's own construct.

    The hot path's answer to read-then-insert: one statement, and (with `returning`) the row's
    key comes back only when the row is new.
    """

    def build(dialect: DialectName) -> ClauseElement:
        construct = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement: Any = (
            construct(table)
            .values(_values(table))
            .on_conflict_do_nothing(index_elements=list(index_elements))
        )
        if returning:
            statement = statement.returning(table.c[returning])
        result: ClauseElement = statement
        return result

    return Statement(build)


def upsert(table: Table, *index_elements: str, update: Sequence[str]) -> Statement:
    """INSERT … ON CONFLICT (index_elements) DO UPDATE SET each of `update` to the new value."""

    def build(dialect: DialectName) -> ClauseElement:
        construct = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement: Any = construct(table).values(_values(table))
        result: ClauseElement = statement.on_conflict_do_update(
            index_elements=list(index_elements),
            set_={name: statement.excluded[name] for name in update},
        )
        return result

    return Statement(build)
