"""Signed signals: who may make the trading agent trade.

The inference agent signs each :class:`~topics.records.Signal` with a key derived per model
version from a signal key (``TRADEFLOW_SIGNAL_KEY_<ID>``, the control keyring's rules); the
trading core verifies before sizing. Derived key: ``HMAC-SHA256(secret, b"tradeflow.signal.key.v1\\n"
+ model_id + 0x1f + model_version)``. Signed bytes: ``b"tradeflow.signal.v1\\n"`` + the JSON array
of every field but ``signature``, in declaration order (decoded form: floats as floats);
``signature = "hmac-sha256:" + hex digest``. Verification never raises; it is constant time on
the digest. Policy: unsigned signals are refused when ``require_signed`` (the default once a
key is configured), accepted otherwise (rollout); a signature that does not verify is always refused.

Design: docs/risk.md#signed-signals
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from agents.control.signing import SIGNATURE_SCHEME, Keyring, load_keyring
from runtime.env import ConfigError, env_flag
from topics.records import Signal
from topics.schema import codec_for

__all__ = [
    "ENV_PREFIX",
    "REQUIRE_SIGNED_VAR",
    "SIGNING_KEY_ID_VAR",
    "SignalAuthReason",
    "SignalSigner",
    "SignalVerdict",
    "SignalVerifier",
    "canonical_payload",
    "load_signal_keyring",
    "signal_signer_from_env",
    "signal_verifier_from_env",
    "version_key",
]

ENV_PREFIX = "TRADEFLOW_SIGNAL_KEY_"
SIGNING_KEY_ID_VAR = "TRADEFLOW_SIGNAL_SIGNING_KEY_ID"
REQUIRE_SIGNED_VAR = "TRADEFLOW_SIGNAL_REQUIRE_SIGNED"
_DOMAIN = b"tradeflow.signal.v1\n"
_KEY_DOMAIN = b"tradeflow.signal.key.v1\n"
_SIGNED_FIELDS = tuple(f.name for f in dataclasses.fields(Signal) if f.name != "signature")
_signed_values = operator.attrgetter(*_SIGNED_FIELDS)
_PREFIX = SIGNATURE_SCHEME + ":"
_PREFIX_LEN = len(_PREFIX)
_SIGNATURE_LEN = _PREFIX_LEN + 64
#: Derived keys kept per verifier/signer (model versions are few; bounded against junk ids).
_MAX_DERIVED = 4096
_CODEC = codec_for(Signal)


def version_key(secret: bytes, model_id: str, model_version: str) -> bytes:
    """The key one model version's signals are signed with."""
    return hmac.new(secret, _KEY_DOMAIN + f"{model_id}\x1f{model_version}".encode(), hashlib.sha256).digest()


def canonical_payload(signal: Signal) -> bytes:
    """The exact bytes a signature covers (see the module docstring)."""
    return _DOMAIN + orjson.dumps(_signed_values(signal))


class _DerivedKeys:
    """(key id, model id, version) -> derived key, bounded."""

    __slots__ = ("_cache", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._cache: dict[tuple[str, str, str], bytes] = {}

    def get(self, key_id: str, model_id: str, version: str) -> bytes | None:
        k = (key_id, model_id, version)
        derived = self._cache.get(k)
        if derived is None:
            secret = self._keyring.secret(key_id)
            if secret is None:
                return None
            derived = version_key(secret, model_id, version)
            if len(self._cache) >= _MAX_DERIVED:
                self._cache.clear()
            self._cache[k] = derived
        return derived

    def __repr__(self) -> str:
        return f"_DerivedKeys({self._keyring!r})"


class SignalSigner:
    """Signs signals with one key of a keyring (the inference agent's)."""

    __slots__ = ("_keys", "key_id")

    def __init__(self, keyring: Keyring, key_id: str) -> None:
        if key_id not in keyring:
            raise ConfigError(f"signal signing key {key_id!r} is not in the keyring {list(keyring.key_ids)!r}")
        self.key_id = key_id
        self._keys = _DerivedKeys(keyring)

    def sign(self, signal: Signal) -> Signal:
        """``signal`` with ``key_id`` and ``signature`` set (over its decoded wire form)."""
        unsigned = _CODEC.decode(_CODEC.encode(dataclasses.replace(signal, key_id=self.key_id, signature=None)))
        key = self._keys.get(self.key_id, unsigned.model_id, unsigned.model_version)
        assert key is not None  # checked in __init__
        digest = hmac.digest(key, canonical_payload(unsigned), "sha256").hex()
        return dataclasses.replace(unsigned, signature=_PREFIX + digest)

    def __repr__(self) -> str:
        return f"SignalSigner(key_id={self.key_id!r})"


class SignalAuthReason(enum.StrEnum):
    """Why a signal was (not) accepted. Stable: alert label and metric label."""

    SIGNED = "signed"
    #: Unsigned and accepted: ``require_signed`` is off (rollout).
    UNSIGNED_ACCEPTED = "unsigned_accepted"
    UNSIGNED = "unsigned"
    MALFORMED_SIGNATURE = "malformed_signature"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True, slots=True)
class SignalVerdict:
    ok: bool
    reason: SignalAuthReason


_OK = SignalVerdict(True, SignalAuthReason.SIGNED)
_UNSIGNED_OK = SignalVerdict(True, SignalAuthReason.UNSIGNED_ACCEPTED)


class SignalVerifier:
    """Checks signals against a keyring; holds no state but a cache of derived keys."""

    __slots__ = ("_keys", "key_ids", "require_signed")

    def __init__(self, keyring: Keyring, *, require_signed: bool = True) -> None:
        self._keys = _DerivedKeys(keyring)
        self.key_ids = keyring.key_ids
        self.require_signed = require_signed

    def verify(self, signal: Signal) -> SignalVerdict:
        try:
            return self._verify(signal)
        except Exception:  # never raise on bad input: it is a verdict
            return SignalVerdict(False, SignalAuthReason.MALFORMED_SIGNATURE)

    def _verify(self, signal: Signal) -> SignalVerdict:
        sig = signal.signature
        if sig is None and signal.key_id is None:
            return _UNSIGNED_OK if not self.require_signed else SignalVerdict(False, SignalAuthReason.UNSIGNED)
        if type(sig) is not str or not sig.startswith(_PREFIX) or len(sig) != _SIGNATURE_LEN:
            return SignalVerdict(False, SignalAuthReason.MALFORMED_SIGNATURE)
        try:
            digest = bytes.fromhex(sig[_PREFIX_LEN:])
        except ValueError:
            return SignalVerdict(False, SignalAuthReason.MALFORMED_SIGNATURE)
        if sig[_PREFIX_LEN:] != digest.hex():  # lower-case hex only: one signature per signal
            return SignalVerdict(False, SignalAuthReason.MALFORMED_SIGNATURE)
        key_id = signal.key_id
        key = self._keys.get(key_id, signal.model_id, signal.model_version) if type(key_id) is str else None
        if key is None:
            return SignalVerdict(False, SignalAuthReason.UNKNOWN_KEY)
        if not hmac.compare_digest(hmac.digest(key, canonical_payload(signal), "sha256"), digest):
            return SignalVerdict(False, SignalAuthReason.BAD_SIGNATURE)
        return _OK

    def __repr__(self) -> str:
        return f"SignalVerifier(key_ids={list(self.key_ids)!r}, require_signed={self.require_signed})"

    def __reduce__(self) -> tuple[object, ...]:
        # Refuse pickling: it holds secrets (the trading checkpoint re-attaches it instead).
        raise TypeError("SignalVerifier is not serialisable")


# ---------------------------------------------------------------------------
# From the environment (at the edge: the agents)
# ---------------------------------------------------------------------------


def load_signal_keyring(environ: Mapping[str, str]) -> Keyring | None:
    """``TRADEFLOW_SIGNAL_KEY_<ID>`` / ``_FILE`` keys; None when none is set."""
    if not any(k.startswith(ENV_PREFIX) and k != ENV_PREFIX for k in environ):
        return None
    try:
        return load_keyring(environ, prefix=ENV_PREFIX)
    except ConfigError as exc:
        raise ConfigError(f"signal keys ({ENV_PREFIX}<ID>): " + str(exc).replace("control key", "signal key")) from None


def signal_verifier_from_env(environ: Mapping[str, str]) -> SignalVerifier | None:
    """The trading agent's verifier. ``TRADEFLOW_SIGNAL_REQUIRE_SIGNED`` defaults to on when a
    signal key is set; on without a key is a :class:`ConfigError`. None: no key, not required
    (every signal is accepted unverified)."""
    keyring = load_signal_keyring(environ)
    require = env_flag(REQUIRE_SIGNED_VAR, keyring is not None, environ)
    if keyring is None:
        if require:
            raise ConfigError(
                f"{REQUIRE_SIGNED_VAR}=1 but no signal key: set {ENV_PREFIX}<ID> or {ENV_PREFIX}<ID>_FILE"
            )
        return None
    return SignalVerifier(keyring, require_signed=require)


def signal_signer_from_env(environ: Mapping[str, str]) -> SignalSigner | None:
    """The inference agent's signer: the key ``TRADEFLOW_SIGNAL_SIGNING_KEY_ID`` names (or the only
    one); None when no signal key is set (signals go out unsigned)."""
    keyring = load_signal_keyring(environ)
    if keyring is None:
        return None
    key_id = environ.get(SIGNING_KEY_ID_VAR, "").strip().lower()
    if not key_id:
        if len(keyring.key_ids) != 1:
            raise ConfigError(f"{len(keyring.key_ids)} signal keys: set {SIGNING_KEY_ID_VAR} to the one to sign with")
        key_id = keyring.key_ids[0]
    return SignalSigner(keyring, key_id)
