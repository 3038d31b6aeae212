-- sensornet schema, version 3, SQLite: credentials (see docs/security.md).
-- Times are INTEGER microseconds since the epoch (UTC), as in schema 2.
-- Only the SHA-256 of a token is kept; the token itself is shown once by
-- the `sensornet sensors` command and never stored.

-- One row per credential. A 'sensor' credential writes as the sensor of
-- the same name: it points at that sensor's row of the sensor dictionary,
-- the id its readings are stored under. A 'gateway' writes for the sensors
-- its grants name (a comma list of exact names and `prefix*` patterns); a
-- 'reader' reads the HTTP API. A revoked credential keeps its row (and its
-- name) with revoked_at set.
CREATE TABLE credentials (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE
                CONSTRAINT credentials_name_length CHECK (length(name) BETWEEN 1 AND 128),
    role        TEXT    NOT NULL
                CONSTRAINT credentials_role CHECK (role IN ('sensor', 'gateway', 'reader')),
    sensor      INTEGER REFERENCES sensors (id),
    grants      TEXT    NOT NULL DEFAULT '',
    token_hash  BLOB    NOT NULL UNIQUE
                CONSTRAINT credentials_hash_length CHECK (length(token_hash) = 32),
    created_at  INTEGER NOT NULL,
    rotated_at  INTEGER,
    revoked_at  INTEGER,
    CONSTRAINT credentials_sensor_role CHECK ((role = 'sensor') = (sensor IS NOT NULL))
);

-- One row: bumped in the transaction of every change to credentials, so a
-- server polls one integer to learn whether to reload them.
CREATE TABLE credentials_revision (
    id          INTEGER PRIMARY KEY CONSTRAINT credentials_revision_one CHECK (id = 1),
    revision    INTEGER NOT NULL
);
INSERT INTO credentials_revision (id, revision) VALUES (1, 0);
