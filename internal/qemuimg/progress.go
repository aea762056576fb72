// Package qemuimg runs qemu-img commands that report progress (-p).
package qemuimg

import (
	"bufio"
	"bytes"
	"os/exec"
	"strconv"
	"strings"
)

// Run runs cmd, a qemu-img command with -p, calling report with each new whole percentage it
// prints. It returns what qemu-img wrote to stderr, for the caller's error.
func Run(cmd *exec.Cmd, report func(percent int)) (stderr string, err error) {
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(out)
	sc.Split(splitCR)
	last := -1
	for sc.Scan() {
		if p, ok := Percent(sc.Text()); ok && p != last {
			last = p
			report(p)
		}
	}
	err = cmd.Wait()
	return strings.TrimSpace(errOut.String()), err
}

// Percent reads a progress line of qemu-img -p: "    (12.34/100%)".
func Percent(line string) (int, bool) {
	num, ok := strings.CutPrefix(strings.TrimSpace(line), "(")
	if !ok {
		return 0, false
	}
	num, _, ok = strings.Cut(num, "/100%)")
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f > 100 {
		return 0, false
	}
	return int(f), true
}

// splitCR splits on \r or \n: qemu-img redraws its progress line with \r.
func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
