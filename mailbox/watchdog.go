package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// The claim's watchdog (DESIGN §7a, "The claim is the client's ledger").
// A claim is made in the client's partition before the record is
// reserved in the device's; if the device's partition later loses the
// record (a Redis failover that lost the last writes), nothing in the
// device's partition would ever end the command, and the client would
// wait for a result that never comes. So every new claim arms a timer in
// its own partition, "w|client|device|key", due when the command cannot
// be open any more (accepted + expires_in + timeout + lease + 2 grace).
// The relay that makes the claim final removes it in the same step, so
// it fires only for a claim still open at that time, and then:
//
//   - the record is final: its result is relayed again (the relay that
//     should have done it was lost; relays are idempotent);
//   - the record is still open (a replay, a delivery that came late):
//     the watchdog is re-armed past the record's own deadlines;
//   - the record is a void tombstone (its publish failed and the client
//     got a 503): the watchdog goes, the claim stays until it expires;
//   - the record is gone: the command is lost beyond repair. The claim
//     becomes final as "lost" (-32006 "lost by the gateway") and the
//     client gets that result; it is logged at WARN and counted
//     (Store.Lost and the "lost" event of StatusCounts). The gateway
//     never rebuilds a record from an envelope (it needs a claim-time
//     snapshot it does not keep), so every missing record is beyond
//     repair.

// reasonLost is the message detail of a lost command's result.
const reasonLost = "lost by the gateway"

// watchMember names the watchdog timer of the claim (client, key) of a
// command to device. Its identity field is the client: it lives in the
// client's partition.
func watchMember(client, device, key string) string {
	return "w|" + client + "|" + device + "|" + key
}

// Lost is how many commands the claims' watchdogs ended as lost.
func (s *Store) Lost() int64 { return s.lost.Load() }

// watchClaim runs the watchdog member of partition p (see above) and
// returns its outcome: "noop" (the claim is final or gone), "relayed",
// "rearmed", "void", "lost" or "corrupt".
func (s *Store) watchClaim(ctx context.Context, p int, member, client, device, key string) (string, error) {
	pk := s.keys.Part(p)
	drop := func(outcome string) (string, error) {
		if err := s.rdb.ZRem(ctx, pk.Timers(), member).Err(); err != nil {
			return "", fmt.Errorf("cannot remove the watchdog of %s: %w", key, s.classify(err))
		}
		return outcome, nil
	}
	cl, err := s.claimOf(ctx, client, key)
	if err != nil {
		return "", fmt.Errorf("cannot read the claim of %s: %w", key, err)
	}
	if cl == nil || cl["state"] != "open" || cl["device"] != device {
		return drop("noop")
	}
	gen, _ := strconv.Atoi(cl["gen"])
	m, err := s.rdb.HGetAll(ctx, s.part(device).Command(client, key)).Result()
	if err != nil {
		return "", fmt.Errorf("cannot read the record of %s: %w", key, s.classify(err))
	}
	now := s.now()
	if len(m) == 0 {
		id := claimID(cl, key)
		e := &outboxEntry{client: client, key: key, device: device, gen: gen, status: string(protocol.StatusLost),
			resp:     `{"jsonrpc":"2.0",` + gatewayError(protocol.StatusLost, reasonLost) + `,"id":` + id + `}`,
			finished: msString(now), expires: msString(now.Add(s.opts.Retention)), grp: cl["grp"]}
		if _, err := s.relay(ctx, e, ""); err != nil {
			return "", err
		}
		s.lost.Add(1)
		s.log.Warn("command lost by the gateway: its record is gone; the client gets -32006",
			"client_id", client, "device_id", device, "msg_id", key)
		return "lost", nil
	}
	rec, err := decodeRecord(m)
	if err != nil {
		s.log.Warn("dropped the watchdog of a corrupt record", "client_id", client, "msg_id", key, "err", err)
		return drop("corrupt")
	}
	switch {
	case rec.Status == protocol.StatusVoid:
		return drop("void")
	case rec.Status.Final() && rec.Replays == gen:
		e := &outboxEntry{client: client, key: key, device: device, gen: gen, status: string(rec.Status),
			resp: string(rec.Response), finished: msString(rec.FinishedAt), expires: msString(rec.FinishedAt.Add(s.opts.Retention)),
			grp: cl["grp"]}
		if _, err := s.relay(ctx, e, ""); err != nil {
			return "", err
		}
		return "relayed", nil
	}
	// Still open (or a newer generation on its way): look again once its
	// own deadlines have passed.
	due := rec.DeliverBy.Add(rec.Timeout + 2*s.opts.AnswerGrace)
	if min := now.Add(s.opts.AnswerGrace); due.Before(min) {
		due = min
	}
	if err := s.rdb.ZAdd(ctx, pk.Timers(), redis.Z{Score: float64(due.UnixMilli()), Member: member}).Err(); err != nil {
		return "", fmt.Errorf("cannot re-arm the watchdog of %s: %w", key, s.classify(err))
	}
	return "rearmed", nil
}

// msString is t in unix milliseconds, as the outbox stores instants.
func msString(t time.Time) string { return strconv.FormatInt(ms(t), 10) }
