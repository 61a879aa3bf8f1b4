#!/usr/bin/env bash
# Fuzz smoke run: builds the targets and runs each for a few seconds from
# its seed corpus (seeds/<target>), so a crash or broken invariant that a
# short run finds fails this script. Needs the nightly toolchain and
# cargo-fuzz; without them it prints "skipped: ..." and exits 0.
#
#   tests/fuzz/smoke.sh            # 5 s per target
#   FUZZ_SECS=60 tests/fuzz/smoke.sh
#
# Builds into tests/fuzz/target (or $FUZZ_TARGET_DIR), never the root's
# target dir: the instrumented build would evict the normal one.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECS:-5}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "skipped: no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "skipped: cargo-fuzz not installed (cargo install cargo-fuzz)"
  exit 0
fi
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}

# -s none: the code under test is safe Rust (no unsafe in src/http, src/api
# or the log reader), so AddressSanitizer would only slow it; -a keeps
# debug assertions and overflow checks on.
flags=(--fuzz-dir . -s none -a)
start=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
for target in $(cargo +nightly fuzz list --fuzz-dir .); do
  mkdir -p "corpus/$target"
  # Heads up to the 8 KiB limit and past it need inputs longer than
  # libFuzzer's default of 4 KiB.
  log="artifacts/smoke-$target.log"
  mkdir -p artifacts
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$secs" -max_len=10000 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E 'number_of_executed_units|panicked|left:|right:|SUMMARY|Test unit written' "$log" |
    sed "s/^/$target: /" || true
  if [ "$status" -ne 0 ]; then
    echo "$target: FAILED (exit $status); the input is in tests/fuzz/artifacts/$target/"
    exit 1
  fi
done
echo "fuzz smoke: all targets passed in $((SECONDS - start)) s"
