//go:build unix

package main

import "syscall"

// fileLimit returns the soft RLIMIT_NOFILE of the process (the Go runtime
// raises it to the hard limit at start).
func fileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur == 0 {
		return 1024
	}
	if r.Cur > 1<<40 { // RLIM_INFINITY
		return 1 << 40
	}
	return r.Cur
}
