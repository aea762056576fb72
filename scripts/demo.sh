#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build tandem, start tandemd, and launch a
# container and a VM side by side. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
DIR="${TANDEM_DIR:-/var/lib/tandem}"
DRIVER="${TANDEM_DRIVER:-fake}" # the container and VM drivers are not wired in yet

bash scripts/setup.sh
echo "== building tandem"
mkdir -p bin
go build -o bin/ ./cmd/tandem ./cmd/tandemd
T="bin/tandem --dir $DIR"

if ! $T host info >/dev/null 2>&1; then
	echo "== starting tandemd (state in $DIR, log in $DIR/tandemd.log)"
	mkdir -p "$DIR"
	setsid bin/tandemd --dir "$DIR" --driver "$DRIVER" >>"$DIR/tandemd.log" 2>&1 < /dev/null &
	for _ in $(seq 50); do $T host info >/dev/null 2>&1 && break; sleep 0.2; done
fi

echo "== launching a container and a VM side by side"
$T info demo-c1 >/dev/null 2>&1 || $T launch busybox demo-c1 -c limits.memory=128MiB
$T info demo-v1 >/dev/null 2>&1 || $T launch busybox demo-v1 --vm -c limits.memory=256MiB
$T list
$T host info
