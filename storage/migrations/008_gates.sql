-- 008: gates (agents/gates, `tradeflow gates`): typed views over gate results (topic gates.results,
-- stored by the sink in ev_gate_results), the parity cost attribution a GateResult has no field for,
-- and every gate config a result was judged against (by config_hash), so a threshold is never
-- read without the configuration that set it.

-- Every gate result, typed. value NULL = not observed (insufficient_observation), never 0.
CREATE VIEW gate_results AS
SELECT event_id                                       AS result_id,
       payload->>'gate'                               AS gate,
       payload->>'track'                              AS track,
       payload->>'metric'                             AS metric,
       payload->>'status'                             AS status,
       (payload->>'value')::double precision          AS value,
       (payload->>'threshold')::double precision      AS threshold,
       payload->>'comparator'                         AS comparator,
       (payload->>'window_start')::bigint             AS window_start_ns,
       (payload->>'window_end')::bigint               AS window_end_ns,
       to_timestamp((payload->>'window_start')::bigint / 1e9) AS window_start,
       to_timestamp((payload->>'window_end')::bigint / 1e9)   AS window_end,
       (payload->>'observations')::integer            AS observations,
       ARRAY(SELECT json_array_elements_text(payload->'blockers')) AS blockers,
       payload->>'config_hash'                        AS config_hash,
       ts_event,
       ts_init,
       kafka_offset
FROM ev_gate_results;

-- Latest result per (gate, track, metric, window length): newest window end, then evaluation
-- time, then offset (readers never rely on broker compaction).
CREATE VIEW gate_status AS
SELECT DISTINCT ON (gate, track, metric, window_end_ns - window_start_ns)
       *, window_end_ns - window_start_ns AS window_ns
FROM gate_results
ORDER BY gate, track, metric, window_end_ns - window_start_ns, window_end_ns DESC, ts_init DESC, kafka_offset DESC;

-- The current state: latest result per gate/track/metric (the topic key), whatever its window.
CREATE VIEW gate_current AS
SELECT DISTINCT ON (gate, track, metric) *
FROM gate_results
ORDER BY gate, track, metric, window_end_ns DESC, ts_init DESC, kafka_offset DESC;

-- Parity gap of one (track, window, symbol) split by cause; parts sum to gap (paper - backtest cash,
-- positive = paper did better). result_id = the GateResult's event_id; written by the CLI when it
-- publishes the result (no foreign key: the sink stores the result asynchronously).
CREATE TABLE gate_parity_attribution (
    result_id          text PRIMARY KEY,
    track              text NOT NULL,
    metric             text NOT NULL,
    symbol             text NOT NULL,
    window_start_ns    bigint NOT NULL,
    window_end_ns      bigint NOT NULL,
    matched_orders     integer NOT NULL CHECK (matched_orders > 0),
    backtest_cash      double precision NOT NULL,
    paper_cash         double precision NOT NULL,
    gap                double precision NOT NULL,
    quantity           double precision NOT NULL,
    price              double precision NOT NULL,
    slippage           double precision NOT NULL,
    impact             double precision NOT NULL,
    fee                double precision NOT NULL,
    unmatched_backtest text[] NOT NULL,
    unmatched_paper    text[] NOT NULL,
    config_hash        text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gate_parity_attribution_track_idx ON gate_parity_attribution (track, window_end_ns);
COMMENT ON TABLE gate_parity_attribution IS 'Cost attribution of the backtest-vs-paper gap per parity gate result.';

-- Every gate config ever used, by the hash each GateResult carries.
CREATE TABLE gate_configs (
    config_hash text PRIMARY KEY,
    version     text NOT NULL,
    config      jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gate_configs IS 'Gate thresholds and rules by config_hash (every GateResult names one).';
