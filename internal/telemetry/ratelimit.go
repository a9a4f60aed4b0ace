package telemetry

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// RepeatEvery is how often one warning (or error) with the same message
// is written at most; the ones in between are counted, and the next one
// written says how many were left out ("suppressed"). A Redis outage
// would otherwise write one line per request.
const RepeatEvery = 10 * time.Second

// repeatLimiter is the state a limited handler and its With/WithGroup
// children share.
type repeatLimiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	seen map[string]*repeat
}

type repeat struct {
	last       time.Time
	suppressed int
}

// allow reports whether a record with msg may be written now, and how
// many were suppressed since the last one written.
func (l *repeatLimiter) allow(msg string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.seen[msg]
	if r == nil {
		if len(l.seen) >= 10000 { // bounded: forget everything rather than grow
			clear(l.seen)
		}
		l.seen[msg] = &repeat{last: now}
		return true, 0
	}
	if now.Sub(r.last) < l.every {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}

// limitedHandler writes warnings and errors of one message at most once
// per RepeatEvery; other records pass.
type limitedHandler struct {
	next slog.Handler
	l    *repeatLimiter
}

// LimitRepeats wraps h so that warnings and errors with the same message
// are written at most once per every (RepeatEvery when 0).
func LimitRepeats(h slog.Handler, every time.Duration) slog.Handler {
	if every <= 0 {
		every = RepeatEvery
	}
	return &limitedHandler{next: h, l: &repeatLimiter{every: every, now: time.Now, seen: make(map[string]*repeat)}}
}

func (h *limitedHandler) Enabled(ctx context.Context, lv slog.Level) bool {
	return h.next.Enabled(ctx, lv)
}

func (h *limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	ok, suppressed := h.l.allow(r.Message)
	if !ok {
		return nil
	}
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

func (h *limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &limitedHandler{next: h.next.WithAttrs(as), l: h.l}
}

func (h *limitedHandler) WithGroup(name string) slog.Handler {
	return &limitedHandler{next: h.next.WithGroup(name), l: h.l}
}
