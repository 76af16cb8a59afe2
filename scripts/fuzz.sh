#!/usr/bin/env bash
# Runs every `go test -fuzz` target of the module for FUZZTIME each (make fuzz).
#
# Go 1.26's fuzzing coordinator can fail a target with a bare "context
# deadline exceeded" when -fuzztime runs out while a worker is mid-call
# (golang/go#75804, fixed in Go 1.27): no input failed and none is written.
# A run that failed that way, and only that way, is run once more; any other
# failure, or that one twice, fails.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
sig='^func Fuzz[A-Za-z0-9_]*([a-z]* \*testing\.F)'
pkgs=$(grep -l "$sig" $(find . -name '*_test.go' -not -path './.git/*') | xargs -n1 dirname | sort -u)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $pkgs; do
	for f in $(grep -h -o "$sig" "$pkg"/*_test.go | sed 's/^func //; s/(.*//'); do
		for try in 1 2; do
			echo "fuzz $pkg $f ($FUZZTIME)"
			if "$GO" test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 50x "$pkg" 2>&1 | tee "$log"; then
				break
			fi
			if [ "$try" = 1 ] && grep -qx '    context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
				echo "fuzz $pkg $f: the coordinator's -fuzztime race (golang/go#75804), no failing input: once more"
				continue
			fi
			exit 1
		done
	done
done
