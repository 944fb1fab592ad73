#!/usr/bin/env bash
# Runs every Go native fuzz target in the tree (each `func FuzzXxx(*testing.F)`
# in the test files built on this platform), one at a time, since
# `go test -fuzz` takes one target per package run; without -race, which
# would slow fuzzing tenfold. Fails if any target fails: Go then leaves the
# failing input in the package's testdata/fuzz/<Target>/, where every
# `go test` replays it as a seed from then on.
#
# Settings, from the environment:
#   FUZZTIME          each target's budget (go test -fuzztime): 20s, or 1000x
#   FUZZMINIMIZETIME  budget for minimizing one input (Go's default, 60s, can
#                     eat a short FUZZTIME whole); default 5s
#   FUZZ_PKGS         the packages to look in; default ./...
#   FUZZ_MATCH        an extended regexp the target names must match
#   FUZZ_PARALLEL     fuzzing workers per target (go test -parallel);
#                     default GOMAXPROCS
#   FUZZ_TIMEOUT      go test -timeout for each target; default 30m
#   FUZZ_VERBOSE=1    stream go test's progress lines
set -euo pipefail

cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-20s}
minimizetime=${FUZZMINIMIZETIME:-5s}
pkgs=${FUZZ_PKGS:-./...}
match=${FUZZ_MATCH:-.}

# Fuzz workers stopped at the end of a budget are killed if slow to exit,
# before their cleanups run: give them a temporary directory of their own,
# removed at the end, so nothing they make outlives this script.
work=$(mktemp -d "${TMPDIR:-/tmp}/arcbox-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work

# Find the targets: "import/path<TAB>dir<TAB>FuzzName" lines. go list names
# the test files built here (build constraints applied), so this compiles
# and runs nothing.
targets=()
while IFS=$'\t' read -r pkg dir files; do
	[ -n "${files// /}" ] || continue
	# shellcheck disable=SC2086 # $files is a list of file names
	for name in $(cd "$dir" && grep -hoE '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' $files </dev/null |
		sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' | sort -u); do
		if [[ $name =~ $match ]]; then
			targets+=("$pkg"$'\t'"$dir"$'\t'"$name")
		fi
	done
	# shellcheck disable=SC2086 # FUZZ_PKGS may name several patterns
done < <(go list -f '{{.ImportPath}}{{"\t"}}{{.Dir}}{{"\t"}}{{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' $pkgs)

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets in $pkgs match '$match'" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${fuzztime} each"

module=$(go list -m)
args=(-run '^$' -fuzztime "$fuzztime" -fuzzminimizetime "$minimizetime" -timeout "${FUZZ_TIMEOUT:-30m}")
if [ -n "${FUZZ_PARALLEL:-}" ]; then
	args+=(-parallel "$FUZZ_PARALLEL")
fi

summary=()
failed=0
for t in "${targets[@]}"; do
	IFS=$'\t' read -r pkg dir name <<<"$t"
	short=${pkg#"$module"/}
	log="$work/$name.log"
	echo "==> $short $name"
	status=0
	if [ "${FUZZ_VERBOSE:-}" = 1 ]; then
		go test "${args[@]}" -fuzz "^${name}\$" "$pkg" 2>&1 | tee "$log" || status=$?
	else
		go test "${args[@]}" -fuzz "^${name}\$" "$pkg" >"$log" 2>&1 || status=$?
	fi
	# The last progress line says how many inputs were tried.
	execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)
	if [ "$status" -eq 0 ]; then
		summary+=("PASS  $short $name (${execs:-0} execs)")
		continue
	fi
	# Go 1.26's coordinator can report its own -fuzztime deadline as a
	# failure, with no input behind it (go.dev/issue/75804, fixed in 1.27).
	# A hung or crashing input is always written to testdata, so a bare
	# deadline is no finding.
	if grep -qx '    context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
		summary+=("PASS* $short $name (${execs:-0} execs; Go's deadline race at the end, go.dev/issue/75804: no input failed)")
		continue
	fi
	failed=$((failed + 1))
	summary+=("FAIL  $short $name")
	echo "--- $short $name failed; the end of its output:"
	tail -n 40 "$log"
	# Go writes "Failing input written to testdata/fuzz/<Name>/<hash>".
	input=$(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | tail -n 1)
	if [ -n "$input" ]; then
		rel=${dir#"$PWD"/}/$input
		summary+=("      failing input: $rel (left there: every go test now replays it;")
		summary+=("      see it fail with: go test -run '^$name/${input##*/}\$' ./${dir#"$PWD"/})")
	fi
done

echo
echo "fuzz summary (${fuzztime} per target):"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -gt 0 ]; then
	echo "fuzz: $failed of ${#targets[@]} targets failed" >&2
	exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"
