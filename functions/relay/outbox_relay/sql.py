"""Every SQL statement the relay runs, in one place.

Portable between MySQL 8.0 / Aurora MySQL 3 and MariaDB 10.11: no RETURNING, no same-table
subqueries in UPDATE/DELETE, no JSON type or operators, no SKIP LOCKED/NOWAIT, no `FOR SHARE`.
Every absolute time comes from the database clock (``UTC_TIMESTAMP(6)``); Python only ever
passes durations, in microseconds.  Placeholders are PyMySQL's ``%s``; ``{...}`` are identifiers
that :class:`OutboxSql` validated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

# Sessions run at READ COMMITTED: no gap locks, so the relay never blocks the application's
# INSERTs into the outbox, and MySQL and MariaDB lock alike.  UTC so DATETIMEs mean one thing.
SESSION_SETUP = (
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION time_zone = '+00:00'",
    "SET SESSION innodb_lock_wait_timeout = %s",
)

# A body (payload, headers) larger than this is left out of the head read and loaded by id only
# for the rows a pass sends, within its byte budget: a page of rows costs at most
# rows x 2 x INLINE_BODY_BYTES, whatever the rows hold (a payload may be 16 MiB).
INLINE_BODY_BYTES = 4096

# Every row's shard is V001's generated `CRC32(aggregate_id) % 16`, and the shard table holds one
# lease row per shard.  `migrate` checks that the live column says the same.
SHARD_COUNT = 16


# The outbox id column is BIGINT UNSIGNED.
MAX_OUTBOX_ID = 2**64 - 1


def as_bytes(column: str) -> str:
    """A text column read as the bytes stored: the driver never decodes it (a row holding bytes
    its character set does not allow cannot fail a read; rowtext.py decodes it)."""
    return f"CAST({column} AS BINARY)"


ROW_COLUMNS = (
    f"id, {as_bytes('event_id')}, {as_bytes('aggregate_type')}, {as_bytes('aggregate_id')},"
    f" {as_bytes('event_type')},"
    f" IF(LENGTH(payload) <= {INLINE_BODY_BYTES}, payload, NULL), LENGTH(payload), {as_bytes('topic')},"
    f" IF(LENGTH(headers) <= {INLINE_BODY_BYTES}, {as_bytes('headers')}, NULL), LENGTH(headers),"
    " seq, attempts, shard"
)
DEAD_ROW_COLUMNS = (
    f"id, {as_bytes('event_id')}, {as_bytes('aggregate_type')}, {as_bytes('aggregate_id')}, shard"
)

# After ROW_COLUMNS: whether the row's backoff has passed, and how long it has left if not.
_DUE = (
    "available_at <= UTC_TIMESTAMP(6) AS due,"
    " GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), available_at), 0) AS wait_us"
)


def valid_identifier(name: str) -> bool:
    """True when ``name`` can be used as the outbox table name (letters, digits, ``_``; ≤ 48)."""
    return _IDENTIFIER.fullmatch(name) is not None


@dataclass(frozen=True)
class OutboxSql:
    """The statements for one outbox table (``table``) and its lease table (``table_shard``)."""

    table: str = "outbox"

    def __post_init__(self) -> None:
        if not valid_identifier(self.table):
            raise ValueError(f"invalid table name {self.table!r}")

    @property
    def shard_table(self) -> str:
        return f"{self.table}_shard"

    @property
    def migrations_table(self) -> str:
        return f"{self.table}_migrations"

    # --- shard leases ---------------------------------------------------------------------

    @property
    def all_shards(self) -> str:
        return f"SELECT shard FROM `{self.shard_table}` ORDER BY shard"

    @property
    def acquire_shard(self) -> str:
        """Compare-and-set: affected rows = 1 means this invocation now owns the shard."""
        return (
            f"UPDATE `{self.shard_table}` SET lease_token = %s, lease_owner = %s, fence = fence + 1,"
            " lease_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND"
            " WHERE shard = %s AND lease_until <= UTC_TIMESTAMP(6)"
        )

    @property
    def owned_shards(self) -> str:
        return f"SELECT shard FROM `{self.shard_table}` WHERE lease_token = %s ORDER BY shard"

    def lock_shards(self, count: int) -> str:
        """The fence: lock our shard rows (in shard order, so finalizers never deadlock)."""
        return (
            f"SELECT shard, lease_token FROM `{self.shard_table}`"
            f" WHERE shard IN ({_marks(count)}) ORDER BY shard FOR UPDATE"
        )

    def renew_shards(self, count: int) -> str:
        return (
            f"UPDATE `{self.shard_table}` SET lease_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND"
            f" WHERE lease_token = %s AND shard IN ({_marks(count)})"
        )

    def release_shards(self, count: int) -> str:
        """Give shards back; ``%s`` grace keeps them unclaimable while sends may still land.
        ``count`` 0: every shard the token holds (after an acquire whose outcome is unknown)."""
        only = f" AND shard IN ({_marks(count)})" if count else ""
        return (
            f"UPDATE `{self.shard_table}` SET lease_token = NULL, lease_owner = NULL,"
            " lease_until = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND"
            f" WHERE lease_token = %s{only}"
        )

    # --- reading the pending head ---------------------------------------------------------

    def read_heads(self, excluded: Sequence[int], skipped: Sequence[int] | None = None) -> str:
        """Each shard's pending rows after a cursor, in id order: one index range scan per shard.
        ``excluded[i]`` ids are left out of the i-th shard's part (the rows still in flight), and
        ``skipped[i]`` aggregates (blocked ones: their rows are not read at all, however many
        pile up, so the rest of the shard is reached in one read instead of page by page).

        Parameters per shard: shard, after_id, the excluded ids, (type, id) per skipped aggregate,
        limit.  ``due`` says whether the row's backoff has passed.
        """
        parts = []
        for n, count in enumerate(excluded):
            skip = f" AND id NOT IN ({_marks(count)})" if count else ""
            keys = skipped[n] if skipped else 0
            if keys:
                # Compared as bytes: utf8mb4_bin pads with spaces, so "k" = "k " as text, and an
                # aggregate that differs from a blocked one by trailing spaces would be left out.
                pair = "(CAST(aggregate_type AS BINARY) = %s AND CAST(aggregate_id AS BINARY) = %s)"
                skip += f" AND NOT ({' OR '.join([pair] * keys)})"
            parts.append(
                f"(SELECT {ROW_COLUMNS}, available_at <= UTC_TIMESTAMP(6) AS due,"
                " GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), available_at), 0) AS wait_us"
                f" FROM `{self.table}` WHERE shard = %s AND status = 'PENDING' AND id > %s{skip}"
                " ORDER BY id LIMIT %s)"
            )
        return " UNION ALL ".join(parts)

    def load_bodies(self, ids: int) -> str:
        """The bodies the head read left out, by id (still PENDING: a row gone since is absent)."""
        return (
            f"SELECT id, payload, {as_bytes('headers')} FROM `{self.table}`"
            f" WHERE status = 'PENDING' AND id IN ({_marks(ids)})"
        )

    def aggregate_heads(self, shards: int) -> str:
        """Each shard's aggregate heads (the first pending row of each aggregate), found in the
        aggregate index alone (``ix_outbox_aggregate_head``, V002): however many rows pile up
        behind blocked heads, none of them is read.  The due heads first, in id order, then those
        backing off, soonest due first; ``%s`` of them per shard.  Parameters per shard: shard,
        limit.  (Aggregates that differ only by trailing spaces, which utf8mb4_bin pads to equal,
        share a group here: the lower head stands for both until it goes.)"""
        later = "o.available_at > UTC_TIMESTAMP(6)"
        part = (
            f"(SELECT STRAIGHT_JOIN {ROW_COLUMNS}, {_DUE}"
            f" FROM (SELECT MIN(id) AS head FROM `{self.table}` WHERE shard = %s AND status = 'PENDING'"
            " GROUP BY aggregate_type, aggregate_id) h"
            f" JOIN `{self.table}` o ON o.id = h.head WHERE o.status = 'PENDING'"
            f" ORDER BY {later}, IF({later}, o.available_at, NULL), o.id LIMIT %s)"
        )
        return " UNION ALL ".join([part] * shards)

    def aggregate_rows(self, aggregates: int) -> str:
        """The first pending rows of each of ``aggregates`` aggregates, in id order: one range of
        the aggregate index each.  Parameters per aggregate: shard, type, id, type and id as
        bytes (utf8mb4_bin pads "k" to "k "), limit."""
        part = (
            f"(SELECT {ROW_COLUMNS}, {_DUE} FROM `{self.table}`"
            " WHERE shard = %s AND status = 'PENDING' AND aggregate_type = %s AND aggregate_id = %s"
            " AND CAST(aggregate_type AS BINARY) = %s AND CAST(aggregate_id AS BINARY) = %s"
            " ORDER BY id LIMIT %s)"
        )
        return " UNION ALL ".join([part] * aggregates)

    # --- the fenced finalize (one transaction, after lock_shards) -------------------------

    # Every write names the shards still leased (checked under lock just before), so rows of a
    # shard another invocation took over are never touched.  The status guard makes a re-run
    # after an ambiguous COMMIT change nothing.

    def mark_published(self, ids: int, shards: int) -> str:
        """Parameters: ids, then shards."""
        return (
            f"UPDATE `{self.table}` SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6),"
            f" last_error = NULL WHERE status = 'PENDING' AND id IN ({_marks(ids)})"
            f" AND shard IN ({_marks(shards)})"
        )

    def delete_published(self, ids: int, shards: int) -> str:
        """Delete-on-publish (retention 0): parameters ids, then shards."""
        return (
            f"DELETE FROM `{self.table}` WHERE status = 'PENDING' AND id IN ({_marks(ids)})"
            f" AND shard IN ({_marks(shards)})"
        )

    def schedule_retries(self, rows: int, shards: int) -> str:
        """Back off ``rows`` rows in one statement, each with its own charge, delay and error.
        Parameters: per row its id, the attempts the relay read, the attempts increment (0 or 1),
        delay µs and error; then the ids again, then shards.  The attempts guard makes the charge
        idempotent: a finalize re-run after a COMMIT whose answer was lost finds the count already
        moved and charges nothing.  A derived table of literals (no VALUES: MySQL spells it
        ``VALUES ROW(...)``, MariaDB ``VALUES (...)``); ``id IN`` keeps the lookup on the key."""
        first = (
            "SELECT %s AS id, %s AS attempts, %s AS charge,"
            " UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND AS due, %s AS error"
        )
        rest = " UNION ALL SELECT %s, %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, %s" * (rows - 1)
        return (
            f"UPDATE `{self.table}` o JOIN ({first}{rest}) v ON o.id = v.id AND o.attempts = v.attempts"
            " SET o.attempts = o.attempts + v.charge, o.available_at = v.due, o.last_error = v.error"
            f" WHERE o.status = 'PENDING' AND o.id IN ({_marks(rows)}) AND o.shard IN ({_marks(shards)})"
        )

    def mark_dead(self, rows: int, shards: int) -> str:
        """Parameters: per row its id and error; then the ids again, then shards.  Only after the
        dead-letter queue acknowledged."""
        values = "SELECT %s AS id, %s AS error" + " UNION ALL SELECT %s, %s" * (rows - 1)
        return (
            f"UPDATE `{self.table}` o JOIN ({values}) v ON o.id = v.id"
            " SET o.status = 'DEAD', o.dead_at = UTC_TIMESTAMP(6), o.last_error = v.error"
            f" WHERE o.status = 'PENDING' AND o.id IN ({_marks(rows)}) AND o.shard IN ({_marks(shards)})"
        )

    # --- lag ------------------------------------------------------------------------------

    def pending_stats(self, shards: int) -> str:
        """Pending count and lowest pending id, from the shard index alone."""
        return (
            f"SELECT COUNT(*), MIN(id) FROM `{self.table}`"
            f" WHERE status = 'PENDING' AND shard IN ({_marks(shards)})"
        )

    def dead_count(self, shards: int) -> str:
        """DEAD rows, one range of the shard index per shard (no row is read): the janitor's gauge."""
        return f"SELECT COUNT(*) FROM `{self.table}` WHERE shard IN ({_marks(shards)}) AND status = 'DEAD'"

    @property
    def age_of(self) -> str:
        return (
            "SELECT GREATEST(TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6)), 0)"
            f" FROM `{self.table}` WHERE id = %s"
        )

    # --- the writer's helper and the consumer's helper ----------------------------------

    @property
    def insert_event(self) -> str:
        return (
            f"INSERT INTO `{self.table}` (event_id, aggregate_type, aggregate_id, event_type, payload,"
            " topic, headers, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        )

    # --- retention (the janitor): bounded batches, one autocommit statement each ---------
    # Under READ COMMITTED a DELETE skips rows whose committed version does not match, so it
    # never waits for the relay's finalize nor blocks the application's INSERTs (new ids).

    @property
    def purge_published(self) -> str:
        """Parameters: shard, retention seconds, limit."""
        return (
            f"DELETE FROM `{self.table}` WHERE shard = %s AND status = 'PUBLISHED'"
            " AND published_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND ORDER BY id LIMIT %s"
        )

    @property
    def purge_dead(self) -> str:
        """Parameters: shard, retention seconds, limit."""
        return (
            f"DELETE FROM `{self.table}` WHERE shard = %s AND status = 'DEAD'"
            " AND dead_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND ORDER BY id LIMIT %s"
        )

    # --- operator commands ----------------------------------------------------------------

    def counts_by_route(self, shards: int) -> str:
        """Pending and dead rows per route (aggregate and event type, explicit topic), read
        through the shard index (published rows are not scanned)."""
        return (
            f"SELECT {as_bytes('aggregate_type')}, {as_bytes('event_type')}, {as_bytes('topic')}, status,"
            f" COUNT(*) FROM `{self.table}`"
            f" WHERE shard IN ({_marks(shards)}) AND status IN ('PENDING', 'DEAD')"
            # Grouped by the bytes: utf8mb4_bin pads, so "a" and "a " would count as one route.
            f" GROUP BY {as_bytes('aggregate_type')}, {as_bytes('event_type')}, {as_bytes('topic')}, status"
        )

    def blocked_heads(self, shards: int) -> str:
        """Rows backing off: the heads that hold their aggregates back, oldest first, with why and
        for how long.  Parameters: shards, then a limit.  (Reads every pending row's
        ``available_at``: an operator command, not the relay's loop.)"""
        return (
            f"SELECT {as_bytes('aggregate_type')}, {as_bytes('aggregate_id')}, attempts,"
            f" {as_bytes('last_error')},"
            " TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), available_at) / 1e6"
            f" FROM `{self.table}` WHERE shard IN ({_marks(shards)}) AND status = 'PENDING'"
            " AND available_at > UTC_TIMESTAMP(6) ORDER BY id LIMIT %s"
        )

    def blocked_count(self, shards: int) -> str:
        return (
            f"SELECT COUNT(DISTINCT {as_bytes('aggregate_type')}, {as_bytes('aggregate_id')})"
            f" FROM `{self.table}` WHERE shard IN ({_marks(shards)})"
            " AND status = 'PENDING' AND available_at > UTC_TIMESTAMP(6)"
        )

    @property
    def published_count(self) -> str:
        return f"SELECT COUNT(*) FROM `{self.table}` WHERE status = 'PUBLISHED'"

    @property
    def leases(self) -> str:
        return (
            f"SELECT shard, lease_owner, fence,"
            " GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until), 0) / 1e6"
            f" FROM `{self.shard_table}` WHERE lease_until > UTC_TIMESTAMP(6) ORDER BY shard"
        )

    def dead_rows(self, ids: int) -> str:
        """DEAD rows by id, in id order."""
        return (
            f"SELECT {DEAD_ROW_COLUMNS} FROM `{self.table}` WHERE status = 'DEAD' AND id IN ({_marks(ids)})"
            " ORDER BY id"
        )

    def row_states(self, ids: int) -> str:
        return f"SELECT id, status FROM `{self.table}` WHERE id IN ({_marks(ids)})"

    @property
    def dead_rows_up_to(self) -> str:
        """Every DEAD row up to an id, in id order (the shard index: no published row is read)."""
        return f"SELECT {DEAD_ROW_COLUMNS} FROM `{self.table}` WHERE status = 'DEAD' AND id <= %s ORDER BY id"

    def letter_rows(self, ids: int) -> str:
        """The rows dead letters name, by id: DEAD_ROW_COLUMNS and status."""
        return f"SELECT {DEAD_ROW_COLUMNS}, status FROM `{self.table}` WHERE id IN ({_marks(ids)})"

    def redrive_dead(self, ids: int) -> str:
        """DEAD → PENDING, due now, attempts reset.  Ids are unchanged, so the event takes its
        old place in its aggregate's order."""
        return (
            f"UPDATE `{self.table}` SET status = 'PENDING', attempts = 0, last_error = NULL, dead_at = NULL,"
            f" available_at = '1970-01-01 00:00:00.000000' WHERE status = 'DEAD' AND id IN ({_marks(ids)})"
        )

    @property
    def republish_after(self) -> str:
        """An aggregate's events published after a redriven one go out again after it, so the
        last copy of each event in Kafka is in outbox order.  Parameters: shard, type, id, after
        id, then type and id as bytes (a range of the aggregate index, whatever the retention;
        compared as bytes too: utf8mb4_bin pads "k" to "k ")."""
        return (
            f"UPDATE `{self.table}` SET status = 'PENDING', published_at = NULL,"
            " available_at = '1970-01-01 00:00:00.000000'"
            " WHERE shard = %s AND status = 'PUBLISHED' AND aggregate_type = %s AND aggregate_id = %s"
            " AND id > %s AND CAST(aggregate_type AS BINARY) = %s AND CAST(aggregate_id AS BINARY) = %s"
        )

    @property
    def dead_before(self) -> str:
        """A row when the DEAD row went dead longer ago than a retention.  Parameters: id, seconds."""
        return (
            f"SELECT 1 FROM `{self.table}` WHERE id = %s AND dead_at < UTC_TIMESTAMP(6) - INTERVAL %s SECOND"
        )

    def release_operator_leases(self, shards: int) -> str:
        """End the leases operator commands hold on shards; a relay's lease is never touched."""
        return (
            f"UPDATE `{self.shard_table}` SET lease_token = NULL, lease_owner = NULL,"
            " lease_until = LEAST(lease_until, UTC_TIMESTAMP(6))"
            f" WHERE shard IN ({_marks(shards)}) AND LEFT(lease_owner, 9) = 'operator '"
        )

    def purge_dead_ids(self, ids: int) -> str:
        return f"DELETE FROM `{self.table}` WHERE status = 'DEAD' AND id IN ({_marks(ids)})"

    # --- migrations -----------------------------------------------------------------------

    @property
    def create_migrations_table(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS `{self.migrations_table}` ("
            " version INT UNSIGNED NOT NULL PRIMARY KEY,"
            " name VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
            " checksum CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
            " applied_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))"
            ") ENGINE = InnoDB"
        )

    @property
    def applied_migrations(self) -> str:
        return f"SELECT version, name, checksum FROM `{self.migrations_table}` ORDER BY version"

    @property
    def record_migration(self) -> str:
        return f"INSERT INTO `{self.migrations_table}` (version, name, checksum) VALUES (%s, %s, %s)"

    @property
    def schema_tables(self) -> str:
        """Parameters: the three table names (table, shard table, migrations table)."""
        return (
            "SELECT TABLE_NAME, TABLE_TYPE, ENGINE FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (%s, %s, %s)"
        )

    @property
    def schema_columns(self) -> str:
        """Parameters: the three table names.  Portable columns only (MySQL 8 spells COLUMN_TYPE
        `bigint unsigned`, MariaDB `bigint(20) unsigned`: DATA_TYPE is the same on both)."""
        return (
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE,"
            " CHARACTER_MAXIMUM_LENGTH, EXTRA, GENERATION_EXPRESSION FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (%s, %s, %s)"
        )

    @property
    def schema_indexes(self) -> str:
        """Parameters: the three table names.  One row per indexed column, in index order."""
        return (
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (%s, %s, %s)"
            " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        )

    @property
    def current_database(self) -> str:
        return "SELECT DATABASE()"

    @property
    def get_lock(self) -> str:
        """Parameters: a lock name (at most 64 characters), whole seconds to wait.  1: taken;
        0: another session held it all that time.  Released with the session if not before."""
        return "SELECT GET_LOCK(%s, %s)"

    @property
    def release_lock(self) -> str:
        return "SELECT RELEASE_LOCK(%s)"

    @property
    def shard_rows(self) -> str:
        """Every shard row, and whether its lease is free."""
        return f"SELECT shard, lease_until <= UTC_TIMESTAMP(6) FROM `{self.shard_table}` ORDER BY shard"

    def restore_shards(self, count: int) -> str:
        """Put back ``count`` missing shard rows (parameters: their ids), free; idempotent."""
        _marks(count)  # at least one
        return f"INSERT IGNORE INTO `{self.shard_table}` (shard) VALUES {', '.join(['(%s)'] * count)}"

    def rename_tables(self, ddl: str) -> str:
        """Point a migration written for `outbox` / `outbox_shard` at this table's names."""
        return ddl.replace("`outbox_shard`", f"`{self.shard_table}`").replace("`outbox`", f"`{self.table}`")


@dataclass(frozen=True)
class ProcessedEventsSql:
    """The consumer's de-duplication table (in the consumer's own database).

    Keyed on ``(scope, event_id)``, both VARBINARY: compared byte for byte, so no collation
    (case folding, PAD SPACE ignoring trailing blanks) and no charset conversion can make two
    distinct ids equal.  The consumer validates both to fit before inserting: nothing is ever
    truncated, whatever the session's sql_mode.
    """

    table: str = "processed_events"

    # Column limits; the consumer validates against them (not dataclass fields: unannotated).
    EVENT_ID_BYTES = 36  # the outbox's event_id is CHAR(36) ascii: every relayed id fits
    SCOPE_BYTES = 249  # a Kafka topic name (the default scope) fits

    def __post_init__(self) -> None:
        if not valid_identifier(self.table):
            raise ValueError(f"invalid table name {self.table!r}")

    @property
    def create(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS `{self.table}` ("
            f" scope VARBINARY({self.SCOPE_BYTES}) NOT NULL,"
            f" event_id VARBINARY({self.EVENT_ID_BYTES}) NOT NULL,"
            " topic VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
            " kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL,"
            " processed_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),"
            " PRIMARY KEY (scope, event_id),"
            " KEY ix_processed_at (processed_at)) ENGINE = InnoDB"
        )

    @property
    def claim(self) -> str:
        """A plain INSERT: duplicate key (1062) = already processed, or being processed by a
        transaction that then commits (the insert waits for it on the primary key)."""
        return (
            f"INSERT INTO `{self.table}` (scope, event_id, topic, kafka_partition, kafka_offset)"
            " VALUES (%s, %s, %s, %s, %s)"
        )

    @property
    def forget_cutoff(self) -> str:
        """Parameter: an age in seconds.  The instant before which ids are forgotten, read once
        per trim so that its batches have a fixed goal (ids recorded meanwhile are never due)."""
        return "SELECT UTC_TIMESTAMP(6) - INTERVAL %s SECOND"

    @property
    def forget_older_than(self) -> str:
        """Parameters: the cutoff (from ``forget_cutoff``), a batch size."""
        return f"DELETE FROM `{self.table}` WHERE processed_at < %s ORDER BY processed_at LIMIT %s"

    # --- upgrading a table made by the first layout: event_id CHAR(36) ascii PRIMARY KEY --
    # Each step is idempotent, so an upgrade cut off half-way (DDL is not transactional)
    # completes when ensure_table runs again.

    @property
    def primary_key_columns(self) -> str:
        """Parameter: the table name.  The primary key's columns, in key order."""
        return (
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY'"
            " ORDER BY SEQ_IN_INDEX"
        )

    @property
    def column_types(self) -> str:
        """Parameter: the table name.  Each column's name and type, e.g. ``varbinary(36)``."""
        return (
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
        )

    @property
    def add_scope(self) -> str:
        """'' marks a row not yet given its scope ('' is never a valid scope)."""
        return (
            f"ALTER TABLE `{self.table}`"
            f" ADD COLUMN scope VARBINARY({self.SCOPE_BYTES}) NOT NULL DEFAULT '' FIRST"
        )

    @property
    def scope_from_topic(self) -> str:
        """Old rows get the default scope, their topic (old event ids were unique table-wide,
        so the new keys are unique too)."""
        return f"UPDATE `{self.table}` SET scope = topic WHERE scope = ''"

    @property
    def scope_fixed(self) -> str:
        """Parameter: the consumer's configured scope, for every old row."""
        return f"UPDATE `{self.table}` SET scope = %s WHERE scope = ''"

    @property
    def rekey(self) -> str:
        """The new key and exact byte comparison; scope loses its '' default (always given)."""
        return (
            f"ALTER TABLE `{self.table}` MODIFY scope VARBINARY({self.SCOPE_BYTES}) NOT NULL,"
            f" MODIFY event_id VARBINARY({self.EVENT_ID_BYTES}) NOT NULL,"
            " DROP PRIMARY KEY, ADD PRIMARY KEY (scope, event_id)"
        )


def _marks(count: int) -> str:
    if count < 1:
        raise ValueError("an IN list needs at least one value")
    return ", ".join(["%s"] * count)
