-- 008_write_ahead: the write-ahead ledger, reservations, and the one paying writer.
-- A paid request is journaled into `calls_in_flight` before it leaves and removed when its
-- ledger rows are written; a row left behind by a process that is gone becomes an `api_calls`
-- row with status 'in_flight_at_crash' and its worst-case cost in `reserved_usd`.
ALTER TABLE api_calls ADD COLUMN reserved_usd DOUBLE;  -- the call's reservation (NULL: none)

CREATE TABLE calls_in_flight (
    call_id       VARCHAR PRIMARY KEY,
    run_id        VARCHAR,
    phase         VARCHAR NOT NULL,
    step          INTEGER,
    request_hash  VARCHAR NOT NULL,
    teacher_key   VARCHAR NOT NULL,
    backend       VARCHAR NOT NULL,
    model         VARCHAR NOT NULL,
    reserved_usd  DOUBLE NOT NULL DEFAULT 0,  -- worst-case cost of the request
    pid           INTEGER,
    host          VARCHAR,
    sent_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Who may pay a teacher for this warehouse: one process at a time (tacorl_offline/leases.py).
CREATE TABLE writer_leases (
    run_id      VARCHAR PRIMARY KEY,
    phase       VARCHAR NOT NULL,
    pid         INTEGER NOT NULL,
    host        VARCHAR NOT NULL,
    acquired_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    expires_at  DOUBLE NOT NULL               -- unix seconds; renewed on every write open
);
