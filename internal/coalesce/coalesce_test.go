package coalesce

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowWriter records what it is given, one call at a time, after a delay;
// it fails with fail if set, and holds each call until gate (if not nil)
// gives way, after telling entered.
type slowWriter struct {
	delay   time.Duration
	gate    chan struct{}
	entered chan struct{}

	mu     sync.Mutex
	fail   error
	out    bytes.Buffer
	writes int
}

func (s *slowWriter) Write(p []byte) (int, error) {
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.gate != nil {
		<-s.gate
	}
	time.Sleep(s.delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return 0, s.fail
	}
	s.writes++
	return s.out.Write(p)
}

func (s *slowWriter) snapshot() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String(), s.writes
}

var modes = []struct {
	name string
	opts Options
}{
	{"sticky", Options{}},
	{"never fail", Options{NeverFail: true}},
}

// Concurrent writes all arrive, each writer's in order, in fewer writes
// than calls; Close returns once they are written.
func TestOrderAndCoalescing(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			under := &slowWriter{delay: 50 * time.Microsecond}
			w := New(under, m.opts)
			const writers, each = 8, 500
			var wg sync.WaitGroup
			for g := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						if _, err := fmt.Fprintf(w, "%d:%d\n", g, i); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			out, writes := under.snapshot()
			next := make([]int, writers)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			for _, line := range lines {
				var g, i int
				if _, err := fmt.Sscanf(line, "%d:%d", &g, &i); err != nil || i != next[g] {
					t.Fatalf("line %q: want writer %d's %d", line, g, next[g])
				}
				next[g]++
			}
			if len(lines) != writers*each {
				t.Fatalf("%d lines written, want %d", len(lines), writers*each)
			}
			if writes >= writers*each {
				t.Fatalf("%d writes for %d calls: nothing coalesced", writes, writers*each)
			}
			t.Logf("%d writes for %d calls", writes, writers*each)
		})
	}
}

// Write blocks while Max bytes wait, until the goroutine takes them.
func TestBlocksAtMax(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			under := &slowWriter{gate: make(chan struct{}), entered: make(chan struct{}, 10)}
			opts := m.opts
			opts.Max = 4
			w := New(under, opts)
			w.Write([]byte("1234")) // taken by the goroutine, held in the gate
			<-under.entered
			w.Write([]byte("5678")) // waits: Max bytes
			returned := make(chan struct{})
			go func() {
				w.Write([]byte("9"))
				close(returned)
			}()
			select {
			case <-returned:
				t.Fatal("Write did not block with Max bytes waiting")
			case <-time.After(50 * time.Millisecond):
			}
			under.gate <- struct{}{} // "1234" written, "5678" taken
			<-returned
			close(under.gate)
			w.Close()
			if out, _ := under.snapshot(); out != "123456789" {
				t.Fatalf("written %q", out)
			}
		})
	}
}

// The first write error stops the goroutine and is reported to OnError;
// then Write returns it (sticky) or drops what it is given (NeverFail).
func TestWriteError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		opts    Options
		wantN   int
		wantErr error
	}{
		{"sticky", Options{}, 0, boom},
		{"never fail", Options{NeverFail: true}, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			under := &slowWriter{fail: boom}
			reported := make(chan error, 1)
			tc.opts.OnError = func(err error) { reported <- err }
			w := New(under, tc.opts)
			if _, err := w.Write([]byte("x")); err != nil {
				t.Fatalf("first Write = %v, want nil (queued)", err)
			}
			if err := <-reported; err != boom {
				t.Fatalf("OnError got %v, want %v", err, boom)
			}
			under.mu.Lock()
			under.fail = nil
			under.mu.Unlock()
			for range 2 {
				if n, err := w.Write([]byte("y")); n != tc.wantN || err != tc.wantErr {
					t.Fatalf("Write after the error = %d, %v; want %d, %v", n, err, tc.wantN, tc.wantErr)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out, _ := under.snapshot(); out != "" {
				t.Fatalf("written after the error: %q", out)
			}
		})
	}
}

// Close writes what waits before it returns; a Write after Close returns
// ErrClosed, or with NeverFail goes straight to the underlying writer.
func TestClose(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr error
		wantOut string
	}{
		{"sticky", Options{}, ErrClosed, "a;b;c;"},
		{"never fail", Options{NeverFail: true}, nil, "a;b;c;late"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			under := &slowWriter{delay: 5 * time.Millisecond}
			w := New(under, tc.opts)
			for _, s := range []string{"a;", "b;", "c;"} {
				w.Write([]byte(s))
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out, _ := under.snapshot(); out != "a;b;c;" {
				t.Fatalf("written by Close: %q", out)
			}
			if _, err := w.Write([]byte("late")); err != tc.wantErr {
				t.Fatalf("Write after Close = %v, want %v", err, tc.wantErr)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out, _ := under.snapshot(); out != tc.wantOut {
				t.Fatalf("written: %q, want %q", out, tc.wantOut)
			}
		})
	}
}
