package qemucmd

import (
	"strconv"
	"strings"
)

// fastBoot are kernel arguments that take a Linux guest to /init quickly under TCG: a quiet serial
// console, no TSC and timer checks that TCG makes slow, no PS/2 aux probing, one UART, no crypto
// self-tests, no audit, expedited RCU grace periods.
var fastBoot = []string{"console=ttyS0", "quiet", "tsc=reliable", "no_timer_check", "i8042.noaux", "i8042.nomux",
	"8250.nr_uarts=1", "cryptomgr.notests", "audit=0", "rcupdate.rcu_expedited=1"}

// KernelArgs returns the kernel command line for a direct boot on machine. microvm has no PCI and no
// timer to calibrate the TSC against: without tsc_early_khz (the host TSC rate) its boots hang in
// about one in ten tries. tscKHz 0 leaves it out. extra comes last so it can override.
func KernelArgs(machine string, tscKHz int, extra ...string) string {
	args := append([]string(nil), fastBoot...)
	if machine == MicroVM {
		args = append(args, "pci=off")
		if tscKHz > 0 {
			args = append(args, "tsc_early_khz="+strconv.Itoa(tscKHz))
		}
	}
	args = append(args, extra...)
	return strings.Join(args, " ")
}
