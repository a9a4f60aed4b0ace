package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/latency"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// intakeClients is the closed-loop concurrency of the intake figure; each
// goroutine is its own client, so the per-client rate limit (1,000/s)
// does not bind.
const intakeClients = 64

// intakeBatch is the number of commands per request of the extra batch
// figure.
const intakeBatch = 10

// runIntake measures the apiserver alone, with no msgworker: how many
// commands per second it accepts (202: reserved in Redis, published with
// a confirm, marked queued) with 64 concurrent clients, and the latency of
// the 202 at 2,500/s open loop; then, as an extra figure, the commands per
// second it accepts when the 64 clients send batches of 10; last, the
// ceiling of these figures on this machine, the intake's work done
// without HTTP (intakeFloor). Accepted commands pile up in the commands
// queue and are deleted with the namespace.
func runIntake(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "intake")
	defer cleanup()
	dur := 10 * time.Second
	if b.Quick {
		dur = 4 * time.Second
	}
	addr, err := gwproc.FreeAddr()
	if err != nil {
		return err
	}
	api := b.proc("intake", "apiserver", "apiserver", []string{"--http-addr", addr}, b.gwEnv(ns))
	if err := api.Start(); err != nil {
		return err
	}
	defer api.Stop()
	base := "http://" + addr
	if err := waitHTTP(ctx, base+"/readyz", 20*time.Second, api); err != nil {
		return err
	}
	load, err := newHTTPLoad(base, b.Secret, "ic-", intakeClients, 100, "")
	if err != nil {
		return err
	}
	// Warm up connections and the apiserver's pools.
	var warm latency.Recorder
	load.closedLoop(ctx, intakeClients, time.Second, 2000, &warm)
	load.statuses()

	m := b.newMeter(append([]cpuSource{procSource(api)}, b.brokers(ctx)...)...)

	var lat latency.Recorder
	acc, el := load.closedLoop(ctx, intakeClients, dur, 1_000_000, &lat)
	st := load.statuses()
	s.CPU = append(s.CPU, m.table(fmt.Sprintf("%d concurrent clients", intakeClients), acc))
	rate := perSecond(acc, el)
	s.Add("intake_max_per_s", fmt.Sprintf("intake: accepted (202) with %d concurrent clients", intakeClients), rate, "/s", AtLeast(10000))
	s.Latencies = append(s.Latencies, LatencyRow{fmt.Sprintf("202 with %d concurrent clients (closed loop)", intakeClients), lat.Summary()})
	s.Note("%d concurrent clients for %s: answers by status %v.", intakeClients, el.Round(time.Millisecond), st)
	b.logf("intake closed loop: %.0f/s", rate)

	if ctx.Err() != nil {
		return ctx.Err()
	}
	sleepCtx(ctx, time.Second)
	m.reset()
	var olat, svc latency.Recorder
	acc, sent, el := load.openLoop(ctx, 2500, dur, 4096, &olat, &svc)
	st = load.statuses()
	s.CPU = append(s.CPU, m.table("2,500/s", acc))
	p := olat.Summary()
	s.Add("intake_2500_per_s", "intake: accepted at 2,500/s offered", perSecond(acc, el), "/s", nil)
	s.Add("intake_2500_p50_ms", "202 p50 at 2,500/s", p.P50, "ms", nil)
	s.Add("intake_2500_p99_ms", "202 p99 at 2,500/s", p.P99, "ms", AtMost(5))
	s.Latencies = append(s.Latencies,
		LatencyRow{"202 at 2,500/s, from the scheduled send", p},
		LatencyRow{"202 at 2,500/s, from the actual send", svc.Summary()})
	s.Note("2,500/s open loop for %s: %d sent, answers by status %v.", el.Round(time.Millisecond), sent, st)
	if len(load.errs) > 0 {
		s.Note("Sample of non-202 answers: %q.", load.errs)
	}
	b.logf("intake 2,500/s: p50 %.2f ms, p99 %.2f ms", p.P50, p.P99)

	// An extra figure, not the one the target is about: the same clients
	// sending JSON-RPC batches, which share the HTTP request, the token
	// check and the rate limit among their commands.
	if ctx.Err() != nil {
		return ctx.Err()
	}
	sleepCtx(ctx, time.Second)
	m.reset()
	var blat latency.Recorder
	acc, el = load.closedLoopN(ctx, intakeClients, intakeBatch, dur, 1_000_000, &blat)
	st = load.statuses()
	run := fmt.Sprintf("%d concurrent clients, batches of %d", intakeClients, intakeBatch)
	s.CPU = append(s.CPU, m.table(run, acc))
	s.Add("intake_batch_max_per_s", fmt.Sprintf("intake, extra: commands accepted with %d concurrent clients sending batches of %d", intakeClients, intakeBatch), perSecond(acc, el), "/s", nil)
	s.Latencies = append(s.Latencies, LatencyRow{fmt.Sprintf("202 of a batch of %d with %d concurrent clients (closed loop)", intakeBatch, intakeClients), blat.Summary()})
	s.Note("%s for %s: %d commands accepted; requests by status %v. Each POST carries %d commands as one JSON-RPC batch, so CPU per message is per command.", run, el.Round(time.Millisecond), acc, st, intakeBatch)
	if len(load.errs) > 0 {
		s.Note("Sample of non-202 answers or refused batch entries: %q.", load.errs)
	}
	s.Notes = append(s.Notes, logProblems(api)...)
	b.logf("intake batches of %d: %.0f commands/s", intakeBatch, perSecond(acc, el))

	if ctx.Err() != nil {
		return ctx.Err()
	}
	api.Stop() // its CPU is not part of the floor
	sleepCtx(ctx, time.Second)
	return intakeFloor(ctx, b, s, ns, dur)
}

// intakeFloor measures the work of an accepted command without HTTP: in
// the bench's own process, 64 goroutines each reserve a command in
// Redis, publish its envelope with a confirm and mark it queued, one
// after the other, with the gateway's Store and Publisher, in a closed
// loop. The apiserver does this and more (HTTP, JSON-RPC, the token, the
// rate limit, the request log), so on the same machine the intake figure
// cannot exceed this one.
func intakeFloor(ctx context.Context, b *Bench, s *Section, ns string, dur time.Duration) error {
	topo := benchTopology(ns)
	store := mailbox.New(b.rdb, ns, mailbox.Options{})
	pub, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: b.AMQPURL, Name: "bench-intake-floor"}, topo)
	if err != nil {
		return err
	}
	defer pub.Close()
	for deadline := time.Now().Add(5 * time.Second); !pub.Ready() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var done atomic.Int64
	var once sync.Once
	var first error
	loop := func(until time.Time, g int) {
		for i := g; time.Now().Before(until) && ctx.Err() == nil; i += intakeClients {
			id, err := protocol.ParseID(json.RawMessage(`"f` + run + `-` + strconv.Itoa(i) + `"`))
			if err == nil {
				err = prefillCommand(ctx, store, pub, topo, cmdRef{client: "fc-" + strconv.Itoa(g), device: "fd-" + strconv.Itoa(i%100), id: id, n: i})
			}
			if err != nil {
				once.Do(func() { first = err })
				return
			}
			done.Add(1)
		}
	}
	measure := func(d time.Duration, offset int) time.Duration {
		t0 := time.Now()
		var wg sync.WaitGroup
		for g := range intakeClients {
			wg.Go(func() { loop(t0.Add(d), offset+g) })
		}
		wg.Wait()
		return time.Since(t0)
	}
	measure(time.Second, 0) // warm-up
	if first != nil {
		return fmt.Errorf("intake floor: %w", first)
	}
	m := b.newMeter(b.brokers(ctx)...)
	done.Store(0)
	el := measure(dur, 1_000_000_000)
	n := done.Load()
	s.CPU = append(s.CPU, m.table("the intake's work without HTTP", n))
	if first != nil && !errors.Is(first, context.Canceled) {
		return fmt.Errorf("intake floor: %w", first)
	}
	s.Add("intake_floor_per_s", fmt.Sprintf("ceiling: the intake's work without HTTP (Reserve, publish with confirm, MarkQueued), %d at a time in the bench's process", intakeClients), perSecond(n, el), "/s", nil)
	s.Note("Ceiling: %d goroutines of the bench each reserved a command, published its envelope with a confirm and marked it queued (mailbox.Store and amqpx.Publisher, as the apiserver does), one after the other, for %s: %d commands. The apiserver does this work and more (HTTP, JSON-RPC, the token, the rate limit, the request log), so on this machine its intake cannot exceed this figure.",
		intakeClients, el.Round(time.Millisecond), n)
	b.logf("intake ceiling without HTTP: %.0f/s", perSecond(n, el))
	return nil
}
