#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz: libFuzzer with AddressSanitizer, nightly rustc).
#
#   scripts/fuzz.sh --smoke [SECS] [TARGET...]   each target for SECS seconds (default 20; CI:
#                                                a debug build, two targets at a time)
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
build=-O
parallel=1
case "${1:-}" in
--smoke)
	shift
	if [[ "${1:-}" =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
	# A smoke test proves the targets build and run: the debug build compiles in half the
	# time, and two targets share the two cores.
	build=--dev
	parallel=2
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

all=(switch_frames vxlan arp offload switch_config control_api workload tenant_api secure_receive)
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

echo "==> building the fuzz targets (AddressSanitizer, $build)"
cargo +nightly fuzz build "$build"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Runs target $1; its summary line goes to $out/$1.line, its exit status to $out/$1.rc.
run_one() {
	local t=$1 log="$out/$1.log" rc=0
	mkdir -p "corpus/$t"
	local args=(-max_total_time="$secs" -print_final_stats=1)
	[[ $runs -gt 0 ]] && args+=(-runs="$runs")
	# -rss_limit_mb bounds a leak; -timeout flags an input that hangs.
	cargo +nightly fuzz run "$build" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
		-rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || rc=$?
	local n took
	n=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
	took=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
	n=${n:-0}
	took=${took:-$secs}
	printf '%-14s %12d runs in %5d s: %9d runs/s, corpus %d inputs\n' "$t" "$n" "$took" \
		"$((n / (took > 0 ? took : 1)))" "$(find "corpus/$t" -type f | wc -l)" >"$out/$t.line"
	echo "$rc" >"$out/$t.rc"
}

# tenant_api is the slow one (each input builds the whole API in a debug build: its seeds alone
# take about two minutes to replay), so with two lanes it runs in one and the rest in the other.
ordered=()
for t in "${targets[@]}"; do
	if [[ $t == tenant_api ]]; then ordered+=("$t"); fi
done
for t in "${targets[@]}"; do
	if [[ $t != tenant_api ]]; then ordered+=("$t"); fi
done
if [[ $parallel -gt 1 && ${#ordered[@]} -gt 1 ]]; then
	run_one "${ordered[0]}" &
	(for t in "${ordered[@]:1}"; do run_one "$t"; done) &
	wait
else
	for t in "${ordered[@]}"; do run_one "$t"; done
fi

status=0
for t in "${targets[@]}"; do
	cat "$out/$t.line"
	[[ -n "${FUZZ_REPORT:-}" ]] && cat "$out/$t.line" >>"$FUZZ_REPORT"
	if [[ "$(cat "$out/$t.rc")" != 0 ]]; then
		echo "FAILED: fuzz target $t found a problem:"
		grep -E -A12 'panicked|ERROR: ' "$out/$t.log" | head -40 || tail -40 "$out/$t.log"
		status=1
	fi
done
exit $status
