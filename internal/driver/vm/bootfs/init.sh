#!/bin/busybox sh
# tandem's initramfs init: load the modules the root disk needs, mount it, put the guest agent in
# place and hand over to the image's own init. Every failure powers the VM off, so the host sees a
# stopped VM and the console says why, rather than a guest stuck here.

/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t sysfs sysfs /sys

log() { echo "tandem-init: $*"; }
fail() {
	log "FAILED: $*"
	sleep 1
	poweroff -f
}
log "start $(cut -d' ' -f1 /proc/uptime)"

for m in $(cat /etc/tandem/modules); do
	insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

root=/dev/vda rootfstype=ext4 init=/sbin/init agent=1 hostname=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}" ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	init=*) init="${arg#init=}" ;;
	tandem.agent=*) agent="${arg#tandem.agent=}" ;;
	tandem.hostname=*) hostname="${arg#tandem.hostname=}" ;;
	esac
done

# The disk shows up once virtio_blk has probed it; give it 10 s.
i=0
while [ ! -b "$root" ]; do
	i=$((i + 1))
	[ $i -gt 200 ] && fail "no root disk $root"
	sleep 0.05
done
mkdir -p /newroot
mount -t "$rootfstype" -o rw "$root" /newroot || fail "cannot mount $root"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "the image has no $init"

# The agent is copied at every boot, so instances pick up a new agent with the host's, and is started
# by the image's init: a systemd unit, or a respawn line in a busybox inittab.
install_agent() {
	R=/newroot
	D=$R/usr/local/lib/tandem
	mkdir -p "$D" || return 1
	if ! cmp -s /tandem/tandem-agent "$D/tandem-agent"; then
		cp /tandem/tandem-agent "$D/.tandem-agent.new" && chmod 0755 "$D/.tandem-agent.new" &&
			mv "$D/.tandem-agent.new" "$D/tandem-agent" || return 1
	fi
	if [ -e $R/lib/systemd/systemd ] || [ -L $R/lib/systemd/systemd ] || [ -e $R/usr/lib/systemd/systemd ]; then
		U=$R/etc/systemd/system
		mkdir -p "$U/multi-user.target.wants"
		cmp -s /tandem/tandem-agent.service "$U/tandem-agent.service" || cp /tandem/tandem-agent.service "$U/tandem-agent.service"
		ln -sf /etc/systemd/system/tandem-agent.service "$U/multi-user.target.wants/tandem-agent.service"
		return 0
	fi
	T=$R/etc/inittab
	# Without an inittab busybox init runs its built-in one: write that down before adding to it.
	[ -e "$T" ] || cp /tandem/inittab.default "$T"
	grep -q tandem-agent "$T" || echo "::respawn:/usr/local/lib/tandem/tandem-agent" >>"$T"
}
if [ "$agent" = 1 ] && [ -x /tandem/tandem-agent ]; then
	install_agent || log "could not install the guest agent"
fi

if [ -n "$hostname" ] && [ "$(cat /newroot/etc/hostname 2>/dev/null)" != "$hostname" ]; then
	echo "$hostname" >/newroot/etc/hostname || log "could not set the hostname"
fi

log "switching to $init at $(cut -d' ' -f1 /proc/uptime)"
mkdir -p /newroot/dev
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot "$init"
