package mailbox

import (
	"context"
	"fmt"
	"strconv"
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
	m := es[0]
	str := func(f string) string { v, _ := m.Values[f].(string); return v }
	g, _ := strconv.Atoi(str("g"))
	e := &outboxEntry{p: p, id: m.ID, client: str("c"), key: str("k"), device: str("d"), gen: g,
		status: str("s"), resp: str("r"), finished: str("f"), expires: str("x")}
	for range 2 {
		if err := s.relay(ctx, e, ""); err != nil {
			return err
		}
	}
	return nil
}
