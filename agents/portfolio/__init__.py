"""Positions, PnL, equity and drawdown -> the risk state (pure engine).

See :mod:`agents.portfolio.engine`.
"""

from agents.portfolio.engine import PortfolioConfig, PortfolioEngine, PortfolioState, Position

__all__ = ["PortfolioConfig", "PortfolioEngine", "PortfolioState", "Position"]
