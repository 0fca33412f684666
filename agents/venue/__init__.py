"""Venue access shared by market data and execution: :mod:`agents.venue.ccxt`
(the ccxt exchange factory, market types, error classification; import it
explicitly, it pulls in ccxt)."""
