#!/usr/bin/env bash
# Measures end-to-end App Store notification throughput: starts a release gateway on a fresh database
# (SQLite by default, or the PostgreSQL URL given), runs notify-load against it, and stops it.
#   scripts/notify-load.sh [sqlite|postgres] [notify-load args...]
# e.g. `postgres --submit --give-up-percent 30 --give-up-within-ms 150`: purchase submissions, a third
# of them abandoned by their client mid-request; any 5xx fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-sqlite}"; shift || true
cargo build --release -q -p gateway -p store-sim
bin="${CARGO_TARGET_DIR:-target}/release"
port=$((20000 + RANDOM % 20000))
key="load-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"
work=$(mktemp -d)
case "$which" in
  sqlite) url="sqlite://$work/load.db" ;;
  postgres)
    db="pg_load_$RANDOM"
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
    # The server is on this machine: no TLS, as an operator would connect to a local server.
    url="postgres://postgres@127.0.0.1:5432/$db?sslmode=disable" ;;
  *) echo "usage: $0 [sqlite|postgres] [notify-load args...]" >&2; exit 2 ;;
esac
GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_DATABASE_URL="$url" GATEWAY_BOOTSTRAP_ADMIN_KEY="$key" \
  GATEWAY_LOG_LEVEL=warn "$bin/purchase-gateway" serve >"$work/gateway.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ "$which" = postgres ]; then psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/healthz" >/dev/null || { echo "the gateway did not start:" >&2; cat "$work/gateway.log" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
"$bin/notify-load" --gateway "http://127.0.0.1:$port" --admin-key "$key" "$@"
echo "gateway CPU during the run (set-up included): $(( ($(cpu) - before) * 1000 / $(getconf CLK_TCK) )) ms"
