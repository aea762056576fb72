#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build tandem, start tandemd, and launch a
# container and a VM side by side. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
DIR="${TANDEM_DIR:-/var/lib/tandem}"
# KVM hangs Linux guests on the build machines (nested virtualisation): TCG unless told otherwise.
ACCEL="${TANDEM_ACCEL:-tcg}"

bash scripts/setup.sh
echo "== building tandem"
mkdir -p bin
go build -o bin/ ./cmd/tandem ./cmd/tandemd
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/ ./cmd/tandem-agent # runs inside VMs
T="bin/tandem --dir $DIR"

if ! $T host info >/dev/null 2>&1; then
	echo "== starting tandemd (state in $DIR, log in $DIR/tandemd.log)"
	mkdir -p "$DIR"
	setsid bin/tandemd --dir "$DIR" --accel "$ACCEL" >>"$DIR/tandemd.log" 2>&1 < /dev/null &
	for _ in $(seq 50); do $T host info >/dev/null 2>&1 && break; sleep 0.2; done
fi

echo "== building the busybox image"
$T image info busybox >/dev/null 2>&1 || $T image build busybox

echo "== launching a container and a VM side by side"
$T info demo-c1 >/dev/null 2>&1 || $T launch busybox demo-c1 -c limits.memory=128MiB
$T info demo-v1 >/dev/null 2>&1 || $T launch busybox demo-v1 --vm -c limits.memory=256MiB
# A VM takes a few seconds to boot under TCG; wait for its agent to answer before showing addresses.
for _ in $(seq 60); do $T exec demo-v1 -- true >/dev/null 2>&1 && break; sleep 1; done
$T list
echo "== the container pings the VM by name"
$T exec demo-c1 -- ping -c 2 -W 3 demo-v1
$T host info
