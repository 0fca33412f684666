-- 013: where each stream of a recorded-market feed stands (tradeflow feed). One row per
-- (feed, venue, symbol, timeframe): the open time of the last bar the broker acknowledged,
-- and the stream identity (Bar.source) it was published under. Written after the ack
-- (at-least-once): a crash republishes at most the last batch, whose bars keep their event
-- ids and are dropped as duplicates downstream. Monotone: a position never moves back.
CREATE TABLE feed_positions (
    feed               text NOT NULL,
    venue              text NOT NULL,
    symbol             text NOT NULL,
    timeframe          text NOT NULL,
    source             text NOT NULL,
    last_open_time_ns  bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feed, venue, symbol, timeframe)
);
COMMENT ON TABLE feed_positions IS 'Resume point per stream of a recorded-market feed (tradeflow feed).';
