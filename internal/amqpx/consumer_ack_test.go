package amqpx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
)

func ack(tag uint64) settlement     { return settlement{tag: tag, op: opAck} }
func ackUpTo(tag uint64) settlement { return settlement{tag: tag, op: opAck, multiple: true} }
func nack(tag uint64) settlement    { return settlement{tag: tag, op: opRequeue} }
func reject(tag uint64) settlement  { return settlement{tag: tag, op: opReject} }
func tags(from, to uint64) []uint64 {
	var ts []uint64
	for t := from; t <= to; t++ {
		ts = append(ts, t)
	}
	return ts
}

// trackerStep is one operation on a tagTracker and what it must give.
type trackerStep struct {
	do   string // "add", "settle", "advance", "flush"
	tags []uint64
	op   settleOp
	want []settlement // frames it appends (nil: none)
	ok   bool         // for add and settle: the result wanted
}

func add(ts ...uint64) trackerStep { return trackerStep{do: "add", tags: ts, ok: true} }
func done(op settleOp, tag uint64, want ...settlement) trackerStep {
	return trackerStep{do: "settle", tags: []uint64{tag}, op: op, want: want, ok: true}
}
func ignored(op settleOp, tag uint64) trackerStep {
	return trackerStep{do: "settle", tags: []uint64{tag}, op: op, ok: false}
}
func advance(want ...settlement) trackerStep { return trackerStep{do: "advance", want: want} }
func flush(want ...settlement) trackerStep   { return trackerStep{do: "flush", want: want} }

func TestTagTracker(t *testing.T) {
	tests := []struct {
		name  string
		steps []trackerStep
		// After the steps:
		waiting, ready int
		firstOpen      uint64
	}{
		{
			name:  "acks in order: one multiple ack",
			steps: []trackerStep{add(1, 2, 3), done(opAck, 1), done(opAck, 2), done(opAck, 3), advance(ackUpTo(3)), advance()},
		},
		{
			name:      "a single done tag is acked alone",
			steps:     []trackerStep{add(1, 2), done(opAck, 1), advance(ack(1))},
			firstOpen: 2,
		},
		{
			name: "out of order: nothing above an open tag",
			steps: []trackerStep{add(tags(1, 4)...), done(opAck, 3), done(opAck, 4), advance(),
				done(opAck, 1), advance(ack(1)), done(opAck, 2), advance(ackUpTo(4))},
		},
		{
			name: "a nack goes at once; the later multiple ack spans it",
			steps: []trackerStep{add(1, 2, 3), done(opAck, 1), done(opRequeue, 2, nack(2)), done(opAck, 3),
				advance(ackUpTo(3))},
		},
		{
			name:  "a reject at the front",
			steps: []trackerStep{add(1, 2, 3), done(opReject, 1, reject(1)), done(opAck, 2), done(opAck, 3), advance(ackUpTo(3))},
		},
		{
			name: "one done tag between settled ones: a single ack of it",
			steps: []trackerStep{add(1, 2, 3), done(opRequeue, 1, nack(1)), done(opReject, 3, reject(3)),
				done(opAck, 2), advance(ack(2))},
		},
		{
			name: "a run ending in a nack: the ack names the last done tag",
			steps: []trackerStep{add(1, 2, 3), done(opAck, 1), done(opAck, 2), done(opRequeue, 3, nack(3)),
				advance(ackUpTo(2))},
		},
		{
			name: "a nack below an open tag stays single and is skipped later",
			steps: []trackerStep{add(tags(1, 4)...), done(opRequeue, 2, nack(2)), done(opAck, 3), advance(),
				done(opAck, 1), advance(ackUpTo(3)), done(opAck, 4), advance(ack(4))},
		},
		{
			name: "settled twice, never tracked, already passed: ignored",
			steps: []trackerStep{add(1, 2), done(opAck, 1), ignored(opAck, 1), ignored(opRequeue, 1),
				ignored(opAck, 9), ignored(opAck, 0), advance(ack(1)), ignored(opAck, 1), done(opReject, 2, reject(2)),
				ignored(opAck, 2), advance()},
		},
		{
			name: "flush acks what waits above open tags one by one",
			steps: []trackerStep{add(tags(1, 5)...), done(opAck, 2), done(opAck, 3), done(opAck, 5),
				flush(ack(2), ack(3), ack(5)), flush(), done(opAck, 1), advance(ack(1)),
				done(opAck, 4), advance(ack(4))},
		},
		{
			name: "flush advances first",
			steps: []trackerStep{add(tags(1, 5)...), done(opAck, 1), done(opAck, 2), done(opAck, 4),
				flush(ackUpTo(2), ack(4))},
			firstOpen: 3,
		},
		{
			name:      "tags out of order are refused",
			steps:     []trackerStep{add(5), {do: "add", tags: []uint64{3}, ok: false}, {do: "add", tags: []uint64{5}, ok: false}, add(7)},
			firstOpen: 5,
		},
		{
			name: "gaps in the tags are fine",
			steps: []trackerStep{add(2, 5, 9), done(opAck, 5), done(opAck, 9), advance(), ignored(opAck, 3),
				done(opAck, 2), advance(ackUpTo(9))},
		},
		{
			name:    "counters",
			steps:   []trackerStep{add(tags(1, 6)...), done(opAck, 1), done(opRequeue, 2, nack(2)), done(opAck, 3), done(opAck, 5)},
			waiting: 3, ready: 2, firstOpen: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr tagTracker
			for i, s := range tt.steps {
				var got []settlement
				switch s.do {
				case "add":
					for _, tag := range s.tags {
						if ok := tr.add(tag); ok != s.ok {
							t.Fatalf("step %d: add(%d) = %v, want %v", i, tag, ok, s.ok)
						}
					}
					continue
				case "settle":
					var ok bool
					got, ok = tr.settle(s.tags[0], s.op, nil)
					if ok != s.ok {
						t.Fatalf("step %d: settle(%d, %v) ok = %v, want %v", i, s.tags[0], s.op, ok, s.ok)
					}
				case "advance":
					got = tr.advance(nil)
				case "flush":
					got = tr.flush(nil)
				}
				if !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d (%s %v %v): got %+v, want %+v", i, s.do, s.tags, s.op, got, s.want)
				}
			}
			if tr.waiting() != tt.waiting || tr.ready() != tt.ready || tr.firstOpen() != tt.firstOpen {
				t.Errorf("waiting %d, ready %d, firstOpen %d; want %d, %d, %d",
					tr.waiting(), tr.ready(), tr.firstOpen(), tt.waiting, tt.ready, tt.firstOpen)
			}
		})
	}
}

// TestTagTrackerLong runs many tags through, so the slice is compacted
// many times, in a random order of completion.
func TestTagTrackerLong(t *testing.T) {
	var tr tagTracker
	b := newFakeBroker()
	r := rand.New(rand.NewPCG(1, 2))
	var open []uint64
	next := uint64(1)
	const total = 20000
	for settled := 0; settled < total; settled++ {
		for len(open) < 64 && next <= total {
			tr.add(next)
			b.deliver(next)
			open = append(open, next)
			next++
			// It holds the tags from the lowest open one on, and at
			// most as many again (or 64) before them.
			if live := len(tr.tags) - tr.head; len(tr.tags) > 2*live+64 {
				t.Fatalf("the tracker holds %d tags for %d live ones: not compacted", len(tr.tags), live)
			}
		}
		i := r.IntN(len(open))
		tag := open[i]
		open = append(open[:i], open[i+1:]...)
		op := opAck
		if r.IntN(10) == 0 {
			op = settleOp(2 + r.IntN(2)) // opRequeue or opReject
		}
		b.decide(tag, op)
		out, ok := tr.settle(tag, op, nil)
		if !ok {
			t.Fatalf("settle(%d) refused", tag)
		}
		if r.IntN(8) == 0 {
			out = tr.flush(out)
		} else {
			out = tr.advance(out)
		}
		for _, s := range out {
			if err := b.apply(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range tr.flush(nil) {
		if err := b.apply(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.check(); err != nil {
		t.Fatal(err)
	}
}

// fakeBroker models a channel's unacked deliveries as RabbitMQ keeps them:
// a settlement of a tag it does not hold (never delivered, or settled
// already) is the PRECONDITION_FAILED "unknown delivery tag" that closes
// the channel. It also checks that every delivery is settled as its
// handler decided, and only after the handler decided.
type fakeBroker struct {
	mu       sync.Mutex
	unacked  map[uint64]bool
	decided  map[uint64]settleOp // what the handler returned
	settled  map[uint64]settleOp // what the broker did
	frames   int
	multiple int
	err      error
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{unacked: map[uint64]bool{}, decided: map[uint64]settleOp{}, settled: map[uint64]settleOp{}}
}

func (b *fakeBroker) deliver(tag uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unacked[tag] = true
}

// decide records the handler's outcome; call it before settling.
func (b *fakeBroker) decide(tag uint64, op settleOp) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.decided[tag] = op
}

func (b *fakeBroker) apply(s settlement) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.op == 0 {
		return nil
	}
	b.frames++
	fail := func(format string, args ...any) error {
		if b.err == nil {
			b.err = fmt.Errorf(format, args...)
		}
		return b.err
	}
	if !b.unacked[s.tag] {
		return fail("PRECONDITION_FAILED - unknown delivery tag %d (%v, multiple %v)", s.tag, s.op, s.multiple)
	}
	covered := []uint64{s.tag}
	if s.multiple {
		b.multiple++
		covered = covered[:0]
		for t := range b.unacked {
			if t <= s.tag {
				covered = append(covered, t)
			}
		}
	}
	for _, t := range covered {
		d, ok := b.decided[t]
		switch {
		case !ok:
			return fail("%v of %d (multiple %v) settles %d before its handler returned", s.op, s.tag, s.multiple, t)
		case d != s.op:
			return fail("%v of %d (multiple %v) settles %d, whose handler decided %v", s.op, s.tag, s.multiple, t, d)
		}
		delete(b.unacked, t)
		b.settled[t] = s.op
	}
	return nil
}

// check reports the first error seen, or a delivery left unsettled.
func (b *fakeBroker) check() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	for t, d := range b.decided {
		if got, ok := b.settled[t]; !ok || got != d {
			return fmt.Errorf("tag %d: decided %v, settled %v", t, d, got)
		}
	}
	if len(b.unacked) > 0 {
		return fmt.Errorf("%d deliveries left unacked", len(b.unacked))
	}
	return nil
}

func (b *fakeBroker) Ack(tag uint64, multiple bool) error {
	return b.apply(settlement{tag: tag, op: opAck, multiple: multiple})
}

func (b *fakeBroker) Nack(tag uint64, multiple, requeue bool) error {
	if multiple || !requeue {
		return b.apply(settlement{tag: tag}) // never sent by the consumer
	}
	return b.apply(settlement{tag: tag, op: opRequeue})
}

func (b *fakeBroker) Reject(tag uint64, requeue bool) error {
	if requeue {
		return errors.New("reject with requeue is never sent")
	}
	return b.apply(settlement{tag: tag, op: opReject})
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestAckBatcherConcurrent settles thousands of deliveries from many
// goroutines in random order, with nacks and rejects mixed in, against
// the fake broker.
func TestAckBatcherConcurrent(t *testing.T) {
	for _, prefetch := range []int{1, 8, 128} {
		t.Run(fmt.Sprint("prefetch ", prefetch), func(t *testing.T) {
			t.Parallel()
			b := newFakeBroker()
			a := newAckBatcher(b, prefetch, make(chan struct{}), discardLogger())
			go a.run()
			const n = 5000
			work := make(chan uint64, prefetch)
			var wg sync.WaitGroup
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 7))
					for tag := range work {
						time.Sleep(time.Duration(r.IntN(500)) * time.Microsecond)
						op := opAck
						switch r.IntN(20) {
						case 0:
							op = opRequeue
						case 1:
							op = opReject
						}
						b.decide(tag, op)
						a.settle(tag, op)
					}
				}()
			}
			for tag := uint64(1); tag <= n; tag++ {
				b.deliver(tag)
				a.track(tag)
				work <- tag
			}
			close(work)
			wg.Wait()
			a.finish()
			if err := b.check(); err != nil {
				t.Fatal(err)
			}
			if len(b.decided) != n {
				t.Fatalf("%d decided, want %d", len(b.decided), n)
			}
			t.Logf("prefetch %d: %d deliveries settled in %d frames (%d multiple acks)", prefetch, n, b.frames, b.multiple)
			// A tenth are nacks and rejects, each a frame of its own.
			if prefetch >= 128 && b.frames > n/4 {
				t.Errorf("%d frames for %d deliveries: acks not coalesced", b.frames, n)
			}
		})
	}
}

// TestAckBatcherTiming checks the policy: acks of the front wait for a
// batch or the linger time, and acks held back by an open delivery go
// one by one after maxBlock.
func TestAckBatcherTiming(t *testing.T) {
	b := newFakeBroker()
	a := newAckBatcher(b, 32, make(chan struct{}), discardLogger())
	a.pol = ackPolicy{batch: 4, linger: 200 * time.Millisecond, blockLimit: 100, maxBlock: 600 * time.Millisecond}
	go a.run()
	defer a.finish()
	for tag := uint64(1); tag <= 10; tag++ {
		b.deliver(tag)
		a.track(tag)
	}
	settle := func(tag uint64) {
		b.decide(tag, opAck)
		a.settle(tag, opAck)
	}
	unacked := func() []uint64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		var ts []uint64
		for t := range b.unacked {
			ts = append(ts, t)
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		return ts
	}
	wait := func(what string, d time.Duration, want []uint64) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !reflect.DeepEqual(unacked(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: unacked %v, want %v", what, unacked(), want)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	// A batch goes at once.
	for tag := uint64(1); tag <= 4; tag++ {
		settle(tag)
	}
	wait("a full batch", 150*time.Millisecond, tags(5, 10))
	if b.multiple != 1 {
		t.Errorf("%d multiple acks, want 1", b.multiple)
	}
	// Fewer wait for the linger time.
	t0 := time.Now()
	settle(5)
	time.Sleep(20 * time.Millisecond)
	if got := unacked(); !reflect.DeepEqual(got, tags(5, 10)) {
		t.Fatalf("acked before the linger time: unacked %v", got)
	}
	wait("lingered", 2*time.Second, tags(6, 10))
	if took := time.Since(t0); took < 200*time.Millisecond {
		t.Errorf("acked after %v, before the linger time", took)
	}
	// 6 stays open: 7 and 8 wait behind it for maxBlock, then go alone.
	t0 = time.Now()
	settle(7)
	settle(8)
	time.Sleep(100 * time.Millisecond)
	if got := unacked(); !reflect.DeepEqual(got, tags(6, 10)) {
		t.Fatalf("acked above an open delivery before maxBlock: unacked %v", got)
	}
	wait("held back", 2*time.Second, []uint64{6, 9, 10})
	if took := time.Since(t0); took < 600*time.Millisecond {
		t.Errorf("acked after %v, before maxBlock", took)
	}
	settle(6)
	settle(9)
	wait("after the blocker", 2*time.Second, []uint64{10})
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		t.Fatal(b.err)
	}
}

// TestAckBatcherBlockLimit: many done deliveries behind an open one are
// acked at once, without waiting for maxBlock.
func TestAckBatcherBlockLimit(t *testing.T) {
	b := newFakeBroker()
	a := newAckBatcher(b, 32, make(chan struct{}), discardLogger())
	a.pol = ackPolicy{batch: 4, linger: time.Hour, blockLimit: 8, maxBlock: time.Hour}
	go a.run()
	for tag := uint64(1); tag <= 20; tag++ {
		b.deliver(tag)
		a.track(tag)
	}
	for tag := uint64(2); tag <= 9; tag++ {
		b.decide(tag, opAck)
		a.settle(tag, opAck)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.unacked)
		b.mu.Unlock()
		if n == 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d unacked, want 12 (1 and 10-20)", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// finish sends what is decided and nothing else.
	b.decide(1, opRequeue)
	a.settle(1, opRequeue)
	a.finish()
	a.settle(10, opAck) // after finish: dropped
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil || len(b.unacked) != 11 || b.settled[1] != opRequeue {
		t.Fatalf("after finish: err %v, %d unacked, 1 settled %v", b.err, len(b.unacked), b.settled[1])
	}
}

// TestAckBatcherStopsWhenLost: once the channel is lost, nothing more is
// sent and settle does not block.
func TestAckBatcherStopsWhenLost(t *testing.T) {
	b := newFakeBroker()
	lost := make(chan struct{})
	a := newAckBatcher(b, 8, lost, discardLogger())
	go a.run()
	b.deliver(1)
	a.track(1)
	close(lost)
	<-a.done
	b.decide(1, opAck)
	a.settle(1, opAck)
	a.finish() // returns at once
	a.abandon()
	if b.frames != 0 {
		t.Fatalf("%d frames sent after the channel was lost", b.frames)
	}
}

// TestConsumerCoalescedAcksOutOfOrder runs many concurrent handlers that
// finish out of order, with nacks and rejects mixed in, against the real
// broker. A settlement of a tag the broker no longer holds (an ack twice,
// or a nack covered by an earlier multiple ack) would close the channel
// with PRECONDITION_FAILED: the consumer would reconnect and messages
// would come again.
func TestConsumerCoalescedAcksOutOfOrder(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	const n = 600
	var rec calls
	var handled atomic.Int64
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0), Prefetch: 64, Concurrency: 32},
		func(ctx context.Context, d Delivery) error {
			k := rec.add(d)
			handled.Add(1)
			var i int
			fmt.Sscanf(d.MessageID, "m%d", &i)
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			switch {
			case i%10 == 3 && k == 1:
				return errors.New("try again") // nacked with requeue, then acked
			case i%10 == 7:
				return fmt.Errorf("poison: %w", ErrReject)
			}
			return nil
		})
	stop := startConsumer(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if err := p.Publish(ctx, topo.CommandsExchange, commandKey, []byte("{}"), Headers{MessageID: fmt.Sprint("m", i)}); err != nil {
			t.Fatal(err)
		}
	}
	want := int64(n + n/10) // every message once, the nacked ones twice
	eventually(t, 30*time.Second, "all handled", func() bool { return handled.Load() >= want })
	conn := testenv.AMQP(t)
	eventually(t, 10*time.Second, "queues settled", func() bool {
		qi, err := QueueDepth(context.Background(), conn, topo.CommandQueue(0), topo.CommandsDeadQueue)
		return err == nil && qi[topo.CommandQueue(0)].Messages == 0 && qi[topo.CommandsDeadQueue].Messages == n/10
	})
	// Stop the consumer: then every handler call has returned, and a
	// delivery left unacked would be back in the queue (checked below), so
	// the counts are final and no redelivery can follow them.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if r := c.Reconnects(); r != 0 {
		t.Fatalf("the consumer reconnected %d times: the broker closed the channel", r)
	}
	for i := range n {
		id := fmt.Sprint("m", i)
		wantCalls := 1
		if i%10 == 3 {
			wantCalls = 2
		}
		if got := rec.of(id); len(got) != wantCalls {
			t.Fatalf("%s handled %d times, want %d", id, len(got), wantCalls)
		}
	}
	if got := handled.Load(); got != want {
		t.Fatalf("%d handler calls, want %d", got, want)
	}
	// Nothing is left unacked either: the queue is still empty once the
	// consumer has gone.
	if d := depth(t, conn, topo.CommandQueue(0)); d != 0 {
		t.Fatalf("%d messages back in the queue after the consumer stopped: they were not acked", d)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	dead := map[string]bool{}
	for {
		d, ok, err := ch.Get(topo.CommandsDeadQueue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		dead[d.MessageId] = true
	}
	if len(dead) != n/10 {
		t.Fatalf("%d dead letters, want %d", len(dead), n/10)
	}
	for i := 7; i < n; i += 10 {
		if !dead[fmt.Sprint("m", i)] {
			t.Errorf("m%d is not in the dead letters", i)
		}
	}
}
