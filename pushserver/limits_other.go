//go:build !unix

package main

// fileLimit returns a conservative descriptor limit where RLIMIT_NOFILE
// does not exist.
func fileLimit() uint64 { return 8192 }
