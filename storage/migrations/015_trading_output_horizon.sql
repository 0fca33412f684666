-- 015: where the trading agent's outputs stood when each checkpoint was saved. Outputs are sent
-- before the checkpoint that journals their inputs (010, 012), so on a running platform the recorded
-- outputs run ahead of the journal; `tradeflow audit` compares only the outputs at or before this
-- horizon (physical topic -> partition -> last offset delivered), the ones the journal's inputs made.
ALTER TABLE trading_checkpoints ADD COLUMN output_offsets jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN trading_checkpoints.output_offsets IS
    'topic -> partition -> the last offset of an output delivered before this checkpoint (the audit horizon)';
