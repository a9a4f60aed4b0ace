package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestCommandSucceeds follows one command through the whole state
// machine: one entry in the device's mailbox carrying "{client}:{id}",
// delivered by the (simulated) push server, answered by the device, and
// the client's result with its own id.
func TestCommandSucceeds(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `42`})
	c := h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	require.False(t, c.SentAt.IsZero())

	es := h.mailboxEntries("lamp-1")
	require.Len(t, es, 1, "device mailbox")
	require.Equal(t, protocol.DeviceCommandsTopic("lamp-1"), es[0]["t"])
	var req protocol.Request
	require.NoError(t, json.Unmarshal([]byte(es[0]["p"].(string)), &req))
	require.Equal(t, "app-1:42", req.ID.Key())
	require.Equal(t, "set", req.Method)

	require.Len(t, h.deliver("lamp-1"), 1)
	h.waitStatus(env, protocol.StatusDelivered, 5*time.Second)
	require.Len(t, h.mailboxEntries("lamp-1"), 1, "a delivered command's entry stays until it is final")

	require.Equal(t, mailbox.OutcomeSucceeded, h.answer(env, 0))
	c = h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
	require.Empty(t, h.mailboxEntries("lamp-1"), "the answer took the entry away")
	r := h.oneResult(env)
	require.Nil(t, r.Error)
	require.JSONEq(t, `42`, string(r.ID), "the client's own id")
	require.JSONEq(t, `{"ok":true,"for":"app-1:42"}`, string(r.Result))
	require.JSONEq(t, string(c.Response), mustJSON(t, r))
	// The counters are bumped just after the script returns.
	waitHandled(t, w, queueCommands, "sent", 1, 5*time.Second)
	require.Equal(t, protocol.ClientResultsTopic("app-1", "lamp-1"), h.mailboxEntries("app-1")[0]["t"])
}

func mustJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// TestDeviceErrorFails: a device answering with an error makes the
// command failed, and the client gets the device's error (not a gateway
// one), even before the PUBACK was seen.
func TestDeviceErrorFails(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `"set-1"`})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	require.Equal(t, mailbox.OutcomeFailed, h.answer(env, -32601)) // answer before any PUBACK: accepted from sent
	c := h.waitStatus(env, protocol.StatusFailed, 10*time.Second)
	require.False(t, c.DeliveredAt.IsZero(), "delivered_at filled in by the answer")
	r := h.oneResult(env)
	require.NotNil(t, r.Error)
	require.Equal(t, -32601, r.Error.Code)
	require.NotEqual(t, protocol.SourceGateway, r.Error.Source())
	require.JSONEq(t, `"set-1"`, string(r.ID))
	require.Empty(t, h.mailboxEntries("lamp-1"), "the final transition removes the device entry")
}

// TestNoAnswerTimesOut: delivered and never answered → timeout (-32001),
// fired by the timer loop.
func TestNoAnswerTimesOut(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, timeout: time.Second})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	h.deliver("lamp-1")
	start := time.Now()
	h.waitStatus(env, protocol.StatusTimeout, 10*time.Second)
	require.GreaterOrEqual(t, time.Since(start), 800*time.Millisecond, "fired too early")
	require.Equal(t, protocol.CodeTimeout, gatewayCode(t, h.oneResult(env)))
	require.Eventually(t, func() bool { return counterValue(w.mx.timersFired) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, 1.0, counterValue(w.mx.timerOutcomes.WithLabelValues("timeout")), "timer outcomes: timeout")
}

// TestOfflineDeviceExpires: a device that never connects does not get
// the command after expires_in: the deliver-by timer expires it and
// removes its mailbox entry.
func TestOfflineDeviceExpires(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	// expires_in leaves time to see the command sent first, also on a
	// starved CPU (with 1 s it could expire before the worker took it).
	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, expiresIn: 4 * time.Second})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	require.Len(t, h.mailboxEntries("lamp-1"), 1)
	c := h.waitStatus(env, protocol.StatusExpired, 15*time.Second)
	require.Contains(t, c.Reason, "expires_in")
	require.Equal(t, protocol.CodeExpired, gatewayCode(t, h.oneResult(env)))
	require.Empty(t, h.mailboxEntries("lamp-1"))
}

// TestExpiredBeforeDispatch: a command whose deliver-by passed while it
// waited in the queue is expired (by its deliver-by timer, armed when it
// was queued, or by Dispatch, whichever comes first) and never enters the
// device's mailbox.
func TestExpiredBeforeDispatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, expiresIn: time.Minute,
		created: time.Now().Add(-2 * time.Minute)})
	h.waitStatus(env, protocol.StatusExpired, 10*time.Second)
	require.Equal(t, protocol.CodeExpired, gatewayCode(t, h.oneResult(env)))
	require.Empty(t, h.mailboxEntries("lamp-1"))
	require.Eventually(t, func() bool {
		return handled(w, queueCommands, "expired")+handled(w, queueCommands, "noop") == 1
	}, 5*time.Second, 10*time.Millisecond, "commands handled as expired or noop: %d + %d, want 1",
		handled(w, queueCommands, "expired"), handled(w, queueCommands, "noop"))
}

// TestCancelBeforeDelivery: a command cancelled while queued is a noop
// when its message arrives: it never enters the device's mailbox, and the
// client has exactly one result (cancelled).
func TestCancelBeforeDelivery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()

	_, env, err := h.reserve(spec{client: "app-1", device: "lamp-1", id: `1`})
	require.NoError(t, err)
	require.NoError(t, h.store.MarkQueued(ctx, env.Device, env.Client, env.MsgID.Key()))
	c, err := h.store.Cancel(ctx, env.Client, env.MsgID.Key(), "")
	require.NoError(t, err)
	require.Equal(t, protocol.StatusCancelled, c.Status)

	h.publishCommand(env)
	w := h.worker(nil)
	waitHandled(t, w, queueCommands, "noop", 1, 10*time.Second)
	require.Equal(t, protocol.StatusCancelled, h.get(env).Status)
	require.Empty(t, h.mailboxEntries("lamp-1"))
	require.Equal(t, protocol.CodeCancelled, gatewayCode(t, h.oneResult(env)))
}

// TestLateAnswer: an answer after the timeout is recorded on the command
// and dropped: the client has exactly one result, the timeout.
func TestLateAnswer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, timeout: time.Second})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	h.deliver("lamp-1")
	h.waitStatus(env, protocol.StatusTimeout, 10*time.Second)

	require.Equal(t, mailbox.OutcomeLate, h.answer(env, 0))
	c := h.get(env)
	require.Equal(t, protocol.StatusTimeout, c.Status)
	require.Contains(t, string(c.Late), `"ok":true`)
	require.Equal(t, protocol.CodeTimeout, gatewayCode(t, h.oneResult(env)))
}

// TestFullMailboxRejected: with room for two entries, a third command to
// an offline device is rejected (-32005).
func TestFullMailboxRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(func(c *Config) { c.MailboxCap = 2 })

	var envs []*protocol.Envelope
	for i := range 3 {
		env := h.send(spec{client: "app-1", device: "lamp-1", id: fmt.Sprint(i)})
		envs = append(envs, env)
		require.Eventually(t, func() bool { return h.get(env).Status.Final() || h.get(env).Status == protocol.StatusSent },
			10*time.Second, 10*time.Millisecond)
	}
	require.Equal(t, protocol.StatusSent, h.get(envs[0]).Status)
	require.Equal(t, protocol.StatusSent, h.get(envs[1]).Status)
	c := h.get(envs[2])
	require.Equal(t, protocol.StatusRejected, c.Status)
	require.Equal(t, protocol.CodeRejected, gatewayCode(t, h.oneResult(envs[2])))
	require.Len(t, h.mailboxEntries("lamp-1"), 2)
	waitHandled(t, w, queueCommands, "rejected", 1, 5*time.Second)
}

// TestPoisonCommand: a body that is not an envelope goes to the dead
// letters at once (not after five attempts) and is dropped there with a
// log line, since it names no command; an envelope whose payload the
// device cannot get is poison too, and its command ends dead (-32003).
func TestPoisonCommand(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)

	h.publishToQueue(0, []byte("garbage \x00 not json"))
	waitHandled(t, w, queueCommandsDead, outcomeLogged, 1, 10*time.Second)
	require.Equal(t, 1, handled(w, queueCommands, outcomePoison), "rejected on the first delivery")
	require.Equal(t, 0, handled(w, queueCommands, outcomeError))

	// A decodable envelope whose payload is not a request object.
	_, env, err := h.reserve(spec{client: "app-1", device: "lamp-1", id: `"p-1"`})
	require.NoError(t, err)
	env.Payload = json.RawMessage(`[1,2,3]`)
	h.publishCommand(env)
	require.NoError(t, h.store.MarkQueued(context.Background(), env.Device, env.Client, env.MsgID.Key()))
	c := h.waitStatus(env, protocol.StatusDead, 10*time.Second)
	require.Contains(t, c.Reason, "rejected")
	require.Equal(t, protocol.CodeDead, gatewayCode(t, h.oneResult(env)))
	require.Equal(t, 2, handled(w, queueCommands, outcomePoison))
	waitHandled(t, w, queueCommandsDead, "dead", 1, 5*time.Second)
	require.Equal(t, 2.0, counterValue(w.mx.deadLetters.WithLabelValues(queueCommandsDead)))

	// A body that is no envelope but names its command is still ended.
	_, env, err = h.reserve(spec{client: "app-1", device: "lamp-1", id: `7`})
	require.NoError(t, err)
	h.publishToQueue(1, []byte(`{"v":99,"client":"app-1","msg_id":7}`))
	require.NoError(t, h.store.MarkQueued(context.Background(), env.Device, env.Client, env.MsgID.Key()))
	h.waitStatus(env, protocol.StatusDead, 10*time.Second)
}

// TestDeliveryLimitDead: a command whose handling fails every time is
// retried protocol.DeliveryLimit times, then dead-lettered and ended as
// dead with RabbitMQ's reason.
func TestDeliveryLimitDead(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var attempts atomic.Int32
	w := h.worker(func(c *Config) {
		c.middleware = []Middleware{func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				if m.Queue == queueCommands {
					attempts.Add(1)
					return errors.New("injected failure")
				}
				return next(ctx, m)
			}
		}}
	})

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	c := h.waitStatus(env, protocol.StatusDead, 20*time.Second)
	require.Equal(t, protocol.CodeDead, gatewayCode(t, h.oneResult(env)))
	require.Contains(t, c.Reason, "delivery_limit")
	require.Equal(t, int32(protocol.DeliveryLimit+1), attempts.Load())
	require.Equal(t, protocol.DeliveryLimit+1, handled(w, queueCommands, outcomeError))
	require.Empty(t, h.mailboxEntries("lamp-1"))
}

// TestRedeliveryAfterCrash: the worker "crashes" after the Dispatch script
// ran and before the ack (the handler panics, so the delivery is
// requeued, as a lost connection would): the redelivery is a noop and the
// device's mailbox holds one entry.
func TestRedeliveryAfterCrash(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var crashed atomic.Bool
	w := h.worker(func(c *Config) {
		c.middleware = []Middleware{func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				err := next(ctx, m)
				if m.Queue == queueCommands && err == nil && !crashed.Swap(true) {
					panic("crash between the script and the ack")
				}
				return err
			}
		}}
	})

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	waitHandled(t, w, queueCommands, "noop", 1, 10*time.Second)
	require.Equal(t, 1, handled(w, queueCommands, outcomePanic))
	require.Equal(t, protocol.StatusSent, h.get(env).Status)
	require.Len(t, h.mailboxEntries("lamp-1"), 1, "one mailbox entry")

	// It still completes normally.
	h.deliver("lamp-1")
	h.answer(env, 0)
	h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
	h.oneResult(env)
}

// TestSameIDTwoClients: two clients using the same id towards one device
// are two commands: two entries with distinct device ids, and each client
// gets its own result with its own id.
func TestSameIDTwoClients(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	a := h.send(spec{client: "app-a", device: "lamp-1", id: `7`})
	b := h.send(spec{client: "app-b", device: "lamp-1", id: `7`})
	h.waitStatus(a, protocol.StatusSent, 10*time.Second)
	h.waitStatus(b, protocol.StatusSent, 10*time.Second)
	es := h.deliver("lamp-1")
	require.Len(t, es, 2)
	ids := map[string]bool{}
	for _, e := range es {
		var req protocol.Request
		require.NoError(t, json.Unmarshal(e.Payload, &req))
		ids[req.ID.Key()] = true
	}
	require.Equal(t, map[string]bool{"app-a:7": true, "app-b:7": true}, ids)

	h.answer(a, 0)
	h.answer(b, -1)
	h.waitStatus(a, protocol.StatusSucceeded, 10*time.Second)
	h.waitStatus(b, protocol.StatusFailed, 10*time.Second)
	ra, rb := h.oneResult(a), h.oneResult(b)
	require.JSONEq(t, `7`, string(ra.ID))
	require.JSONEq(t, `7`, string(rb.ID))
	require.Contains(t, string(ra.Result), "app-a:7")
	require.Equal(t, -1, rb.Error.Code)
}

// TestAnswerForAnotherDevice: an answer that names a command of another
// device changes nothing (the push server drops it): the command stays
// sent, its client gets no result, and its real answer still completes
// it.
func TestAnswerForAnotherDevice(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	other := *env
	other.Device = "lamp-2"
	require.Equal(t, mailbox.OutcomeOtherDevice, h.answer(&other, 0))
	require.Equal(t, protocol.StatusSent, h.get(env).Status, "an answer from another device changes nothing")
	require.Empty(t, h.results("app-1"))

	require.Equal(t, mailbox.OutcomeSucceeded, h.answer(env, 0))
	h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
	require.Nil(t, h.oneResult(env).Error)
}

// TestAnswerAgainIsHarmless: the push server retries an answer whose
// completion it could not confirm; the same answer again changes nothing,
// and the client gets exactly one result, the device's real answer.
func TestAnswerAgainIsHarmless(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.worker(nil)

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	require.Equal(t, mailbox.OutcomeSucceeded, h.answer(env, 0))
	require.Equal(t, mailbox.OutcomeDuplicate, h.answer(env, 0))
	h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
	require.Nil(t, h.oneResult(env).Error)
}

// TestGracefulShutdown: cancelling Run lets an in-flight handler finish
// and ack (its effect is kept and not redone), and Run returns promptly.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	entered := make(chan struct{})
	var once atomic.Bool
	cfg := Config{
		Common: config.Common{AMQPURL: testenv.AMQPURL(), RedisURL: testenv.RedisURL(), Namespace: h.ns},
		Logger: testenv.Logger(t),
		middleware: []Middleware{func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				if m.Queue == queueCommands && !once.Swap(true) {
					close(entered)
					time.Sleep(500 * time.Millisecond) // in flight during the shutdown
				}
				return next(ctx, m)
			}
		}},
	}
	w, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	<-entered
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(12 * time.Second):
		t.Fatal("Run did not return within the shutdown timeout")
	}
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, protocol.StatusSent, h.get(env).Status, "the in-flight command was finished")
	require.Equal(t, 1, handled(w, queueCommands, "sent"))

	// It was acked: a new worker finds nothing of it to do. The evidence
	// that the new worker has consumed the queue: it sends a command
	// published after the shutdown to the same device (so the same
	// queue), which a requeued delivery would not come after.
	w2 := h.worker(nil)
	marker := h.send(spec{client: "app-1", device: "lamp-1", id: `2`})
	h.waitStatus(marker, protocol.StatusSent, 10*time.Second)
	waitHandled(t, w2, queueCommands, "sent", 1, 10*time.Second)
	require.Equal(t, 0, handled(w2, queueCommands, "noop"), "the acked command came again")
	require.Len(t, h.mailboxEntries("lamp-1"), 2, "the shutdown's command once, the marker once")
}

// TestResultEnvelopeIsPoison: an envelope of the former kind "result"
// (answers no longer cross RabbitMQ) is poison on a command queue.
func TestResultEnvelopeIsPoison(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)

	// Poison, and since it names a command, that command ends dead.
	_, env, err := h.reserve(spec{client: "app-1", device: "lamp-1", id: `1`})
	require.NoError(t, err)
	require.NoError(t, h.store.MarkQueued(context.Background(), env.Device, env.Client, env.MsgID.Key()))
	h.publishToQueue(h.topo.CommandQueueOf(env.Device, h.topo.PartitionCount), legacyResultBody(t, env))
	h.waitStatus(env, protocol.StatusDead, 10*time.Second)
	require.Equal(t, 1, handled(w, queueCommands, outcomePoison))
}

// TestDeadLetterFailingIsDropped: the dead-letter queue has no delivery
// limit, so a dead letter whose handling keeps failing (not transiently)
// is dropped with an error log after protocol.DeliveryLimit retries
// instead of looping forever.
func TestDeadLetterFailingIsDropped(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var attempts atomic.Int32
	w := h.worker(func(c *Config) {
		c.middleware = []Middleware{func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				if m.Queue == queueCommandsDead {
					attempts.Add(1)
					return w0settle(m, errors.New("injected failure"))
				}
				return next(ctx, m)
			}
		}}
	})
	h.publishToQueue(h.topo.QueueCount-1, []byte("poison"))
	waitHandled(t, w, queueCommandsDead, outcomeDropped, 1, 20*time.Second)
	require.Equal(t, int32(protocol.DeliveryLimit+1), attempts.Load())
	require.Equal(t, protocol.DeliveryLimit, handled(w, queueCommandsDead, outcomeError))
}

// w0settle applies the dead queue's settling to err, as the dead handler
// does.
func w0settle(m *Message, err error) error {
	return (&Worker{log: slog.New(slog.DiscardHandler)}).settleDead(m, "test", err)
}

// TestDeadAfterDispatchLeftAlone: a command whose Dispatch succeeded but
// whose delivery kept failing afterwards (no ack) reaches the dead
// letters; it is in the device's mailbox already, so it is not killed and
// finishes normally.
func TestDeadAfterDispatchLeftAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(func(c *Config) {
		c.middleware = []Middleware{func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				err := next(ctx, m)
				if m.Queue == queueCommands && err == nil {
					return errors.New("injected failure after the script")
				}
				return err
			}
		}}
	})
	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	waitHandled(t, w, queueCommandsDead, "noop", 1, 20*time.Second)
	require.Equal(t, protocol.StatusSent, h.get(env).Status)
	require.Len(t, h.mailboxEntries("lamp-1"), 1)
	require.Equal(t, 1.0, counterValue(w.mx.deadLetters.WithLabelValues(queueCommandsDead)))
	h.deliver("lamp-1")
	h.answer(env, 0)
	h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
	require.Nil(t, h.oneResult(env).Error)
}

// TestOwnerWaitsOneGrace: a worker that has just taken its partitions
// fires no timer that ends a command before it has reached them for the
// answer grace (DESIGN §7a), so answers held by push servers land first;
// then the timer fires as usual. A scheduled command of the same
// partition, which no held answer can concern, goes into its device's
// mailbox at its not-before meanwhile, not one grace later.
func TestOwnerWaitsOneGrace(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const grace = 2 * time.Second
	// A queued command whose message was never published: only its
	// deliver-by timer (300 ms) can end it, not a dispatch.
	store := mailbox.New(h.rdb, h.ns, mailbox.Options{AnswerGrace: testAnswerGrace, Lease: 100 * time.Millisecond})
	id, err := protocol.ParseID(json.RawMessage(`"g"`))
	require.NoError(t, err)
	const expiresIn = 300 * time.Millisecond
	out, _, err := store.Reserve(t.Context(), &mailbox.Command{Client: "app-1", Device: "lamp-1", ID: id, Method: "m",
		Fingerprint: protocol.Fingerprint("lamp-1", "m", nil, time.Second, expiresIn), Timeout: time.Second, ExpiresIn: expiresIn})
	require.NoError(t, err)
	require.Equal(t, mailbox.Reserved, out)
	require.NoError(t, store.MarkQueued(t.Context(), "lamp-1", "app-1", id.Key()))

	// Published before the worker starts, which dispatches it (scheduled)
	// at once: due 300 ms after it was reserved.
	const notBefore = 300 * time.Millisecond
	sched := h.send(spec{client: "app-1", device: "lamp-1", id: `"s"`, delay: notBefore})

	start := time.Now()
	h.worker(func(c *Config) { c.AnswerGrace = grace })
	s := h.waitStatus(sched, protocol.StatusSent, 15*time.Second)
	// Timer interval 200 ms, Redis's clock in ms: well within the grace,
	// which it waited for without the fix.
	if got, bound := s.SentAt.Sub(start), grace*3/4; got > bound {
		t.Errorf("the scheduled command was sent %v after the worker started (not before %v after it was reserved), want within %v", got, notBefore, bound)
	}
	require.Len(t, h.mailboxEntries("lamp-1"), 1)
	env := &protocol.Envelope{Client: "app-1", Device: "lamp-1", MsgID: id}
	c := h.waitStatus(env, protocol.StatusExpired, 15*time.Second)
	// Due 300 ms after it was reserved, it expired only once the worker
	// had owned its partition for the grace (FinishedAt is Redis's clock,
	// in ms: allow one).
	if got := c.FinishedAt.Sub(start); got < grace-time.Millisecond {
		t.Errorf("expired %v after the worker started, want at least the grace %v", got, grace)
	}
	require.Equal(t, protocol.CodeExpired, gatewayCode(t, h.oneResult(env)))
}
