package mailbox

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// Orphan answers (DESIGN §7a, "The claim is the client's ledger"). A
// device may answer a command whose record a Redis failover lost: the
// complete step finds no record. If the client's claim is open and names
// that device, the answer is not dropped: a second step in the device's
// partition (orphan.lua) writes it to the partition's outbox as an orphan
// entry, and the relay applies it to the claim only while the claim is
// open for the same device and generation; otherwise the relay drops it
// ("stale"). So the client gets the device's real answer instead of the
// watchdog's -32006, and an orphan never overrides a final. Like every
// outbox entry, one whose relay failed is relayed by the partition's
// owner.
//
// An orphan is decided without the record's instants, so it is never
// judged late: the claim's watchdog, at deliver-by + timeout + 2 grace,
// bounds how long it can still be applied. It is counted (Store.Orphans,
// the events "orphan" in the device's partition and "orphan_applied" in
// the client's) and logged at WARN.

// Orphans is how many answers found no record and went to the outbox as
// orphans.
func (s *Store) Orphans() int64 { return s.orphans.Load() }

// orphan runs the orphan step for an answer (body, to) that found no
// record (keys: cmdKeys of p) while claim cl is open for device, then
// relays it. It returns the status the answer set (OutcomeSucceeded or
// OutcomeFailed), or OutcomeUnknown when the claim was no longer open for
// it (or a record appeared since).
func (s *Store) orphan(ctx context.Context, p int, keys []string, cl map[string]string, client, idKey, device, body string, to protocol.Status) (Outcome, error) {
	resp := `{"jsonrpc":"2.0",` + body + `,"id":` + claimID(cl, idKey) + `}`
	v, err := s.run(ctx, p, stepOrphan, keys, client, idKey, device, cl["gen"], string(to), resp, cl["grp"],
		telemetry.TraceParent(ctx))
	if err != nil {
		return "", fmt.Errorf("cannot keep the orphan answer to %s: %w", idKey, err)
	}
	head, entry := reply(v)
	e := parseOutbox(p, entry)
	if head != "orphan" || e == nil {
		return OutcomeUnknown, nil
	}
	e.orphan = true
	s.orphans.Add(1)
	s.log.WarnContext(ctx, "an answer found no record: kept as an orphan for the client's open claim",
		"client_id", client, "device_id", device, "msg_id", idKey)
	what, _, err := s.relayStep(ctx, e, "")
	if err != nil {
		// In the outbox: the partition's owner relays it.
		s.log.WarnContext(ctx, "cannot relay an orphan answer now; the partition's owner will", "client_id", client,
			"device_id", device, "msg_id", idKey, "err", err)
		return Outcome(to), nil
	}
	if what != "relayed" && what != "dup" {
		return OutcomeUnknown, nil
	}
	return Outcome(to), nil
}

// claimID is the command's id as its client wrote it (JSON), from claim
// cl of idKey.
func claimID(cl map[string]string, idKey string) string {
	if id := cl["id"]; id != "" {
		return id
	}
	b, _ := json.Marshal(idKey) // a claim made before claims kept the id
	return string(b)
}
