package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Worker is one msgworker: competing consumers of every command queue
// and of the commands dead-letter queue, and the timer loop. Any number
// of Workers (processes or, in tests, values in one process) share the
// work of a namespace.
type Worker struct {
	cfg   Config
	log   *slog.Logger
	topo  protocol.Topology
	rdb   redis.UniversalClient
	store *mailbox.Store
	ring  *ring.Ring
	// parts is this worker's share of the partitions: it fires their
	// timers and relays their leftover outbox entries (DESIGN §7).
	parts *ring.Partitions
	reach reachability // of the owned partitions, for runTimers
	due   *dueHeap     // when each owned partition has work next, for runTimers
	mx    *metrics

	consumers []*amqpx.Consumer
	aopts     amqpx.Options // of the consumers, for the switch of a resize
}

// New returns a Worker for cfg. It checks the configuration and creates
// the Redis client, but does no I/O: Run connects.
func New(cfg Config) (*Worker, error) {
	cfg.ensureDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	// Handlers of every queue and the timer loop share the pool (on
	// Cluster, each node's).
	cmdPrefetch, cmdWorkers := cfg.commandShare()
	rdb, err := cfg.NewRedis(func(o *redis.UniversalOptions) {
		if n := cfg.Queues*cmdWorkers + deadConcurrency + 4; o.PoolSize < n {
			o.PoolSize = n
		}
	})
	if err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	w := &Worker{
		reach: reachability{},
		due:   newDueHeap(),
		cfg:   cfg,
		log:   cfg.Logger.With("component", "msgworker", "namespace", cfg.Namespace),
		topo:  cfg.Scale.Topology(cfg.Namespace),
		rdb:   rdb,
	}
	w.ring = ring.New(w.rdb, cfg.Namespace, ring.Options{Logger: cfg.Logger})
	node := workerID()
	w.parts = ring.NewPartitions(w.rdb, cfg.Namespace, node, max(cfg.Partitions, 1),
		ring.PartitionOptions{Ring: ring.Options{Logger: cfg.Logger}, URL: workerURL(node, cfg.Queues)})
	w.store = mailbox.New(w.rdb, cfg.Namespace, mailbox.Options{
		Partitions:   cfg.Partitions,
		Retention:    cfg.Retention,
		MailboxCap:   cfg.MailboxCap,
		AnswerGrace:  cfg.AnswerGrace,
		WaitReplicas: cfg.WaitReplicas,
		WaitTimeout:  cfg.WaitTimeout,
		OwnerOf:      w.ownerOf,
		Logger:       cfg.Logger,
	})
	w.mx, err = newMetrics(cfg.Registerer, w.reconnects, w.store)
	if err != nil {
		_ = w.rdb.Close()
		return nil, fmt.Errorf("cannot register metrics: %w", err)
	}

	// The connection name shows the namespace in RabbitMQ's UI.
	aopts := amqpx.Options{URL: cfg.AMQPURL, Name: "msgworker@" + cfg.Namespace, Logger: cfg.Logger}
	w.aopts = aopts
	// Outermost first: count and log what the layers below did, panics
	// included.
	std := []Middleware{tracing(), instrument(w.mx), logging(w.log), recoverer(w.log)}
	type consumed struct {
		queue, label      string
		prefetch, workers int
		h                 Handler
	}
	// A consumer of each command queue, sharing the commands' prefetch
	// and concurrency (Config.Prefetch); all of them count as "commands"
	// in the metrics.
	var queues []consumed
	for _, q := range w.topo.CommandQueues() {
		queues = append(queues, consumed{q, queueCommands, cmdPrefetch, cmdWorkers, w.handleCommand})
	}
	// Device answers do not cross RabbitMQ (DESIGN §5): the push server
	// completes them, so there is no results consumer.
	queues = append(queues,
		consumed{w.topo.CommandsDeadQueue, queueCommandsDead, deadPrefetch, deadConcurrency, w.handleDeadCommand},
	)
	for _, q := range queues {
		// The standard middleware is outermost, so it logs and counts what
		// test middleware injects too.
		h := chain(q.h, append(std, cfg.middleware...)...)
		w.consumers = append(w.consumers, amqpx.NewConsumer(aopts, w.topo, amqpx.ConsumerOptions{
			Queue:           q.queue,
			Prefetch:        q.prefetch,
			Concurrency:     q.workers,
			ShutdownTimeout: cfg.ShutdownTimeout,
		}, adapt(q.label, h)))
	}
	return w, nil
}

// reconnects is the total of the consumers' reconnects, for the metric.
func (w *Worker) reconnects() float64 {
	var n int64
	for _, c := range w.consumers {
		n += c.Reconnects()
	}
	return float64(n)
}

// Store returns the worker's mailbox store.
func (w *Worker) Store() *mailbox.Store { return w.store }

// ownerOf is the push server the mailbox scripts signal for identity when
// it has no live session: its ring owner, or "" when no push server is in
// the ring (the mailbox then only keeps the entry; a push server streams it
// when the identity connects).
func (w *Worker) ownerOf(identity string) string {
	if m, ok := w.ring.Owner(identity); ok {
		return m.Node
	}
	return ""
}

// Run works until ctx is cancelled, then shuts down in order: the
// consumers stop taking deliveries and finish those in flight within
// Config.ShutdownTimeout (unfinished ones go back to the queue), the timer
// loop and the ring stop, and the Redis client closes. Connection losses
// of RabbitMQ are retried with backoff by the consumers; Redis outages
// pause the consumers (transient errors) and the timer loop until Redis is
// back. Run returns nil after a shutdown, or the first error that stops
// it: among them amqpx.ErrCounts, when the namespace's fence refuses the
// configured GW_QUEUES or GW_PARTITIONS (the error names both sides). Run
// may be called once.
func (w *Worker) Run(ctx context.Context) error {
	defer w.rdb.Close()

	// The partition counts are fixed per namespace (DESIGN §7a): refuse to
	// run with others. The worker only checks (the apiserver and the push
	// servers record them after the AMQP fence let them in); a Redis that
	// does not answer yet is checked by the AMQP fence alone.
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := w.store.CheckResize(fctx, w.cfg.QueuesFrom, w.cfg.Queues, false)
	cancel()
	if errors.Is(err, mailbox.ErrCounts) {
		return err
	} else if err != nil {
		w.log.Warn("cannot check the partition counts in Redis", "err", err)
	}

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bgWG sync.WaitGroup
	if w.topo.Resizing() {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			w.resize(bg)
		}()
	}
	bgWG.Add(5)
	go func() {
		defer bgWG.Done()
		w.checkRedis(bg)
	}()
	go func() {
		defer bgWG.Done()
		w.watchWrites(bg, watchInterval)
	}()
	go func() {
		defer bgWG.Done()
		w.ownPartitions(bg)
	}()
	go func() {
		defer bgWG.Done()
		_ = w.ring.Run(bg)
	}()
	go func() {
		defer bgWG.Done()
		w.runTimers(bg)
	}()
	// The ring and the timers keep going while the consumers drain, so the
	// owners passed to the scripts stay current until the last handler.
	defer func() {
		stopBG()
		bgWG.Wait()
	}()

	// A consumer that cannot run at all stops the others too.
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, len(w.consumers))
	for _, c := range w.consumers {
		go func() {
			err := c.Run(cctx)
			if err != nil {
				stop()
			}
			errs <- err
		}()
	}
	w.log.Info("msgworker running", "queues", w.cfg.Queues, "partitions", w.cfg.Partitions, "prefetch", w.cfg.Prefetch, "concurrency", w.cfg.Concurrency,
		"timer_interval", w.cfg.TimerInterval, "mailbox_cap", w.cfg.MailboxCap, "retention", w.cfg.Retention)
	var first error
	for range w.consumers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("consumer stopped: %w", first)
	}
	w.log.Info("msgworker stopped")
	return nil
}

// checkRedis logs what readiness will say of Redis durability
// (mailbox.LogDurability; DESIGN §7). When Redis cannot be
// reached it says so once and checks again every 2s until it can, or
// until ctx is done: the handlers wait for Redis meanwhile.
func (w *Worker) checkRedis(ctx context.Context) {
	for warned := false; ; warned = true {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := w.rdb.Ping(cctx).Err()
		if err == nil {
			mailbox.LogDurability(cctx, w.log, w.rdb, w.cfg.WaitReplicas, w.cfg.Durability == config.DurabilityRelaxed)
			cancel()
			return
		}
		cancel()
		if !warned {
			w.log.Warn("redis not reachable yet; handlers wait for it", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// watchInterval is how often the worker's write watch checks Redis.
const watchInterval = 250 * time.Millisecond

// watchWrites runs the write watch (mailbox.WriteWatch) every interval
// until ctx is done: when Redis lost writes it had acknowledged (an
// appendfsync everysec host crash, a failover to a replica behind), it
// logs a WARN naming when the lost span began and what it may have done
// to commands (DESIGN §7a, "Relaxed durability says so"), and counts it
// (gw_redis_writes_lost_total). Redis being unreachable is not logged
// here (the timers and handlers say it).
func (w *Worker) watchWrites(ctx context.Context, interval time.Duration) {
	watch := w.store.NewWriteWatch()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		losses, _ := watch.Check(cctx)
		cancel()
		for _, l := range losses {
			w.mx.writesLost.Inc()
			w.log.Warn("Redis lost writes it had acknowledged: commands accepted, answered or finished since then may be gone (GET 404), "+
				"end lost (-32006), or reach their client twice with different outcomes (DESIGN §7a)",
				"partition", l.Partition, "node", l.Node, "acknowledged", l.Had, "now", l.Got,
				"lost_since", l.Since.UTC().Format(time.RFC3339Nano), "durability", w.cfg.Durability)
		}
	}
}

// Ready is the worker's readiness, served at /readyz on the metrics
// listener: Redis answers PING and, unless GW_DURABILITY=relaxed, keeps
// what the worker acknowledges (mailbox.CheckDurable, every primary of a
// Cluster). The error says what is not ready.
func (w *Worker) Ready(ctx context.Context) error {
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: ping failed: %w", err)
	}
	if w.cfg.Durability == config.DurabilityRelaxed {
		return nil
	}
	if err := mailbox.CheckDurable(ctx, w.rdb, w.cfg.WaitReplicas); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

// runTimers polls the timer set every Config.TimerInterval until ctx is
// done. Every worker polls; the FireTimers script fires each due timer
// exactly once across all of them. A full batch is followed by another
// poll at once. While Redis fails, polls back off (doubling up to 5s) and
// the loop logs the outage once and the recovery once.
func (w *Worker) runTimers(ctx context.Context) {
	const maxBackoff = 5 * time.Second
	delay := w.cfg.TimerInterval
	failing := false
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, outcomes, err := w.fireOwned(ctx)
		if n > 0 {
			w.mx.timersFired.Add(float64(n))
		}
		for what, k := range outcomes {
			w.mx.timerOutcomes.WithLabelValues(what).Add(float64(k))
		}
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				failing = true
				w.log.Warn("cannot fire timers; backing off", "err", err)
			}
			delay = min(2*delay, maxBackoff)
		default:
			if failing {
				failing = false
				w.log.Info("timers firing again")
			}
			delay = w.cfg.TimerInterval
			if n >= w.cfg.TimerBatch {
				delay = 0
			}
		}
		t.Reset(delay)
	}
}

// workerID names this worker in the ring of partition owners.
func workerID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("worker-%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// ownPartitions joins the ring of partition owners (retrying while Redis
// is unreachable), follows it until ctx is done, then leaves, so that the
// other workers take the partitions over at once.
func (w *Worker) ownPartitions(ctx context.Context) {
	for {
		err := w.parts.Join(ctx)
		if err == nil {
			break
		}
		w.log.Warn("cannot join the ring of partition owners; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	_ = w.parts.Run(ctx)
	lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := w.parts.Leave(lctx); err != nil {
		w.log.Warn("cannot leave the ring of partition owners", "err", err)
	}
}

// fireOwned fires the due timers of the partitions this worker owns and
// relays their leftover outbox entries, polling only the partitions its
// schedule says are due (dueHeap): on an idle worker, one Redis call per
// tick whatever the partitions it owns, plus a full sweep of them every
// Config.TimerSweep.
//
// It fires a partition's timers only once it has reached the partition
// without error for the answer grace (DESIGN §7a): after an outage, or
// when it has just taken a partition over, the push servers first get
// one grace to complete the answers they held, so that a command its
// device answered in time never ends as timeout. Meanwhile it fires only
// the timers that start an attempt (mailbox.Store.FireStartsIn: not
// before, a retry's backoff, a lane's turn): their command is not on the
// wire, so no answer to it is held, and holding them delayed a scheduled
// command or a retry by up to a grace. Relays are never held.
func (w *Worker) fireOwned(ctx context.Context) (int, map[string]int, error) {
	outcomes := map[string]int{}
	owned := w.parts.Owned()
	now := time.Now()
	w.reach.own(owned, now)
	w.due.own(owned, now, w.cfg.TimerSweep)
	if len(owned) == 0 {
		return 0, outcomes, nil
	}
	reported, err := w.store.TakeReported(ctx, w.due.owns)
	if err != nil {
		w.reach.lost(owned...)
		return 0, outcomes, err
	}
	for _, p := range reported {
		w.due.soon(p, now)
	}
	due := w.due.take(now)
	if len(due) == 0 {
		return 0, outcomes, nil
	}
	next, err := w.store.NextWork(ctx, due)
	if err != nil {
		for _, p := range due {
			w.due.set(p, now)
		}
		w.reach.lost(owned...)
		return 0, outcomes, err
	}
	n := 0
	for i, p := range due {
		if next[i].IsZero() || next[i].After(now) {
			w.due.set(p, next[i])
			continue
		}
		// Work is due: poll again at the next tick, until a poll finds
		// none (or an error leaves it due).
		w.due.set(p, now)
		fire := w.store.FireTimersIn
		if !w.reach.steady(p, now, w.cfg.AnswerGrace) {
			fire = w.store.FireStartsIn // the timers no held answer can concern
		}
		k, o, err := fire(ctx, p, w.cfg.TimerBatch)
		n += k
		for what, c := range o {
			outcomes[what] += c
		}
		if err != nil {
			w.reach.lost(p)
			w.requeue(due[i+1:], now)
			return n, outcomes, err
		}
		if _, err := w.store.RelayOutbox(ctx, p, mailbox.OutboxAge, 100); err != nil {
			w.reach.lost(p)
			w.requeue(due[i+1:], now)
			return n, outcomes, err
		}
	}
	return n, outcomes, nil
}

// requeue makes parts, taken from the schedule but not looked at, due
// again at now.
func (w *Worker) requeue(parts []int, now time.Time) {
	for _, p := range parts {
		w.due.set(p, now)
	}
}

// reachability is, for each partition the worker owns, since when it has
// reached the partition without error. Only runTimers uses it.
type reachability map[int]time.Time

// own starts the clock of newly owned partitions at now and forgets the
// partitions no longer owned.
func (r reachability) own(owned []int, now time.Time) {
	mine := make(map[int]bool, len(owned))
	for _, p := range owned {
		mine[p] = true
		if _, ok := r[p]; !ok {
			r[p] = now
		}
	}
	for p := range r {
		if !mine[p] {
			delete(r, p)
		}
	}
}

// lost restarts the clock of partitions a step could not reach: they
// count from the next success.
func (r reachability) lost(parts ...int) {
	for _, p := range parts {
		delete(r, p)
	}
}

// steady reports whether p has been reached without error for grace.
func (r reachability) steady(p int, now time.Time, grace time.Duration) bool {
	since, ok := r[p]
	return ok && now.Sub(since) >= grace
}
