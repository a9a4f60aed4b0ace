package main

import (
	"container/heap"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// expiries ends sessions when their tokens expire (MQTT 5: DISCONNECT
// 0xA0), with one timer for the node instead of one per session: a heap
// of the sessions by expiry, the timer set for the first. A session
// leaves it when its connection ends.
type expiries struct {
	n     *Node
	mu    sync.Mutex
	h     expiryHeap
	timer *time.Timer // set for h[0]; nil until the first session
}

// expiryHeap orders sessions by token expiry; each session knows its
// index (session.expiryIdx, -1 when not in the heap).
type expiryHeap []*session

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].expiryIdx, h[j].expiryIdx = int32(i), int32(j)
}
func (h *expiryHeap) Push(x any) {
	s := x.(*session)
	s.expiryIdx = int32(len(*h))
	*h = append(*h, s)
}
func (h *expiryHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.expiryIdx = -1
	return s
}

// add watches s, whose token expires at s.expires (unix nanoseconds).
func (e *expiries) add(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	heap.Push(&e.h, s)
	if e.h[0] == s {
		e.arm()
	}
}

// remove stops watching s (its connection ended).
func (e *expiries) remove(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i := s.expiryIdx; i >= 0 {
		heap.Remove(&e.h, int(i))
	}
}

// arm sets the timer for the first expiry. The caller holds mu.
func (e *expiries) arm() {
	if len(e.h) == 0 {
		return
	}
	d := time.Until(time.Unix(0, e.h[0].expires))
	if e.timer == nil {
		e.timer = time.AfterFunc(d, e.fire)
		return
	}
	e.timer.Reset(d)
}

// fire ends the sessions whose tokens have expired, and sets the timer
// for the next.
func (e *expiries) fire() {
	now := time.Now().UnixNano()
	var due []*session
	e.mu.Lock()
	for len(e.h) > 0 && e.h[0].expires <= now {
		due = append(due, heap.Pop(&e.h).(*session))
	}
	e.arm()
	e.mu.Unlock()
	for _, s := range due {
		e.n.log.Info("token expired: closing session", "client_id", s.identity)
		if s.closing() {
			e.n.closeAnswered(s.cl, packets.ErrMaxConnectTime, "") // 0xA0
		}
	}
}

// stop stops the timer (the node is ending).
func (e *expiries) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timer != nil {
		e.timer.Stop()
	}
}
