#!/usr/bin/env bash
# Runs the whole test suite: installs what the system tests need (idempotent), vets, then runs unit
# and system tests. System tests skip with a printed reason when a component is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" = 0 ]; then
	bash scripts/setup.sh
else
	echo "test.sh: not root: skipping scripts/setup.sh; system tests that need root will skip" >&2
fi

echo "== go vet"
go vet ./...
echo "== go test"
# -p 1 for packages keeps system tests that boot guests from fighting over the two cores. -v so
# that the report can say which tests were skipped and why; it prints what a plain run would.
log=$(mktemp /tmp/tandem-test.XXXXXX.log)
rc=0
go test -count=1 -timeout 75m -p 1 -v ./... "$@" >"$log" 2>&1 || rc=$?
awk -f scripts/test-report.awk "$log"
echo "(full output: $log)"
exit "$rc"
