-- An index that holds each shard's pending rows by aggregate: the relay reads every aggregate's
-- first pending row (its head) from it alone, so the rows of blocked aggregates (a head backing
-- off, a topic missing) are never scanned to reach the rows behind them (README, "Reading a shard").
-- Online DDL on MySQL 8.0 / Aurora MySQL 3 and MariaDB 10.11: ALGORITHM=INPLACE, LOCK=NONE builds
-- the index while writers go on (only brief metadata locks at the start and the end); the ALTER
-- fails rather than block writers if the server cannot do that.  It reads the whole table once:
-- on a large outbox run it when writes are light (see README, "Upgrading").
-- Idempotent: the ALTER runs only when the index is missing (MySQL has no ADD INDEX IF NOT EXISTS);
-- the table name is read from a `outbox` literal so that `outbox-relay migrate` renames it too.
SET @outbox_ddl = IF(
  (SELECT COUNT(*) FROM information_schema.STATISTICS
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = TRIM(BOTH '`' FROM '`outbox`')
      AND INDEX_NAME = 'ix_outbox_aggregate_head') = 0,
  'ALTER TABLE `outbox` ADD INDEX ix_outbox_aggregate_head (shard, status, aggregate_type, aggregate_id, id), ALGORITHM=INPLACE, LOCK=NONE',
  'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
