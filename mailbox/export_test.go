package mailbox

import (
	"context"
	"fmt"
)

// Library returns the name and code of the function library.
func Library() (name, code string) { l := theLibrary(); return l.name, l.code }

// RelayTwice reads the oldest entry of partition p's outbox and relays it
// twice, as two relayers (or a relay repeated after a crash) would.
func RelayTwice(ctx context.Context, s *Store, p int) error {
	es, err := s.rdb.XRangeN(ctx, s.keys.Part(p).Outbox(), "-", "+", 1).Result()
	if err != nil {
		return err
	}
	if len(es) == 0 {
		return fmt.Errorf("outbox %d is empty", p)
	}
	e := outboxFromStream(p, es[0])
	for range 2 {
		if _, err := s.relay(ctx, e, ""); err != nil {
			return err
		}
	}
	return nil
}

// AsRead returns e marked as read from its mailbox, as Fetch returns an
// entry and ParseWake a carried one (its ack need not read it again).
func AsRead(e Entry) Entry { e.read = true; return e }
