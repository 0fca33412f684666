"""Model rollout governance: stages, gate-driven promotion, automatic rollback, audit."""
