-- 017: topic risk.opening (one account's opening status: every blocker with its reason and end).
CREATE TABLE ev_risk_opening (
    event_id        text PRIMARY KEY,
    schema_version  integer NOT NULL,
    ts_event        bigint NOT NULL,
    ts_init         bigint NOT NULL,
    correlation_id  text NOT NULL,
    causation_id    text,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    msg_key         text,
    payload         json NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ev_risk_opening_ts_event_idx ON ev_risk_opening (ts_event);
CREATE INDEX ev_risk_opening_key_idx ON ev_risk_opening (msg_key, kafka_offset);
COMMENT ON TABLE ev_risk_opening IS 'topic risk.opening: Per account: may it open positions now, and every blocker with its reason and time remaining.';
