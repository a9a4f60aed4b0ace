package mailbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/iotgw/gateway/protocol"
)

// Ordered lanes (issue 15). A command reserved with a Lane joins the end
// of that lane of its device (the sorted set protocol.PartKeys.Lanes, in
// the device's partition): lanes order by acceptance, that is by the
// reserve step, whatever order the workers then take the messages in.
// Only the lane's head, its oldest command that is not final, may go on
// the wire: Dispatch (or the timer of a scheduled command) of any other
// leaves it queued with its device request (OutcomeLaneWait, its message
// acked). Every step that ends a command, and Release, takes it out of
// its lane and, when it was the head and another command waits, arms that
// one's lane timer, due at once; the Store that ran the step fires it
// right after (advanceLane), and the partition's owner does when that
// Store could not. So expiry, cancel, timeout, dead letters, one-way
// successes and refusals all release the lane, and a waiting command
// whose own deliver-by passes expires like any queued one.

// advanceLane fires the lane timer member a final step armed ("" for
// none), so that the next command of the lane goes on the wire now
// rather than at the owner's next tick. A failure is logged: the timer
// stays in the partition's set for its owner.
func (s *Store) advanceLane(ctx context.Context, p int, member string) {
	if member == "" {
		return
	}
	parts := strings.SplitN(member, "|", 4)
	if len(parts) != 4 || parts[0] != "l" {
		return
	}
	_, keys := s.cmdKeys(parts[1], parts[2], parts[3])
	args := []any{member, s.horizonMs(), errExpired, reasonExpired, errTimeout, reasonTimeout, errRejected, reasonRejected}
	outcomes := map[string]int{}
	if _, err := s.fireBatch(ctx, p, []*batchCall{{p: p, keys: keys, args: args}}, nil, 0, outcomes); err != nil {
		s.log.Warn("cannot send the next command of a lane now; the partition's owner will",
			"device_id", parts[1], "client_id", parts[2], "msg_id", parts[3], "err", err)
	}
}

// Lane is one ordered lane of a device as the device view shows it.
type Lane struct {
	Name string
	// Commands counts the lane's commands that are not final, its head
	// included; Commands - 1 wait behind the head.
	Commands int
	// Head is the command that holds the lane (the only one that may be
	// on the wire), read from its record: Client, ID, Status and the
	// times tell what the lane waits for (an answer, a PUBACK, its
	// dispatch) and DeliverBy until when at the latest.
	Head *Command
}

// maxLaneMembers bounds what Lanes reads of one device's lanes.
const maxLaneMembers = 10000

// Lanes returns the ordered lanes of device that hold commands not yet
// final, sorted by name, each with its head's record (nil when the
// record is gone). It reads at most maxLaneMembers members.
func (s *Store) Lanes(ctx context.Context, device string) ([]Lane, error) {
	pk := s.part(device)
	ms, err := s.rdb.ZRange(ctx, pk.Lanes(device), 0, maxLaneMembers-1).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot read the lanes of %s: %w", device, s.classify(err))
	}
	var lanes []Lane
	var heads []string // record keys of the heads, in lanes' order
	for _, m := range ms {
		f := strings.SplitN(m, "|", 4)
		if len(f) != 4 {
			continue
		}
		if n := len(lanes); n > 0 && lanes[n-1].Name == f[0] {
			lanes[n-1].Commands++
			continue
		}
		lanes = append(lanes, Lane{Name: f[0], Commands: 1})
		heads = append(heads, pk.Command(f[2], f[3]))
	}
	for i, k := range heads {
		m, err := s.rdb.HGetAll(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("cannot read the head of lane %s of %s: %w", lanes[i].Name, device, s.classify(err))
		}
		if len(m) == 0 || m[fStatus] == string(protocol.StatusVoid) {
			continue
		}
		if c, err := decodeRecord(m); err == nil {
			c.LeaseToken = ""
			lanes[i].Head = c
		}
	}
	return lanes, nil
}
