-- 004: feature snapshots, typed for research and training (one row per vector).
-- lineage_id = lin1-<first_open_time>-<last_open_time>-<n_bars>-<digest>: the bars of
-- (venue, symbol, timeframe) in that open-time range reproduce the digest
-- (agents.features.spec.lineage_matches), i.e. the vector resolves back to its bars.
CREATE TABLE feature_snapshots (
    event_id            text PRIMARY KEY,
    venue               text NOT NULL,
    symbol              text NOT NULL,
    timeframe           text NOT NULL,
    bar_open_time       bigint NOT NULL,
    feature_set_version text NOT NULL,
    data_version        text NOT NULL,
    lineage_id          text NOT NULL,
    bar_event_id        text,
    names               text[] NOT NULL,
    vals                double precision[] NOT NULL
);
CREATE INDEX feature_snapshots_lookup ON feature_snapshots (symbol, timeframe, feature_set_version, bar_open_time);

-- Data-quality findings, typed for operators and the dashboard.
CREATE VIEW data_quality AS
SELECT event_id,
       payload->>'venue'      AS venue,
       payload->>'symbol'     AS symbol,
       payload->>'timeframe'  AS timeframe,
       payload->>'check'      AS check_name,
       payload->>'severity'   AS severity,
       (payload->>'ref_time')::bigint AS ref_time,
       (payload->>'value')::double precision AS value,
       payload->>'detail'     AS detail,
       (payload->>'blocking')::boolean AS blocking
FROM ev_data_quality;
