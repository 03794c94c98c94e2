#!/usr/bin/env bash
# Runs every fuzz target in BUILD_DIR for SECONDS each over its seed corpus
# (fuzz/corpus/<name-without-fuzz_>/), failing on the first crash. Prints a
# closing line CI can read: "N passed, N failed".
set -uo pipefail
build=${1:-build-fuzz}
secs=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
pass=0 fail=0
for bin in "$build"/fuzz_*; do
  [[ -x "$bin" ]] || continue
  name=$(basename "$bin")
  corpus="$root/fuzz/corpus/${name#fuzz_}"
  work=$(mktemp -d)
  [[ -d "$corpus" ]] && cp -r "$corpus"/. "$work"/
  echo "fuzz: $name for ${secs}s"
  if "$bin" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$work/" "$work" >"$work/log" 2>&1; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "fuzz: $name FAILED"; tail -40 "$work/log"
  fi
  rm -rf "$work"
done
echo "fuzz: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
