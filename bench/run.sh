#!/usr/bin/env bash
# bench/run.sh - run the hotplex benchmark suite (or its CI smoke version).
#
#   bench/run.sh                 full suite (< 15 min on 2 cores), results in bench/results/
#   bench/run.sh --smoke         a few seconds: correctness of the harness, no timing asserted
#   bench/run.sh --only latency  one or more scenarios (comma-separated)
#   options passed through to bench/bench.py: --build-dir DIR --out DIR --strict --skip-reference
#
# Builds nothing if the build directory already holds the binaries (else runs
# cmake), installs the reference relay's `ws` with npm and gnuplot-nox with apt
# when missing (full runs only), raises the open-file limit for 10k
# connections, then hands over to bench/bench.py. Loopback traffic only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
smoke=0
args=()
while (($#)); do
  case "$1" in
    --smoke) smoke=1; args+=("$1") ;;
    --build-dir) build=$(cd "$2" && pwd); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

need_build=0
for b in hotplex bench/hotplex_loadgen bench/synth_agent bench/ws_ceiling; do
  [[ -x "$build/$b" ]] || need_build=1
done
if ((need_build)); then
  echo "bench: building in $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target hotplex hotplex_loadgen synth_agent ws_ceiling
fi

# 10,000 connections need ~10k descriptors in the load generator and in the
# gateway (plus 3 pipes per live agent).
want=65536
if [[ $(ulimit -Hn) != unlimited && $(ulimit -Hn) -lt $want ]]; then
  ulimit -Hn $want 2>/dev/null || true
fi
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || ulimit -Sn $want 2>/dev/null || true
echo "bench: open-file limit $(ulimit -Sn)"

# Reference relay: Node.js + ws pinned in bench/reference/package.json.
ref="$root/bench/reference"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if [[ ! -d "$ref/node_modules/ws" ]]; then
    echo "bench: npm install --prefix bench/reference"
    (cd "$ref" && timeout $((smoke ? 120 : 300)) npm install --prefix "$ref" --no-audit --no-fund --loglevel=error) ||
      echo "bench: npm install failed; the reference relay will be skipped"
  fi
else
  echo "bench: node/npm not found; the reference relay will be skipped"
fi

# gnuplot for the latency-vs-load plot (full runs).
if ((!smoke)) && ! command -v gnuplot >/dev/null 2>&1; then
  echo "bench: installing gnuplot-nox"
  sudo_cmd=""
  [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  ($sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    $sudo_cmd apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null) ||
    echo "bench: gnuplot-nox not installed; the plot will be skipped"
fi

exec timeout --kill-after=30 1500 /usr/bin/python3 "$root/bench/bench.py" --build-dir "$build" "${args[@]}"
