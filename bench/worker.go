package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// cmdRef names one pre-filled command.
type cmdRef struct {
	client, device string
	id             protocol.ID
	n              int
}

// runWorker measures one msgworker process on its own: the commands
// queue is filled with N ready commands (reserved and marked queued in
// Redis, published as the apiserver does), then the worker starts and the
// bench times how fast the commands become sent. Only the command path is
// measured: device answers do not cross RabbitMQ (the push server
// completes them, DESIGN §5), so the worker never handles them. No push
// server runs: the mailbox entries just stay.
func runWorker(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("msgworker"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, "worker")
	defer cleanup()
	n, clients, devices := 20000, 16, 100
	if b.Quick {
		n = 4000
	}
	topo := benchTopology(ns)
	store := mailbox.New(b.rdb, ns, mailbox.Options{})
	pub, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: b.AMQPURL, Name: "bench-worker-prefill"}, topo)
	if err != nil {
		return err
	}
	defer pub.Close()
	if !pub.Ready() {
		time.Sleep(time.Second)
	}

	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	refs := make([]cmdRef, n)
	for i := range refs {
		id, err := protocol.ParseID(json.RawMessage(`"w` + run + `-` + strconv.Itoa(i) + `"`))
		if err != nil {
			return err
		}
		refs[i] = cmdRef{client: "wc-" + strconv.Itoa(i%clients), device: "wd-" + strconv.Itoa(i%devices), id: id, n: i}
	}

	// Commands.
	t0 := time.Now()
	if err := parallel(ctx, 64, n, func(i int) error { return prefillCommand(ctx, store, pub, topo, refs[i]) }); err != nil {
		return fmt.Errorf("cannot pre-fill the commands queue: %w", err)
	}
	if err := waitDepth(ctx, pub, n, topo.CommandQueues()...); err != nil {
		return err
	}
	s.Note("Pre-filled %d commands (Reserve, publish with confirm, MarkQueued, 64 at a time) in %s: %.0f/s.", n, time.Since(t0).Round(time.Millisecond), perSecond(int64(n), time.Since(t0)))
	b.logf("worker: %d commands queued", n)

	w := b.proc("worker", "msgworker-0", "msgworker", nil, b.gwEnv(ns))
	brokers := b.brokers(ctx)
	dr, err := drain(ctx, b, store, w, brokers, protocol.StatusSent, n)
	if err != nil {
		return err
	}
	s.Add("worker_commands_per_s", "worker: commands dispatched (queued → sent)", dr.rate, "commands/s", AtLeast(10000))
	s.Explain(dr.cpu.Run)
	s.Add("worker_command_cpu_us", "worker: CPU per command", dr.workerUS, "µs", nil)
	s.CPU = append(s.CPU, dr.cpu)
	s.Note("Commands: the worker started %s after the bench started it and took %s for the last %d of %d commands (a %d ms poll of the status counters).",
		dr.startup.Round(time.Millisecond), dr.elapsed.Round(time.Millisecond), dr.measured, n, drainPoll.Milliseconds())
	b.logf("worker commands: %.0f/s, %.0f µs CPU each", dr.rate, dr.workerUS)
	if err := w.Stop(); err != nil {
		s.Note("stopping the worker: %v", err)
	}

	s.Note("%d clients, %d devices; the worker's defaults: %d command queues, prefetch %d and %d handlers for the command queues together. CPU is counted from the first observed progress, so the process's start is left out. Device answers are not measured here: they never reach the worker (the push server completes them in Redis, DESIGN §5; the round-trip section covers them).", clients, devices, topo.QueueCount, 128, 64)
	s.Notes = append(s.Notes, logProblems(w)...)
	return nil
}

// drainPoll is how often drain reads the status counters.
const drainPoll = 5 * time.Millisecond

type drainResult struct {
	rate, workerUS float64
	startup        time.Duration // process start → first progress seen
	elapsed        time.Duration // first progress seen → done
	measured       int64
	cpu            CPUTable
}

// drain starts w and waits until n commands have made the transition
// into status (counted by the mailbox scripts in the namespace's status
// counters). Rate and CPU are measured from the first progress seen.
func drain(ctx context.Context, b *Bench, store *mailbox.Store, w *gwproc.Proc, brokers []cpuSource, status protocol.Status, n int) (drainResult, error) {
	var r drainResult
	count := func() (int64, error) {
		m, err := store.StatusCounts(ctx, 10)
		return m[status], err
	}
	before, err := count()
	if err != nil {
		return r, err
	}
	m := b.newMeter(append([]cpuSource{procSource(w)}, brokers...)...)
	tStart := time.Now()
	if err := w.Start(); err != nil {
		return r, err
	}
	var tFirst time.Time
	var cFirst int64
	limit := 90 * time.Second
	if b.Quick {
		limit = 40 * time.Second
	}
	deadline := tStart.Add(limit)
	for {
		c, err := count()
		if err != nil {
			return r, err
		}
		c -= before
		if c > 0 && tFirst.IsZero() {
			tFirst, cFirst = time.Now(), c
			m.reset()
		}
		if c >= int64(n) {
			break
		}
		if !w.Running() {
			return r, fmt.Errorf("%s exited:\n%s", w.Name, w.Tail(2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return r, fmt.Errorf("only %d of %d commands became %s within %s (worker log %s)", c, n, status, limit, w.Log)
		}
		time.Sleep(drainPoll)
	}
	r.startup = tFirst.Sub(tStart)
	r.elapsed = time.Since(tFirst)
	r.measured = int64(n) - cFirst
	r.rate = perSecond(r.measured, r.elapsed)
	r.cpu = m.table("commands becoming "+string(status), r.measured)
	if len(r.cpu.Rows) > 0 {
		r.workerUS = r.cpu.Rows[0].PerMsgUS
	}
	return r, nil
}

func prefillCommand(ctx context.Context, store *mailbox.Store, pub *amqpx.Publisher, topo protocol.Topology, r cmdRef) error {
	params := json.RawMessage(`{"i":` + strconv.Itoa(r.n) + `}`)
	timeout, expiresIn := 30*time.Second, time.Hour
	c := &mailbox.Command{Client: r.client, Device: r.device, ID: r.id, Method: "echo", Params: params,
		Fingerprint: protocol.Fingerprint(r.device, "echo", params, timeout, expiresIn),
		Status:      protocol.StatusPending, Timeout: timeout, ExpiresIn: expiresIn}
	out, rec, err := store.Reserve(ctx, c)
	if err != nil {
		return err
	}
	if out != mailbox.Reserved {
		return fmt.Errorf("reserve %s: %s", r.id.Key(), out)
	}
	payload := []byte(`{"jsonrpc":"2.0","method":"echo","params":` + string(params) + `,"id":` + string(r.id.Raw()) + `}`)
	env := protocol.Envelope{Kind: protocol.KindCommand, Client: r.client, Device: r.device, MsgID: r.id, Payload: payload,
		AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy, AnswerWithinMS: timeout.Milliseconds(), Attempt: 1}
	body, err := env.Encode()
	if err != nil {
		return err
	}
	exchange, key := topo.DeviceRoute(r.device)
	if err := pub.Publish(ctx, exchange, key, body, amqpx.Headers{
		MessageID: protocol.DeviceMsgID(r.client, r.id), Type: protocol.KindCommand}); err != nil {
		return err
	}
	return store.MarkQueued(ctx, r.device, r.client, r.id.Key())
}

// waitDepth waits until the queues hold n ready messages together (at
// most 20 s).
func waitDepth(ctx context.Context, pub *amqpx.Publisher, n int, queues ...string) error {
	var got int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; {
		qi, err := pub.QueueDepth(ctx, queues...)
		if err == nil {
			got = 0
			for _, q := range queues {
				got += qi[q].Messages
			}
			if got >= n {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("queues %v hold %d messages, want %d", queues, got, n)
}

// parallel runs f(0) … f(n-1) on k goroutines and returns the first
// error (the others stop taking work).
func parallel(ctx context.Context, k, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() && ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err; failed.Store(true) })
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
