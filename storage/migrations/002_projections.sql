-- 002: typed projections that readers query directly.

-- Latest revision of every bar: (venue, symbol, timeframe, open_time) is the
-- bar's identity; a higher revision replaces a lower one, never the reverse,
-- so redelivery and out-of-order revisions converge to the same table.
CREATE TABLE bars (
    venue       text NOT NULL,
    symbol      text NOT NULL,
    timeframe   text NOT NULL,
    open_time   bigint NOT NULL,
    close_time  bigint NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    trade_count bigint,
    is_closed   boolean NOT NULL,
    revision    integer NOT NULL,
    source      text NOT NULL,
    event_id    text NOT NULL,
    PRIMARY KEY (venue, symbol, timeframe, open_time)
);

-- Dead letters, typed for operators: why, where from, and the original bytes.
CREATE VIEW dead_letters AS
SELECT event_id,
       payload->>'consumer'                 AS consumer,
       payload->>'source_topic'             AS source_topic,
       (payload->>'source_partition')::int  AS source_partition,
       (payload->>'source_offset')::bigint  AS source_offset,
       payload->>'reason'                   AS reason,
       payload->>'detail'                   AS detail,
       decode(payload->>'original_b64', 'base64') AS original,
       ts_event
FROM ev_dead_letters;
