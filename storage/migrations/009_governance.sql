-- 009: model governance (topic governance.audit): every rollout decision (gate windows,
-- promotions, holds, automatic rollbacks, manual commands accepted or rejected) and the
-- current stage of every rollout. Event table in the style of 001; typed views on top.
CREATE TABLE ev_governance_audit (
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
CREATE INDEX ev_governance_audit_ts_event_idx ON ev_governance_audit (ts_event);
COMMENT ON TABLE ev_governance_audit IS 'topic governance.audit: Model governance decisions per rollout (promote, hold, rollback, manual, rejected) with the gate window, thresholds and actor.';

-- One row per decision: who/what (actor, trigger, cause), which window, which gate results,
-- the thresholds and config they were compared with, and the result. Fields of a rejected
-- command are what the message claimed (unauthenticated).
CREATE VIEW rollout_audit AS
SELECT event_id                                  AS decision_id,
       payload->>'model_id'                      AS model_id,
       payload->>'version'                       AS version,
       payload->>'symbol'                        AS symbol,
       payload->>'action'                        AS action,
       payload->>'from_stage'                    AS from_stage,
       payload->>'to_stage'                      AS to_stage,
       payload->>'trigger'                       AS trigger,
       payload->>'actor'                         AS actor,
       payload->>'reason'                        AS reason,
       (payload->>'window_start')::bigint        AS window_start,
       (payload->>'window_end')::bigint          AS window_end,
       payload->>'window_status'                 AS window_status,
       payload->'gates'                          AS gates,
       payload->'gate_result_ids'                AS gate_result_ids,
       (payload->>'passing_windows')::integer    AS passing_windows,
       (payload->>'failing_windows')::integer    AS failing_windows,
       (payload->>'windows_to_promote')::integer AS windows_to_promote,
       (payload->>'windows_to_rollback')::integer AS windows_to_rollback,
       payload->>'config_hash'                   AS config_hash,
       payload->>'restored_version'              AS restored_version,
       payload->>'cause_event_id'                AS cause_event_id,
       ts_event,
       ts_init,
       kafka_offset
FROM ev_governance_audit;

-- The latest decision per rollout (model_id, symbol) that names a known stage: where each
-- rollout stands (readers never rely on broker compaction: event time, then offset).
CREATE VIEW rollout_status AS
SELECT DISTINCT ON (model_id, symbol)
       model_id, symbol, version, to_stage AS stage, action, reason, passing_windows, failing_windows,
       windows_to_promote, windows_to_rollback, window_end, config_hash, ts_event, decision_id
FROM rollout_audit
WHERE symbol IS NOT NULL AND to_stage IS NOT NULL
ORDER BY model_id, symbol, ts_event DESC, kafka_offset DESC;
