package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Reasons written into gateway results (and Command.Reason).
const (
	reasonExpired  = "not delivered within expires_in"
	reasonRejected = "device mailbox full"
	reasonTimeout  = "no answer within timeout of delivery"
)

// Dispatch handles one delivery of a command envelope from the commands
// queue, in one script: queued → sent (stamps SentAt), appends the device
// request (env.DeviceRequest()) to the device's mailbox with expiry
// DeliverBy, signals the node of the device's live session (or
// deviceOwner when none is live), and arms the deliver-by timer.
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
//     deliver, and the caller acks the message.
//
// clientOwner and deviceOwner are the ring owners (node IDs) of the client
// and the device. Any error means Redis was not changed or not reached:
// nack and retry.
func (s *Store) Dispatch(ctx context.Context, env *protocol.Envelope, deviceOwner, clientOwner string) (Outcome, error) {
	req, err := env.DeviceRequest()
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	var m struct {
		Method string `json:"method"`
	}
	_ = json.Unmarshal(env.Payload, &m) // DeviceRequest parsed it already
	v, err := s.run(ctx, dispatchScript, s.keys.Command(env.Client, env.MsgID.Key()),
		env.Device, m.Method, string(req), ms(env.DeliverBy), deviceOwner, clientOwner,
		gatewayError(protocol.StatusExpired, reasonExpired), reasonExpired,
		gatewayError(protocol.StatusRejected, reasonRejected), reasonRejected)
	if err != nil {
		return "", fmt.Errorf("cannot dispatch command %s: %w", env.MsgID.Key(), err)
	}
	head, detail := reply(v)
	if head == string(OutcomeNoop) {
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
// A command already final records resp in Late and returns OutcomeLate,
// changing nothing else. An unknown command, a command of another device,
// or one not yet sent returns OutcomeNoop.
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
	return Outcome(fmt.Sprint(v)), nil
}

// FireTimers pops up to limit due timers (score ≤ now) and applies them.
// Each timer fires exactly once across competing callers: candidates are
// read with ZRANGEBYSCORE, then one script per timer removes it and
// applies it only if it was still there and still due.
//
//   - deliver-by: sent and not on the wire → expired (-32002); on the wire
//     (SendingAt set, no PUBACK yet) → re-armed once as an answer-within
//     timer at now+Timeout, which later fires as timeout.
//   - answer-within: sent or delivered → timeout (-32001).
//
// Anything else (the command final, or gone) just drops the timer.
// ownerOf gives the ring owner of a client, for signalling; nil means no
// owner (only a live session is signalled). FireTimers returns how many
// timers it took, with the first error met.
func (s *Store) FireTimers(ctx context.Context, limit int, ownerOf func(identity string) string) (int, error) {
	if limit <= 0 {
		limit = 100
	}
	tk := s.keys.Timers()
	members, err := s.rdb.ZRangeByScore(ctx, tk, &redis.ZRangeBy{
		Min: "-inf", Max: fmt.Sprint(s.now().UnixMilli()), Count: int64(limit),
	}).Result()
	if err != nil {
		return 0, fmt.Errorf("cannot read timers: %w", err)
	}
	expired := gatewayError(protocol.StatusExpired, reasonExpired)
	timeout := gatewayError(protocol.StatusTimeout, reasonTimeout)
	fired := 0
	for _, m := range members {
		kind, client, key, ok := parseTimer(m)
		if !ok {
			s.log.Warn("dropping malformed timer", "timer", m)
			if err := s.rdb.ZRem(ctx, tk, m).Err(); err != nil {
				return fired, fmt.Errorf("cannot drop timer: %w", err)
			}
			continue
		}
		owner := ""
		if ownerOf != nil {
			owner = ownerOf(client)
		}
		v, err := s.run(ctx, fireScript, s.keys.Command(client, key),
			m, kind, expired, reasonExpired, timeout, reasonTimeout, owner)
		if err != nil {
			return fired, fmt.Errorf("cannot fire timer %s: %w", m, err)
		}
		took, what := reply(v)
		if took == "1" {
			fired++
			s.log.Debug("timer fired", "client_id", client, "msg_id", key, "kind", kind, "outcome", what)
		}
	}
	return fired, nil
}
