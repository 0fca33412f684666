-- 007: backtest runs written by backtest/runs.py (the replay driver), read by gates.
-- Contract: /tmp/briefs/schema.md (shared with the gates engineer): add columns, never rename.
-- Nothing here is ever deleted: a stale or failed run is superseded with a reason.

CREATE TABLE backtest_runs (
    run_id           text PRIMARY KEY,          -- sha256 of the canonical request JSON (+ '#<attempt>' on a re-run)
    created_at       timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL CHECK (source IN ('prod', 'maintenance', 'smoke', 'async_test')),
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'superseded')),
    error            text,                      -- clear message when failed
    track            text NOT NULL,             -- what gates group by (strategy / model id)
    symbols          text[] NOT NULL,
    range_start      timestamptz,
    range_end        timestamptz,
    config           jsonb NOT NULL,
    config_hash      text NOT NULL,
    lineage          jsonb NOT NULL,            -- model, feature set, data source + row counts, code version, polarity
    decision_hash    text,                      -- sha256 over the codec-encoded decision stream
    superseded_by    text,
    supersede_reason text,
    finished_at      timestamptz,
    -- extra columns (allowed by the contract)
    request_hash     text NOT NULL,             -- run_id without the attempt suffix: groups re-runs
    attempt          integer NOT NULL DEFAULT 1,
    n_records        bigint,                    -- records in the decision stream
    n_bars           bigint,                    -- input bars replayed
    CHECK (status <> 'failed' OR error IS NOT NULL),
    CHECK (status <> 'superseded' OR supersede_reason IS NOT NULL),
    -- a run with an inverted range can only be one that failed on it (and keeps its error when superseded)
    CHECK (range_start IS NULL OR range_end IS NULL OR range_start < range_end OR error IS NOT NULL)
);
CREATE INDEX backtest_runs_track_idx ON backtest_runs (track, status, created_at);
CREATE INDEX backtest_runs_request_idx ON backtest_runs (request_hash, attempt);
COMMENT ON TABLE backtest_runs IS 'One backtest run: request, lineage, status, decision hash. Never deleted; superseded instead.';

CREATE TABLE backtest_fills (
    run_id          text NOT NULL REFERENCES backtest_runs (run_id),
    seq             integer NOT NULL,
    symbol          text NOT NULL,
    side            text NOT NULL,
    ts              timestamptz NOT NULL,
    quantity        double precision NOT NULL,
    price           double precision NOT NULL,
    notional        double precision NOT NULL,
    fee             double precision NOT NULL,
    slippage_cost   double precision NOT NULL,
    impact_cost     double precision NOT NULL,
    client_order_id text NOT NULL,
    -- extra columns
    ts_ns           bigint NOT NULL,
    fill_event_id   text NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX backtest_fills_coid_idx ON backtest_fills (client_order_id);
COMMENT ON TABLE backtest_fills IS 'Paper fills of a backtest; client_order_id matches ev_fills of the same intent.';

CREATE TABLE backtest_equity (
    run_id   text NOT NULL REFERENCES backtest_runs (run_id),
    ts       timestamptz NOT NULL,
    equity   double precision NOT NULL,
    drawdown double precision NOT NULL,
    PRIMARY KEY (run_id, ts)
);
COMMENT ON TABLE backtest_equity IS 'Account equity and peak drawdown after each bar of a backtest.';

CREATE TABLE backtest_metrics (
    run_id text NOT NULL REFERENCES backtest_runs (run_id),
    symbol text NOT NULL,                       -- '*' = total
    metric text NOT NULL,
    value  double precision,                    -- NULL = missing (a state); 0.0 is a value
    PRIMARY KEY (run_id, symbol, metric)
);
COMMENT ON TABLE backtest_metrics IS 'Metrics per symbol and total (symbol = ''*''); formulas in backtest/metrics.py.';
