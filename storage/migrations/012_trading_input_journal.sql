-- 012: the trading agent's input journal. One row per decoded input, in the order the
-- agent applied it to its engines (seq = the number of inputs applied before it), with
-- the arrival bound it used for the event-time clock. Written in the same transaction as
-- the batch's checkpoint (010), so journal and state never disagree; a re-processed
-- input after a crash gets the same seq and is absorbed by the primary key.
-- `tradeflow audit` replays exactly this order: the interleaving of signals, bars and
-- control commands is the one fact about a live run that is not in the records.
-- Deleting an account's checkpoint row (starting it flat) must delete its journal too.
CREATE TABLE trading_input_journal (
    account         text NOT NULL,
    seq             bigint NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    event_id        text NOT NULL,
    arrival_ns      bigint,
    PRIMARY KEY (account, seq)
);
CREATE INDEX trading_input_journal_event_idx ON trading_input_journal (event_id);
COMMENT ON TABLE trading_input_journal IS 'Order in which the trading agent applied its inputs (exact audit replay).';
