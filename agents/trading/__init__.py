"""Trading: the composition of strategy, risk, paper execution and portfolio
for one account (:mod:`agents.trading.core`, pure) and the faust agent that
drives it from the broker (:mod:`agents.trading.agent`, thin).
"""

from agents.trading.core import Step, TradingConfig, TradingCore

__all__ = ["Step", "TradingConfig", "TradingCore"]
