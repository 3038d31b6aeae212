-- sensornet schema, version 2, SQLite: the compact store.
-- Times are INTEGER microseconds since the epoch (UTC).
-- Readings live as per-series rows of columns (sensornet.store.codec):
-- fresh rows, one per write batch and series, and compressed blocks, which
-- the compactor makes of them. See docs/storage.md.
-- The v1 tables are renamed here; sensornet.store.sqlite converts their
-- rows into blocks and drops them in the same transaction.

ALTER TABLE readings RENAME TO v1_readings;
ALTER TABLE sensors RENAME TO v1_sensors;
DROP INDEX IF EXISTS readings_sensor_ts;
DROP INDEX IF EXISTS readings_ts;

-- The sensor dictionary: one row per sensor name. Credentials (the
-- identity issue) belong beside it, keyed by the same id.
CREATE TABLE sensors (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE
                CONSTRAINT sensors_name_length CHECK (length(name) BETWEEN 1 AND 128),
    created_at  INTEGER NOT NULL
);

-- One row per (sensor, kind): its summary (latest reading, counts), the
-- greatest seq stored (the exactly-once high-water mark) and the index of
-- the retention rule that applies to it.
CREATE TABLE series (
    id          INTEGER PRIMARY KEY,
    sensor      INTEGER NOT NULL REFERENCES sensors (id),
    kind        TEXT    NOT NULL
                CONSTRAINT series_kind_length CHECK (length(kind) BETWEEN 1 AND 64),
    unit        TEXT    NOT NULL DEFAULT '',
    value       REAL,
    ts          INTEGER,
    count       INTEGER NOT NULL DEFAULT 0,
    first_seen  INTEGER,
    last_seen   INTEGER,
    max_seq     INTEGER NOT NULL DEFAULT -1,
    policy      INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT series_sensor_kind UNIQUE (sensor, kind)
);

-- (unit, peer, dialect) of readings, so that a reading stores a small
-- number instead of three strings.
CREATE TABLE origins (
    id          INTEGER PRIMARY KEY,
    unit        TEXT    NOT NULL,
    peer        TEXT    NOT NULL,
    dialect     TEXT    NOT NULL,
    CONSTRAINT origins_key UNIQUE (unit, peer, dialect)
);

CREATE TABLE fresh (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    series      INTEGER NOT NULL,
    t0          INTEGER NOT NULL,
    t1          INTEGER NOT NULL,
    seq0        INTEGER,
    seq1        INTEGER,
    n           INTEGER NOT NULL,
    data        BLOB    NOT NULL
);
CREATE INDEX fresh_series ON fresh (series, t1);

CREATE TABLE blocks (
    id          INTEGER PRIMARY KEY,
    series      INTEGER NOT NULL,
    t0          INTEGER NOT NULL,
    t1          INTEGER NOT NULL,
    seq0        INTEGER,
    seq1        INTEGER,
    n           INTEGER NOT NULL,
    data        BLOB    NOT NULL
);
CREATE INDEX blocks_series ON blocks (series, t1);
CREATE INDEX blocks_t1 ON blocks (t1);

CREATE TABLE rollup_1m (
    series      INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    lo          REAL    NOT NULL,
    hi          REAL    NOT NULL,
    total       REAL    NOT NULL,
    last_ts     INTEGER NOT NULL,
    last        REAL    NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;

CREATE TABLE rollup_1h (
    series      INTEGER NOT NULL,
    bucket      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    lo          REAL    NOT NULL,
    hi          REAL    NOT NULL,
    total       REAL    NOT NULL,
    last_ts     INTEGER NOT NULL,
    last        REAL    NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;

-- next_id: the next reading id to give out. writer: a token of the last
-- process that wrote, so a writer knows when its caches are stale.
CREATE TABLE store_state (
    id          INTEGER PRIMARY KEY CONSTRAINT store_state_one CHECK (id = 1),
    next_id     INTEGER NOT NULL,
    writer      TEXT    NOT NULL DEFAULT ''
);
INSERT INTO store_state (id, next_id) VALUES (1, (SELECT coalesce(max(id), 0) + 1 FROM v1_readings));
