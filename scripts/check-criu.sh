#!/usr/bin/env bash
# scripts/check-criu.sh: shows that the CRIU that scripts/setup.sh built works on this kernel, alone and
# paired with runc. Everything it starts lives in a temp dir and is removed at the end.
#   1. `criu check` and a feature report (pre-dump/soft-dirty, lazy pages/uffd, TCP, nftables locking);
#   2. criu dump + restore of a small process tree that holds a TCP listener (the sockopts patch);
#   3. the same restored lazily (criu lazy-pages + restore --lazy-pages, i.e. userfaultfd post-copy);
#   4. runc checkpoint/restore --tcp-established of a busybox container in a tandem-style netns (made with
#      `ip netns add`, passed by path) whose TCP connection must survive (the nftables-lock patch).
# Usage: scripts/check-criu.sh [-v]      (-v: print CRIU log excerpts on failure; they are printed anyway)
# Exit status: 0 when every check passed.
set -Eeuo pipefail

CRIU=${CRIU:-criu}
TMP=$(mktemp -d /tmp/tandem-criucheck.XXXXXX)
ID=tandem-ck-$$
NETNS=$ID
PIDS=()
FAILS=0

say() { printf '== %s\n' "$*"; }
pass() { printf '   PASS: %s\n' "$*"; }
fail() {
	printf '   FAIL: %s\n' "$*"
	FAILS=$((FAILS + 1))
}
cleanup() {
	set +e
	runc delete -f "$ID" >/dev/null 2>&1
	local p
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in $(pgrep -f "$TMP" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done # restored copies of our trees
	ip netns del "$NETNS" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || {
	echo "check-criu: must run as root" >&2
	exit 2
}
for t in "$CRIU" runc busybox ip nft socat python3; do command -v "$t" >/dev/null || {
	echo "check-criu: $t not found: run scripts/setup.sh" >&2
	exit 2
}; done

# Start a detached process with only fds 0-2 (CRIU cannot dump fds inherited from outside, e.g. the
# caller's pipes) in its own session; print its pid.
spawn() {
	(
		for fd in /proc/self/fd/*; do
			fd=${fd##*/}
			[ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
		done
		exec setsid "$@" </dev/null >/dev/null 2>&1
	) &
	echo $!
}
# After a dump the old pid stays a zombie until its parent reaps it; a restore that reuses the pid
# must wait for that (here PID 1 reaps orphans up to ~1 s late).
wait_gone() {
	local _
	for _ in $(seq 100); do
		[ -e "/proc/$1" ] || return 0
		sleep 0.05
	done
	return 1
}
advancing() { # file: true when the counter in it grows within 1.5 s
	local a b
	a=$(cat "$1" 2>/dev/null || echo 0)
	sleep 1.5
	b=$(cat "$1" 2>/dev/null || echo 0)
	[ "${b:-0}" -gt "${a:-0}" ] 2>/dev/null
}
show_log() {
	grep -E 'Error|Warn' "$1" 2>/dev/null | grep -v 'RLIMIT_NOFILE' | tail -8 | sed 's/^/      /'
}

# --- 1 ----------------------------------------------------------------------------------------------
say "criu $("$CRIU" --version | awk '/^Version:/{print $2}') on kernel $(uname -r)"
if out=$("$CRIU" check 2>&1); then pass "criu check: $(echo "$out" | tail -1)"; else
	fail "criu check"
	echo "$out" | sed 's/^/      /'
fi
for f in mem_dirty_track uffd uffd-noncoop tcp_half_closed network_lock_nftables timens clone3_set_tid pidfd_store \
	move_mount_set_group get_rseq_conf pagemap_scan; do
	if "$CRIU" check --feature "$f" >/dev/null 2>&1; then r=yes; else r=no; fi
	printf '   feature %-22s %s\n' "$f" "$r"
done
"$CRIU" check --feature mem_dirty_track >/dev/null 2>&1 ||
	echo "   note: no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY off): pre-dump / iterative migration is unavailable"

# --- 2 ----------------------------------------------------------------------------------------------
say "criu dump/restore of a process tree with a TCP listener"
mkdir -p "$TMP/d2"
PORT=$((20000 + $$ % 20000))
P=$(spawn sh -c "echo $TMP >/dev/null; socat TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork EXEC:cat & i=0; while :; do i=\$((i+1)); echo \$i > $TMP/count2; sleep 0.1; done")
PIDS+=("$P")
sleep 0.5
if "$CRIU" dump -t "$P" -D "$TMP/d2" -o dump.log -v4; then
	wait_gone "$P" || fail "dumped tree $P did not go away"
	if "$CRIU" restore -D "$TMP/d2" -o restore.log -v4 -d && advancing "$TMP/count2" && [ -e "/proc/$P" ]; then
		pass "dump + restore (pid $P back, counter advancing)"
	else
		fail "restore"
		show_log "$TMP/d2/restore.log"
	fi
else
	fail "dump"
	show_log "$TMP/d2/dump.log"
fi
kill -9 "$P" $(pgrep -P "$P") 2>/dev/null || true
wait_gone "$P" || true

# --- 3 ----------------------------------------------------------------------------------------------
say "criu lazy restore (userfaultfd: lazy-pages daemon + restore --lazy-pages)"
mkdir -p "$TMP/d3"
P=$(spawn sh -c "echo $TMP >/dev/null; i=0; while :; do i=\$((i+1)); echo \$i > $TMP/count3; sleep 0.1; done")
PIDS+=("$P")
sleep 0.3
if "$CRIU" dump -t "$P" -D "$TMP/d3" -o dump.log -v4 && wait_gone "$P"; then
	"$CRIU" lazy-pages -D "$TMP/d3" -o lazy.log -v4 &
	LP=$!
	sleep 0.3
	if "$CRIU" restore -D "$TMP/d3" -o restore.log -v4 -d --lazy-pages && advancing "$TMP/count3"; then
		pass "lazy restore (counter advancing)"
	else
		fail "lazy restore"
		show_log "$TMP/d3/restore.log"
		show_log "$TMP/d3/lazy.log"
	fi
	wait "$LP" || fail "lazy-pages daemon exited with an error"
else
	fail "dump for lazy restore"
	show_log "$TMP/d3/dump.log"
fi
kill -9 "$P" 2>/dev/null || true

# --- 4 ----------------------------------------------------------------------------------------------
say "runc $(runc --version | awk 'NR==1{print $3}') checkpoint/restore --tcp-established in a netns made by ip netns"
B=$TMP/bundle
mkdir -p "$B/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$B/rootfs/bin/busybox"
for a in sh sleep nc cat netstat; do ln -s busybox "$B/rootfs/bin/$a"; done
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
(cd "$B" && runc spec)
# The container: an echo server and a client that streams a counter through it and records the replies.
python3 - "$B/config.json" "$NETNS" <<'EOF'
import json, sys
path, netns = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "nc -ll -p 7000 -e cat & sleep 0.3; "
                        "(i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done) | nc 127.0.0.1 7000 > /tmp/echo"]
c["root"]["readonly"] = False
for ns in c["linux"]["namespaces"]:
    if ns["type"] == "network":
        ns["path"] = "/var/run/netns/" + netns
json.dump(c, open(path, "w"), indent=1)
EOF
last() { tail -n1 "$B/rootfs/tmp/echo" 2>/dev/null || echo 0; }
# The container's stdio must be something CRIU can dump: /dev/null here (a host file opened outside the
# container's mount namespace cannot be dumped; pipes are handed over by runc as external fds).
if ! (cd "$B" && runc --log "$TMP/runc.log" run -d "$ID" </dev/null >/dev/null 2>&1); then
	fail "runc run"
	sed 's/^/      /' "$TMP/runc.log"
else
	sleep 1
	before=$(last)
	t0=$EPOCHREALTIME
	if runc checkpoint --tcp-established --image-path "$B/img" --work-path "$B/work" "$ID" 2>"$TMP/ck.err"; then
		t1=$EPOCHREALTIME
		state=$(runc state "$ID" 2>/dev/null | awk -F'"' '/"status"/{print $4}') || true
		locked=$(ip netns exec "$NETNS" nft list tables | grep -c CRIU || true)
		pass "checkpoint in $(((${t1/./} - ${t0/./}) / 1000)) ms (container ${state:-gone}, counter at $before, $locked CRIU nft lock table(s) in the netns)"
		t0=$EPOCHREALTIME
		if runc restore -d --bundle "$B" --tcp-established --image-path "$B/img" --work-path "$B/work-r" "$ID" </dev/null >/dev/null 2>"$TMP/rs.err"; then
			t1=$EPOCHREALTIME
			sleep 1
			after=$(last)
			est=$(runc exec "$ID" netstat -tn 2>/dev/null | grep -c ESTABLISHED || true)
			locked=$(ip netns exec "$NETNS" nft list tables | grep -c CRIU || true)
			if [ "$after" -gt "$before" ] && [ "$est" -ge 2 ] && [ "$locked" = 0 ]; then
				pass "restore in $(((${t1/./} - ${t0/./}) / 1000)) ms: the TCP connection carries on (echoed $before -> $after, $est ESTABLISHED sockets, lock table gone)"
			else
				fail "after restore: echoed $before -> $after, $est ESTABLISHED sockets, $locked CRIU lock tables left"
			fi
		else
			fail "runc restore: $(tail -1 "$TMP/rs.err")"
			show_log "$B/work-r/restore.log"
		fi
	else
		fail "runc checkpoint: $(tail -1 "$TMP/ck.err")"
		show_log "$B/work/dump.log"
	fi
	if runc checkpoint --pre-dump --image-path "$B/pre" --work-path "$B/work-p" "$ID" 2>"$TMP/pre.err"; then
		echo "   info: runc checkpoint --pre-dump works"
	else
		echo "   info: runc checkpoint --pre-dump refused: $(sed -n 's/.*msg="\([^"]*\)".*/\1/p' "$TMP/pre.err" | tail -1) (expected without soft-dirty)"
	fi
fi

if [ $FAILS = 0 ]; then
	echo "check-criu: OK"
else
	echo "check-criu: $FAILS check(s) FAILED" >&2
	exit 1
fi
