package mailbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// BenchmarkRoundTripCost is the micro-measure of Redis's work per round
// trip (issue 11): b.N commands go through every step of a round trip,
// one step at a time for all of them (a phase), on a Redis server of the
// benchmark's own (so that nobody else's commands are counted), and each
// phase reports what Redis did per command:
//
//   - fcall: FCALLs (steps) per command and their server time (INFO
//     commandstats usec, their inner calls included);
//   - inner µs: the inner calls' own time (commandstats usec), so that
//     fcall µs less inner µs is what a step costs besides its calls:
//     the FCALL itself (KEYS and ARGV tables), the Lua code and the
//     redis.call glue (each call's argument objects and reply
//     conversion);
//   - inner: the calls the steps made (all commands counted by
//     commandstats less those the Go side sent, which a hook counts);
//   - top: the commands the Go side sent besides FCALL (XRANGE of a
//     fetch, the outbox XDEL, the wake-up pipeline);
//   - trips: the Go side's network round trips to Redis (a pipeline is
//     one, a batched FCALL one for all its items);
//   - cpu: redis-server's CPU (INFO cpu: getrusage of the process, all
//     threads, the network I/O and the AOF write included).
//
// The phases are the steps of a round trip as the gateway runs them:
// claim + reserve (apiserver), mark_queued (apiserver), dispatch
// (msgworker), the device's fetch (XRANGE + stamp) and ack (push server),
// complete + relay + outbox XDEL (push server), the client's fetch and
// ack. "seq" runs the commands one after the other (no batching: a round
// trip at a low rate), "par" from 32 goroutines (group commit batches
// them: a round trip at the maximum rate). Each command has its own
// device and client, as a round trip at a low rate finds them.
//
//	go test -run '^$' -bench RoundTripCost -benchtime 2000x ./mailbox/
//
// GW_COST_REDIS=shared measures on the shared Redis instead (others'
// commands are then counted too).
func BenchmarkRoundTripCost(b *testing.B) {
	for _, bc := range []struct {
		name string
		conc int
	}{{"seq", 1}, {"par", 32}} {
		b.Run(bc.name, func(b *testing.B) { roundTripCost(b, bc.conc) })
	}
}

// topCounter counts the commands a client sends, by name, and its
// network round trips (a pipeline is one).
type topCounter struct {
	mu    sync.Mutex
	n     map[string]int64
	trips int64
}

func (h *topCounter) add(cmds ...redis.Cmder) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trips++
	for _, c := range cmds {
		h.n[strings.ToLower(c.Name())]++
	}
}

func (h *topCounter) take() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.n
	n["(trips)"] = h.trips
	h.n, h.trips = map[string]int64{}, 0
	return n
}

func (h *topCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *topCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.add(cmd)
		return next(ctx, cmd)
	}
}

func (h *topCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.add(cmds...)
		return next(ctx, cmds)
	}
}

// serverStats is what INFO says of Redis's work so far.
type serverStats struct {
	calls map[string]int64 // per command
	usec  map[string]int64
	cpu   float64 // seconds, user + sys
}

func readServerStats(b *testing.B, rdb *redis.Client) serverStats {
	b.Helper()
	s, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	st := serverStats{calls: map[string]int64{}, usec: map[string]int64{}}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if name, rest, ok := strings.Cut(line, ":calls="); ok {
			name = strings.TrimPrefix(name, "cmdstat_")
			f := strings.Split(rest, ",")
			st.calls[name], _ = strconv.ParseInt(f[0], 10, 64)
			if len(f) > 1 {
				st.usec[name], _ = strconv.ParseInt(strings.TrimPrefix(f[1], "usec="), 10, 64)
			}
			continue
		}
		for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, _ := strconv.ParseFloat(v, 64)
				st.cpu += x
			}
		}
	}
	return st
}

// phaseCost is one phase's figures per command.
type phaseCost struct {
	name                                 string
	fcalls, inner, top, trips, fcallUsec float64
	innerUsec, cpuUsec                   float64
	innerBy                              map[string]float64
}

func roundTripCost(b *testing.B, conc int) {
	ctx := context.Background()
	var rdb *redis.Client
	if os.Getenv("GW_COST_REDIS") == "shared" {
		rdb = testenv.Redis(b)
	} else {
		pr := testenv.StartRedis(b, "everysec")
		rdb = redis.NewClient(&redis.Options{Addr: pr.Addr()})
		b.Cleanup(func() { rdb.Close() })
	}
	// The store's client, whose commands the hook counts; INFO goes
	// through rdb.
	srdb := redis.NewClient(rdb.Options())
	b.Cleanup(func() { srdb.Close() })
	hook := &topCounter{n: map[string]int64{}}
	srdb.AddHook(hook)
	s := mailbox.New(srdb, testenv.Namespace(b), mailbox.Options{})
	resp := protocol.NewResult(json.RawMessage(`"x"`), json.RawMessage(`{"ok":true}`))
	// Every command is traced, as in the gateway: the envelope carries
	// the apiserver's span, the answer's completion continues the trace.
	const tpDispatch = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const tpComplete = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
	cctx := telemetry.ContextWithTraceParent(ctx, tpComplete)

	n := b.N
	type cmd struct {
		c   *mailbox.Command
		rec *mailbox.Command
		got []mailbox.Entry // what the last fetch phase read
	}
	cmds := make([]*cmd, n+1)
	for i := range cmds {
		client, device := fmt.Sprintf("c%d", i), fmt.Sprintf("d%d", i)
		id, err := protocol.ParseID(json.RawMessage(strconv.Itoa(i + 1)))
		if err != nil {
			b.Fatal(err)
		}
		// The timeout and expiry of the round trip of `make bench`.
		c := &mailbox.Command{Client: client, Device: device, Method: "echo", ID: id,
			Timeout: 10 * time.Second, ExpiresIn: time.Minute}
		c.Fingerprint = protocol.Fingerprint(device, c.Method, nil, c.Timeout, c.ExpiresIn)
		cmds[i] = &cmd{c: c}
	}
	// fetchOne is the phase that reads the one entry waiting for the
	// command's device or client (who), kept in got for the ack.
	fetchOne := func(who string, identity func(x *cmd) string) func(x *cmd) error {
		return func(x *cmd) error {
			es, err := s.Fetch(ctx, identity(x), "", 10)
			if err == nil && len(es) != 1 {
				err = fmt.Errorf("Fetch(%s) = %d entries, want 1", who, len(es))
			}
			x.got = es
			return err
		}
	}
	phases := []struct {
		name string
		do   func(x *cmd) error
	}{
		{"claim+reserve", func(x *cmd) error {
			out, rec, err := s.Reserve(ctx, x.c)
			if err == nil && out != mailbox.Reserved {
				err = fmt.Errorf("Reserve = %v, want reserved", out)
			}
			x.rec = rec
			return err
		}},
		{"mark_queued", func(x *cmd) error { return s.MarkQueued(ctx, x.c.Device, x.c.Client, x.c.ID.Key()) }},
		{"dispatch", func(x *cmd) error {
			payload, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": x.c.Method, "id": x.c.ID.Raw()})
			env := &protocol.Envelope{V: protocol.EnvelopeVersion, Kind: protocol.KindCommand,
				Client: x.c.Client, Device: x.c.Device, MsgID: x.c.ID, Payload: payload,
				AcceptedAt: x.rec.CreatedAt, DeliverBy: x.rec.DeliverBy,
				AnswerWithinMS: x.c.Timeout.Milliseconds(), Attempt: 1, TraceParent: tpDispatch}
			out, err := s.Dispatch(ctx, env, "node-d", "node-c")
			if err == nil && out != mailbox.OutcomeSent {
				err = fmt.Errorf("Dispatch = %v, want sent", out)
			}
			return err
		}},
		{"fetch device (xrange+stamp)", fetchOne("device", func(x *cmd) string { return x.c.Device })},
		{"ack device", func(x *cmd) error { return s.Ack(ctx, x.c.Device, x.got[0]) }},
		{"complete+relay+xdel", func(x *cmd) error {
			out, err := s.Complete(cctx, x.c.Client, x.c.ID.Key(), x.c.Device, resp, 0, "node-c")
			if err == nil && out != mailbox.OutcomeSucceeded {
				err = fmt.Errorf("Complete = %v, want succeeded", out)
			}
			return err
		}},
		{"fetch client (xrange+stamp)", fetchOne("client", func(x *cmd) string { return x.c.Client })},
		{"ack client", func(x *cmd) error { return s.Ack(ctx, x.c.Client, x.got[0]) }},
	}
	// One command through every phase first, to load the library.
	for _, ph := range phases {
		if err := ph.do(cmds[n]); err != nil {
			b.Fatalf("%s: %v", ph.name, err)
		}
	}
	cmds = cmds[:n]
	b.ResetTimer()
	var costs []phaseCost
	for _, ph := range phases {
		hook.take()
		before := readServerStats(b, rdb)
		var next atomic.Int64
		var wg sync.WaitGroup
		var failed atomic.Value
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if err := ph.do(cmds[i]); err != nil {
						failed.Store(fmt.Errorf("%s of command %d: %w", ph.name, i, err))
						return
					}
				}
			}()
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			b.Fatal(err)
		}
		after := readServerStats(b, rdb)
		top := hook.take()
		pc := phaseCost{name: ph.name, innerBy: map[string]float64{}}
		var topN int64
		for name, k := range top {
			if name != "fcall" && name != "(trips)" {
				topN += k
			}
		}
		pc.trips = float64(top["(trips)"]) / float64(n)
		fcalls := after.calls["fcall"] - before.calls["fcall"]
		var all int64
		for name, c := range after.calls {
			d := c - before.calls[name]
			if name == "info" {
				d-- // the INFO that read before
			}
			all += d
			inner := d - top[name]
			if name == "fcall" || name == "info" || inner <= 0 {
				continue
			}
			pc.innerBy[name] = float64(inner) / float64(n)
			// The inner calls' own time: commandstats does not tell a
			// command the Go side sent from one a step ran, so a name
			// that is both gets its share of the time by calls.
			pc.innerUsec += float64(after.usec[name]-before.usec[name]) * float64(inner) / float64(d) / float64(n)
		}
		pc.fcalls = float64(fcalls) / float64(n)
		pc.top = float64(topN) / float64(n)
		pc.inner = float64(all-fcalls-topN) / float64(n)
		pc.fcallUsec = float64(after.usec["fcall"]-before.usec["fcall"]) / float64(n)
		pc.cpuUsec = (after.cpu - before.cpu) * 1e6 / float64(n)
		costs = append(costs, pc)
	}
	b.StopTimer()
	var t phaseCost
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%d commands, %d at once; per command:\n", n, conc)
	fmt.Fprintf(&sb, "| %-28s | %7s | %7s | %9s | %9s | %7s | %7s | %9s | %s\n", "phase", "fcalls", "inner", "fcall µs", "inner µs", "top", "trips", "redis CPU", "inner calls by command")
	for _, pc := range costs {
		names := make([]string, 0, len(pc.innerBy))
		for k := range pc.innerBy {
			names = append(names, k)
		}
		sort.Slice(names, func(i, j int) bool { return pc.innerBy[names[i]] > pc.innerBy[names[j]] })
		var by []string
		for _, k := range names {
			by = append(by, fmt.Sprintf("%s %.2f", k, pc.innerBy[k]))
		}
		fmt.Fprintf(&sb, "| %-28s | %7.2f | %7.2f | %9.1f | %9.1f | %7.2f | %7.2f | %9.1f | %s\n", pc.name, pc.fcalls, pc.inner, pc.fcallUsec, pc.innerUsec, pc.top, pc.trips, pc.cpuUsec, strings.Join(by, ", "))
		t.fcalls += pc.fcalls
		t.inner += pc.inner
		t.top += pc.top
		t.trips += pc.trips
		t.fcallUsec += pc.fcallUsec
		t.innerUsec += pc.innerUsec
		t.cpuUsec += pc.cpuUsec
	}
	fmt.Fprintf(&sb, "| %-28s | %7.2f | %7.2f | %9.1f | %9.1f | %7.2f | %7.2f | %9.1f |\n", "round trip", t.fcalls, t.inner, t.fcallUsec, t.innerUsec, t.top, t.trips, t.cpuUsec)
	if n > 1 { // the first run (b.N = 1) only finds b.N
		fmt.Print(sb.String())
	}
	b.ReportMetric(t.cpuUsec, "redis-cpu-µs/rt")
	b.ReportMetric(t.fcallUsec, "fcall-µs/rt")
	b.ReportMetric(t.innerUsec, "inner-µs/rt")
	b.ReportMetric(t.fcalls, "fcalls/rt")
	b.ReportMetric(t.inner, "inner-calls/rt")
	b.ReportMetric(t.trips, "trips/rt")
	b.ReportMetric(0, "ns/op")
}
