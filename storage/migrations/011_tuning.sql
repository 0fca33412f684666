-- 011: parameter tuning of the reference strategy (backtest/tuning.py, `tradeflow tune grid|optuna`).
-- A study is one search (its id is a hash of its config unless named); a trial is one candidate parameter set.
-- Writes are idempotent: a re-run of the same study upserts nothing new (same study id + params -> same row).
CREATE TABLE tuning_studies (
    study_id     text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    method       text NOT NULL CHECK (method IN ('grid', 'optuna')),
    strategy     text NOT NULL,                 -- e.g. 'sma_cross' (backtest/reference.py)
    objective    text NOT NULL,                 -- maximised, e.g. 'sharpe_daily'
    config       jsonb NOT NULL,                -- search space, constraints, costs, seed, data source
    config_hash  text NOT NULL,                 -- sha256 of the canonical config JSON
    data_source  jsonb NOT NULL                 -- file/market/range/bar count/sha256 of the prices
);
COMMENT ON TABLE tuning_studies IS 'One parameter search of a strategy; config_hash guards a study id against reuse with another config.';

CREATE TABLE tuning_trials (
    study_id     text NOT NULL REFERENCES tuning_studies (study_id),
    trial_key    text NOT NULL,                 -- sha256 of the canonical params JSON
    trial_number integer NOT NULL,              -- grid order / optuna trial number of its first evaluation
    params       jsonb NOT NULL,
    metrics      jsonb NOT NULL,                -- JSON null = missing (e.g. Sharpe of a flat curve); 0 is a value
    score        double precision,              -- the objective; NULL when undefined
    feasible     boolean NOT NULL,
    reason       text,                          -- why not feasible (activity constraints, undefined score)
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_id, trial_key),
    CHECK (feasible = (reason IS NULL)),
    CHECK (NOT feasible OR score IS NOT NULL)
);
COMMENT ON TABLE tuning_trials IS 'Candidates of a tuning study: params, metrics, objective score, feasibility with the reason.';

-- Feasible trials ranked per study: score descending, earlier trial first on a tie (the code ranks the same way).
-- An infeasible trial is never ranked, whatever its score.
CREATE VIEW tuning_leaderboard AS
SELECT study_id,
       rank() OVER (PARTITION BY study_id ORDER BY score DESC, trial_number) AS rank,
       trial_number, params, score, metrics
FROM tuning_trials
WHERE feasible;
