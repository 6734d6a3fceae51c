-- The outbox table (the writer's contract) and the shard lease table (the relay's own state).
-- Portable: MySQL 8.0.13+ / Aurora MySQL 3, and MariaDB 10.11. Every statement is idempotent so a
-- migration that failed half-way (MySQL DDL is not transactional) can simply be re-run.
-- Apply with `outbox-relay migrate` (it also renames `outbox` when OUTBOX_TABLE is set), or by hand.

-- Writers need only: INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES (...);
-- every other column has a default.
CREATE TABLE IF NOT EXISTS `outbox` (
  id             BIGINT UNSIGNED   NOT NULL AUTO_INCREMENT,
  -- The event's unique id: Kafka header `id`, what consumers de-duplicate on.
  event_id       CHAR(36)          CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT (UUID()),
  aggregate_type VARCHAR(255)      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  aggregate_id   VARCHAR(255)      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  event_type     VARCHAR(255)      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  -- JSON text, published byte for byte. A blob (not the JSON type, which differs between MySQL
  -- and MariaDB); the relay validates it and dead-letters what is not JSON.
  payload        MEDIUMBLOB        NOT NULL,
  status         ENUM('PENDING', 'PUBLISHED', 'DEAD') CHARACTER SET ascii COLLATE ascii_bin
                                   NOT NULL DEFAULT 'PENDING',
  created_at     DATETIME(6)       NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
  -- Optional columns the relay honours: an explicit topic, extra headers (JSON object of
  -- string values) and the aggregate's version (sent as header `seq`).
  topic          VARCHAR(249)      CHARACTER SET ascii COLLATE ascii_bin NULL,
  headers        TEXT              CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  seq            BIGINT UNSIGNED   NULL,
  -- Relay bookkeeping. available_at is the backoff: a row is not retried before it (DB clock).
  attempts       SMALLINT UNSIGNED NOT NULL DEFAULT 0,
  available_at   DATETIME(6)       NOT NULL DEFAULT '1970-01-01 00:00:00.000000',
  last_error     VARCHAR(1024)     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  published_at   DATETIME(6)       NULL,
  dead_at        DATETIME(6)       NULL,
  -- All events of an aggregate share a shard; the relay leases whole shards. Equal to
  -- zlib.crc32(aggregate_id.encode()) % 16. Changing 16 needs a drained table (see README).
  shard          SMALLINT UNSIGNED AS (CRC32(aggregate_id) % 16) STORED,
  PRIMARY KEY (id),
  UNIQUE KEY uq_outbox_event_id (event_id),
  -- Serves the relay's read of a shard's pending head in id order: a pure range scan, no sort.
  KEY ix_outbox_shard_head (shard, status, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS `outbox_shard` (
  shard        SMALLINT UNSIGNED NOT NULL,
  lease_token  BINARY(16)        NULL,
  lease_owner  VARCHAR(128)      CHARACTER SET ascii COLLATE ascii_bin NULL,
  lease_until  DATETIME(6)       NOT NULL DEFAULT '1970-01-01 00:00:00.000000',
  fence        BIGINT UNSIGNED   NOT NULL DEFAULT 0,
  PRIMARY KEY (shard)
) ENGINE = InnoDB DEFAULT CHARSET = ascii COLLATE = ascii_bin;

INSERT IGNORE INTO `outbox_shard` (shard) VALUES
  (0), (1), (2), (3), (4), (5), (6), (7), (8), (9), (10), (11), (12), (13), (14), (15);
