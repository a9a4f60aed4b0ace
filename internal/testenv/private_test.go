package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestPrivateRedis: a private Redis keeps what it acknowledged across a
// SIGKILL and a restart (appendfsync always), answers nothing while
// frozen, and CrashCut cuts its append-only file back as a host crash
// would.
func TestPrivateRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	t.Parallel()
	r := StartRedis(t, "always")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	if err := c.Set(ctx, "kept", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	size, err := r.AOFSize()
	if err != nil || size == 0 {
		t.Fatalf("AOFSize = %d, %v; want a size > 0", size, err)
	}

	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after SIGKILL, want an error")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "kept").Result(); got != "1" || err != nil {
		t.Fatalf("after SIGKILL and restart: GET kept = %q, %v; want \"1\"", got, err)
	}

	if err := r.Freeze(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err = c.Ping(short).Err()
	cancelShort()
	if thawErr := r.Thaw(); thawErr != nil {
		t.Fatal(thawErr)
	}
	if err == nil {
		t.Fatal("PING answered while frozen, want a timeout")
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Thaw: %v", err)
	}

	// A write after the size was taken is lost by CrashCut.
	if err := c.Set(ctx, "lost", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.CrashCut(size); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, "kept", "lost").Result(); n != 1 || err != nil {
		t.Fatalf("after CrashCut: EXISTS kept lost = %d, %v; want 1 (kept only)", n, err)
	}
}
