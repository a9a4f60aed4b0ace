package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

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
//   - OutcomeNoop: the record is sent or beyond (a redelivery after a
//     crash, a cancel, a final state: never a second mailbox entry), or
//     it does not exist, or it names another device or method than the
//     envelope. A missing record means the command was released after a
//     failed publish (the client got 503), or its retention ran out before
//     a replay of an old message: in both cases there is nothing to
//     deliver, and the caller acks the message. A corrupt record is a
//     noop too (logged).
//
// clientOwner and deviceOwner are the ring owners (node IDs) of the client
// and the device. Any error means Redis was not changed or not reached:
// nack and retry.
func (s *Store) Dispatch(ctx context.Context, env *protocol.Envelope, deviceOwner, clientOwner string) (Outcome, error) {
	method, req, err := env.DeviceCommand()
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	v, err := s.run(ctx, dispatchScript, s.keys.Command(env.Client, env.MsgID.Key()),
		env.Device, method, string(req), ms(env.DeliverBy), deviceOwner, clientOwner,
		errExpired, reasonExpired, errRejected, reasonRejected)
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	head, detail := reply(v)
	switch head {
	case "corrupt":
		s.log.Warn("dispatch of a corrupt record: nothing changed", "client_id", env.Client,
			"device_id", env.Device, "msg_id", env.MsgID.Key())
		return OutcomeNoop, nil
	case string(OutcomeNoop):
		s.log.Debug("dispatch is a no-op", "client_id", env.Client, "device_id", env.Device,
			"msg_id", env.MsgID.Key(), "why", detail)
	}
	return Outcome(head), nil
}

// Complete handles a device response from the results queue: sent or
// delivered → succeeded (resp.Result) or failed (resp.Error). It fills
// DeliveredAt if the PUBACK was not seen yet, cancels the timers, removes
// the mailbox entry if still there, and appends the client's response
// (the device's result or error with the client's own id) on
// clients/{client}/results/{device}, signalling as Dispatch does.
//
// A command already made succeeded or failed by this very response (an
// AMQP redelivery: the worker died between Complete and its ack) returns
// OutcomeDuplicate and changes nothing. Any other answer to a final
// command is recorded in Late (once per distinct answer) and returns
// OutcomeLate, changing nothing else. An unknown command, a command of
// another device, one not yet sent, or a corrupt record (logged) returns
// OutcomeNoop.
func (s *Store) Complete(ctx context.Context, client, idKey, device string, resp *protocol.Response, clientOwner string) (Outcome, error) {
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
	v, err := s.run(ctx, completeScript, s.keys.Command(client, idKey),
		device, body, string(to), string(raw), clientOwner)
	if err != nil {
		return "", fmt.Errorf("cannot complete command %s: %w", idKey, err)
	}
	if v == "corrupt" {
		s.log.Warn("answer to a corrupt record: nothing changed", "client_id", client, "device_id", device, "msg_id", idKey)
		return OutcomeNoop, nil
	}
	return Outcome(fmt.Sprint(v)), nil
}

// fireBatch bounds the timers one script pops and applies.
const fireBatch = 100

// FireTimers pops up to limit due timers (score ≤ now) and applies them,
// at most 100 per script: each script pops its batch atomically, so
// competing callers never take the same timer nor read the same
// candidates.
//
//   - deliver-by on a queued command, or on a sent one not on the wire:
//     expired (-32002). On the wire (SendingAt set, no PUBACK yet): re-
//     armed once as an answer-within timer at now+Timeout, which later
//     fires as timeout. On a pending command: re-armed to the end of its
//     lease while the lease runs (its publish is being confirmed), else
//     expired (through queued).
//   - answer-within: sent or delivered → timeout (-32001); but a sent
//     command no longer on the wire (handed back with Unsend after its
//     deliver-by was re-armed) never reached the device: expired at its
//     deliver-by.
//
// A deliver-by timer whose command's DeliverBy moved later is re-armed to
// it. Anything else (the command final, or gone) just drops the timer.
// The scripts signal the client's live-session node; FireTimers then
// signals ownerOf(client), the ring owner, when that is another node
// (nil ownerOf: only live sessions are signalled). It returns how many
// timers it took, with the first error met.
func (s *Store) FireTimers(ctx context.Context, limit int, ownerOf func(identity string) string) (int, error) {
	n, _, err := s.FireTimersOutcomes(ctx, limit, ownerOf)
	return n, err
}

// FireTimersOutcomes is FireTimers that also counts what the timers it
// took did, by outcome: "expired" and "timeout" (the command ended),
// "rearmed" (it waits for a later deadline), "noop" (the command had
// ended already, or is gone), "malformed" and "corrupt" (dropped).
func (s *Store) FireTimersOutcomes(ctx context.Context, limit int, ownerOf func(identity string) string) (int, map[string]int, error) {
	outcomes := map[string]int{}
	if limit <= 0 {
		limit = fireBatch
	}
	expired, timeout := errExpired, errTimeout
	fired := 0
	for fired < limit {
		batch := min(limit-fired, fireBatch)
		v, err := s.run(ctx, fireScript, s.keys.Timers(), batch, expired, reasonExpired, timeout, reasonTimeout)
		if err != nil {
			return fired, outcomes, fmt.Errorf("cannot fire timers: %w", err)
		}
		rows, _ := v.([]any)
		fired += len(rows)
		wake := map[[2]string]bool{}
		for _, row := range rows {
			f, _ := row.([]any)
			str := func(i int) string {
				if i >= len(f) {
					return ""
				}
				v, _ := f[i].(string)
				return v
			}
			member, what, client, sess := str(0), str(1), str(2), str(3)
			outcomes[what]++
			switch what {
			case "malformed":
				s.log.Warn("dropped a malformed timer", "timer", member)
			case "corrupt":
				s.log.Warn("dropped the timer of a corrupt record", "timer", member)
			default:
				s.log.Debug("timer fired", "timer", member, "outcome", what)
			}
			if client != "" && ownerOf != nil {
				if owner := ownerOf(client); owner != "" && owner != sess {
					wake[[2]string{owner, client}] = true
				}
			}
		}
		if len(wake) > 0 {
			if err := s.signal(ctx, wake); err != nil {
				return fired, outcomes, fmt.Errorf("cannot signal results of fired timers: %w", err)
			}
		}
		if len(rows) < batch {
			break
		}
	}
	return fired, outcomes, nil
}

// signal wakes each (node, identity) as the scripts do: SADD
// NodePending(node), PUBLISH NodeWake(node).
func (s *Store) signal(ctx context.Context, wake map[[2]string]bool) error {
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for w := range wake {
			node, identity := w[0], w[1]
			pk := s.keys.NodePending(node)
			p.SAdd(ctx, pk, identity)
			p.PExpire(ctx, pk, pendingTTL)
			p.Publish(ctx, s.keys.NodeWake(node), identity)
		}
		return nil
	})
	return err
}

// pendingTTL is the expiry of a node's pending set, renewed when it
// gains a member.
const pendingTTL = 24 * time.Hour
