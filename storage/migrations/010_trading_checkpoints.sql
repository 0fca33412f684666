-- 010: trading-core checkpoints (agents/trading/checkpoint.py). One row per account: the
-- engines' state after a micro-batch plus the input offsets it covers (per topic-partition,
-- next offset to read). The trading agent writes it after flushing that batch's outputs and
-- seeks its inputs to these offsets on every partition assignment, so a restarted worker
-- continues from exactly this state. ``state`` is a pickle authenticated by ``mac``
-- (HMAC-SHA256 under a key derived from control key ``key_id``): a row written by anyone
-- without that key is refused, never unpickled. Delete an account's row to start it flat
-- (it then replays its inputs from the beginning).
CREATE TABLE trading_checkpoints (
    account         text PRIMARY KEY,
    format          integer NOT NULL,
    config_hash     text NOT NULL,
    key_id          text NOT NULL,
    offsets         jsonb NOT NULL,
    events_applied  bigint NOT NULL,
    state           bytea NOT NULL,
    mac             text NOT NULL,
    state_sha256    text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE trading_checkpoints IS 'Trading-core state per account and the input offsets it covers (restart recovery).';
