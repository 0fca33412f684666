"""``tradeflow control``: publish signed operator commands on the ``control`` topic.

::

    tradeflow control kill-switch on|off [--scope global|track|strategy|symbol] [--target X] --reason "..." [--ttl-s N]
    tradeflow control set-limit NAME VALUE [--reason "..."]      (risk limits; strategy.<name> for the strategy's;
                                                                 vol_threshold.<asset>, vol_hour_multiplier.<HH[-HH]>)
    tradeflow control rollout promote|rollback --model-id M --version V [--to STAGE] [--reason "..."]

Each builds a :class:`~topics.records.ControlEvent` with the key id, a fresh
random nonce and the current time, signs it (HMAC-SHA256, see
:mod:`agents.control.signing`) with the secret of ``--key-id`` (default
``TRADEFLOW_CONTROL_SIGNING_KEY_ID``) read from ``TRADEFLOW_CONTROL_KEY_<ID>`` or
``TRADEFLOW_CONTROL_KEY_<ID>_FILE``, publishes it (acks=all) and prints one
JSON line with the event id. What the consumers did with it is in
``control.audit`` (the ``control_audit`` SQL view).

Exit codes: 0 published, 2 usage or key configuration error, 3 broker
unreachable. The secret is never printed or logged: it is not an argument
(arguments show up in process lists and shell history), it is only passed
to the signing function, and error messages name variables and key ids.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka.errors import KafkaError

from agents.control.signing import Keyring, load_keyring, new_control_event
from agents.governance.config import PROMOTION_LADDER
from agents.risk.config import KEYED_LIMITS, SETTABLE_LIMITS, LimitSpec, resolve_limit
from agents.risk.killswitch import GLOBAL_TARGET, KillScope
from agents.strategy.config import LIMIT_PREFIX, SETTABLE_PARAMS
from ops.cli.usage import UsageError
from runtime.env import env_str
from runtime.exits import EXIT_INFRA, EXIT_OK, EXIT_USAGE
from runtime.publish import RecordPublisher
from topics.records import ControlCommand, ControlEvent
from topics.schema import JsonScalar
from topics.units import NS_PER_SECOND

__all__ = ["EXIT_INFRA", "EXIT_OK", "EXIT_USAGE", "UsageError", "add_parsers", "build_event", "publish_event"]

#: Not ``TRADEFLOW_CONTROL_KEY_ID``: every ``TRADEFLOW_CONTROL_KEY_<X>`` variable
#: defines a key named ``x`` (see :func:`agents.control.signing.load_keyring`).
KEY_ID_ENV = "TRADEFLOW_CONTROL_SIGNING_KEY_ID"
_CLASHING_ENV = "TRADEFLOW_CONTROL_KEY_ID"
_INT = re.compile(r"^[+-]?\d+$")
#: Every name ``set-limit`` takes: the risk engine's limits, its breaker tables' entries (``<table>.<key>``),
#: then the strategy's parameters.
SETTABLE_NAMES: tuple[str, ...] = (
    *sorted(SETTABLE_LIMITS),
    *(f"{t}.<key>" for t in sorted(KEYED_LIMITS)),
    *(LIMIT_PREFIX + n for n in sorted(SETTABLE_PARAMS)),
)


def _limit_spec(name: str) -> LimitSpec:
    """The spec of a ``set-limit`` name (the risk engine checks a table key against its config)."""
    if name.startswith(LIMIT_PREFIX) and name[len(LIMIT_PREFIX) :] in SETTABLE_PARAMS:
        return SETTABLE_PARAMS[name[len(LIMIT_PREFIX) :]]
    spec = resolve_limit(name)
    if isinstance(spec, str):
        raise UsageError(f"{name!r} is not a settable limit ({spec}); one of {list(SETTABLE_NAMES)}")
    return spec


# ---------------------------------------------------------------------------
# Building the command
# ---------------------------------------------------------------------------


def _limit_value(text: str, spec: LimitSpec) -> int | float | str:
    if spec.kind is str:
        if text not in spec.choices:
            raise UsageError(f"VALUE must be one of {list(spec.choices)}, got {text!r}")
        return text
    try:
        value: int | float = int(text) if _INT.match(text) else float(text)
    except ValueError:
        raise UsageError(f"VALUE must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError("VALUE must be finite")
    return value


def command_fields(a: argparse.Namespace) -> tuple[ControlCommand, str, str, dict[str, JsonScalar]]:
    """(command, scope, target, params) from parsed arguments; raises UsageError."""
    if a.control_command == "kill-switch":
        scope = KillScope(a.scope)
        target = a.target if a.target is not None else (GLOBAL_TARGET if scope is KillScope.GLOBAL else "")
        if scope is KillScope.GLOBAL and target != GLOBAL_TARGET:
            raise UsageError("--scope global takes no --target (or '*')")
        if not target:
            raise UsageError(f"--scope {scope.value} needs --target")
        params: dict[str, JsonScalar] = {}
        if a.state == "on":
            if not a.reason:
                raise UsageError("kill-switch on needs --reason")
            if a.ttl_s is not None:
                if not (math.isfinite(a.ttl_s) and a.ttl_s > 0):
                    raise UsageError("--ttl-s must be a positive number of seconds")
                params["duration_s"] = a.ttl_s
            command = ControlCommand.KILL_SWITCH_ON
        else:
            if a.ttl_s is not None:
                raise UsageError("--ttl-s only applies to kill-switch on")
            command = ControlCommand.KILL_SWITCH_OFF
        return command, scope.value, target, params
    if a.control_command == "set-limit":
        spec = _limit_spec(a.name)
        return (
            ControlCommand.SET_LIMIT,
            KillScope.GLOBAL.value,
            GLOBAL_TARGET,
            {"name": a.name, "value": _limit_value(a.value, spec)},
        )
    if a.control_command == "rollout":
        if not a.model_id or not a.version:
            raise UsageError("rollout needs --model-id and --version")
        command = ControlCommand.ROLLOUT_PROMOTE if a.action == "promote" else ControlCommand.ROLLOUT_ROLLBACK
        rollout: dict[str, JsonScalar] = {"model_id": a.model_id, "version": a.version}
        if a.to is not None:
            if command is not ControlCommand.ROLLOUT_PROMOTE:
                raise UsageError("--to only applies to rollout promote")
            rollout["to"] = a.to
        return command, "model", a.model_id, rollout
    raise UsageError(f"unknown control command {a.control_command!r}")


def keyring_for(key_id: str, environ: Mapping[str, str]) -> Keyring:
    """The keyring holding ``key_id``; UsageError (naming variables only) otherwise."""
    if not key_id:
        raise UsageError(f"no key id: pass --key-id or set {KEY_ID_ENV}")
    try:
        keyring = load_keyring(environ)
    except ValueError as exc:
        hint = (
            f" ({_CLASHING_ENV} is read as a key named 'id': name the signing key id in {KEY_ID_ENV})"
            if _CLASHING_ENV in environ
            else ""
        )
        raise UsageError(f"{exc}{hint}") from None
    if key_id not in keyring:
        env_name = "TRADEFLOW_CONTROL_KEY_" + key_id.upper()
        raise UsageError(f"no secret for key id {key_id!r}: set {env_name} or {env_name}_FILE")
    return keyring


def build_event(
    a: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    now_ns: Callable[[], int] = time.time_ns,
    nonce: Callable[[], str] = lambda: secrets.token_hex(16),
) -> ControlEvent:
    command, scope, target, params = command_fields(a)
    key_id = (a.key_id or env_str(KEY_ID_ENV, "", environ)).strip().lower()
    keyring = keyring_for(key_id, environ)
    now = now_ns()
    expires_at = None if a.expires_in_s is None else now + int(a.expires_in_s * NS_PER_SECOND)
    return new_control_event(
        command=command,
        scope=scope,
        target=target,
        params=params,
        reason=a.reason or "",
        operator=a.operator,
        key_id=key_id,
        nonce=nonce(),
        ts_event=now,
        ts_init=now,
        expires_at=expires_at,
        keyring=keyring,
    )


# ---------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------


async def publish_event(event: ControlEvent, bootstrap: str, namespace: str, timeout_s: float) -> None:
    async def go() -> None:
        async with RecordPublisher(bootstrap, namespace, name="control-cli") as pub:
            await pub.publish([event])

    await asyncio.wait_for(go(), timeout_s)


def cmd_control(a: argparse.Namespace) -> int:
    try:
        if a.expires_in_s is not None and not (math.isfinite(a.expires_in_s) and a.expires_in_s > 0):
            raise UsageError("--expires-in-s must be a positive number of seconds")
        event = build_event(a, os.environ)
    except UsageError as exc:
        print(f"tradeflow control: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(publish_event(event, a.bootstrap, a.namespace, a.timeout_s))
    except (KafkaError, OSError, TimeoutError) as exc:
        print(
            f"tradeflow control: broker unreachable at {a.bootstrap} ({type(exc).__name__}); nothing was sent "
            "(or its acknowledgement was lost: check control.audit before re-sending)",
            file=sys.stderr,
        )
        return EXIT_INFRA
    print(
        json.dumps(
            {
                "event_id": event.event_id,
                "command": event.command.value,
                "scope": event.scope,
                "target": event.target,
                "params": event.params,
                "key_id": event.key_id,
                "nonce": event.nonce,
                "ts_event": event.ts_event,
                "topic": "control",
            }
        )
    )
    return EXIT_OK


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


def add_parsers(sub: Any, infra: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``control`` and its subcommands to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "control",
        help="publish a signed operator command (kill switch, limit, rollout)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = sp.add_subparsers(dest="control_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        infra(p)
        p.add_argument(
            "--key-id",
            default="",
            help=f"signing key id (env {KEY_ID_ENV}); the secret comes from "
            "TRADEFLOW_CONTROL_KEY_<ID> or TRADEFLOW_CONTROL_KEY_<ID>_FILE, never from an argument",
        )
        p.add_argument(
            "--operator",
            default=env_str("TRADEFLOW_OPERATOR", "") or _user(),
            help="who is acting (env TRADEFLOW_OPERATOR; default the OS user)",
        )
        p.add_argument("--reason", default="", help="why (recorded in the audit trail)")
        p.add_argument(
            "--expires-in-s",
            type=float,
            default=None,
            help="consumers refuse the command after this many seconds (default: only the 5-minute "
            "freshness window applies)",
        )
        p.add_argument("--timeout-s", type=float, default=15.0, help="give up publishing after this long (exit 3)")
        p.set_defaults(fn=cmd_control)

    ks = csub.add_parser("kill-switch", help="engage or release a kill switch")
    ks.add_argument("state", choices=["on", "off"])
    ks.add_argument("--scope", choices=[s.value for s in KillScope], default=KillScope.GLOBAL.value)
    ks.add_argument("--target", default=None, help="track name, strategy id or symbol (global: none)")
    ks.add_argument("--ttl-s", type=float, default=None, help="on: release automatically after N seconds")
    common(ks)

    sl = csub.add_parser(
        "set-limit",
        help="change a risk limit or a strategy parameter at runtime",
        description="settable: " + ", ".join(SETTABLE_NAMES),
    )
    sl.add_argument("name")
    sl.add_argument("value")
    common(sl)

    ro = csub.add_parser("rollout", help="promote or roll back a model version")
    ro.add_argument("action", choices=["promote", "rollback"])
    ro.add_argument("--model-id", required=True)
    ro.add_argument("--version", required=True)
    ro.add_argument(
        "--to",
        choices=[s.value for s in PROMOTION_LADDER],
        default=None,
        help="promote: straight to this stage (governance still records one decision per stage passed); "
        "default: the next stage",
    )
    common(ro)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
