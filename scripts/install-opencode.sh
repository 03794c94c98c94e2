#!/usr/bin/env bash
# Install a pinned OpenCode CLI (npm package opencode-ai) into the
# project-local folder .deps/opencode.
#
# Idempotent: does nothing if the pinned version is already installed and its
# binary runs. Works from any working directory. Prints the path of the
# binary (.deps/opencode/node_modules/.bin/opencode) as its last stdout line.
#
# Environment:
#   OPENCODE_VERSION       override the pinned version (tests must not)
#   OPENCODE_DEPS_DIR      override the install folder (default $ROOT/.deps/opencode)
set -euo pipefail

PINNED_VERSION="${OPENCODE_VERSION:-1.18.33}"
PKG="opencode-ai"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PREFIX="${OPENCODE_DEPS_DIR:-$ROOT/.deps/opencode}"
BIN="$PREFIX/node_modules/.bin/opencode"
PKG_JSON="$PREFIX/node_modules/$PKG/package.json"

log() { echo "install-opencode: $*" >&2; }

installed_version() {
    [ -f "$PKG_JSON" ] || return 1
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$PKG_JSON" 2>/dev/null
}

# The CLI is a native binary shipped in a per-platform optional dependency
# (opencode-linux-x64 etc.); the wrapper's postinstall links it. Running
# "opencode --version" only succeeds if that really happened. A throw-away
# HOME keeps it from touching the user's ~/.config/opencode.
binary_works() {
    [ -x "$BIN" ] || return 1
    local out tmp_home
    tmp_home="$(mktemp -d)"
    out="$(HOME="$tmp_home" OPENCODE_DISABLE_AUTOUPDATE=1 timeout 60 "$BIN" --version 2>/dev/null)" || {
        rm -rf "$tmp_home"
        return 1
    }
    rm -rf "$tmp_home"
    case "$out" in
        *"$PINNED_VERSION"*) return 0 ;;
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
    printf '{\n  "name": "hotplex-deps-opencode",\n  "private": true\n}\n' >"$PREFIX/package.json"
fi

# --include=optional: the platform binary is an optional dependency and must
# be installed even if the user's npm config omits optional deps.
npm install --prefix "$PREFIX" --no-audit --no-fund \
    --include=optional --ignore-scripts=false --save-exact \
    "$PKG@$PINNED_VERSION" >&2

# Newer npm versions may skip install scripts that are not allow-listed; run
# the wrapper's postinstall ourselves if the binary does not work yet.
if ! binary_works && [ -f "$PREFIX/node_modules/$PKG/postinstall.mjs" ]; then
    log "running the $PKG postinstall by hand"
    (cd "$PREFIX/node_modules/$PKG" && node postinstall.mjs >&2) || true
fi

if ! binary_works; then
    log "installed, but '$BIN --version' does not report $PINNED_VERSION"
    log "(is the platform package opencode-<os>-<arch> present under $PREFIX/node_modules?)"
    exit 1
fi

log "installed $PKG@$PINNED_VERSION"
echo "$BIN"
