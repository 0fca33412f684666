"""Signed control events: canonical form, HMAC-SHA256 signing, verification,
the keyring, and the audit outcome every consumer emits per command.

Signed bytes: ``b"tradeflow.control.v1\\n"`` + the record's canonical wire JSON without
``signature``; ``signature = "hmac-sha256:" + hex digest``. :class:`ControlVerifier` checks,
the first failure deciding the reason: unsigned, malformed signature, unknown key, bad
signature (constant time), expired, stale, not yet valid, replayed ``(key_id, nonce)``,
nonce cache full (fail closed). The signature comes before the time rules and only authentic
nonces are remembered, so forged traffic can neither probe the clock nor fill the cache; a
redelivered command is ``replayed`` and changes nothing. Verification never raises.

Keyring: ``TRADEFLOW_CONTROL_KEY_<ID>`` or ``TRADEFLOW_CONTROL_KEY_<ID>_FILE`` (never the
command line or a record), UTF-8 or ``hex:<hex>``, at least 32 bytes; no repr or error
message ever includes a secret.

Design: docs/risk.md#signed-control
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runtime.env import ConfigError, read_secret
from topics.records import ControlCommand, ControlEvent
from topics.schema import JsonScalar, codec_for, event_id_for
from topics.units import NS_PER_SECOND

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "MIN_SECRET_BYTES",
    "SIGNATURE_SCHEME",
    "AuditOutcome",
    "ControlAudit",
    "ControlVerifier",
    "Keyring",
    "Verdict",
    "VerifierConfig",
    "VerifyReason",
    "audit_for",
    "canonical_payload",
    "compute_signature",
    "load_keyring",
    "new_control_event",
    "sign_control_event",
]

SIGNATURE_SCHEME = "hmac-sha256"
DEFAULT_ENV_PREFIX = "TRADEFLOW_CONTROL_KEY_"
MIN_SECRET_BYTES = 32
_DOMAIN = b"tradeflow.control.v1\n"
_HEX = frozenset("0123456789abcdef")


# ---------------------------------------------------------------------------
# Keyring
# ---------------------------------------------------------------------------


class Keyring:
    """key id -> secret. Never shows a secret: not in repr, str or errors."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        checked: dict[str, bytes] = {}
        for key_id, secret in secrets.items():
            if not key_id or not isinstance(key_id, str):
                raise ValueError("key ids must be non-empty strings")
            if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(f"secret of key {key_id!r} must be at least {MIN_SECRET_BYTES} bytes")
            checked[key_id] = secret
        self._secrets = checked

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._secrets))

    def secret(self, key_id: str) -> bytes | None:
        return self._secrets.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._secrets

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self.key_ids)!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Refuse pickling: a pickled keyring is a secret written somewhere.
        raise TypeError("Keyring is not serialisable")


def _decode_secret(raw: str, origin: str) -> bytes:
    text = raw.strip()
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise ConfigError(f"{origin}: value after 'hex:' is not hex") from None
    return text.encode()


def load_keyring(environ: Mapping[str, str], *, prefix: str = DEFAULT_ENV_PREFIX) -> Keyring:
    """Build the keyring from ``<prefix><ID>`` / ``<prefix><ID>_FILE`` variables.

    ``environ`` is passed in (``os.environ`` at the edge, a dict in tests).
    Each key is read by :func:`runtime.env.read_secret`. Both forms for one
    id is a configuration error, as is an empty keyring; so is a key set to an
    empty value (it is too short, not absent). Errors are :class:`ConfigError`
    (a ``ValueError``) naming variables and key ids, never secrets.
    """
    names: dict[str, list[str]] = {}  # key id -> the variables defining it
    for name in sorted(environ):
        if not name.startswith(prefix) or name == prefix:
            continue
        suffix = name[len(prefix) :]
        key_id = (suffix[: -len("_FILE")] if suffix.endswith("_FILE") else suffix).lower()
        if key_id:
            names.setdefault(key_id, []).append(name)
    secrets: dict[str, bytes] = {}
    for key_id, defined_by in names.items():
        if len(defined_by) > 1:
            raise ConfigError(f"control key {key_id!r} is defined twice (value and _FILE)")
        name = defined_by[0]
        # Only this key's own variable goes to read_secret: <ID>_FILE must not pair with a key named <ID>_FILE.
        raw = read_secret(name.removesuffix("_FILE"), {name: environ[name]})
        secrets[key_id] = _decode_secret(raw or "", name)
    if not secrets:
        raise ConfigError(f"no control keys: set {prefix}<ID> or {prefix}<ID>_FILE")
    return Keyring(secrets)


# ---------------------------------------------------------------------------
# Canonical form and signing
# ---------------------------------------------------------------------------


def canonical_payload(event: ControlEvent) -> bytes:
    """The exact bytes a signature covers (see the module docstring)."""
    fields = codec_for(ControlEvent).to_dict(event)
    del fields["signature"]
    return _DOMAIN + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def compute_signature(event: ControlEvent, secret: bytes) -> str:
    digest = hmac.new(secret, canonical_payload(event), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}:{digest}"


def sign_control_event(event: ControlEvent, keyring: Keyring) -> ControlEvent:
    """The same event with ``signature`` set, using the key its ``key_id`` names."""
    secret = keyring.secret(event.key_id)
    if secret is None:
        raise KeyError(f"no secret for key id {event.key_id!r}")
    return dataclasses.replace(event, signature=compute_signature(event, secret))


def new_control_event(
    *,
    command: ControlCommand,
    scope: str,
    target: str,
    params: Mapping[str, JsonScalar],
    reason: str,
    operator: str,
    key_id: str,
    nonce: str,
    ts_event: int,
    ts_init: int,
    expires_at: int | None,
    keyring: Keyring,
    correlation_id: str | None = None,
) -> ControlEvent:
    """Build and sign a control event (what the CLI publishes).

    ``nonce`` is supplied by the caller (the CLI draws it from ``secrets``);
    this function stays deterministic for tests.
    """
    unsigned = ControlEvent.new(
        ts_init=ts_init,
        correlation_id=correlation_id,
        ts_event=ts_event,
        command=ControlCommand(command),
        scope=scope,
        target=target,
        params=dict(params),
        reason=reason,
        operator=operator,
        key_id=key_id,
        nonce=nonce,
        expires_at=expires_at,
        signature="",
    )
    return sign_control_event(unsigned, keyring)


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


class VerifyReason(enum.StrEnum):
    """Why a control event was (not) authentic. Stable: metric label and audit code."""

    OK = "ok"
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    MALFORMED_SIGNATURE = "malformed_signature"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    STALE = "stale"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    NONCE_CACHE_FULL = "nonce_cache_full"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: VerifyReason
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifierConfig:
    """Time rules of verification. 5 minutes: long enough for a CLI over a
    slow VPN, short enough that a captured command is soon useless."""

    max_age_ns: int = 300 * NS_PER_SECOND
    max_future_skew_ns: int = 30 * NS_PER_SECOND
    max_nonces: int = 100_000


class ControlVerifier:
    """Stateful verifier: the state is the bounded cache of accepted nonces."""

    __slots__ = ("_config", "_keyring", "_nonces")

    def __init__(self, keyring: Keyring, config: VerifierConfig | None = None) -> None:
        self._keyring = keyring
        self._config = config or VerifierConfig()
        #: (key_id, nonce) -> ts_event, in acceptance order.
        self._nonces: OrderedDict[tuple[str, str], int] = OrderedDict()

    @property
    def nonce_count(self) -> int:
        return len(self._nonces)

    def verify(self, event: ControlEvent, now_ns: int) -> Verdict:
        """Authenticate ``event`` at ``now_ns``; on success its nonce is consumed."""
        try:
            return self._verify(event, now_ns)
        except Exception as exc:  # never raise on bad input: it is a verdict
            return Verdict(False, VerifyReason.MALFORMED, type(exc).__name__)

    def _verify(self, event: ControlEvent, now_ns: int) -> Verdict:
        cfg = self._config
        signature = event.signature
        if not isinstance(signature, str) or not signature:
            return Verdict(False, VerifyReason.UNSIGNED)
        scheme, _, digest = signature.partition(":")
        if scheme != SIGNATURE_SCHEME or len(digest) != 64 or not set(digest) <= _HEX:
            return Verdict(False, VerifyReason.MALFORMED_SIGNATURE, f"expected {SIGNATURE_SCHEME}:<64 hex>")
        secret = self._keyring.secret(event.key_id) if isinstance(event.key_id, str) else None
        if secret is None:
            return Verdict(False, VerifyReason.UNKNOWN_KEY, f"key id {event.key_id!r}")
        if not hmac.compare_digest(compute_signature(event, secret), signature):
            return Verdict(False, VerifyReason.BAD_SIGNATURE)
        if event.expires_at is not None and event.expires_at < now_ns:
            return Verdict(False, VerifyReason.EXPIRED, f"expires_at {event.expires_at} < now {now_ns}")
        if event.ts_event < now_ns - cfg.max_age_ns:
            return Verdict(False, VerifyReason.STALE, f"ts_event {event.ts_event} older than {cfg.max_age_ns} ns")
        if event.ts_event > now_ns + cfg.max_future_skew_ns:
            return Verdict(False, VerifyReason.NOT_YET_VALID, f"ts_event {event.ts_event} ahead of now {now_ns}")
        self._prune(now_ns)
        key = (event.key_id, event.nonce)
        if key in self._nonces:
            return Verdict(False, VerifyReason.REPLAYED, f"nonce {event.nonce!r} already used")
        if len(self._nonces) >= cfg.max_nonces:
            return Verdict(False, VerifyReason.NONCE_CACHE_FULL)
        self._nonces[key] = event.ts_event
        return Verdict(True, VerifyReason.OK)

    def _prune(self, now_ns: int) -> None:
        horizon = now_ns - self._config.max_age_ns - self._config.max_future_skew_ns
        stale = [k for k, ts in self._nonces.items() if ts < horizon]
        for k in stale:
            del self._nonces[k]

    def remembered(self) -> Iterator[tuple[str, str]]:
        """Accepted (key_id, nonce) pairs still in the window (for state snapshots)."""
        return iter(tuple(self._nonces))


# ---------------------------------------------------------------------------
# Audit outcome
# ---------------------------------------------------------------------------


class AuditOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Authentic but not addressed to this component (e.g. rollout at risk).
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlAudit:
    """What one component did with one control event. One per (command, component).

    ``audit_id`` hashes the component, the control event id, the outcome and
    the reason: a redelivered command dedupes onto its audit row, while a
    replay after acceptance is its own (rejected, ``replayed``) row. Fields
    copied from a rejected event are unauthenticated: they say what the
    message *claimed*. ``alert`` is set for security-relevant rejections
    (anything failing verification).
    """

    audit_id: str
    component: str
    control_event_id: str
    command: str
    scope: str
    target: str
    operator: str
    key_id: str
    nonce: str
    outcome: AuditOutcome
    reason: str
    detail: str
    alert: bool
    changes: tuple[str, ...]
    config_hash_before: str
    config_hash_after: str
    #: The command's own event time, and when this component processed it.
    ts_event: int
    ts_init: int


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def audit_for(
    event: ControlEvent,
    *,
    component: str,
    outcome: AuditOutcome,
    reason: str,
    detail: str,
    alert: bool,
    changes: tuple[str, ...],
    config_hash_before: str,
    config_hash_after: str,
    ts_init: int,
) -> ControlAudit:
    control_event_id = _text(event.event_id)
    return ControlAudit(
        audit_id=event_id_for("control_audit", component, control_event_id, outcome.value, reason),
        component=component,
        control_event_id=control_event_id,
        command=_text(getattr(event.command, "value", event.command)),
        scope=_text(event.scope),
        target=_text(event.target),
        operator=_text(event.operator),
        key_id=_text(event.key_id),
        nonce=_text(event.nonce),
        outcome=outcome,
        reason=reason,
        detail=detail,
        alert=alert,
        changes=changes,
        config_hash_before=config_hash_before,
        config_hash_after=config_hash_after,
        ts_event=event.ts_event if type(event.ts_event) is int else 0,
        ts_init=ts_init,
    )
