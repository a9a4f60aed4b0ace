package mailbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// clock is a fake clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.UnixMilli(time.Now().UnixMilli())} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is one test's store on its own namespace.
type env struct {
	t     *testing.T
	ctx   context.Context
	rdb   *redis.Client
	s     *mailbox.Store
	clock *clock
	// keys are the keys of partition 0, the only one unless the test set
	// Options.Partitions (then use e.s.Keys().Part(e.s.PartitionOf(...))).
	keys tkeys
}

// tkeys are the keys of one partition plus the namespace's node and ring
// keys.
type tkeys struct {
	protocol.PartKeys
	ns protocol.Keys
}

func (k tkeys) NodeSessions(node string) string { return k.ns.NodeSessions(node) }
func (k tkeys) NodePending(node string) string  { return k.ns.NodePending(node) }
func (k tkeys) NodeWake(node string) string     { return k.ns.NodeWake(node) }
func (k tkeys) RingNode(node string) string     { return k.ns.Ring(protocol.RingPush).Node(node) }

// newEnv returns a store on a fresh namespace with one partition (so that
// e.keys names every key) unless opts.Partitions says otherwise.
func newEnv(t *testing.T, opts mailbox.Options) *env {
	t.Helper()
	rdb := testenv.Redis(t)
	ns := testenv.Namespace(t)
	c := newClock()
	opts.Now = c.Now
	opts.Logger = testenv.Logger(t)
	if opts.Partitions == 0 {
		opts.Partitions = 1
	}
	if opts.AnswerGrace == 0 {
		opts.AnswerGrace = time.Millisecond // timeouts fire at delivered + timeout
	}
	return &env{
		t: t, ctx: context.Background(), rdb: rdb, clock: c,
		s: mailbox.New(rdb, ns, opts), keys: tkeys{PartKeys: protocol.NewKeys(ns).Part(0), ns: protocol.NewKeys(ns)},
	}
}

func mustID(t *testing.T, raw string) protocol.ID {
	t.Helper()
	id, err := protocol.ParseID(json.RawMessage(raw))
	if err != nil {
		t.Fatalf("ParseID(%s): %v", raw, err)
	}
	return id
}

// cmd returns a command as the apiserver would reserve it.
func cmd(t *testing.T, client, device, rawID string, params string) *mailbox.Command {
	t.Helper()
	const timeout, expiresIn = 30 * time.Second, time.Hour
	c := &mailbox.Command{
		Client: client, Device: device, ID: mustID(t, rawID),
		Method: "reboot", Timeout: timeout, ExpiresIn: expiresIn,
	}
	if params != "" {
		c.Params = json.RawMessage(params)
	}
	c.Fingerprint = protocol.Fingerprint(device, c.Method, c.Params, timeout, expiresIn)
	return c
}

// queued reserves c and marks it queued, returning the stored record.
func (e *env) queued(c *mailbox.Command) *mailbox.Command {
	e.t.Helper()
	out, _, err := e.s.Reserve(e.ctx, c)
	if err != nil || out != mailbox.Reserved {
		e.t.Fatalf("Reserve(%s) = %v, %v, want reserved", c.ID, out, err)
	}
	if err := e.s.MarkQueued(e.ctx, c.Device, c.Client, c.ID.Key()); err != nil {
		e.t.Fatalf("MarkQueued(%s): %v", c.ID, err)
	}
	return e.get(c.Client, c.ID.Key())
}

func (e *env) get(client, key string) *mailbox.Command {
	e.t.Helper()
	c, err := e.s.Get(e.ctx, client, key)
	if err != nil {
		e.t.Fatalf("Get(%s, %s): %v", client, key, err)
	}
	return c
}

// envelope is the AMQP envelope the apiserver publishes for c.
func envelope(t *testing.T, c *mailbox.Command) *protocol.Envelope {
	t.Helper()
	req := map[string]any{"jsonrpc": "2.0", "method": c.Method, "id": c.ID.Raw()}
	if len(c.Params) > 0 {
		req["params"] = c.Params
	}
	payload, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.Envelope{
		V: protocol.EnvelopeVersion, Kind: protocol.KindCommand,
		Client: c.Client, Device: c.Device, MsgID: c.ID, Payload: payload,
		AcceptedAt: c.CreatedAt, DeliverBy: c.DeliverBy,
		AnswerWithinMS: c.Timeout.Milliseconds(), Attempt: 1,
	}
}

// sent reserves, queues and dispatches c.
func (e *env) sent(c *mailbox.Command) *mailbox.Command {
	e.t.Helper()
	rec := e.queued(c)
	out, err := e.s.Dispatch(e.ctx, envelope(e.t, rec), "node-d", "node-c")
	if err != nil || out != mailbox.OutcomeSent {
		e.t.Fatalf("Dispatch(%s) = %v, %v, want sent", c.ID, out, err)
	}
	return e.get(c.Client, c.ID.Key())
}

// results returns the JSON-RPC responses in identity's mailbox.
func (e *env) results(identity string) []protocol.Response {
	e.t.Helper()
	es, err := e.s.Fetch(e.ctx, identity, "", 1000)
	if err != nil {
		e.t.Fatalf("Fetch(%s): %v", identity, err)
	}
	var out []protocol.Response
	for _, en := range es {
		r, err := protocol.ParseResponse(en.Payload)
		if err != nil {
			e.t.Fatalf("entry %s of %s is not a response: %v: %s", en.ID, identity, err, en.Payload)
		}
		out = append(out, *r)
	}
	return out
}

func (e *env) pttl(key string) time.Duration {
	e.t.Helper()
	d, err := e.rdb.PTTL(e.ctx, key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// timerScore returns the due time of the timer of kind ("d" or "a") of
// command (client, key), whatever its device: members are
// "kind|device|client|key".
func (e *env) timerScore(kind, client, key string) (float64, bool) {
	e.t.Helper()
	zs, err := e.rdb.ZRangeWithScores(e.ctx, e.keys.Timers(), 0, -1).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, z := range zs {
		m, _ := z.Member.(string)
		parts := strings.Split(m, "|")
		if len(parts) == 4 && parts[0] == kind && parts[2] == client && parts[3] == key {
			return z.Score, true
		}
	}
	return 0, false
}

func TestReserve(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Lease: 10 * time.Second})
	first, rec0, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"a"`, `{"x":1}`))
	if err != nil || first != mailbox.Reserved {
		t.Fatalf("first Reserve = %v, %v, want reserved", first, err)
	}
	if rec0.LeaseToken == "" || rec0.Status != protocol.StatusPending {
		t.Fatalf("reserved record: token %q status %s, want a token and pending", rec0.LeaseToken, rec0.Status)
	}
	if want := rec0.CreatedAt.Add(time.Hour); !rec0.DeliverBy.Equal(want) {
		t.Errorf("DeliverBy = %v, want %v", rec0.DeliverBy, want)
	}
	if d := e.pttl(e.keys.Command("c1", "a")); d <= 0 {
		t.Errorf("pending record PTTL = %v, want an expiry", d)
	}

	tests := []struct {
		name    string
		advance time.Duration
		c       *mailbox.Command
		want    mailbox.ReserveOutcome
		wantErr error
	}{
		{"same body within the lease", 0, cmd(t, "c1", "d1", `"a"`, `{ "x" : 1 }`), mailbox.Exists, nil},
		{"different params", 0, cmd(t, "c1", "d1", `"a"`, `{"x":2}`), mailbox.Exists, mailbox.ErrConflict},
		{"different device", 0, cmd(t, "c1", "d2", `"a"`, `{"x":1}`), mailbox.Exists, mailbox.ErrConflict},
		{"same body after the lease", 11 * time.Second, cmd(t, "c1", "d1", `"a"`, `{"x":1}`), mailbox.Retake, nil},
		{"again within the new lease", time.Second, cmd(t, "c1", "d1", `"a"`, `{"x":1}`), mailbox.Exists, nil},
		{"other client, same id", 0, cmd(t, "c2", "d1", `"a"`, `{"x":1}`), mailbox.Reserved, nil},
		{"integer 7 after string 7", 0, cmd(t, "c1", "d1", `"7"`, ``), mailbox.Reserved, nil},
		{"integer 7 is string 7", 0, cmd(t, "c1", "d1", `7`, ``), mailbox.Exists, nil},
	}
	for _, tt := range tests {
		e.clock.Add(tt.advance)
		got, rec, err := e.s.Reserve(e.ctx, tt.c)
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("%s: Reserve = %v, %v; want %v, %v", tt.name, got, err, tt.want, tt.wantErr)
			continue
		}
		if rec == nil && tt.wantErr == nil {
			t.Errorf("%s: Reserve returned no record", tt.name)
			continue
		}
		if rec == nil {
			continue // a conflict with the claim: no record to return
		}
		switch got {
		case mailbox.Retake:
			if rec.LeaseToken == "" || rec.LeaseToken == rec0.LeaseToken {
				t.Errorf("%s: token %q, want a fresh one", tt.name, rec.LeaseToken)
			}
		case mailbox.Exists:
			if rec.LeaseToken != "" {
				t.Errorf("%s: Exists returned the lease token", tt.name)
			}
		}
	}
}

func TestReserveConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const n = 50
	var wg sync.WaitGroup
	outs := make([]mailbox.ReserveOutcome, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			outs[i], _, errs[i] = e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `42`, `[1,2]`))
		})
	}
	wg.Wait()
	count := map[mailbox.ReserveOutcome]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Reserve %d: %v", i, errs[i])
		}
		count[outs[i]]++
	}
	if count[mailbox.Reserved] != 1 || count[mailbox.Exists] != n-1 {
		t.Errorf("%d concurrent Reserve calls gave %v, want exactly 1 reserved and %d exists", n, count, n-1)
	}
}

func TestMarkQueuedAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Lease: 10 * time.Second})

	// Release: only with the lease token, only while pending.
	_, r, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"r"`, ``))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Release(e.ctx, "d1", "c1", "r", "wrong-token"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Get(e.ctx, "c1", "r"); err != nil {
		t.Errorf("after Release with a wrong token: Get = %v, want the record", err)
	}
	if err := e.s.Release(e.ctx, "d1", "c1", "r", r.LeaseToken); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Get(e.ctx, "c1", "r"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Errorf("after Release: Get = %v, want ErrNotFound", err)
	}
	if err := e.s.MarkQueued(e.ctx, "d1", "c1", "r"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Errorf("MarkQueued of a released command = %v, want ErrNotFound", err)
	}

	// MarkQueued: pending → queued, indexed, no expiry; idempotent.
	_, q, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"q"`, ``))
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Second)
	for i := range 2 {
		if err := e.s.MarkQueued(e.ctx, "d1", "c1", "q"); err != nil {
			t.Fatalf("MarkQueued #%d: %v", i+1, err)
		}
	}
	got := e.get("c1", "q")
	if got.Status != protocol.StatusQueued || !got.QueuedAt.Equal(e.clock.Now()) || got.LeaseToken != "" || !got.LeaseUntil.IsZero() {
		t.Errorf("after MarkQueued: status %s queued_at %v lease %v, want queued at %v without lease", got.Status, got.QueuedAt, got.LeaseUntil, e.clock.Now())
	}
	if d := e.pttl(e.keys.Command("c1", "q")); d != -1 {
		t.Errorf("queued record PTTL = %v, want none", d)
	}
	if err := e.s.Release(e.ctx, "d1", "c1", "q", q.LeaseToken); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "q"); got.Status != protocol.StatusQueued {
		t.Errorf("Release after MarkQueued changed the status to %s", got.Status)
	}
	list, _, err := e.s.List(e.ctx, "c1", "d1", "", 10, "")
	if err != nil || len(list) != 1 || list[0].ID.Key() != "q" {
		t.Errorf("List after MarkQueued = %d commands, %v; want [q]", len(list), err)
	}

	// A retaken lease: the first holder's confirmed publish still queues
	// the command, and the second holder's Release keeps it.
	_, _, err = e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"t"`, ``))
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(11 * time.Second)
	out, b, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"t"`, ``))
	if err != nil || out != mailbox.Retake {
		t.Fatalf("Reserve after the lease = %v, %v, want retake", out, err)
	}
	if err := e.s.Release(e.ctx, "d1", "c1", "t", b.LeaseToken); err != nil {
		t.Fatal(err)
	}
	got = e.get("c1", "t")
	if got.Status != protocol.StatusPending || got.LeaseUntil.After(e.clock.Now()) {
		t.Errorf("Release of a retaken lease: status %s lease until %v, want pending with the lease ended", got.Status, got.LeaseUntil)
	}
	if err := e.s.MarkQueued(e.ctx, "d1", "c1", "t"); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "t"); got.Status != protocol.StatusQueued {
		t.Errorf("MarkQueued with the first lease token: status %s, want queued", got.Status)
	}
}

func TestListAndCancelAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const n = 25
	for i := range n {
		if i%5 == 0 {
			e.clock.Add(time.Millisecond) // several commands share a millisecond
		}
		e.queued(cmd(t, "c1", "d1", fmt.Sprint(i+1), ``))
	}
	e.queued(cmd(t, "c1", "d2", `"other-device"`, ``))

	// Pages of 7, newest first, no duplicates, no gaps.
	var keys []string
	cursor := ""
	for page := 0; ; page++ {
		if page > 10 {
			t.Fatal("List does not end")
		}
		cs, next, err := e.s.List(e.ctx, "c1", "d1", "", 7, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			keys = append(keys, c.ID.Key())
			if i > 0 && c.CreatedAt.After(cs[i-1].CreatedAt) {
				t.Errorf("page %d not newest first: %v after %v", page, c.CreatedAt, cs[i-1].CreatedAt)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] {
			t.Errorf("List returned %s twice", k)
		}
		seen[k] = true
	}
	if len(seen) != n {
		t.Errorf("List returned %d distinct commands, want %d", len(seen), n)
	}

	// Cancel some, filter by status; an expired record is pruned.
	for _, k := range []string{"3", "4"} {
		if _, err := e.s.Cancel(e.ctx, "c1", k, "node-c"); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.rdb.Del(e.ctx, e.keys.Command("c1", "3")).Err(); err != nil {
		t.Fatal(err)
	}
	cs, next, err := e.s.List(e.ctx, "c1", "d1", protocol.StatusCancelled, 100, "")
	if err != nil || next != "" || len(cs) != 1 || cs[0].ID.Key() != "4" {
		t.Errorf("List(cancelled) = %d commands, next %q, %v; want [4]", len(cs), next, err)
	}
	if sc := e.rdb.ZScore(e.ctx, e.keys.ClientCommands("c1", "d1"), "3").Err(); !errors.Is(sc, redis.Nil) {
		t.Errorf("expired record 3 still in the index (%v)", sc)
	}
	if _, _, err := e.s.List(e.ctx, "c1", "d1", "", 10, "garbage!"); err == nil {
		t.Error("List with a bad cursor: want an error")
	}

	got, err := e.s.CancelAll(e.ctx, "c1", "d1", "node-c")
	if err != nil || got != n-2 {
		t.Errorf("CancelAll = %d, %v; want %d", got, err, n-2)
	}
	if got := e.get("c1", "other-device"); got.Status != protocol.StatusQueued {
		t.Errorf("CancelAll touched another device's command: %s", got.Status)
	}
	if rs := e.results("c1"); len(rs) != n {
		t.Errorf("client mailbox holds %d results, want %d (one per cancelled command)", len(rs), n)
	}
}

func TestCheckDurability(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	ctx := context.Background()
	cfg, err := rdb.ConfigGet(ctx, "appendfsync").Result()
	if err != nil {
		t.Skipf("CONFIG GET refused: %v", err)
	}
	aof, _ := rdb.ConfigGet(ctx, "appendonly").Result()
	pol, _ := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	w := mailbox.CheckDurability(ctx, rdb)
	durable := aof["appendonly"] == "yes" && cfg["appendfsync"] == "always" && pol["maxmemory-policy"] == "noeviction"
	if durable && w != "" || !durable && w == "" {
		t.Errorf("CheckDurability with appendonly=%s appendfsync=%s maxmemory-policy=%s = %q",
			aof["appendonly"], cfg["appendfsync"], pol["maxmemory-policy"], w)
	}
	t.Logf("CheckDurability: %s", w)
}

// Listed is true for a mailbox with entries and false for one that never
// had any or whose last entry was acknowledged.
func TestListed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	exp := e.clock.Now().Add(time.Hour)
	for _, id := range []string{"full", "acked"} {
		if _, err := e.s.Put(e.ctx, id, "clients/"+id+"/results/d", []byte("p"), exp, ""); err != nil {
			t.Fatal(err)
		}
	}
	es, err := e.s.Fetch(e.ctx, "acked", "", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	if err := e.s.Ack(e.ctx, "acked", es[0]); err != nil {
		t.Fatal(err)
	}
	ids := []string{"full", "never", "acked"}
	got, err := e.s.Listed(e.ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, false}
	for i := range ids {
		if got[i] != want[i] {
			t.Errorf("Listed(%s) = %v, want %v", ids[i], got[i], want[i])
		}
	}
}
