"""Backtesting: replays of recorded bars through the engines, the reference strategy, tuning."""
