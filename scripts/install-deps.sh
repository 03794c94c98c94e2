#!/usr/bin/env bash
# Installs what hotplex needs to build, run and test on Debian 12, from
# Debian's archive (and the npm registry for the Claude Code CLI used by the
# end-to-end tests). Idempotent: installs only what is missing.
#   scripts/install-deps.sh          build + run dependencies
#   scripts/install-deps.sh --test   also test dependencies (cmocka, pytest, clang, claude CLI)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

pkgs=(build-essential cmake pkg-config
      libuv1-dev libwebsockets-dev libwebsockets-evlib-uv libjsmn-dev
      libsqlite3-dev libssl-dev libjwt-dev libyaml-dev libcurl4-openssl-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(libcmocka-dev python3 python3-websockets python3-pytest clang
         libclang-rt-14-dev valgrind curl openssl)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)
  # promtool (checks the /metrics exposition in tests/e2e/test_admin.py);
  # ~19 MB, installs in seconds; its prometheus service is not needed.
  command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${1:-}" == "--test" ]]; then
  "$root/scripts/install-claude.sh" >/dev/null
fi
