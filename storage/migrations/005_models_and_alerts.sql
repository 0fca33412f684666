-- 005: operator alerts (topic ops.alerts) and a typed view of the model registry.
CREATE TABLE ev_alerts (
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
CREATE INDEX ev_alerts_ts_event_idx ON ev_alerts (ts_event);
COMMENT ON TABLE ev_alerts IS 'topic ops.alerts: Operator alerts (refused checkpoints, rejected control commands, ...).';

-- Every registry event (registered, shadow, active, rolled back ...); the latest per
-- (model_id, version) by ts_event is the current stage.
CREATE VIEW model_registry AS
SELECT event_id,
       payload->>'model_id'             AS model_id,
       payload->>'version'              AS version,
       payload->>'stage'                AS stage,
       payload->>'feature_set_version'  AS feature_set_version,
       (payload->>'data_start')::bigint AS data_start,
       (payload->>'data_end')::bigint   AS data_end,
       (payload->>'seed')::bigint       AS seed,
       payload->'config'                AS config,
       payload->'metrics'               AS metrics,
       payload->>'checkpoint_path'      AS checkpoint_path,
       payload->>'checkpoint_sha256'    AS checkpoint_sha256,
       ts_event
FROM ev_model_registry;
