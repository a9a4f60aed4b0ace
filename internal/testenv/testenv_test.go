package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var namespaceRE = regexp.MustCompile(`^gwt-[0-9]{10,}-[0-9a-f]{8}$`)

func TestNamespaceFormat(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	before := time.Now().Unix()
	for range 100 {
		ns := Namespace(t)
		if !namespaceRE.MatchString(ns) {
			t.Fatalf("Namespace() = %q, want it to match %s", ns, namespaceRE)
		}
		if seen[ns] {
			t.Fatalf("Namespace() = %q twice", ns)
		}
		seen[ns] = true
		created, ok := namespaceTime(ns+":k", ':')
		if !ok || created.Unix() < before || created.After(time.Now()) {
			t.Fatalf("namespaceTime(%q) = %v, %v, want a time since %d", ns+":k", created, ok, before)
		}
	}
}

func TestNamespaceTime(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		sep  byte
		want int64 // 0: not a test namespace
	}{
		{"gwt-1700000000-0123abcd:cmd:1", ':', 1700000000},
		{"gwt-1700000000-0123abcd.commands", '.', 1700000000},
		{"gwt-1700000000-0123abcd.commands", ':', 0},
		{"gwt-1700000000-0123abcd:x", '.', 0},
		{"gwt-1700000000-0123abc:x", ':', 0},
		{"gwt-1700000000-0123ABCD:x", ':', 0},
		{"gwt-1700000000-0123abcdx:x", ':', 0},
		{"gwt-1700000000-0123abcd", ':', 0},
		{"gwt--0123abcd:x", ':', 0},
		{"gwt-17x0000000-0123abcd:x", ':', 0},
		{"gw:commands", ':', 0},
		{"gw.commands", '.', 0},
		{"amq.direct", '.', 0},
		{"", ':', 0},
	}
	for _, tt := range tests {
		got, ok := namespaceTime(tt.name, tt.sep)
		if tt.want == 0 {
			if ok {
				t.Errorf("namespaceTime(%q, %q) = %v, true, want false", tt.name, tt.sep, got)
			}
			continue
		}
		if !ok || got.Unix() != tt.want {
			t.Errorf("namespaceTime(%q, %q) = %v, %v, want %d, true", tt.name, tt.sep, got.Unix(), ok, tt.want)
		}
	}
}

func TestURLDefaults(t *testing.T) {
	t.Setenv("GW_AMQP_URL", "")
	t.Setenv("GW_REDIS_URL", "")
	t.Setenv("GW_AMQP_MGMT_URL", "")
	if got := AMQPURL(); got != "amqp://guest:guest@127.0.0.1:5672/" {
		t.Errorf("AMQPURL() = %q", got)
	}
	if got := RedisURL(); got != "redis://127.0.0.1:6379/0" {
		t.Errorf("RedisURL() = %q", got)
	}
	if got := AMQPMgmtURL(); got != "http://guest:guest@127.0.0.1:15672" {
		t.Errorf("AMQPMgmtURL() = %q", got)
	}
	t.Setenv("GW_REDIS_URL", "redis://127.0.0.1:6380/3")
	if got := RedisURL(); got != "redis://127.0.0.1:6380/3" {
		t.Errorf("RedisURL() with GW_REDIS_URL set = %q", got)
	}
}

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("cannot listen on FreeAddr() = %q: %v", addr, err)
	}
	l.Close()
	if p := FreePort(t); p <= 0 || p > 65535 {
		t.Errorf("FreePort() = %d", p)
	}
}

// recordingTB records what Logger writes through Log, and its cleanups.
type recordingTB struct {
	testing.TB
	mu       sync.Mutex
	lines    []string
	cleanups []func()
}

func (r *recordingTB) Log(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprint(args...))
}

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

func TestLogger(t *testing.T) {
	t.Setenv("GW_TEST_LOG", "")
	r := &recordingTB{TB: t}
	Logger(r).Error("not shown")
	if len(r.lines) != 0 || len(r.cleanups) != 0 {
		t.Errorf("without GW_TEST_LOG, Logger wrote %q and registered %d cleanups", r.lines, len(r.cleanups))
	}

	t.Setenv("GW_TEST_LOG", "1")
	r = &recordingTB{TB: t}
	log := Logger(r)
	log.Debug("shown", "device_id", "dev-1")
	if len(r.lines) != 1 || !strings.Contains(r.lines[0], "msg=shown device_id=dev-1") || strings.HasSuffix(r.lines[0], "\n") {
		t.Errorf("with GW_TEST_LOG=1, Logger wrote %q, want one line with the record", r.lines)
	}
	for _, f := range r.cleanups {
		f()
	}
	log.Info("after the test")
	if len(r.lines) != 1 {
		t.Errorf("Logger wrote %q after the test ended", r.lines[1:])
	}
}

func TestCleanupRemovesState(t *testing.T) {
	t.Parallel()
	rdb := Redis(t)
	conn := AMQP(t)
	ctx := context.Background()

	other := Namespace(t) // must survive the subtest's cleanup
	if err := rdb.Set(ctx, other+":keep", "1", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	declareQueue(t, conn, other+".keep")

	var ns string
	t.Run("work", func(t *testing.T) {
		ns = Namespace(t)
		for i := range 3 {
			if err := rdb.Set(ctx, fmt.Sprintf("%s:cmd:%d", ns, i), "1", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := rdb.Set(ctx, "{"+ns+":7}:cmd", "1", time.Hour).Err(); err != nil { // a partition key
			t.Fatal(err)
		}
		declareQueue(t, conn, ns+".commands")    // a name of the standard topology
		declareQueue(t, conn, ns+".custom.work") // a name only a listing finds
		declareExchange(t, conn, ns+".custom")
		bind(t, conn, ns+".custom.work", ns+".custom")
	})

	if n := rdb.Exists(ctx, ns+":cmd:0", ns+":cmd:1", ns+":cmd:2", "{"+ns+":7}:cmd").Val(); n != 0 {
		t.Errorf("%d Redis keys of %s left after cleanup", n, ns)
	}
	for _, q := range []string{ns + ".commands", ns + ".custom.work"} {
		if queueExists(t, conn, q) {
			t.Errorf("queue %s left after cleanup", q)
		}
	}
	if exchangeExists(t, conn, ns+".custom") {
		t.Errorf("exchange %s left after cleanup", ns+".custom")
	}
	if rdb.Exists(ctx, other+":keep").Val() != 1 {
		t.Errorf("cleanup of %s deleted key %s:keep", ns, other)
	}
	if !queueExists(t, conn, other+".keep") {
		t.Errorf("cleanup of %s deleted queue %s.keep", ns, other)
	}
}

func TestSweepStale(t *testing.T) {
	t.Parallel()
	rdb := Redis(t)
	conn := AMQP(t)
	ctx := context.Background()

	fresh := Namespace(t)
	old := fmt.Sprintf("gwt-%d-%s", time.Now().Add(-2*time.Hour).Unix(), fresh[len(fresh)-8:])
	t.Cleanup(func() { cleanNamespace(context.Background(), old) }) // in case the sweep fails
	for _, ns := range []string{old, fresh} {
		for _, key := range []string{ns + ":cmd:1", "{" + ns + ":ring:push}:nodes"} {
			if err := rdb.Set(ctx, key, "1", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
		declareQueue(t, conn, ns+".results")
		declareExchange(t, conn, ns+".dead")
	}

	if err := sweepStale(ctx, time.Now().Add(-staleAfter)); err != nil {
		t.Fatalf("sweepStale: %v", err)
	}

	if n := rdb.Exists(ctx, old+":cmd:1", "{"+old+":ring:push}:nodes").Val(); n != 0 {
		t.Errorf("sweep left %d keys of %s", n, old)
	}
	if queueExists(t, conn, old+".results") {
		t.Errorf("sweep left queue %s.results", old)
	}
	if exchangeExists(t, conn, old+".dead") {
		t.Errorf("sweep left exchange %s.dead", old)
	}
	if n := rdb.Exists(ctx, fresh+":cmd:1", "{"+fresh+":ring:push}:nodes").Val(); n != 2 {
		t.Errorf("sweep deleted %d keys of the fresh namespace %s", 2-n, fresh)
	}
	if !queueExists(t, conn, fresh+".results") {
		t.Errorf("sweep deleted queue %s.results of a fresh namespace", fresh)
	}
	if !exchangeExists(t, conn, fresh+".dead") {
		t.Errorf("sweep deleted exchange %s.dead of a fresh namespace", fresh)
	}
}

func TestCleanupWithoutManagementAPI(t *testing.T) {
	conn := AMQP(t)
	Namespace(t) // the first call sweeps, with the real management API
	var ns string
	t.Run("work", func(t *testing.T) {
		// Nothing listens on a port that was free a moment ago.
		t.Setenv("GW_AMQP_MGMT_URL", "http://guest:guest@"+FreeAddr(t))
		ns = Namespace(t)
		declareQueue(t, conn, ns+".commands.dead")
		declareExchange(t, conn, ns+".results")
	})
	if queueExists(t, conn, ns+".commands.dead") {
		t.Errorf("queue %s.commands.dead left after cleanup", ns)
	}
	if exchangeExists(t, conn, ns+".results") {
		t.Errorf("exchange %s.results left after cleanup", ns)
	}
}

func declareQueue(t *testing.T, conn *amqp.Connection, name string) {
	t.Helper()
	withChannel(t, conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
		return err
	})
}

func declareExchange(t *testing.T, conn *amqp.Connection, name string) {
	t.Helper()
	withChannel(t, conn, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(name, "direct", true, false, false, false, nil)
	})
}

func bind(t *testing.T, conn *amqp.Connection, queue, exchange string) {
	t.Helper()
	withChannel(t, conn, func(ch *amqp.Channel) error {
		return ch.QueueBind(queue, "k", exchange, false, nil)
	})
}

func withChannel(t *testing.T, conn *amqp.Connection, f func(*amqp.Channel) error) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("cannot open channel: %v", err)
	}
	defer ch.Close()
	if err := f(ch); err != nil {
		t.Fatal(err)
	}
}

// queueExists and exchangeExists declare passively: a missing name closes
// the channel with 404, so each check uses a channel of its own.
func queueExists(t *testing.T, conn *amqp.Connection, name string) bool {
	t.Helper()
	return exists(t, conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err
	})
}

func exchangeExists(t *testing.T, conn *amqp.Connection, name string) bool {
	t.Helper()
	return exists(t, conn, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclarePassive(name, "direct", true, false, false, false, nil)
	})
}

func exists(t *testing.T, conn *amqp.Connection, declare func(*amqp.Channel) error) bool {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("cannot open channel: %v", err)
	}
	defer ch.Close()
	err = declare(ch)
	if err == nil {
		return true
	}
	var e *amqp.Error
	if errors.As(err, &e) && e.Code == amqp.NotFound {
		return false
	}
	t.Fatalf("passive declare: %v", err)
	return false
}
