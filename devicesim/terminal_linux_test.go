package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: its controlling side, and the terminal
// a program writes to.
func openPTY(t *testing.T) (ptm, tty *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("cannot open a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	tty, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("cannot open the terminal of the pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptm, tty
}

// TestIsTerminal: a terminal is one; /dev/null (a character device), a
// pipe, a file and a buffer are not.
func TestIsTerminal(t *testing.T) {
	_, tty := openPTY(t)
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	file, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, tc := range []struct {
		name string
		w    any
		want bool
	}{
		{"pseudo-terminal", tty, true},
		{"/dev/null", devNull, false},
		{"pipe", pw, false},
		{"file", file, false},
		{"buffer", &bytes.Buffer{}, false},
	} {
		var got bool
		switch w := tc.w.(type) {
		case *os.File:
			got = isTerminal(w)
		case *bytes.Buffer:
			got = isTerminal(w)
		}
		if got != tc.want {
			t.Errorf("isTerminal(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestProgressOnlyOnATerminal: on a terminal the progress line is
// rewritten in place (carriage return, erase line) and ended with a
// newline when stopped; on a pipe, startProgress starts nothing, so the
// pipe holds nothing but what the test writes itself after stopping it.
func TestProgressOnlyOnATerminal(t *testing.T) {
	ptm, tty := openPTY(t)
	stop := startProgress(context.Background(), tty, func() string { return "3s of 10s  sent 7" })
	var got []byte
	buf := make([]byte, 256)
	deadline := time.Now().Add(10 * time.Second)
	for !bytes.Contains(got, []byte("\r\033[K3s of 10s  sent 7")) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal: got %q within 10 s, want the progress line", got)
		}
		_ = ptm.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := ptm.Read(buf)
		got = append(got, buf[:n]...)
	}
	stop()
	for !bytes.Contains(got, []byte("\n")) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal: got %q, want the line ended after stop", got)
		}
		_ = ptm.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := ptm.Read(buf)
		got = append(got, buf[:n]...)
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	startProgress(context.Background(), pw, func() string { return "never" })()
	// The stop above returned: had a line been started, it would have been
	// ended with a newline before this marker.
	_, _ = pw.WriteString("end")
	pw.Close()
	out, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "end" {
		t.Errorf("pipe: got %q, want nothing before the test's own \"end\"", out)
	}
}

// TestLoadClock: the time part of load's progress line, while sending
// and while waiting for the results.
func TestLoadClock(t *testing.T) {
	for _, tc := range []struct {
		elapsed, duration, sending, drain time.Duration
		want                              string
	}{
		{0, 10 * time.Second, 0, 30 * time.Second, "0s of 10s"},
		{3400 * time.Millisecond, 10 * time.Second, 0, 30 * time.Second, "3s of 10s"},
		{12 * time.Second, 10 * time.Second, 10 * time.Second, 30 * time.Second, "12s, sent for 10s, waiting for results (at most 28s more)"},
		{45 * time.Second, 10 * time.Second, 10 * time.Second, 30 * time.Second, "45s, sent for 10s, waiting for results (at most 0s more)"},
	} {
		if got := loadClock(tc.elapsed, tc.duration, tc.sending, tc.drain); got != tc.want {
			t.Errorf("loadClock(%s, %s, %s, %s) = %q, want %q", tc.elapsed, tc.duration, tc.sending, tc.drain, got, tc.want)
		}
	}
}
