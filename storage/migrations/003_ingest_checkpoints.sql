-- 003: progress of resumable history downloads (tradeflow ingest history).
CREATE TABLE ingest_checkpoints (
    key                text PRIMARY KEY,
    last_open_time_ns  bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
