-- 013: what became of each signal the trading agent applied, next to it in its input journal
-- (012): the strategy's sizing reason (`order`, `below_entry_threshold`, `stale_signal`, ...),
-- or `held` while the signal waits for its bar (updated when it is applied). NULL for other
-- inputs and for rows written before this migration. `tradeflow status` counts signals in,
-- intents out and the top reasons a signal was not traded from it.
ALTER TABLE trading_input_journal ADD COLUMN outcome text;
COMMENT ON COLUMN trading_input_journal.outcome IS
    'signals: the sizing reason (order, below_entry_threshold, ...) or held (waiting for its bar); else NULL';
