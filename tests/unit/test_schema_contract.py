"""The schema check reads information_schema as MySQL 8 / Aurora MySQL 3 and MariaDB 10.11 both
spell it (the integration tests run on MariaDB only: MySQL 8's spellings are checked here)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from outbox_relay.schema_contract import describe, differences, live_tables, tables
from outbox_relay.sql import OutboxSql

GENERATED = "STORED GENERATED"
# information_schema.COLUMNS of the V001 outbox table: (name, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE,
# CHARACTER_MAXIMUM_LENGTH, EXTRA, GENERATION_EXPRESSION) per server.
MARIADB = [
    ("id", "bigint", "bigint(20) unsigned", "NO", None, "auto_increment", None),
    ("event_id", "char", "char(36)", "NO", 36, "", None),
    ("aggregate_type", "varchar", "varchar(255)", "NO", 255, "", None),
    ("aggregate_id", "varchar", "varchar(255)", "NO", 255, "", None),
    ("event_type", "varchar", "varchar(255)", "NO", 255, "", None),
    ("payload", "mediumblob", "mediumblob", "NO", 16777215, "", None),
    ("status", "enum", "enum('PENDING','PUBLISHED','DEAD')", "NO", 9, "", None),
    ("created_at", "datetime", "datetime(6)", "NO", None, "", None),
    ("topic", "varchar", "varchar(249)", "YES", 249, "", None),
    ("headers", "text", "text", "YES", 65535, "", None),
    ("seq", "bigint", "bigint(20) unsigned", "YES", None, "", None),
    ("attempts", "smallint", "smallint(5) unsigned", "NO", None, "", None),
    ("available_at", "datetime", "datetime(6)", "NO", None, "", None),
    ("last_error", "varchar", "varchar(1024)", "YES", 1024, "", None),
    ("published_at", "datetime", "datetime(6)", "YES", None, "", None),
    ("dead_at", "datetime", "datetime(6)", "YES", None, "", None),
    ("shard", "smallint", "smallint(5) unsigned", "YES", None, GENERATED, "crc32(`aggregate_id`) MOD 16"),
]
MYSQL8 = [
    ("id", "bigint", "bigint unsigned", "NO", None, "auto_increment", ""),
    ("event_id", "char", "char(36)", "NO", 36, "DEFAULT_GENERATED", ""),
    ("aggregate_type", "varchar", "varchar(255)", "NO", 255, "", ""),
    ("aggregate_id", "varchar", "varchar(255)", "NO", 255, "", ""),
    ("event_type", "varchar", "varchar(255)", "NO", 255, "", ""),
    ("payload", "mediumblob", "mediumblob", "NO", 16777215, "", ""),
    ("status", "enum", "enum('PENDING','PUBLISHED','DEAD')", "NO", 9, "", ""),
    ("created_at", "datetime", "datetime(6)", "NO", None, "DEFAULT_GENERATED", ""),
    ("topic", "varchar", "varchar(249)", "YES", 249, "", ""),
    ("headers", "text", "text", "YES", 65535, "", ""),
    ("seq", "bigint", "bigint unsigned", "YES", None, "", ""),
    ("attempts", "smallint", "smallint unsigned", "NO", None, "", ""),
    ("available_at", "datetime", "datetime(6)", "NO", None, "", ""),
    ("last_error", "varchar", "varchar(1024)", "YES", 1024, "", ""),
    ("published_at", "datetime", "datetime(6)", "YES", None, "", ""),
    ("dead_at", "datetime", "datetime(6)", "YES", None, "", ""),
    ("shard", "smallint", "smallint unsigned", "YES", None, GENERATED, "(crc32(`aggregate_id`) % 16)"),
]
INDEXES = [
    ("PRIMARY", 0, "id"),
    ("uq_outbox_event_id", 0, "event_id"),
    ("ix_outbox_shard_head", 1, "shard"),
    ("ix_outbox_shard_head", 1, "status"),
    ("ix_outbox_shard_head", 1, "id"),
    *(
        ("ix_outbox_aggregate_head", 1, c)
        for c in ("shard", "status", "aggregate_type", "aggregate_id", "id")
    ),
]
OUTBOX = tables(OutboxSql())[0]


def problems(
    columns: Sequence[tuple[object, ...]],
    indexes: Sequence[tuple[object, ...]] = INDEXES,
    version: int = 2,
    engine: str = "InnoDB",
) -> list[str]:
    live = live_tables(
        [("outbox", "BASE TABLE", engine)],
        [("outbox", *c) for c in columns],
        [("outbox", *i) for i in indexes],
    )
    return differences(OUTBOX, live["outbox"], version)


@pytest.mark.parametrize("server", [MARIADB, MYSQL8], ids=["mariadb-10.11", "mysql-8"])
def test_the_migrated_table_matches_on_both_servers(server: list[tuple[object, ...]]) -> None:
    assert problems(server) == []


@pytest.mark.parametrize("server", [MARIADB, MYSQL8], ids=["mariadb-10.11", "mysql-8"])
def test_a_shard_column_of_another_expression_or_none_differs(server: list[tuple[object, ...]]) -> None:
    other = [(*c[:5], c[5], "crc32(`aggregate_id`) MOD 32") if c[0] == "shard" else c for c in server]
    assert problems(other) == [
        "column `shard` is crc32(`aggregate_id`) MOD 32, expected generated as CRC32(aggregate_id) % 16"
    ]
    plain = [(*c[:5], "", "") if c[0] == "shard" else c for c in server]
    assert problems(plain) == [
        "column `shard` is not generated, expected generated as CRC32(aggregate_id) % 16"
    ]


def test_the_v002_index_is_required_from_v002_only_but_its_name_is_checked_before() -> None:
    v001 = [i for i in INDEXES if i[0] != "ix_outbox_aggregate_head"]
    assert problems(MARIADB, v001, version=1) == []
    assert problems(MARIADB, v001, version=0) == []
    assert problems(MARIADB, v001, version=2) == [
        "index `ix_outbox_aggregate_head` (shard, status, aggregate_type, aggregate_id, id) missing"
    ]
    wrong = [*v001, ("ix_outbox_aggregate_head", 1, "shard")]
    assert problems(MARIADB, wrong, version=1) == [
        "index `ix_outbox_aggregate_head` is (shard), expected"
        " (shard, status, aggregate_type, aggregate_id, id)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("id", "int", "int(11)", "NO", None, "auto_increment", None), "`id` is int(11), expected bigint"),
        (("id", "bigint", "bigint(20)", "NO", None, "auto_increment", None), "expected unsigned"),
        (("id", "bigint", "bigint(20) unsigned", "NO", None, "", None), "column `id` is not AUTO_INCREMENT"),
        (("event_id", "char", "char(32)", "NO", 32, "", None), "expected at least 36 characters"),
        (("payload", "blob", "blob", "NO", 65535, "", None), "column `payload` is blob"),
        (("status", "enum", "enum('PENDING','DONE')", "NO", 7, "", None), "DEAD, PENDING, PUBLISHED among"),
        (("available_at", "timestamp", "timestamp(6)", "NO", None, "", None), "expected datetime"),
        (("headers", "text", "text", "NO", 65535, "", None), "column `headers` is NOT NULL, expected NULL"),
        (("attempts", "varchar", "varchar(5)", "NO", 5, "", None), "expected an integer"),
    ],
)
def test_each_column_difference_is_named(change: tuple[object, ...], expected: str) -> None:
    columns = [change if c[0] == change[0] else c for c in MARIADB]
    (found,) = problems(columns)
    assert expected in found


def test_a_debezium_outbox_is_described_in_one_line() -> None:
    columns = [
        ("id", "varchar", "varchar(36)", "NO", 36, "", None),
        ("aggregatetype", "varchar", "varchar(255)", "NO", 255, "", None),
        ("aggregateid", "varchar", "varchar(255)", "NO", 255, "", None),
        ("type", "varchar", "varchar(255)", "NO", 255, "", None),
        ("payload", "longtext", "longtext", "YES", 4294967295, "", None),
    ]
    found = problems(columns, [("PRIMARY", 0, "id")], version=0)
    line = describe("outbox", found)
    assert "\n" not in line
    assert line.startswith("table `outbox` exists but does not match the relay's schema: columns `event_id`,")
    assert "column `id` is varchar(36), expected bigint" in line and line.endswith("more")


def test_a_view_or_another_engine_is_named() -> None:
    assert problems(MARIADB, engine="MyISAM") == ["engine MyISAM, expected InnoDB"]
    live = live_tables([("outbox", "VIEW", None)], [], [])
    assert differences(OUTBOX, live["outbox"], 2) == ["it is a view, not a table"]
