package mailbox

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wake-ups (DESIGN §5). A step that appends to a mailbox is followed, from
// Go, by a wake-up of the push servers that should stream it: SADD to
// each node's pending set (what its sweep reads when a message is lost),
// then a message on the node's wake channel (pub/sub, lossy: the fast
// path). Wake-ups are group-committed like the steps (batch.go): a call
// that finds fewer than wakeInFlight flushes under way sends its own at
// once; otherwise it waits, and the next flush takes every wake-up queued
// meanwhile, with one SADD (all its identities), one PEXPIRE and one
// PUBLISH per node, in one pipeline. Under light load nothing waits;
// under load one round trip and one pub/sub message carry many wake-ups.
//
// A wake message is a sequence of records (ParseWake reads them):
//
//	identity                                   a wake-up: read the mailbox
//	identity SP prev SP id SP expires SP tlen SP plen LF topic payload
//	                                           a wake-up that carries the
//	                                           entry id it announces
//
// records separated by LF (a record that carries an entry ends after its
// payload, whose length it gives). A message of one plain wake-up is the
// identity alone, as before records existed. prev is the ID of the
// mailbox's last entry just before id was appended ("-": the mailbox was
// empty): a session whose cursor is prev or later has read everything
// before id and may send the carried entry without reading the mailbox
// (Wake.Next). Anything else falls back to reading the mailbox, and the
// pending set and the sweep stay the safety net: pub/sub loses messages.

// wakeInFlight is how many wake-up flushes of a Store run at once. One:
// everything that queues during a flush goes in the next one
// (BenchmarkPutParallel/batched, CPU of the Puts and their wake-ups per
// Put, three alternating runs on a loaded machine: 17.5, 24.2, 21.7 µs
// with one flush at once, 30.6, 22.7, 27.8 µs with two).
const wakeInFlight = 1

// wakeMax bounds the wake-ups one flush carries.
const wakeMax = 256

// maxCarried is the largest entry (topic and payload) a wake-up carries;
// a larger one gets a plain wake-up. So a wake message stays under 2 MiB
// (wakeMax records), well within Redis's output buffer limit for pub/sub
// clients (8 MiB for 60 s by default), beyond which Redis would drop the
// node's subscription.
const maxCarried = 8 << 10

// Wake is one record of a wake message: identity's mailbox got a new
// entry; Carried when the record carries that entry.
type Wake struct {
	Identity string
	// Carried: Entry is the appended entry, as Fetch would return it
	// (Fetch's stamp aside: only entries that carry no command are
	// carried), and Prev the ID of the mailbox's last entry when it was
	// appended ("" when it was empty).
	Carried bool
	Entry   Entry
	Prev    string
}

// errWakeFormat is a wake message that does not parse.
var errWakeFormat = errors.New("mailbox: malformed wake message")

// ParseWake returns the records of a wake message, and an error for a
// malformed one (the records before the fault are returned).
func ParseWake(msg string) ([]Wake, error) {
	var out []Wake
	for len(msg) > 0 {
		line, rest, nl := strings.Cut(msg, "\n")
		f := strings.Split(line, " ")
		switch len(f) {
		case 1:
			if f[0] != "" {
				out = append(out, Wake{Identity: f[0]})
			}
			msg = rest
			continue
		case 6:
		default:
			return out, errWakeFormat
		}
		x, err1 := strconv.ParseInt(f[3], 10, 64)
		tl, err2 := strconv.Atoi(f[4])
		pl, err3 := strconv.Atoi(f[5])
		// tl and pl are checked one at a time: their sum may overflow.
		if !nl || f[0] == "" || err1 != nil || err2 != nil || err3 != nil || tl < 0 || pl < 0 || tl > len(rest) || pl > len(rest)-tl {
			return out, errWakeFormat
		}
		// read: a carried entry is one a Put appended, which carries no
		// command, so its ack deletes it unread, as one Fetch returned.
		w := Wake{Identity: f[0], Carried: true, Prev: f[1],
			Entry: Entry{ID: f[2], Topic: rest[:tl], Payload: []byte(rest[tl : tl+pl]), Expires: time.UnixMilli(x), read: true}}
		if w.Prev == "-" {
			w.Prev = ""
		}
		out = append(out, w)
		msg = rest[tl+pl:]
		if len(msg) > 0 {
			if msg[0] != '\n' {
				return out, errWakeFormat
			}
			msg = msg[1:]
		}
	}
	return out, nil
}

// Next reports whether a session that has read its mailbox up to cursor
// ("" for nothing yet) may send the carried entry next without reading
// the mailbox: it comes after cursor, and nothing came between cursor
// and it (Prev is cursor or before).
func (w Wake) Next(cursor string) bool {
	return w.Carried && CompareIDs(w.Entry.ID, cursor) > 0 && CompareIDs(w.Prev, cursor) <= 0
}

// CompareIDs compares two stream IDs ("ms-seq"; "" and malformed IDs
// are before every entry) as -1, 0 or +1.
func CompareIDs(a, b string) int {
	am, as := splitID(a)
	bm, bs := splitID(b)
	switch {
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}

func splitID(id string) (ms, seq uint64) {
	m, sq, ok := strings.Cut(id, "-")
	if !ok {
		return 0, 0
	}
	ms, err1 := strconv.ParseUint(m, 10, 64)
	seq, err2 := strconv.ParseUint(sq, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0
	}
	return ms, seq
}

// appendWake appends the record of w to a wake message.
func appendWake(b []byte, w *Wake) []byte {
	if len(b) > 0 {
		b = append(b, '\n')
	}
	b = append(b, w.Identity...)
	if !w.Carried {
		return b
	}
	prev := w.Prev
	if prev == "" {
		prev = "-"
	}
	b = append(b, ' ')
	b = append(b, prev...)
	b = append(b, ' ')
	b = append(b, w.Entry.ID...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, w.Entry.Expires.UnixMilli(), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(w.Entry.Topic)), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(w.Entry.Payload)), 10)
	b = append(b, '\n')
	b = append(b, w.Entry.Topic...)
	return append(b, w.Entry.Payload...)
}

// wakeCall is one caller's wake-up, waiting for or in a flush.
type wakeCall struct {
	nodes []string
	w     Wake
	err   error
	done  chan struct{}
}

// waker group-commits a Store's wake-ups.
type waker struct {
	mu      sync.Mutex
	queue   []*wakeCall
	running int
}

// wake tells the push servers that should stream identity's mailbox: the
// node of its live session (sess, read by the step) and owner, each once
// (DESIGN §5: SADD to the node's pending set, then a message on its wake
// channel; sharded pub/sub on Cluster). Wake-ups go out from Go after the
// step, never from inside it.
func (s *Store) wake(ctx context.Context, identity, sess, owner string) error {
	return s.wakeWith(ctx, Wake{Identity: identity}, sess, owner)
}

// wakeWith is wake with the record to send (one that may carry the
// entry), group-committed with concurrent wake-ups.
func (s *Store) wakeWith(ctx context.Context, w Wake, sess, owner string) error {
	var nodes []string
	switch {
	case sess != "" && owner != "" && owner != sess:
		nodes = []string{sess, owner}
	case sess != "":
		nodes = []string{sess}
	case owner != "":
		nodes = []string{owner}
	default:
		return nil
	}
	c := &wakeCall{nodes: nodes, w: w}
	wk := &s.waker
	wk.mu.Lock()
	if wk.running < wakeInFlight && len(wk.queue) == 0 {
		wk.running++
		wk.mu.Unlock()
		c.err = s.flushWakes(ctx, []*wakeCall{c})
		s.nextWakes()
		return c.err
	}
	c.done = make(chan struct{})
	wk.queue = append(wk.queue, c)
	if wk.running < wakeInFlight {
		wk.running++
		batch := s.takeWakesLocked()
		wk.mu.Unlock()
		go s.wakeLoop(batch)
	} else {
		wk.mu.Unlock()
	}
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// takeWakesLocked takes up to wakeMax queued wake-ups. The caller holds
// the waker's mu.
func (s *Store) takeWakesLocked() []*wakeCall {
	wk := &s.waker
	n := min(len(wk.queue), wakeMax)
	batch := make([]*wakeCall, n)
	copy(batch, wk.queue)
	rest := copy(wk.queue, wk.queue[n:])
	clear(wk.queue[rest:])
	wk.queue = wk.queue[:rest]
	return batch
}

// nextWakes hands what queued during a flush to a flushing goroutine, or
// ends the flush.
func (s *Store) nextWakes() {
	wk := &s.waker
	wk.mu.Lock()
	if len(wk.queue) == 0 {
		wk.running--
		wk.mu.Unlock()
		return
	}
	batch := s.takeWakesLocked()
	wk.mu.Unlock()
	go s.wakeLoop(batch)
}

// wakeLoop flushes batches of queued wake-ups until none is queued. The
// callers' contexts do not bound a flush; go-redis's timeouts do.
func (s *Store) wakeLoop(batch []*wakeCall) {
	wk := &s.waker
	for {
		err := s.flushWakes(context.Background(), batch)
		for _, c := range batch {
			c.err = err
			close(c.done)
		}
		wk.mu.Lock()
		if len(wk.queue) == 0 {
			wk.running--
			wk.mu.Unlock()
			return
		}
		batch = s.takeWakesLocked()
		wk.mu.Unlock()
	}
}

// flushWakes sends wake-ups in one pipeline: per node, one SADD of their
// identities to its pending set, its expiry, and one wake message with
// their records in order.
func (s *Store) flushWakes(ctx context.Context, batch []*wakeCall) error {
	type nodeWakes struct {
		node    string
		members []any
		msg     []byte
	}
	var per []*nodeWakes
	for _, c := range batch {
		for _, node := range c.nodes {
			var nw *nodeWakes
			for _, x := range per {
				if x.node == node {
					nw = x
					break
				}
			}
			if nw == nil {
				nw = &nodeWakes{node: node}
				per = append(per, nw)
			}
			nw.members = append(nw.members, c.w.Identity)
			nw.msg = appendWake(nw.msg, &c.w)
		}
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, nw := range per {
			pk := s.keys.NodePending(nw.node)
			p.SAdd(ctx, pk, nw.members...)
			p.PExpire(ctx, pk, pendingTTL)
			if s.cluster {
				p.SPublish(ctx, s.keys.NodeWake(nw.node), nw.msg)
			} else {
				p.Publish(ctx, s.keys.NodeWake(nw.node), nw.msg)
			}
		}
		return nil
	})
	return s.classify(err)
}
