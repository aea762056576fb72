#!/usr/bin/env bash
# scripts/setup.sh: the one idempotent installer for a tandem build/test host (Debian 12 bookworm, amd64,
# run as root). It installs
#   1. Debian packages: QEMU, runc, busybox, networking and storage tools, and CRIU's build dependencies;
#   2. CRIU 4.1.1 built from Debian's source tarball plus scripts/patches/criu-4.1.1-*.patch,
#      as /usr/local/sbin/criu (bookworm's own criu 3.17 is too old and is not installed);
#   3. the VM guest kernel: Debian's bookworm linux-image package, unpacked (never installed) into
#      /usr/local/share/tandem/guest/ with vmlinuz, an uncompressed PVH-bootable vmlinux and the modules;
#   4. fs.pipe-max-size >= 4 MiB (now and in /etc/sysctl.d/60-tandem.conf) for lazy container moves;
#   5. the test command's linter: staticcheck (pinned), into /usr/local/bin (`go test -race` needs
#      gcc and libc6-dev: build-essential, among CRIU's build dependencies).
# A second run only checks (a few seconds): nothing is downloaded or rebuilt when what is there is current.
#
# Usage: scripts/setup.sh [--check]     --check also runs scripts/check-criu.sh and scripts/check-guest-boot.sh
# Environment (all optional):
#   TANDEM_BUILD_DIR    build cache            (default /var/cache/tandem-build)
#   TANDEM_GUEST_DIR    guest kernel directory (default /usr/local/share/tandem/guest)
#   TANDEM_DEBIAN_MIRROR  Debian archive URI   (default: the one in /etc/apt/sources.list*)
#   TANDEM_GUEST_KERNEL_PKG  pin the guest kernel package, e.g. linux-image-6.1.0-56-amd64
#   TANDEM_FORCE=criu,guest  redo those steps even when they look current
set -Eeuo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="${TANDEM_BUILD_DIR:-/var/cache/tandem-build}"
GUEST_DIR="${TANDEM_GUEST_DIR:-/usr/local/share/tandem/guest}"
STATE_DIR=/usr/local/share/tandem
FORCE=",${TANDEM_FORCE:-},"
CHECK=0

# CRIU: Debian's criu 4.1.1-1 source package (trixie). Its orig tarball is the upstream release; the
# SHA-256 is the one in trixie's signed Sources index.
CRIU_VERSION=4.1.1
CRIU_ORIG=criu_${CRIU_VERSION}.orig.tar.xz
CRIU_ORIG_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU_BIN=/usr/local/sbin/criu

# staticcheck for scripts/test.sh: v0.8.2 (2026.2.2), the newest release, built with the host's Go.
STATICCHECK_VERSION=v0.8.2
STATICCHECK_RELEASE=2026.2.2
STATICCHECK_BIN=/usr/local/bin/staticcheck
# runc passes no network-lock method, so this build default is what containers get: nftables (the project
# uses nftables; the iptables package is not needed).
CRIU_MAKE_FLAGS=(NETWORK_LOCK_DEFAULT=NETWORK_LOCK_NFTABLES)

# Modules the VM driver's initramfs loads; setup fails if the guest kernel lacks one.
GUEST_MODULES=(virtio_ring virtio virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio virtio_blk
	virtio_net net_failover failover virtio_console virtio-rng virtio_balloon vsock vmw_vsock_virtio_transport_common
	vmw_vsock_virtio_transport crc16 mbcache jbd2 crc32c_generic ext4 button evdev)

RUNTIME_PACKAGES=(qemu-system-x86 qemu-utils runc busybox-static iproute2 nftables dnsmasq-base btrfs-progs
	e2fsprogs debootstrap ovmf swtpm swtpm-tools zstd xz-utils lxcfs uidmap socat kmod file binutils curl
	ca-certificates procps rsync mtools syslinux syslinux-common grub-efi-amd64-bin)
CRIU_BUILD_PACKAGES=(build-essential pkg-config python3 python3-protobuf protobuf-compiler protobuf-c-compiler
	libprotobuf-dev libprotobuf-c-dev libnl-3-dev libnet1-dev libcap-dev libaio-dev libgnutls28-dev libbsd-dev
	libnftables-dev uuid-dev)

T0=$SECONDS
B="" R="" N=""
if [ -t 1 ]; then B=$'\033[1m' R=$'\033[1;31m' N=$'\033[0m'; fi
log() { printf '%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
die() {
	printf '%ssetup.sh: ERROR: %s%s\n' "$R" "$*" "$N" >&2
	exit 1
}
trap 'printf "%ssetup.sh: FAILED: line %s: %s (exit %s)%s\n" "$R" "$LINENO" "$BASH_COMMAND" "$?" "$N" >&2' ERR
forced() { [[ $FORCE == *",$1,"* || $FORCE == *",all,"* ]]; }

for a in "$@"; do
	case $a in
	--check) CHECK=1 ;;
	-h | --help)
		sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $a (try --help)" ;;
	esac
done

# ---------------------------------------------------------------------------------------------------
preflight() {
	[ "$(id -u)" = 0 ] || die "must run as root"
	[ -r /etc/os-release ] || die "no /etc/os-release: not a Debian system?"
	local codename
	# shellcheck disable=SC1091
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ "$codename" = bookworm ] || die "this installer targets Debian 12 (bookworm); this is '${codename:-unknown}'"
	[ "$(dpkg --print-architecture)" = amd64 ] || die "this installer targets amd64"
	mkdir -p "$BUILD_DIR" "$STATE_DIR"
}

APT_UPDATED=0
apt_update_once() {
	[ $APT_UPDATED = 1 ] && return 0
	log "apt-get update"
	apt-get update -q >"$BUILD_DIR/apt-update.log" 2>&1 || {
		tail -20 "$BUILD_DIR/apt-update.log" >&2
		die "apt-get update failed (log: $BUILD_DIR/apt-update.log)"
	}
	APT_UPDATED=1
}

# The Debian archive URI that apt already uses for bookworm (deb822 .sources or one-line sources.list).
debian_mirror() {
	if [ -n "${TANDEM_DEBIAN_MIRROR:-}" ]; then
		echo "${TANDEM_DEBIAN_MIRROR%/}"
		return
	fi
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		# a stanza with "Suites: bookworm ..." and a URI not ending in -security
		uri=$(awk 'BEGIN{RS=""; FS="\n"} {u=""; s=0; for(i=1;i<=NF;i++){ if($i ~ /^URIs:/){split($i,a,/[ \t]+/); u=a[2]} if($i ~ /^Suites:.*[ \t]bookworm([ \t]|$)/) s=1 } if(s && u!="" && u !~ /security/){print u; exit}}' "$f")
		[ -n "$uri" ] && { echo "${uri%/}"; return; }
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		uri=$(awk '$1=="deb" { for(i=2;i<NF;i++) if($i ~ /:\/\//){ if($(i+1)=="bookworm" && $i !~ /security/){print $i; exit} break } }' "$f")
		[ -n "$uri" ] && { echo "${uri%/}"; return; }
	done
	die "cannot find the Debian mirror for bookworm in /etc/apt/sources.list*; set TANDEM_DEBIAN_MIRROR"
}

# ---------------------------------------------------------------------------------------------------
install_packages() {
	log "Debian packages"
	local want=("${RUNTIME_PACKAGES[@]}" "${CRIU_BUILD_PACKAGES[@]}") missing=() p st
	for p in "${want[@]}"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[ "$st" = installed ] || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		info "all ${#want[@]} packages already installed"
	else
		info "missing: ${missing[*]}"
		apt_update_once
		log "apt-get install (${#missing[@]} packages)"
		apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
			-o Dpkg::Options::=--force-confold "${missing[@]}" >"$BUILD_DIR/apt-install.log" 2>&1 || {
			tail -30 "$BUILD_DIR/apt-install.log" >&2
			die "apt-get install failed (log: $BUILD_DIR/apt-install.log)"
		}
		info "installed (log: $BUILD_DIR/apt-install.log)"
	fi
	# Tools the project calls must now be there.
	local t
	for t in qemu-system-x86_64 qemu-img runc busybox ip nft dnsmasq mkfs.btrfs mkfs.ext4 debootstrap swtpm \
		zstd xz lxcfs newuidmap socat rsync depmod readelf file mformat syslinux grub-mkstandalone gcc; do
		command -v "$t" >/dev/null || die "'$t' is still missing after installing packages"
	done
	[ -e /usr/share/OVMF/OVMF_CODE.fd ] || [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || die "OVMF firmware missing"
	info "qemu $(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p'), runc $(runc --version | sed -n '1s/runc version //p'), busybox $(busybox | sed -n '1s/BusyBox \(v[^ ]*\).*/\1/p'), nft $(nft --version | awk '{print $2}')"
}

# ---------------------------------------------------------------------------------------------------
criu_patches() { # applied in this (C locale glob) order
	local f
	for f in "$HERE"/patches/criu-"${CRIU_VERSION}"-*.patch; do
		if [ -f "$f" ]; then echo "$f"; fi
	done
}

# Fingerprint of what the installed criu must be: version, tarball, patches, build flags.
criu_fingerprint() {
	{
		echo "criu $CRIU_VERSION $CRIU_ORIG_SHA256 ${CRIU_MAKE_FLAGS[*]}"
		local p
		for p in $(criu_patches); do sha256sum "$p" | awk -v n="$(basename "$p")" '{print $1, n}'; done
	} | sha256sum | awk '{print $1}'
}

install_criu() {
	log "CRIU $CRIU_VERSION ($CRIU_BIN)"
	local stamp=$STATE_DIR/criu.stamp fp have=""
	fp=$(criu_fingerprint)
	if [ -x "$CRIU_BIN" ]; then
		have=$("$CRIU_BIN" --version 2>/dev/null | awk '/^Version:/{print $2}') || true
	fi
	if ! forced criu && [ "$have" = "$CRIU_VERSION" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$fp" ]; then
		info "already installed: criu $have with the current patches ($(criu_patches | wc -l) applied)"
		return 0
	fi
	if forced criu; then
		info "TANDEM_FORCE=criu: rebuilding"
	elif [ -n "$have" ]; then
		info "found criu '${have}' built from another version, patch set or flags: rebuilding"
	fi

	local src=$BUILD_DIR/criu tar mirror
	mkdir -p "$src"
	tar=$src/$CRIU_ORIG
	if [ -f "$tar" ] && echo "$CRIU_ORIG_SHA256  $tar" | sha256sum -c --quiet 2>/dev/null; then
		info "source tarball cached: $tar"
	else
		rm -f "$tar"
		mirror=$(debian_mirror)
		info "downloading $CRIU_ORIG from $mirror (Debian source package criu $CRIU_VERSION-1)"
		/usr/lib/apt/apt-helper download-file "$mirror/pool/main/c/criu/$CRIU_ORIG" "$tar" \
			"SHA256:$CRIU_ORIG_SHA256" >"$src/download.log" 2>&1 || {
			cat "$src/download.log" >&2
			die "could not download $CRIU_ORIG from $mirror (or its SHA-256 did not match)"
		}
	fi

	local tree=$src/criu-$CRIU_VERSION p
	rm -rf "$tree"
	tar -xf "$tar" -C "$src"
	[ -f "$tree/Makefile" ] || die "unexpected tarball layout: no $tree/Makefile"
	for p in $(criu_patches); do
		info "applying $(basename "$p")"
		patch -d "$tree" -p1 --forward --quiet <"$p" || die "patch $(basename "$p") does not apply to criu $CRIU_VERSION"
	done

	log "building criu (make -j$(nproc) criu ${CRIU_MAKE_FLAGS[*]}; log: $src/build.log)"
	local t=$SECONDS
	if ! make -C "$tree" -j"$(nproc)" "${CRIU_MAKE_FLAGS[@]}" criu >"$src/build.log" 2>&1; then
		tail -30 "$src/build.log" >&2
		die "criu build failed (log: $src/build.log)"
	fi
	grep -q 'Building without nftables support' "$src/build.log" && die "criu was built without nftables support (libnftables-dev?)"
	info "built in $((SECONDS - t)) s"

	local v
	v=$("$tree/criu/criu" --version | awk '/^Version:/{print $2}')
	[ "$v" = "$CRIU_VERSION" ] || die "built criu reports version '$v', expected $CRIU_VERSION"
	install -D -m 0755 "$tree/criu/criu" "$CRIU_BIN.new"
	mv -f "$CRIU_BIN.new" "$CRIU_BIN"
	rm -f /run/criu.kdat # kerndat cache of a previous binary
	echo "$fp" >"$stamp"
	info "installed $CRIU_BIN ($("$CRIU_BIN" --version | head -1))"
	# The source tree is not needed any more; keep the tarball for rebuilds.
	rm -rf "$tree"
}

# ---------------------------------------------------------------------------------------------------
# Resolve the guest kernel package (linux-image-amd64's dependency) and its version from apt's lists.
guest_kernel_pkg() {
	local pkg=${TANDEM_GUEST_KERNEL_PKG:-}
	if [ -z "$pkg" ]; then
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !n++ {print $2}' || true)
	fi
	echo "$pkg"
}

apt_candidate() {
	[ -n "$1" ] || return 0
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}' || true
}

guest_download() { # work-dir package version
	rm -f "$1"/*.deb
	(cd "$1" && apt-get download -q "$2=$3" >download.log 2>&1) && ls "$1"/*.deb >/dev/null 2>&1
}

install_guest_kernel() {
	log "guest kernel ($GUEST_DIR)"
	local pkg ver
	pkg=$(guest_kernel_pkg)
	ver=$(apt_candidate "$pkg")
	if [ -z "$ver" ]; then # no apt lists yet, or they do not know the package
		apt_update_once
		pkg=$(guest_kernel_pkg)
		ver=$(apt_candidate "$pkg")
	fi
	[ -n "$pkg" ] || die "cannot resolve linux-image-amd64's kernel package from apt"
	[ -n "$ver" ] || die "apt has no candidate version for $pkg"
	local kver=${pkg#linux-image-}

	if ! forced guest && [ "$(cat "$GUEST_DIR/kernel-package" 2>/dev/null)" = "$pkg $ver" ] &&
		[ "$(cat "$GUEST_DIR/kernel-version" 2>/dev/null)" = "$kver" ] &&
		[ -s "$GUEST_DIR/vmlinux" ] && [ -s "$GUEST_DIR/vmlinuz" ] &&
		[ -s "$GUEST_DIR/lib/modules/$kver/modules.dep" ]; then
		info "already installed: $pkg $ver"
		return 0
	fi

	local work=$BUILD_DIR/guest-kernel stage
	rm -rf "$work"
	mkdir -p "$work"
	info "downloading $pkg=$ver (apt-get download; the package is not installed)"
	if ! guest_download "$work" "$pkg" "$ver"; then
		[ $APT_UPDATED = 0 ] || die "apt-get download $pkg=$ver failed (log: $work/download.log)"
		info "download failed; the apt lists may be stale: updating them and retrying"
		apt_update_once
		pkg=$(guest_kernel_pkg)
		ver=$(apt_candidate "$pkg")
		kver=${pkg#linux-image-}
		guest_download "$work" "$pkg" "$ver" || die "apt-get download $pkg=$ver failed (log: $work/download.log)"
	fi
	local deb
	deb=$(ls "$work"/*.deb)
	stage=$work/stage
	mkdir -p "$stage/unpacked"
	dpkg -x "$deb" "$stage/unpacked"
	local u=$stage/unpacked
	[ -f "$u/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
	[ -d "$u/lib/modules/$kver" ] || die "$deb has no lib/modules/$kver"

	local out=$stage/guest
	mkdir -p "$out/lib/modules"
	cp "$u/boot/vmlinuz-$kver" "$out/vmlinuz"
	cp "$u/boot/config-$kver" "$out/config"
	mv "$u/lib/modules/$kver" "$out/lib/modules/$kver"

	# vmlinux: the XZ stream inside the bzImage, from its magic; --single-stream ignores what follows it.
	local off
	off=$(grep -m1 -obUaP '\xfd7zXZ\x00' "$out/vmlinuz" | cut -d: -f1 || true)
	[ -n "$off" ] || die "no XZ stream found in vmlinuz (not an XZ-compressed bzImage?)"
	# (xz stops reading at the end of the stream, so tail may die of SIGPIPE: only xz's status counts)
	{ tail -c +$((off + 1)) "$out/vmlinuz" || true; } | xz -dc --single-stream >"$out/vmlinux" ||
		die "could not decompress the XZ stream at offset $off of vmlinuz"
	local desc notes
	desc=$(file -b "$out/vmlinux")
	[[ $desc == "ELF 64-bit LSB executable, x86-64"* ]] || die "extracted vmlinux is not an x86-64 ELF: $desc"
	# XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) is the PVH entry point that lets QEMU boot the ELF directly.
	notes=$(readelf -n "$out/vmlinux")
	grep -Eq 'Xen.*(0x00000012|PHYS32_ENTRY)' <<<"$notes" || die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
	grep -q '^CONFIG_PVH=y' "$out/config" || die "guest kernel config lacks CONFIG_PVH=y"

	# modules.dep & co. are made by depmod at install time; make them here. (The package's System.map is a
	# placeholder, so no -F.)
	depmod -b "$out" "$kver" || die "depmod failed for $kver"
	local m missing=()
	for m in "${GUEST_MODULES[@]}"; do
		grep -q "/${m}\.ko[^:]*:" "$out/lib/modules/$kver/modules.dep" || missing+=("$m")
	done
	[ ${#missing[@]} -eq 0 ] || die "guest kernel $kver lacks modules: ${missing[*]}"

	echo "$kver" >"$out/kernel-version"
	echo "$pkg $ver" >"$out/kernel-package"

	# Swap the new tree in (a crash here leaves either the old or the new tree, never half of one).
	mkdir -p "$(dirname "$GUEST_DIR")"
	rm -rf "$GUEST_DIR.old"
	[ -e "$GUEST_DIR" ] && mv "$GUEST_DIR" "$GUEST_DIR.old"
	mv "$out" "$GUEST_DIR"
	rm -rf "$GUEST_DIR.old" "$work"
	info "installed $pkg $ver: vmlinuz, vmlinux ($(($(stat -c %s "$GUEST_DIR/vmlinux") >> 20)) MiB ELF, PVH), lib/modules/$kver ($(find "$GUEST_DIR/lib/modules/$kver" -name '*.ko' | wc -l) modules)"
}

# ---------------------------------------------------------------------------------------------------
# /dev/net/tun as Debian's udev rules leave it (0666): without udev it stays 0600, and a QEMU run as an
# unprivileged user (tandemd --vm-user) could not open the taps made for it. Opening the device gives
# nothing by itself: only taps owned by the caller can be attached.
tun_device() {
	if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
		log "/dev/net/tun: mode 0666, as udev sets it"
		chmod 0666 /dev/net/tun
	fi
}

# ---------------------------------------------------------------------------------------------------
# The user tandemd runs QEMU as by default (--vm-user overrides): a system user with no home, no login
# and no password, in the kvm group when there is one (for /dev/kvm).
QEMU_USER=tandem-qemu
qemu_user() {
	if ! getent passwd $QEMU_USER >/dev/null; then
		log "system user $QEMU_USER (QEMU runs as it)"
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin --comment "tandem QEMU" $QEMU_USER || die "cannot create user $QEMU_USER"
	fi
	if getent group kvm >/dev/null && ! id -nG $QEMU_USER | tr ' ' '\n' | grep -qx kvm; then
		usermod -a -G kvm $QEMU_USER || die "cannot add $QEMU_USER to group kvm"
	fi
}

# ---------------------------------------------------------------------------------------------------
# Lazy (post-copy) container moves: CRIU's page server on the source asks for a 4 MiB pipe, and tandemd
# runs without CAP_SYS_RESOURCE on these hosts, so fs.pipe-max-size must allow it (CRIU 4.1.1 otherwise
# fails every page transfer; tandem then moves without lazy pages and says why). Raised, never lowered,
# and kept across reboots. vm.unprivileged_userfaultfd (lazy restore of containers with a user
# namespace) is left to the operator: it widens what unprivileged users may do with userfaultfd.
PIPE_MAX_SIZE=4194304
lazy_sysctls() {
	local cur conf=/etc/sysctl.d/60-tandem.conf
	cur=$(cat /proc/sys/fs/pipe-max-size)
	[ "$cur" -ge $PIPE_MAX_SIZE ] && return 0
	log "fs.pipe-max-size: $cur -> $PIPE_MAX_SIZE (CRIU's lazy page server), also in $conf"
	echo $PIPE_MAX_SIZE >/proc/sys/fs/pipe-max-size || die "cannot raise fs.pipe-max-size"
	mkdir -p "$(dirname "$conf")"
	printf '%s\n' "# tandem (scripts/setup.sh): CRIU's lazy page server needs a 4 MiB pipe" \
		"fs.pipe-max-size = $PIPE_MAX_SIZE" >"$conf"
}

# ---------------------------------------------------------------------------------------------------
# staticcheck, pinned, built by the Go toolchain the project builds with (from the module proxy).
install_staticcheck() {
	if [ -x $STATICCHECK_BIN ] && $STATICCHECK_BIN -version 2>/dev/null | grep -q "^staticcheck $STATICCHECK_RELEASE "; then
		return 0
	fi
	local gobin
	gobin=$(PATH="$PATH:/usr/local/go/bin" command -v go) || die "no Go toolchain (expected /usr/local/go/bin/go)"
	log "staticcheck $STATICCHECK_VERSION into $(dirname $STATICCHECK_BIN)"
	GOBIN=$(dirname $STATICCHECK_BIN) "$gobin" install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" \
		>"$BUILD_DIR/staticcheck-install.log" 2>&1 || {
		tail -20 "$BUILD_DIR/staticcheck-install.log" >&2
		die "go install staticcheck failed (log: $BUILD_DIR/staticcheck-install.log)"
	}
	$STATICCHECK_BIN -version | grep -q "^staticcheck $STATICCHECK_RELEASE " || die "staticcheck is not $STATICCHECK_RELEASE after installing it"
}

preflight
install_packages
install_criu
install_guest_kernel
tun_device
qemu_user
lazy_sysctls
install_staticcheck
if [ $CHECK = 1 ]; then
	log "CRIU check (scripts/check-criu.sh)"
	bash "$HERE/check-criu.sh"
	log "guest boot check (scripts/check-guest-boot.sh)"
	bash "$HERE/check-guest-boot.sh"
fi
log "setup done in $((SECONDS - T0)) s: criu $("$CRIU_BIN" --version | awk '/^Version:/{print $2}'), guest kernel $(cat "$GUEST_DIR/kernel-version")"
