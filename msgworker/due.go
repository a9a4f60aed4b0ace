package main

import (
	"container/heap"
	"time"
)

// dueHeap is a partition owner's schedule (DESIGN §7a "Costs that do not
// grow with P"): for each partition the worker owns, when it has work
// there next, as far as it knows; a heap of those times, so that each
// tick it polls only the partitions that are due. What it learns:
//
//   - a partition newly owned is due at once, and so is every owned
//     partition once per Config.TimerSweep (the full sweep, the
//     backstop);
//   - a poll (mailbox.Store.NextWork) gives a partition's next work
//     exactly: its earliest timer or its oldest outbox entry plus
//     mailbox.OutboxAge; a partition where the worker fired timers or
//     relayed is due again at the next tick, until a poll finds nothing
//     due;
//   - a step of any process that made a partition's work due earlier
//     reports it (mailbox.Store.TakeReported), which makes it due then.
//
// Items are removed lazily: an item counts only while it matches next.
type dueHeap struct {
	next    map[int]time.Time // zero: nothing to do known (or being polled)
	items   dueItems
	sweepAt time.Time
}

type dueItem struct {
	p  int
	at time.Time
}

type dueItems []dueItem

func (h dueItems) Len() int           { return len(h) }
func (h dueItems) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueItems) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueItems) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueItems) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

func newDueHeap() *dueHeap { return &dueHeap{next: map[int]time.Time{}} }

// own follows the owned partitions: a new one is due at now, a lost one
// is forgotten, and every one is due at now when the full sweep is.
func (d *dueHeap) own(owned []int, now time.Time, sweep time.Duration) {
	mine := make(map[int]bool, len(owned))
	for _, p := range owned {
		mine[p] = true
		if _, ok := d.next[p]; !ok {
			d.set(p, now)
		}
	}
	for p := range d.next {
		if !mine[p] {
			delete(d.next, p)
		}
	}
	if !now.Before(d.sweepAt) {
		for _, p := range owned {
			d.set(p, now)
		}
		d.sweepAt = now.Add(sweep)
	}
	if len(d.items) > 4*len(d.next)+64 { // drop the stale items
		d.items = d.items[:0]
		for p, at := range d.next {
			if !at.IsZero() {
				d.items = append(d.items, dueItem{p, at})
			}
		}
		heap.Init(&d.items)
	}
}

// owns reports whether p is an owned partition.
func (d *dueHeap) owns(p int) bool {
	_, ok := d.next[p]
	return ok
}

// set makes p due at at (zero: nothing to do), replacing what was known.
func (d *dueHeap) set(p int, at time.Time) {
	d.next[p] = at
	if !at.IsZero() {
		heap.Push(&d.items, dueItem{p, at})
	}
}

// soon makes p due at at, unless it already is earlier.
func (d *dueHeap) soon(p int, at time.Time) {
	if cur := d.next[p]; cur.IsZero() || at.Before(cur) {
		d.set(p, at)
	}
}

// take returns the partitions due by now, each once, and marks them as
// being polled: the caller sets each again from what it finds.
func (d *dueHeap) take(now time.Time) []int {
	var due []int
	for len(d.items) > 0 && !d.items[0].at.After(now) {
		it := heap.Pop(&d.items).(dueItem)
		if cur, ok := d.next[it.p]; ok && cur.Equal(it.at) {
			d.next[it.p] = time.Time{}
			due = append(due, it.p)
		}
	}
	return due
}
