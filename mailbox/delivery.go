package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// Reasons written into gateway results (and Command.Reason).
const (
	reasonExpired  = "not delivered within expires_in"
	reasonRejected = "device mailbox full"
	reasonTimeout  = "no answer within timeout of delivery"
)

// The '"error":…' members of those results, built once.
var (
	errExpired  = gatewayError(protocol.StatusExpired, reasonExpired)
	errRejected = gatewayError(protocol.StatusRejected, reasonRejected)
	errTimeout  = gatewayError(protocol.StatusTimeout, reasonTimeout)
)

// Dispatch handles one delivery of a command envelope from the commands
// queue, in one script: queued → sent (stamps SentAt), appends the device
// request (env.DeviceRequest()) to the device's mailbox with expiry
// DeliverBy, and signals the node of the device's live session and
// deviceOwner. The deliver-by timer armed at Reserve (or ReplayDead) is
// moved to DeliverBy, now the deadline of the sent command. A replayed
// command leaves the dead set here.
//
// A record still pending (the worker was faster than the apiserver's
// MarkQueued) is marked queued first: the message is in the queue, so the
// command is durable.
//
// Outcomes:
//   - OutcomeSent: in the device's mailbox.
//   - OutcomeExpired: DeliverBy had passed; the client got -32002.
//   - OutcomeRejected: the device's mailbox was full; the client got -32005.
//   - OutcomeRetried, OutcomeRetryScheduled: expired or rejected so, but
//     its retry policy took the next attempt (in the mailbox at once, or
//     after its backoff).
//   - OutcomeNoop: the record is sent or beyond (a redelivery after a
//     crash, a cancel, a final state: never a second mailbox entry), or
//     it does not exist, or it names another device or method than the
//     envelope. A missing record means the command was released after a
//     failed publish (the client got 503), or its retention ran out before
//     a replay of an old message: in both cases there is nothing to
//     deliver, and the caller acks the message. A corrupt record is a
//     noop too (logged).
//
// The trace context of ctx (the worker's span), or else env.TraceParent,
// is kept in the record (field tp) and in the device's mailbox entry
// (Entry.TraceParent).
//
// clientOwner and deviceOwner are the ring owners (node IDs) of the client
// and the device. Any error means Redis was not changed or not reached:
// nack and retry.
func (s *Store) Dispatch(ctx context.Context, env *protocol.Envelope, deviceOwner, clientOwner string) (Outcome, error) {
	method, req, err := env.DeviceCommand()
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	p, keys := s.cmdKeys(env.Device, env.Client, env.MsgID.Key())
	tp := telemetry.TraceParent(ctx)
	if tp == "" {
		tp = env.TraceParent
	}
	v, err := s.run(ctx, p, stepDispatch, keys,
		env.Device, method, string(req), ms(env.DeliverBy), s.horizonMs(),
		errExpired, reasonExpired, errRejected, reasonRejected, tp)
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	a, _ := v.([]any)
	head, detail := reply(v)
	switch head {
	case "corrupt":
		s.log.WarnContext(ctx, "dispatch of a corrupt record: nothing changed", "client_id", env.Client,
			"device_id", env.Device, "msg_id", env.MsgID.Key())
		return OutcomeNoop, nil
	case string(OutcomeNoop):
		if detail == "missing" {
			s.log.WarnContext(ctx, "dispatch found no record for an accepted command", "client_id", env.Client,
				"device_id", env.Device, "msg_id", env.MsgID.Key())
			s.missing.Add(1)
		} else {
			s.log.DebugContext(ctx, "dispatch is a no-op", "client_id", env.Client, "device_id", env.Device,
				"msg_id", env.MsgID.Key(), "why", detail)
		}
	case string(OutcomeSent), string(OutcomeRetried):
		sess, _ := a[2].(string)
		if deviceOwner == "" && s.opts.OwnerOf != nil {
			deviceOwner = s.opts.OwnerOf(env.Device)
		}
		if err := s.wake(ctx, env.Device, sess, deviceOwner); err != nil {
			s.log.WarnContext(ctx, "cannot wake the device's push server; its sweep will find the entry",
				"device_id", env.Device, "err", err)
		}
	}
	if len(a) > 3 {
		s.relayNow(ctx, parseOutbox(p, a[3]), clientOwner)
	}
	return Outcome(head), nil
}

// Missing is how many steps found no record for a command an envelope
// says was accepted (logged at WARN as they happen).
func (s *Store) Missing() int64 { return s.missing.Load() }

// Complete applies a device's answer (DESIGN §5: run by the push server
// that read it, before it PUBACKs): sent or delivered → succeeded
// (resp.Result) or failed (resp.Error). held is how long ago the push
// server read the answer (its monotonic clock): the step decides with
// received = now − held, so a timeout is decided by when the answer
// reached the edge. An answer received after delivered + timeout ends the
// command as timeout with the answer kept as late. It fills DeliveredAt
// if the PUBACK was not seen yet, cancels the timers, removes the
// mailbox entry, and relays the client's response.
//
// The same answer again returns OutcomeDuplicate; any other answer to a
// final command is recorded in Late and returns OutcomeLate. An answer
// whose record is gone while the client's claim is open for this device
// is an orphan: it becomes the claim's final (succeeded or failed, which
// it returns) through the outbox, as orphan.go says. An unknown command
// returns OutcomeUnknown; one of another device, one not yet sent, or a
// corrupt record returns OutcomeOtherDevice, OutcomeNotSent, OutcomeNoop.
//
// The trace context of ctx (the span of the answer's completion), when it
// continues the command's trace (the same trace ID as the record's tp),
// replaces the record's and goes with the result to the client; else
// the record's goes.
func (s *Store) Complete(ctx context.Context, client, idKey, device string, resp *protocol.Response, held time.Duration, clientOwner string) (Outcome, error) {
	if resp == nil {
		return "", errors.New("mailbox: Complete needs a response")
	}
	raw, err := json.Marshal(resp)
	if err != nil {
		return "", fmt.Errorf("cannot complete command %s: %w", idKey, err)
	}
	var body string
	to := protocol.StatusSucceeded
	if resp.Error != nil {
		e, err := json.Marshal(resp.Error)
		if err != nil {
			return "", fmt.Errorf("cannot complete command %s: %w", idKey, err)
		}
		body, to = `"error":`+string(e), protocol.StatusFailed
	} else {
		result := resp.Result
		if len(result) == 0 {
			result = json.RawMessage("null")
		}
		body = `"result":` + string(result)
	}
	p, keys := s.cmdKeys(device, client, idKey)
	v, err := s.run(ctx, p, stepComplete, keys, device, body, string(to), string(raw),
		max(held, 0).Milliseconds(), errTimeout, reasonTimeout, telemetry.TraceParent(ctx),
		protocol.AnswerAttempt(resp), errExpired, reasonExpired, errRejected, reasonRejected)
	if err != nil {
		return "", fmt.Errorf("cannot complete command %s: %w", idKey, err)
	}
	a, _ := v.([]any)
	head, _ := reply(v)
	switch head {
	case "corrupt":
		s.log.WarnContext(ctx, "answer to a corrupt record: nothing changed", "client_id", client, "device_id", device, "msg_id", idKey)
		return OutcomeNoop, nil
	case string(OutcomeUnknown):
		// The record of another device's command lives in that device's
		// partition: the client's claim tells whose it is. An open claim
		// of this device whose record is gone takes the answer as an
		// orphan (orphan.go).
		cl, err := s.claimOf(ctx, client, idKey)
		if err != nil {
			return "", fmt.Errorf("cannot complete command %s: %w", idKey, err)
		}
		switch {
		case cl != nil && cl["device"] != device:
			return OutcomeOtherDevice, nil
		case cl != nil && cl["state"] == "open":
			return s.orphan(ctx, p, keys, cl, client, idKey, device, body, to)
		}
	}
	if len(a) > 3 {
		s.relayNow(ctx, parseOutbox(p, a[3]), clientOwner)
	}
	s.wakeRetried(ctx, device, head, a)
	return Outcome(head), nil
}

// wakeRetried wakes the push server of device when a step's reply
// (outcome head, then the entry and the session node) put the next
// attempt of a retried command into its mailbox.
func (s *Store) wakeRetried(ctx context.Context, device, head string, a []any) {
	if head != string(OutcomeRetried) || len(a) < 3 {
		return
	}
	sess, _ := a[2].(string)
	owner := ""
	if s.opts.OwnerOf != nil {
		owner = s.opts.OwnerOf(device)
	}
	if err := s.wake(ctx, device, sess, owner); err != nil {
		s.log.WarnContext(ctx, "cannot wake the device's push server; its sweep will find the entry", "device_id", device, "err", err)
	}
}

// fireBatch bounds the timers one call applies.
const fireBatch = 100

// FireTimers fires the due timers of every partition (at most limit per
// partition); see FireTimersIn. Partition owners call FireTimersIn for
// their own partitions instead.
func (s *Store) FireTimers(ctx context.Context, limit int, ownerOf func(identity string) string) (int, error) {
	n := 0
	for p := 0; p < s.opts.Partitions; p++ {
		k, _, err := s.fireTimersIn(ctx, p, limit, ownerOf, "")
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// FireTimersOutcomes is FireTimers that also counts what the timers did,
// by outcome.
func (s *Store) FireTimersOutcomes(ctx context.Context, limit int, ownerOf func(identity string) string) (int, map[string]int, error) {
	outcomes := map[string]int{}
	n := 0
	for p := 0; p < s.opts.Partitions; p++ {
		k, o, err := s.fireTimersIn(ctx, p, limit, ownerOf, "")
		n += k
		for what, c := range o {
			outcomes[what] += c
		}
		if err != nil {
			return n, outcomes, err
		}
	}
	return n, outcomes, nil
}

// FireTimersIn reads up to limit due timers of partition p (score ≤ now)
// and applies them in one batch of the fire step, which re-checks that
// each is still due and takes it, so competing owners never apply one
// twice:
//
//   - deliver-by on a queued command, or on a sent one not on the wire:
//     expired (-32002). On the wire (SendingAt set, no PUBACK yet): re-
//     armed once as an answer timer one timeout + grace later. On a
//     pending command: re-armed to the end of its lease while the lease
//     runs, else expired (through queued).
//   - watchdog of a claim still open when its command cannot be open any
//     more: see watchdog.go ("relayed", "rearmed", "void", "lost").
//   - answer (delivered + timeout + grace): sent or delivered → timeout
//     (-32001); a sent command no longer on the wire (handed back with
//     Unsend) expires at its deliver-by instead.
//
// It returns how many command timers it applied (a malformed one,
// dropped, included; not the claims' watchdogs) and the outcomes of all: "expired", "timeout", "rearmed",
// "retried", "retry_scheduled" and "retry_waits" (a retry policy's next attempt), "noop"
// (already final or gone), "notdue" (taken or moved by someone else),
// "malformed" and "corrupt".
func (s *Store) FireTimersIn(ctx context.Context, p, limit int) (int, map[string]int, error) {
	return s.fireTimersIn(ctx, p, limit, nil, "")
}

// startKinds are the kinds of the timers that start an attempt and end
// nothing an answer could have ended: scheduled ('s': not_before, a
// retry's backoff) and lane ('l') timers, whose command is not on the
// wire, so that no device's answer to it can be held anywhere.
const startKinds = "sl"

// FireStartsIn is FireTimersIn for only the timers that start an
// attempt (a scheduled command's not-before, a retry's backoff, an
// ordered lane's turn). A partition's owner fires these while it holds
// the others for the answer grace (DESIGN §7a: after it took the
// partition over, or after an outage, the push servers first complete
// the answers they held): a command not on the wire has no held answer
// to wait for, so it goes on the wire at its time, not one grace later.
// Among the first limit due timers it fires those kinds and leaves the
// others due.
func (s *Store) FireStartsIn(ctx context.Context, p, limit int) (int, map[string]int, error) {
	return s.fireTimersIn(ctx, p, limit, nil, startKinds)
}

// fireTimersIn is FireTimersIn; ownerOf, when set, names the push server
// to wake for a client whose result a timer produced (default
// Options.OwnerOf); kinds, when not empty, are the timer kinds fired
// (the others are left due).
func (s *Store) fireTimersIn(ctx context.Context, p, limit int, ownerOf func(string) string, kinds string) (int, map[string]int, error) {
	outcomes := map[string]int{}
	if limit <= 0 {
		limit = fireBatch
	}
	tk := s.keys.Part(p).Timers()
	due, err := s.rdb.ZRangeByScore(ctx, tk, &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(s.now().UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return 0, outcomes, fmt.Errorf("cannot read timers of partition %d: %w", p, s.classify(err))
	}
	if len(due) == 0 {
		return 0, outcomes, nil
	}
	items := make([]*batchCall, 0, len(due))
	args := []any{nil, s.horizonMs(), errExpired, reasonExpired, errTimeout, reasonTimeout, errRejected, reasonRejected}
	n := 0
	var watch [][]string // the claims' watchdogs, run after the batch
	for _, m := range due {
		parts := strings.SplitN(m, "|", 4)
		if len(parts) != 4 || !strings.Contains("daswlg", parts[0]) || len(parts[0]) != 1 || s.PartitionOf(parts[1]) != p {
			n++
			outcomes["malformed"]++
			s.log.WarnContext(ctx, "dropped a malformed timer", "timer", m, "partition", p)
			_ = s.rdb.ZRem(ctx, tk, m).Err()
			continue
		}
		if kinds != "" && !strings.Contains(kinds, parts[0]) {
			continue
		}
		if parts[0] == "w" || parts[0] == "g" { // a claim's watchdog or a stopped group: rare, and they read several partitions
			watch = append(watch, parts)
			continue
		}
		_, keys := s.cmdKeys(parts[1], parts[2], parts[3])
		a := append([]any{m}, args[1:]...)
		items = append(items, &batchCall{p: p, keys: keys, args: a})
	}
	n, err = s.fireBatch(ctx, p, items, ownerOf, n, outcomes)
	if err != nil {
		return n, outcomes, err
	}
	// The watchdogs run last: a relay of this batch may have made their
	// claims final already. They are not counted in n (see watchdog.go).
	for _, w := range watch {
		member := strings.Join(w, "|")
		var what string
		if w[0] == "g" {
			what, err = s.fireGroup(ctx, p, member, w[1], w[3])
		} else {
			what, err = s.watchClaim(ctx, p, member, w[1], w[2], w[3])
		}
		if err != nil {
			return n, outcomes, fmt.Errorf("cannot run the watchdog %s: %w", member, err)
		}
		outcomes[what]++
	}
	return n, outcomes, nil
}

// fireBatch applies the command timers of partition p in one batch of the
// fire step, adding to n and outcomes, and relays the results they made
// final.
func (s *Store) fireBatch(ctx context.Context, p int, items []*batchCall, ownerOf func(string) string, n int, outcomes map[string]int) (int, error) {
	if len(items) == 0 {
		return n, nil
	}
	res, err := s.runBatch(ctx, p, stepFire, items)
	if err != nil {
		return n, fmt.Errorf("cannot fire timers of partition %d: %w", p, err)
	}
	for i, r := range res {
		if r.err != nil {
			return n, fmt.Errorf("cannot fire timer %v: %w", items[i].args[0], r.err)
		}
		a, _ := r.v.([]any)
		what, _ := reply(r.v)
		outcomes[what]++
		if what == "corrupt" {
			s.log.WarnContext(ctx, "dropped the timer of a corrupt record", "timer", items[i].args[0])
		}
		if what != "notdue" {
			n++
		}
		if what == string(OutcomeSent) || what == string(OutcomeRetried) { // a scheduled command is due, or a retry: wake its device's push server
			member, _ := items[i].args[0].(string)
			s.wakeRetried(ctx, strings.SplitN(member, "|", 4)[1], string(OutcomeRetried), a)
		}
		if len(a) > 3 {
			e := parseOutbox(p, a[3])
			owner := ""
			if e != nil && ownerOf != nil {
				owner = ownerOf(e.client)
			}
			s.relayNow(ctx, e, owner)
		}
	}
	return n, nil
}

// NextDue is the due time of partition p's earliest timer; zero when it
// has none.
func (s *Store) NextDue(ctx context.Context, p int) (time.Time, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, s.keys.Part(p).Timers(), 0, 0).Result()
	if err != nil {
		return time.Time{}, s.classify(err)
	}
	if len(zs) == 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(int64(zs[0].Score)), nil
}
