#!/usr/bin/env bash
# Holds /openapi.json and the server to each other: starts a gateway on a fresh SQLite file and on a
# fresh PostgreSQL database, seeds an app, and runs Schemathesis (from PyPI, installed once into a venv
# under the cargo target dir) against each, failing on any server error, undocumented status, answer
# that breaks its schema, refused request the document allows, or accepted one it forbids.
#   scripts/schemathesis.sh [sqlite] [postgres]      (both by default)
# SCHEMATHESIS_SECONDS (default 90) bounds each database's run; SCHEMATHESIS_SEED (default 1) picks the cases.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
venv="$target/schemathesis-venv"
version=4.32.5
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
cargo build -q -p gateway --bin purchase-gateway
bin="$target/debug/purchase-gateway"
seconds="${SCHEMATHESIS_SECONDS:-90}"
export GATEWAY_ADMIN_KEY="sk_schemathesis_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

run() {
  local which="$1" work port url db="" pid status=0
  work=$(mktemp -d)
  port=$((20000 + RANDOM % 20000))
  case "$which" in
    sqlite) url="sqlite://$work/gateway.db" ;;
    postgres)
      db="gw_schemathesis_$RANDOM$RANDOM"
      psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
      url="postgres://postgres@127.0.0.1:5432/$db?sslmode=disable" ;;
  esac
  GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_DATABASE_URL="$url" GATEWAY_BOOTSTRAP_ADMIN_KEY="$GATEWAY_ADMIN_KEY" \
    GATEWAY_LOG_LEVEL=warn "$bin" serve >"$work/gateway.log" 2>&1 &
  pid=$!
  local base="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null && break; sleep 0.1; done
  api() { curl -fsS -o /dev/null -X "$1" "$base$2" -H "Authorization: Bearer $GATEWAY_ADMIN_KEY" -H 'Content-Type: application/json' -d "$3"; }
  # An app with a catalog and a customer; no store credentials, so no call reaches a real store.
  api POST /v1/apps '{"id": "acme", "name": "Acme", "app_store": {"bundle_id": "edu.acme.app", "environment": "Sandbox"}}'
  api POST /v1/apps '{"id": "patched", "name": "Patched"}'
  api PUT /v1/apps/acme/products/cs101 '{"kind": "non_consumable", "store_skus": {"app_store": "edu.acme.cs101"}, "entitlements": [{"id": "course-v1:Acme+CS101+2026"}]}'
  api PUT /v1/apps/acme/products/coins100 '{"kind": "consumable", "consumable": {"currency": "COINS", "amount": 100}}'
  api PUT /v1/apps/acme/products/premium '{"kind": "subscription", "entitlements": [{"id": "premium"}]}'
  api PUT /v1/apps/acme/products/pass30 '{"kind": "non_renewing", "access_duration": "P30D", "entitlements": [{"id": "pass"}]}'
  echo "Schemathesis against a gateway on $which, for at most ${seconds}s"
  "$venv/bin/st" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
    --max-time "$seconds" --workers 1 --seed "${SCHEMATHESIS_SEED:-1}" --no-color --report junit --report-dir "$work/report" \
    || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if grep -qi "panicked\|internal error" "$work/gateway.log"; then
    echo "the gateway logged errors:" >&2; grep -i "panicked\|internal error" "$work/gateway.log" | head -20 >&2
    status=1
  fi
  [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  rm -rf "$work"
  return "$status"
}

failed=0
for which in "${@:-sqlite postgres}"; do
  for w in $which; do run "$w" || failed=1; done
done
exit "$failed"
