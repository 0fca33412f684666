#!/usr/bin/env bash
# Broker users and ACLs of the distributed deployment: who may write what.
#
# Run once per `docker compose up` by the `broker-acl-init` job (redpanda image, rpk), before topics-init;
# idempotent (a user that exists gets its password from the secret again; an ACL that exists is kept).
# Every password is read from /run/secrets/kafka_<user> (compose secrets from ./secrets/, never in the
# compose file). The broker refuses any client without a user (SASL/SCRAM-SHA-256) and any operation no
# ACL allows (Redpanda's default: deny).
#
# One line per grant: `reads USER TOPIC...`, `writes USER TOPIC...` (catalogue names; TRADEFLOW_NAMESPACE
# is prefixed), `owns USER PREFIX` (the user's own state topics), `groups USER` (consumer groups
# `tradeflow-*`), `creates USER` (topics-init only). tests/unit/test_compose.py checks each service's
# grants against its agent's declared inputs and outputs (ops/cli/main.py AGENT_NEEDS): only inference
# writes `signals`, only trading writes the order / fill / portfolio / risk topics, only the collectors and
# the bars checker write market topics. Every consumer may write `deadletter` (bad input goes there).
set -euo pipefail

NS="${TRADEFLOW_NAMESPACE:+${TRADEFLOW_NAMESPACE}.}"
BROKERS="${TRADEFLOW_BOOTSTRAP:-redpanda-0:9092,redpanda-1:9092,redpanda-2:9092}"
SECRETS="${SECRETS_DIR:-/run/secrets}"
ADMIN_PASSWORD="$(cat "$SECRETS/kafka_admin")"

as_admin() {
  rpk "$@" -X brokers="$BROKERS" -X user=admin -X pass="$ADMIN_PASSWORD" -X sasl.mechanism=SCRAM-SHA-256
}

user() {  # user NAME: SCRAM-SHA-256 credential from /run/secrets/kafka_NAME (created, or its password reset)
  local password
  password="$(cat "$SECRETS/kafka_$1")"
  as_admin security user create "$1" --password "$password" --mechanism SCRAM-SHA-256 >/dev/null 2>&1 ||
    as_admin security user update "$1" --new-password "$password" --mechanism SCRAM-SHA-256 >/dev/null
  echo "user $1"
}

acl() {  # acl USER OPERATIONS RESOURCE-FLAGS...
  local who=$1 ops=$2
  shift 2
  as_admin security acl create --allow-principal "User:$who" --operation "$ops" "$@" >/dev/null
}

reads() {
  local who=$1
  shift
  for t in "$@"; do acl "$who" read,describe --topic "$NS$t"; done
  echo "reads $who $*"
}

writes() {
  local who=$1
  shift
  for t in "$@"; do acl "$who" write,describe --topic "$NS$t"; done
  echo "writes $who $*"
}

owns() {  # a state changelog the user's agent creates and keeps (compacted, outside the catalogue)
  acl "$1" create,read,write,describe,describe_configs --topic "$2" --resource-pattern-type prefixed
  echo "owns $1 $2"
}

groups() {  # consumer groups (agents' groups, the broker watchdog's marker group): tradeflow-*
  acl "$1" read,describe --group tradeflow- --resource-pattern-type prefixed
  echo "groups $1"
}

creates() {  # topics-init: creates the catalogue's topics with their configs
  if [[ -n "$NS" ]]; then
    acl "$1" create,describe,describe_configs,alter_configs --topic "$NS" --resource-pattern-type prefixed
  else
    acl "$1" create,describe,describe_configs,alter_configs --topic '*'
  fi
  acl "$1" create,describe --cluster
  echo "creates $1"
}

user topics-init
creates topics-init

user collector
writes collector market.ticks market.bars.raw deadletter

user bar-aggregator
reads bar-aggregator market.ticks
writes bar-aggregator market.bars.raw deadletter
groups bar-aggregator

user bars-checker
reads bars-checker market.bars.raw
writes bars-checker market.bars deadletter
groups bars-checker

user features
reads features market.bars
writes features features market.data_quality deadletter
owns features tradeflow-features
groups features

user inference
reads inference features models.registry
writes inference signals ops.alerts deadletter
groups inference

user trainer
reads trainer jobs.train
writes trainer jobs.results models.registry deadletter
groups trainer

user trading
reads trading signals market.bars control models.registry
writes trading orders.intents risk.decisions orders.updates fills portfolio.state control.audit ops.alerts risk.opening deadletter
groups trading

user governance
reads governance gates.results control models.registry
writes governance governance.audit models.registry control.audit ops.alerts deadletter
groups governance

user gates
writes gates gates.results

user dashboard
reads dashboard market.bars signals portfolio.state risk.decisions orders.updates fills control.audit ops.alerts gates.results models.registry governance.audit deadletter risk.opening
writes dashboard deadletter
groups dashboard

user sink
reads sink market.ticks market.bars.raw market.bars market.data_quality features signals orders.intents risk.decisions orders.updates fills portfolio.state gates.results control control.audit models.registry governance.audit jobs.train jobs.inference jobs.results ops.alerts deadletter risk.opening
writes sink deadletter
groups sink

# operators: `tradeflow control` (signed commands) from an operator's machine
user operator
writes operator control
