-- sensornet schema, version 1, SQLite.
-- Times are REAL seconds since the epoch (UTC), as in sensornet.reading.Reading.
-- Applied by sensornet.store.sqlite inside one BEGIN IMMEDIATE transaction,
-- which records the version in schema_version in the same transaction.

CREATE TABLE readings (
    id          INTEGER PRIMARY KEY,
    sensor      TEXT    NOT NULL
                CONSTRAINT readings_sensor_length CHECK (length(sensor) BETWEEN 1 AND 128),
    kind        TEXT    NOT NULL
                CONSTRAINT readings_kind_length CHECK (length(kind) BETWEEN 1 AND 64),
    -- NaN arrives as NULL (SQLite has no NaN) and fails NOT NULL; the CHECK
    -- refuses the infinities.
    value       REAL    NOT NULL
                CONSTRAINT readings_value_finite CHECK (value BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308),
    unit        TEXT    NOT NULL,
    ts          REAL    NOT NULL,
    seq         INTEGER
                CONSTRAINT readings_seq_range CHECK (seq >= 0),
    received_at REAL    NOT NULL,
    peer        TEXT    NOT NULL,
    dialect     TEXT    NOT NULL,
    CONSTRAINT readings_sensor_seq UNIQUE (sensor, seq)
);

-- Every SQLite index ends with the rowid (id), so these serve ORDER BY ts, id.
CREATE INDEX readings_sensor_ts ON readings (sensor, ts);
CREATE INDEX readings_ts ON readings (ts);

CREATE TABLE sensors (
    sensor      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    unit        TEXT    NOT NULL,
    value       REAL    NOT NULL,
    ts          REAL    NOT NULL,
    count       INTEGER NOT NULL,
    first_seen  REAL    NOT NULL,
    last_seen   REAL    NOT NULL,
    PRIMARY KEY (sensor, kind)
) WITHOUT ROWID;
