"""Drills: real processes broken on purpose, and reports of what was measured (``tradeflow drill``)."""
