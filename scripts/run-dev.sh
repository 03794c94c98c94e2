#!/usr/bin/env bash
# `make run`: start the gateway with embedded defaults for a first try:
# SQLite in DATA_DIR, loopback only, and development credentials created on
# first use and printed here (an API key for user "dev" and an admin token).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${HOTPLEX_BIN:-$root/build/hotplex}
listen=${LISTEN:-127.0.0.1:8888}
data=${DATA_DIR:-$root/.data}
mkdir -p "$data"
chmod 700 "$data"
umask 077
keys="$data/dev.keys"
tokens="$data/admin.tokens"
[[ -s "$keys" ]] || echo "dev:dev-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" > "$keys"
[[ -s "$tokens" ]] || echo "adm-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n'):read,write" > "$tokens"
key=$(cut -d: -f2- "$keys" | head -1)
token=$(cut -d: -f1 "$tokens" | head -1)
claude=""
command -v claude >/dev/null 2>&1 && claude=$(command -v claude)
[[ -z "$claude" && -x "$root/.deps/claude/node_modules/.bin/claude" ]] && claude="$root/.deps/claude/node_modules/.bin/claude"

cat <<MSG
hotplex (dev) on ws://$listen/ws   health: http://$listen/health   data: $data
  dev credentials (kept in $keys / $tokens):
    user "dev", API key:  $key      (header X-API-Key, or ?api_key=)
    admin token:          $token      (Authorization: Bearer, admin API on 127.0.0.1:9999)
  try it (built-in echo agent, no API key needed):
    build/hotplex chat --url ws://$listen/ws --api-key $key --worker echo
    /usr/bin/python3 scripts/echo_turn.py ws://$listen/ws "hello" --api-key $key
  Claude Code sessions use worker_type claude_code (binary: ${claude:-claude in PATH, not found yet}; set ANTHROPIC_API_KEY or log in with claude first).
MSG
args=(serve --listen "$listen" --data-dir "$data" --keys "$keys" --set "admin.tokens_file=$tokens")
[[ -n "$claude" ]] && args+=(--set "worker.claude_bin=$claude")
exec "$bin" "${args[@]}"
