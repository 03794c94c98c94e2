#!/usr/bin/env bash
# Install a pinned Claude Code CLI into the project-local folder .deps/claude.
#
# Idempotent: does nothing if the pinned version is already installed and its
# binary runs. Works from any working directory. Prints the path of the
# binary (.deps/claude/node_modules/.bin/claude) as its last stdout line.
#
# Environment:
#   CLAUDE_CODE_VERSION  override the pinned version (tests must not)
#   CLAUDE_DEPS_DIR      override the install folder (default $ROOT/.deps/claude)
set -euo pipefail

PINNED_VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
PKG="@anthropic-ai/claude-code"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PREFIX="${CLAUDE_DEPS_DIR:-$ROOT/.deps/claude}"
BIN="$PREFIX/node_modules/.bin/claude"
PKG_JSON="$PREFIX/node_modules/$PKG/package.json"

log() { echo "install-claude: $*" >&2; }

installed_version() {
    [ -f "$PKG_JSON" ] || return 1
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$PKG_JSON" 2>/dev/null
}

# The CLI is a native binary shipped in a per-platform optional dependency
# (@anthropic-ai/claude-code-linux-x64 etc.); the wrapper's postinstall links
# it into bin/. "claude --version" only succeeds if that really happened.
binary_works() {
    [ -x "$BIN" ] || return 1
    local out
    out="$(DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        timeout 60 "$BIN" --version 2>/dev/null)" || return 1
    case "$out" in
        "$PINNED_VERSION"*) return 0 ;;
        *) return 1 ;;
    esac
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node and npm are required (apt-get install nodejs npm)"
    exit 1
fi

if [ "$(installed_version || true)" = "$PINNED_VERSION" ] && binary_works; then
    log "$PKG@$PINNED_VERSION already installed"
    echo "$BIN"
    exit 0
fi

log "installing $PKG@$PINNED_VERSION into $PREFIX"
mkdir -p "$PREFIX"
# A package.json in the prefix keeps npm from walking up to the repo root.
if [ ! -f "$PREFIX/package.json" ]; then
    printf '{\n  "name": "hotplex-deps-claude",\n  "private": true\n}\n' >"$PREFIX/package.json"
fi

# --include=optional: the platform binary is an optional dependency and must
# be installed even if the user's npm config omits optional deps.
# Scripts must run: the wrapper's postinstall puts the native binary in place.
npm install --prefix "$PREFIX" --no-audit --no-fund \
    --include=optional --ignore-scripts=false --save-exact \
    "$PKG@$PINNED_VERSION" >&2

# Newer npm versions may skip install scripts that are not allow-listed; run
# the wrapper's postinstall ourselves if the placeholder is still in place.
if ! binary_works && [ -f "$PREFIX/node_modules/$PKG/install.cjs" ]; then
    log "running the $PKG postinstall (install.cjs) by hand"
    (cd "$PREFIX/node_modules/$PKG" && node install.cjs >&2) || true
fi

if ! binary_works; then
    log "installed, but '$BIN --version' does not report $PINNED_VERSION"
    log "(is the platform package @anthropic-ai/claude-code-<os>-<arch> present under $PREFIX/node_modules?)"
    exit 1
fi

log "installed $PKG@$PINNED_VERSION"
echo "$BIN"
