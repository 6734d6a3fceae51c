"""What the relay needs of its three tables, compared with what information_schema says.

``outbox-relay migrate`` checks the live tables before it applies anything (a table of the same
name made by something else, say a Debezium-style outbox, is never taken for ours: its
``CREATE TABLE IF NOT EXISTS`` would do nothing and the migration would be recorded over it),
and again after applying or when everything is up to date.

Only what the relay's statements depend on is checked: each column's name, type family (the
portable ``DATA_TYPE``: MySQL 8 and MariaDB spell ``COLUMN_TYPE`` differently), nullability where
the relay or the writers rely on it, and the named indexes.  Extra columns and indexes are fine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .sql import SHARD_COUNT, OutboxSql

INTEGER = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})
TEXT = frozenset({"char", "varchar"})
LONG_TEXT = frozenset({"varchar", "text", "mediumtext", "longtext"})
DATETIME = frozenset({"datetime"})
INSTANT = frozenset({"datetime", "timestamp"})
AGGREGATE = ("aggregate_type", "aggregate_id")
# At most this many differences are named in the one line.
SHOWN = 4


@dataclass(frozen=True)
class Column:
    name: str
    types: frozenset[str]  # accepted DATA_TYPEs
    nullable: bool | None = False  # None: either
    unsigned: bool = False
    auto_increment: bool = False
    min_length: int = 0  # CHARACTER_MAXIMUM_LENGTH, for text
    values: frozenset[str] = frozenset()  # ENUM values needed
    generated: str | None = None  # the generation expression, normalized (see _expression)


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False
    since: int = 0  # the migration that adds it to an existing table (0: made with the table)


@dataclass(frozen=True)
class Table:
    name: str
    since: int  # the migration that creates it
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...]


@dataclass(frozen=True)
class LiveColumn:
    data_type: str
    column_type: str
    nullable: bool
    length: int | None
    extra: str
    generation: str


@dataclass
class LiveTable:
    kind: str  # TABLE_TYPE: BASE TABLE, VIEW
    engine: str
    columns: dict[str, LiveColumn] = field(default_factory=dict)
    indexes: dict[str, tuple[bool, tuple[str, ...]]] = field(default_factory=dict)  # name: (unique, cols)


def tables(sql: OutboxSql) -> tuple[Table, Table, Table]:
    """The outbox, shard and migrations tables as V001/V002 and the runner make them."""
    outbox = Table(
        sql.table,
        1,
        (
            Column("id", frozenset({"bigint"}), unsigned=True, auto_increment=True),
            Column("event_id", TEXT, min_length=36),
            Column("aggregate_type", TEXT),
            Column("aggregate_id", TEXT),
            Column("event_type", TEXT),
            # 16 MiB: what the writer's helper and the relay allow.
            Column("payload", frozenset({"mediumblob", "longblob"})),
            Column("status", frozenset({"enum"}), values=frozenset({"PENDING", "PUBLISHED", "DEAD"})),
            Column("created_at", INSTANT),
            # Writers leave the optional columns out; the relay writes NULL into its own.
            Column("topic", TEXT, nullable=True),
            Column("headers", LONG_TEXT, nullable=True),
            Column("seq", frozenset({"bigint"}), nullable=True, unsigned=True),
            Column("attempts", INTEGER),
            # The relay writes '1970-01-01 00:00:00', which a TIMESTAMP cannot hold.
            Column("available_at", DATETIME),
            Column("last_error", LONG_TEXT, nullable=True),
            Column("published_at", INSTANT, nullable=True),
            Column("dead_at", INSTANT, nullable=True),
            Column("shard", INTEGER, nullable=None, generated=f"crc32aggregate_id%{SHARD_COUNT}"),
        ),
        (
            Index("PRIMARY", ("id",), unique=True),
            Index("uq_outbox_event_id", ("event_id",), unique=True),
            Index("ix_outbox_shard_head", ("shard", "status", "id")),
            # V002 adds it to a table V001 made.
            Index("ix_outbox_aggregate_head", ("shard", "status", *AGGREGATE, "id"), since=2),
        ),
    )
    shard = Table(
        sql.shard_table,
        1,
        (
            Column("shard", INTEGER),
            Column("lease_token", frozenset({"binary", "varbinary"}), nullable=True, min_length=16),
            Column("lease_owner", TEXT, nullable=True),
            Column("lease_until", DATETIME),
            Column("fence", INTEGER),
        ),
        (Index("PRIMARY", ("shard",), unique=True),),
    )
    migrations = Table(
        sql.migrations_table,
        0,
        (
            Column("version", INTEGER),
            Column("name", TEXT),
            Column("checksum", TEXT, min_length=64),
            Column("applied_at", INSTANT),
        ),
        (Index("PRIMARY", ("version",), unique=True),),
    )
    return outbox, shard, migrations


def live_tables(
    table_rows: Iterable[Sequence[object]],
    column_rows: Iterable[Sequence[object]],
    index_rows: Iterable[Sequence[object]],
) -> dict[str, LiveTable]:
    """The answers of ``OutboxSql.schema_tables``, ``schema_columns`` and ``schema_indexes``."""
    live = {_text(name).lower(): LiveTable(_text(kind), _text(engine)) for name, kind, engine in table_rows}
    for table, name, data_type, column_type, nullable, length, extra, generation in column_rows:
        if _text(table).lower() in live:
            live[_text(table).lower()].columns[_text(name).lower()] = LiveColumn(
                _text(data_type).lower(),
                _text(column_type).lower(),
                _text(nullable).upper() == "YES",
                None if length is None else int(str(length)),
                _text(extra).lower(),
                _text(generation),
            )
    for table, index, non_unique, column in index_rows:
        if _text(table).lower() in live:
            indexes = live[_text(table).lower()].indexes
            unique, columns = indexes.get(_text(index).lower(), (str(non_unique) == "0", ()))
            indexes[_text(index).lower()] = (unique, (*columns, _text(column).lower()))
    return live


def differences(table: Table, live: LiveTable, version: int) -> list[str]:
    """How ``live`` differs from what ``table`` must be once ``version`` is applied (an index a
    later migration adds is not required before it, but one of its name must be the same)."""
    found: list[str] = []
    if live.kind.upper() != "BASE TABLE":
        return [f"it is a {live.kind.lower() or 'view'}, not a table"]
    if live.engine.lower() != "innodb":
        found.append(f"engine {live.engine or 'unknown'}, expected InnoDB")
    missing = [c.name for c in table.columns if c.name not in live.columns]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        found.append(f"column{'s' if len(missing) > 1 else ''} {names} missing")
    for column in table.columns:
        if column.name in live.columns:
            found += _column_differences(column, live.columns[column.name])
    required = max(version, table.since)
    for index in table.indexes:
        have = live.indexes.get(index.name.lower())
        label = "primary key" if index.name == "PRIMARY" else f"index `{index.name}`"
        want = f"({', '.join(index.columns)})"
        if have is None:
            if index.since <= required:
                found.append(f"{label} {want} missing")
        elif have[1] != index.columns or have[0] != index.unique:
            kind = "unique " if have[0] and not index.unique else ""
            non = "not unique " if index.unique and not have[0] else ""
            found.append(f"{label} is {kind}{non}({', '.join(have[1])}), expected {want}")
    return found


def describe(name: str, problems: Sequence[str]) -> str:
    """One line: the table and its first differences."""
    shown = "; ".join(problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return f"table `{name}` exists but does not match the relay's schema: {shown}{more}"


def _column_differences(want: Column, have: LiveColumn) -> list[str]:
    label = f"column `{want.name}`"
    if have.data_type not in want.types:
        expected = " or ".join(sorted(want.types)) if len(want.types) <= 3 else "an integer"
        return [f"{label} is {have.column_type}, expected {expected}"]
    found = []
    if want.unsigned and "unsigned" not in have.column_type:
        found.append(f"{label} is {have.column_type}, expected unsigned")
    if want.min_length and (have.length or 0) < want.min_length:
        found.append(f"{label} is {have.column_type}, expected at least {want.min_length} characters")
    if want.values and not want.values <= _enum_values(have.column_type):
        needed = ", ".join(sorted(want.values))
        found.append(f"{label} is {have.column_type}, expected {needed} among its values")
    if want.nullable is not None and have.nullable != want.nullable:
        found.append(f"{label} is {_null(have.nullable)}, expected {_null(want.nullable)}")
    if want.auto_increment and "auto_increment" not in have.extra:
        found.append(f"{label} is not AUTO_INCREMENT")
    if want.generated is not None and _expression(have.generation) != want.generated:
        shown = have.generation or "not generated"
        found.append(f"{label} is {shown}, expected generated as CRC32(aggregate_id) % {SHARD_COUNT}")
    return found


def _null(nullable: bool) -> str:
    return "NULL" if nullable else "NOT NULL"


def _enum_values(column_type: str) -> frozenset[str]:
    """``enum('pending','published')`` (lowercased by live_tables) → its values, upper case."""
    inner = column_type.partition("(")[2].rpartition(")")[0]
    return frozenset(v.strip().strip("'").upper() for v in inner.split(",") if v.strip())


def _expression(text: str) -> str:
    """MariaDB says ``crc32(`aggregate_id`) MOD 16``, MySQL 8 ``(crc32(`aggregate_id`) % 16)``."""
    squeezed = "".join(ch for ch in text.lower() if ch not in " `()")
    return squeezed.replace("mod", "%")


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def find(live: Mapping[str, LiveTable], name: str) -> LiveTable | None:
    """Table names compare case-insensitively (``lower_case_table_names`` may fold them)."""
    return live.get(name.lower())
