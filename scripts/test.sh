#!/usr/bin/env bash
# Runs the whole test suite: installs what the system tests need (idempotent), vets, lints with
# staticcheck, runs unit and system tests, then the unit tests again under the race detector.
# System tests skip with a printed reason when a component is absent (under CI=true they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/local/bin"

if [ "$(id -u)" = 0 ]; then
	bash scripts/setup.sh
else
	echo "test.sh: not root: skipping scripts/setup.sh; system tests that need root will skip" >&2
fi

rc=0
echo "== go vet"
go vet ./...

echo "== staticcheck"
if command -v staticcheck >/dev/null; then
	staticcheck ./... || { rc=1; echo "staticcheck: the findings above fail the suite"; }
elif [ "${CI:-}" = true ]; then
	echo "staticcheck is not installed (CI=true: scripts/setup.sh installs it, so this is a failure)"
	rc=1
else
	echo "skipping staticcheck: not installed (scripts/setup.sh installs it)"
fi

# One run of go test -v, summarised by the report (what a plain run prints, plus the skipped tests
# and why); a failing run fails the suite.
report() {
	local name=$1 log
	shift
	log=$(mktemp "/tmp/tandem-$name.XXXXXX.log")
	local r=0
	"$@" >"$log" 2>&1 || r=$?
	awk -f scripts/test-report.awk "$log"
	echo "(full output: $log)"
	[ $r = 0 ] || rc=1
}

echo "== go test"
# -p 1 for packages keeps system tests that boot guests from fighting over the two cores.
report test go test -count=1 -timeout 75m -p 1 -v ./... "$@"

echo "== go test -race (unit tests: what needs root skips)"
# The race detector over the tests that run on fakes: root is hidden (testenv's "root" is a fact
# about the host, so its tests skip, under CI too); test/system drives real daemons only.
race_start=$SECONDS
report race env TANDEM_TESTENV_ABSENT=root go test -race -short -count=1 -timeout 20m -v \
	$(go list ./... | grep -v '^tandem/test/') "$@"
echo "(race pass: $((SECONDS - race_start)) s)"
exit "$rc"
