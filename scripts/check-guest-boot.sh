#!/usr/bin/env bash
# scripts/check-guest-boot.sh: proves the guest kernel that scripts/setup.sh unpacked boots under QEMU, and
# reports how long it takes. It builds a throwaway busybox initramfs in a temp dir (deleted afterwards) whose
# /init prints a marker, loads the virtio/ext4 modules the VM driver uses, counts virtio devices and powers off.
# Every boot has a deadline: a boot that does not reach the marker / power off in time is reported as HUNG.
#
# Usage: scripts/check-guest-boot.sh [options]
#   -m MACHINE   microvm (default) | pc | q35
#   -a ACCEL     tcg (default; nested KVM is broken on the build machines) | kvm
#   -k KERNEL    vmlinux (default, uncompressed PVH ELF) | vmlinuz (bzImage, ~3 s slower under TCG)
#   -n RUNS      boot this many times and report min/median/max (default 1)
#   -t SECONDS   deadline per boot (default 60)
#   -M           do not load modules (just reach /init and power off)
#   -v           print the guest console
# Environment: TANDEM_GUEST_DIR (default /usr/local/share/tandem/guest).
# Exit status: 0 when every boot reached the marker and powered off, 1 otherwise.
set -Eeuo pipefail
shopt -s lastpipe

GUEST_DIR="${TANDEM_GUEST_DIR:-/usr/local/share/tandem/guest}"
MACHINE=microvm ACCEL=tcg KERNEL=vmlinux RUNS=1 DEADLINE=60 MODULES=1 VERBOSE=0
MARKER=TANDEM-BOOT-MARKER
# Load order matters: virtio_ring before virtio, dependencies before users (see DESIGN.md).
MODULE_ORDER=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_blk
	failover net_failover virtio_net virtio_console virtio-rng virtio_balloon vsock vmw_vsock_virtio_transport_common
	vmw_vsock_virtio_transport crc16 mbcache jbd2 crc32c_generic ext4 button evdev)

die() {
	echo "check-guest-boot: ERROR: $*" >&2
	exit 2
}
usage() {
	sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit "${1:-0}"
}
while getopts "m:a:k:n:t:Mvh" o; do
	case $o in
	m) MACHINE=$OPTARG ;;
	a) ACCEL=$OPTARG ;;
	k) KERNEL=$OPTARG ;;
	n) RUNS=$OPTARG ;;
	t) DEADLINE=$OPTARG ;;
	M) MODULES=0 ;;
	v) VERBOSE=1 ;;
	h) usage 0 ;;
	*) usage 2 ;;
	esac
done
case $MACHINE in microvm | pc | q35) ;; *) die "unknown machine '$MACHINE'" ;; esac
case $ACCEL in tcg | kvm) ;; *) die "unknown accel '$ACCEL'" ;; esac
case $KERNEL in vmlinux | vmlinuz) ;; *) die "unknown kernel '$KERNEL'" ;; esac
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "-n wants a positive number"

KVER=$(cat "$GUEST_DIR/kernel-version" 2>/dev/null) || die "no $GUEST_DIR/kernel-version: run scripts/setup.sh first"
KFILE=$GUEST_DIR/$KERNEL
[ -s "$KFILE" ] || die "missing $KFILE: run scripts/setup.sh first"
MODDIR=$GUEST_DIR/lib/modules/$KVER
BUSYBOX=$(command -v busybox) || die "busybox not found (package busybox-static)"
[[ $(file -L "$BUSYBOX") == *"statically linked"* ]] || die "$BUSYBOX is not static (install busybox-static)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found"

TMP=$(mktemp -d /tmp/tandem-bootcheck.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- the initramfs -------------------------------------------------------------------------------------
ROOT=$TMP/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,m}
cp "$BUSYBOX" "$ROOT/bin/busybox"
NMOD=0
if [ $MODULES = 1 ]; then
	for m in "${MODULE_ORDER[@]}"; do
		rel=$(awk -F: -v m="$m" '{n=$1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n)} n==m {print $1}' "$MODDIR/modules.dep")
		[ -n "$rel" ] || die "module $m not found in $MODDIR/modules.dep"
		cp "$MODDIR/$rel" "$ROOT/m/$(printf '%02d' $NMOD)-$m.ko"
		NMOD=$((NMOD + 1))
	done
fi
cat >"$ROOT/init" <<EOF
#!/bin/busybox sh
/bin/busybox echo $MARKER
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ok=0 bad=""
for f in /m/*.ko; do
	[ -e "\$f" ] || continue
	if insmod "\$f" 2>/dev/null; then ok=\$((ok+1)); else bad="\$bad \${f#/m/}"; fi
done
echo "TANDEM-MODULES ok=\$ok failed=\${bad:-none}"
echo "TANDEM-VIRTIO-DEVICES \$(ls /sys/bus/virtio/devices 2>/dev/null | wc -l)"
echo "TANDEM-UPTIME \$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
EOF
chmod 0755 "$ROOT/init"
(cd "$ROOT" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$TMP/initrd"

# --- the QEMU command line (the DESIGN.md kernel command line) ------------------------------------------
MHZ=$(awk -F: '/^cpu MHz/ {printf "%d", $2 + 0.5; exit}' /proc/cpuinfo)
APPEND="console=ttyS0 quiet tsc=reliable no_timer_check i8042.noaux i8042.nomux 8250.nr_uarts=1 cryptomgr.notests audit=0 rcupdate.rcu_expedited=1"
[ -n "$MHZ" ] && [ "$MHZ" -gt 0 ] && APPEND="$APPEND tsc_early_khz=$((MHZ * 1000))"
case $MACHINE in
microvm)
	MACH=(-M microvm) # ACPI stays on: this kernel finds virtio-mmio devices through ACPI
	APPEND="$APPEND pci=off"
	RNG=(-device virtio-rng-device)
	;;
pc | q35)
	MACH=(-M "$MACHINE")
	RNG=(-device virtio-rng-pci)
	;;
esac
QEMU=(qemu-system-x86_64 "${MACH[@]}" -accel "$ACCEL" -m 256 -smp 1 -nodefaults -no-user-config -nographic
	-serial stdio -no-reboot -kernel "$KFILE" -initrd "$TMP/initrd" -append "$APPEND" "${RNG[@]}")

echo "check-guest-boot: kernel $KVER ($KERNEL), machine $MACHINE, accel $ACCEL, deadline ${DEADLINE}s, $NMOD modules"
[ $VERBOSE = 1 ] && echo "check-guest-boot: ${QEMU[*]}"

# --- boot ----------------------------------------------------------------------------------------------
ms_since() { # start-EPOCHREALTIME -> integer milliseconds elapsed
	local now=$EPOCHREALTIME
	echo $(((${now/./} - ${1/./}) / 1000))
}
FAILS=0
TIMES=()
for run in $(seq 1 "$RUNS"); do
	t_marker="" t_end="" modline="" virtline="" uptime="" rc=0
	start=$EPOCHREALTIME
	timeout --kill-after=5 "$DEADLINE" "${QEMU[@]}" </dev/null 2>&1 | while IFS= read -r line; do
		line=${line%$'\r'}
		[ $VERBOSE = 1 ] && printf '    | %s\n' "$line"
		case $line in
		*"$MARKER"*) [ -n "$t_marker" ] || t_marker=$(ms_since "$start") ;;
		*TANDEM-MODULES*) modline=${line#*TANDEM-MODULES } ;;
		*TANDEM-VIRTIO-DEVICES*) virtline=${line#*TANDEM-VIRTIO-DEVICES } ;;
		*TANDEM-UPTIME*) uptime=${line#*TANDEM-UPTIME } ;;
		esac
		echo "$line" >>"$TMP/console.$run"
	done
	rc=${PIPESTATUS[0]}
	t_end=$(ms_since "$start")
	status=ok
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		status="HUNG (no power-off within ${DEADLINE}s)"
	elif [ "$rc" != 0 ]; then
		status="QEMU exited with status $rc"
	fi
	[ -z "$t_marker" ] && [ "$status" = ok ] && status="no marker on the console"
	if [ $MODULES = 1 ] && [ "$status" = ok ]; then
		[[ $modline == *failed=none ]] || status="modules failed: $modline"
		[ "${virtline:-0}" -ge 1 ] || status="no virtio device found by the guest"
	fi
	printf 'run %d: %s: /init marker at %s ms, powered off at %s ms (guest uptime %ss; modules %s; virtio devices %s)\n' \
		"$run" "$status" "${t_marker:-never}" "$t_end" "${uptime:-?}" "${modline:-n/a}" "${virtline:-n/a}"
	if [ "$status" != ok ]; then
		FAILS=$((FAILS + 1))
		echo "---- console of run $run (last 30 lines) ----"
		tail -30 "$TMP/console.$run" 2>/dev/null || true
		echo "----"
	else
		TIMES+=("$t_marker")
	fi
done

if [ ${#TIMES[@]} -gt 0 ]; then
	mapfile -t S < <(printf '%s\n' "${TIMES[@]}" | sort -n)
	echo "check-guest-boot: time to /init marker: min ${S[0]} ms, median ${S[$((${#S[@]} / 2))]} ms, max ${S[-1]} ms over ${#S[@]} good boot(s); $FAILS failed of $RUNS"
fi
[ $FAILS = 0 ] || {
	echo "check-guest-boot: FAILED ($FAILS of $RUNS boots)" >&2
	exit 1
}
echo "check-guest-boot: OK"
