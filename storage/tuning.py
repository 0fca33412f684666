"""Tuning studies and their trials (``tuning_studies`` / ``tuning_trials``, migration 011).

Writes are idempotent (``ON CONFLICT DO NOTHING``): the same study id keeps its
first row, the same trial key its first result. Whether a stored row agrees
with a re-run is the caller's decision (:func:`backtest.tuning.persist`), in
the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.connection import Conn

__all__ = ["StoredTrial", "TrialRow", "insert_study", "insert_trials", "stored_trials", "study_config_hash"]

_INSERT_STUDY = """
INSERT INTO tuning_studies (study_id, method, strategy, objective, config, config_hash, data_source)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb) ON CONFLICT (study_id) DO NOTHING"""

_INSERT_TRIALS = """
INSERT INTO tuning_trials (study_id, trial_key, trial_number, params, metrics, score, feasible, reason)
SELECT $1, k, n, p::jsonb, m::jsonb, s, f, r
FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::float8[], $7::bool[], $8::text[])
     AS t(k, n, p, m, s, f, r)
ON CONFLICT (study_id, trial_key) DO NOTHING
RETURNING trial_key"""


@dataclass(frozen=True, slots=True)
class TrialRow:
    """One trial to write; ``params`` and ``metrics`` as canonical JSON text."""

    key: str
    number: int
    params: str
    metrics: str
    score: float | None
    feasible: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class StoredTrial:
    """A trial's stored results; ``metrics`` as JSON text."""

    metrics: str
    score: float | None
    feasible: bool
    reason: str | None


async def insert_study(
    conn: Conn,
    study_id: str,
    method: str,
    strategy: str,
    objective: str,
    config: str,
    config_hash: str,
    data_source: str,
) -> None:
    """The study row (``config`` and ``data_source`` as JSON text) unless the study id is stored already."""
    await conn.execute(_INSERT_STUDY, study_id, method, strategy, objective, config, config_hash, data_source)


async def study_config_hash(conn: Conn, study_id: str) -> str | None:
    """The config hash the study is stored with; None for an unknown study."""
    value: str | None = await conn.fetchval("SELECT config_hash FROM tuning_studies WHERE study_id = $1", study_id)
    return value


async def insert_trials(conn: Conn, study_id: str, trials: Sequence[TrialRow]) -> set[str]:
    """Write the trials whose key is new to the study; returns those keys."""
    inserted = await conn.fetch(
        _INSERT_TRIALS,
        study_id,
        [t.key for t in trials],
        [t.number for t in trials],
        [t.params for t in trials],
        [t.metrics for t in trials],
        [t.score for t in trials],
        [t.feasible for t in trials],
        [t.reason for t in trials],
    )
    return {r["trial_key"] for r in inserted}


async def stored_trials(conn: Conn, study_id: str, keys: Sequence[str]) -> dict[str, StoredTrial]:
    """The stored results of these trials of the study, by trial key."""
    rows = await conn.fetch(
        "SELECT trial_key, metrics::text, score, feasible, reason FROM tuning_trials "
        "WHERE study_id = $1 AND trial_key = ANY($2::text[])",
        study_id,
        list(keys),
    )
    return {
        r["trial_key"]: StoredTrial(metrics=r["metrics"], score=r["score"], feasible=r["feasible"], reason=r["reason"])
        for r in rows
    }
