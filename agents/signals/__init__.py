"""Signed signals (inference -> trading): signing, verification, keyring from the environment.

See :mod:`agents.signals.signing`.
"""
