-- 006: trading core: control-command audits (topic control.audit) and portfolio state
-- (topic portfolio.state), with typed views for operators and the dashboard.
CREATE TABLE ev_control_audit (
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
CREATE INDEX ev_control_audit_ts_event_idx ON ev_control_audit (ts_event);
COMMENT ON TABLE ev_control_audit IS 'topic control.audit: What each component did with each control command (accepted, rejected, ignored), with reasons.';

CREATE TABLE ev_portfolio_state (
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
CREATE INDEX ev_portfolio_state_ts_event_idx ON ev_portfolio_state (ts_event);
COMMENT ON TABLE ev_portfolio_state IS 'topic portfolio.state: Portfolio and risk state per account after each bar (positions, PnL, equity, drawdown).';

-- Every control command as each component handled it; claimed fields of rejected
-- commands are unauthenticated (what the message said, not who sent it).
CREATE VIEW control_audit AS
SELECT event_id                          AS audit_id,
       payload->>'component'             AS component,
       payload->>'control_event_id'      AS control_event_id,
       payload->>'command'               AS command,
       payload->>'scope'                 AS scope,
       payload->>'target'                AS target,
       payload->>'operator'              AS operator,
       payload->>'key_id'                AS key_id,
       payload->>'outcome'               AS outcome,
       payload->>'reason'                AS reason,
       payload->>'detail'                AS detail,
       (payload->>'alert')::boolean      AS alert,
       payload->'changes'                AS changes,
       ts_event,
       ts_init
FROM ev_control_audit;

-- The latest state per account (event time, then offset: readers never rely on compaction).
CREATE VIEW portfolio_latest AS
SELECT DISTINCT ON (payload->>'account')
       payload->>'account'                     AS account,
       (payload->>'as_of_ns')::bigint          AS as_of_ns,
       (payload->>'equity')::double precision  AS equity,
       (payload->>'cash')::double precision    AS cash,
       (payload->>'drawdown')::double precision AS drawdown,
       (payload->>'realized_pnl')::double precision AS realized_pnl,
       (payload->>'unrealized_pnl')::double precision AS unrealized_pnl,
       (payload->>'fees_paid')::double precision AS fees_paid,
       payload->'quantities'                   AS quantities,
       event_id
FROM ev_portfolio_state
ORDER BY payload->>'account', (payload->>'as_of_ns')::bigint DESC, kafka_offset DESC;
