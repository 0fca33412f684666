#!/usr/bin/env bash
# Set-up from a fresh clone: system packages the project needs, then the virtualenv.
# Idempotent; `make` runs it when pyproject.toml changes.
set -euo pipefail
VENV="${1:-.venv}"

need_apt=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need_apt+=(postgresql); fi
# promtool validates the alert rules (tests), prometheus runs them in the alerting test; amtool validates the
# Alertmanager config and Debian's prometheus-alertmanager delivers to `tradeflow alerts receive` in that test;
# chromium renders the dashboard in its test.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then need_apt+=(prometheus); fi
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  need_apt+=(prometheus-alertmanager)
fi
if ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=""; fi
  echo "bootstrap: installing ${need_apt[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian starts a default cluster (and a prometheus / alertmanager service) on install; the project runs its own.

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject: on these machines it resolves to the local CPU wheel.
"$VENV/bin/python" -m pip install -q -e '.[dev]'
echo "bootstrap: ready ($("$VENV/bin/python" --version))"
