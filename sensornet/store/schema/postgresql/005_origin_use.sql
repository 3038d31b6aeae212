-- sensornet schema, version 5, PostgreSQL: when each origin was last used.
-- An origin names a connection's (unit, peer, dialect), the peer with its
-- port, so every reconnection adds one. The writer records, at most once an
-- hour per origin, when it last stored a reading from it (microseconds);
-- the maintenance thread deletes origins unused for longer than any raw
-- reading that could name them is kept (see docs/storage.md, "Origins"),
-- so the table is bounded by what retention keeps. The index finds those
-- without a scan of every origin (a reconnecting fleet's table can hold
-- hundreds of thousands) while the writer waits. Origins already here,
-- and new ones, count as used when created.
ALTER TABLE origins ADD COLUMN last_used bigint NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
CREATE INDEX origins_last_used ON origins (last_used);
