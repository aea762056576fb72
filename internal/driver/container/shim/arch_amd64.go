package shim

import "golang.org/x/sys/unix"

// nativeAudit is the seccomp arch of this build's syscall ABI; sysinfo of compat ABIs (whose
// struct layout differs) is left to the kernel.
const nativeAudit = unix.AUDIT_ARCH_X86_64
