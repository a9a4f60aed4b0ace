package amqpx

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestErrorMessageAndIs(t *testing.T) {
	cause := errors.New("Exception (404) Reason: \"NOT_FOUND\"")
	tests := []struct {
		err  *Error
		want string
		is   error
	}{
		{&Error{Op: "publish", Reason: "not connected", Err: ErrNotConnected}, "amqpx: publish: not connected", ErrNotConnected},
		{&Error{Op: "publish", Reason: "returned", Err: ErrReturned}, "amqpx: publish: returned: publish returned unroutable", ErrReturned},
		{&Error{Op: "confirm", Reason: "channel closed", Err: fmt.Errorf("%w: %w", ErrChannelClosed, cause)}, "amqpx: confirm: channel closed: channel closed: " + cause.Error(), ErrChannelClosed},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		var err error = tt.err
		if !errors.Is(err, tt.is) {
			t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
		}
		var e *Error
		if !errors.As(fmt.Errorf("cannot accept: %w", err), &e) || e != tt.err {
			t.Errorf("errors.As through a wrap failed for %v", err)
		}
	}
}

func TestBackoff(t *testing.T) {
	minB, maxB := 100*time.Millisecond, 5*time.Second
	for n, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		for range 50 {
			got := backoff(minB, maxB, n)
			if got > want || got < want*8/10 {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, got, want*8/10, want)
			}
		}
	}
	if got := backoff(minB, maxB, 100); got > maxB || got < maxB*8/10 {
		t.Errorf("backoff(100) = %v, want about %v", got, maxB)
	}
}

func TestOptionsDefaults(t *testing.T) {
	var o Options
	o.ensureDefaults()
	if o.URL != DefaultURL || o.ConfirmTimeout != 5*time.Second || o.MinBackoff != 100*time.Millisecond ||
		o.MaxBackoff != 5*time.Second || o.Channels != 4 || o.Logger == nil {
		t.Errorf("defaults = %+v", o)
	}
	var co ConsumerOptions
	co.ensureDefaults()
	if co.Prefetch != 128 || co.Concurrency != 128 || co.ShutdownTimeout != 10*time.Second || co.MaxTransientHold != 10*time.Minute {
		t.Errorf("consumer defaults = %+v", co)
	}
}

func TestGate(t *testing.T) {
	var g gate
	if !g.isOpen() || !isClosed(g.wait()) {
		t.Fatal("new gate is not open")
	}
	g.hold()
	g.hold()
	w := g.wait()
	g.release()
	if isClosed(w) || g.isOpen() {
		t.Fatal("gate opened while still held once")
	}
	g.release()
	if !isClosed(w) || !g.isOpen() {
		t.Fatal("gate still closed after the last release")
	}
}
