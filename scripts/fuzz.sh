#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz: libFuzzer with AddressSanitizer, nightly rustc).
#
#   scripts/fuzz.sh --smoke [SECS] [TARGET...]   each target for SECS seconds (default 20; CI)
#   scripts/fuzz.sh --full [TARGET...]           each target to 10 million runs or 30 minutes
#   scripts/fuzz.sh --time SECS --runs N [TARGET...]
#
# Every target starts from its seeds (fuzz/seeds/TARGET, checked in) and its working corpus
# (fuzz/corpus/TARGET, not checked in). A finding fails the run; the input is left in
# fuzz/artifacts/TARGET/ and `cargo +nightly fuzz run -O TARGET FILE` replays it. One line per
# target gives its runs, seconds and runs/s; with FUZZ_REPORT=FILE they are appended there.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=20
runs=0
case "${1:-}" in
--smoke)
	shift
	if [[ "${1:-}" =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
	;;
--full)
	shift
	secs=1800
	runs=10000000
	;;
--time)
	secs=$2
	shift 2
	if [[ "${1:-}" == --runs ]]; then runs=$2; shift 2; fi
	;;
esac

all=(switch_frames vxlan arp offload switch_config control_api workload tenant_api)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
	echo "skipping fuzzing: no nightly toolchain (cargo-fuzz's sanitizers need one)"
	exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "==> installing cargo-fuzz"
	cargo install cargo-fuzz --locked --version 0.13.2
fi

echo "==> building the fuzz targets (AddressSanitizer, optimised)"
cargo +nightly fuzz build -O

status=0
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t"
	log=$(mktemp)
	args=(-max_total_time="$secs" -print_final_stats=1)
	[[ $runs -gt 0 ]] && args+=(-runs="$runs")
	# -rss_limit_mb bounds a leak; -timeout flags an input that hangs.
	if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
		-rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
		echo "FAILED: fuzz target $t found a problem:"
		grep -E -A12 'panicked|ERROR: ' "$log" | head -40 || tail -40 "$log"
		status=1
	fi
	n=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
	took=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
	n=${n:-0}
	took=${took:-$secs}
	line=$(printf '%-14s %12d runs in %5d s: %9d runs/s, corpus %d inputs' "$t" "$n" "$took" \
		"$((n / (took > 0 ? took : 1)))" "$(find "corpus/$t" -type f | wc -l)")
	echo "$line"
	[[ -n "${FUZZ_REPORT:-}" ]] && echo "$line" >>"$FUZZ_REPORT"
	rm -f "$log"
done
exit $status
