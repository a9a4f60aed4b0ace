package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// harness is one test's namespace with what the other parts of the
// gateway would do around the workers: the apiserver's reserve, publish
// and MarkQueued, the push server's Fetch and Ack, and the device answers,
// which the push server completes in Redis itself (DESIGN §5).
type harness struct {
	t     testing.TB
	ns    string
	rdb   *redis.Client
	store *mailbox.Store
	pub   *amqpx.Publisher
	topo  protocol.Topology
	keys  protocol.Keys
}

// testAnswerGrace is the answer grace of the test stores and workers: a
// timeout status comes soon after the answer deadline.
const testAnswerGrace = 100 * time.Millisecond

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessQueues(t, protocol.DefaultQueues) // the Worker's default
}

// newHarnessQueues is newHarness for a namespace of queues command queues.
func newHarnessQueues(t testing.TB, queues int) *harness {
	t.Helper()
	rdb := testenv.Redis(t)
	ns := testenv.Namespace(t)
	topo := protocol.NewTopology(ns, queues, protocol.DefaultPartitions)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: testenv.AMQPURL(), Name: "msgworker-test", Logger: testenv.Logger(t)}, topo)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })
	require.Eventually(t, pub.Ready, 10*time.Second, 10*time.Millisecond, "publisher never connected")
	return &harness{
		t: t, ns: ns, rdb: rdb, topo: topo, keys: protocol.NewKeys(ns), pub: pub,
		store: mailbox.New(rdb, ns, mailbox.Options{AnswerGrace: testAnswerGrace}),
	}
}

// worker starts a Worker on the harness's namespace and stops it (and
// checks that it stopped cleanly) when the test ends.
func (h *harness) worker(mutate func(*Config)) *Worker {
	h.t.Helper()
	w, _ := h.stoppableWorker(mutate)
	return w
}

// stoppableWorker is worker, with a function that stops the Worker (and
// checks that it stopped cleanly) before the test ends.
func (h *harness) stoppableWorker(mutate func(*Config)) (*Worker, func()) {
	h.t.Helper()
	cfg := Config{
		Common:        config.Common{AMQPURL: testenv.AMQPURL(), RedisURL: testenv.RedisURL(), Namespace: h.ns},
		TimerInterval: 50 * time.Millisecond,
		Scale:         config.Scale{AnswerGrace: testAnswerGrace},
		Logger:        testenv.Logger(h.t),
		Registerer:    prometheus.NewRegistry(),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	w, err := New(cfg)
	require.NoError(h.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Worker.Run = %v, want nil", err)
				}
			case <-time.After(15 * time.Second):
				h.t.Errorf("Worker.Run did not return within 15s of the cancel")
			}
		})
	}
	h.t.Cleanup(stop)
	return w, stop
}

// spec describes one command as a client sends it.
type spec struct {
	client, device string
	id             string // JSON of the id: `42` or `"a-1"`
	method         string
	timeout        time.Duration // default 30s
	expiresIn      time.Duration // default 1h
	created        time.Time     // default now
	lane           string        // ordered lane ("" for none)
	delay          time.Duration // not_before, from acceptance (0: none)
}

func (s *spec) defaults() {
	if s.method == "" {
		s.method = "set"
	}
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	if s.expiresIn == 0 {
		s.expiresIn = time.Hour
	}
}

// reserve does the apiserver's first step: the pending record.
func (h *harness) reserve(s spec) (*mailbox.Command, *protocol.Envelope, error) {
	s.defaults()
	id, err := protocol.ParseID(json.RawMessage(s.id))
	if err != nil {
		return nil, nil, err
	}
	params := json.RawMessage(`{"on":true}`)
	store := h.store
	if !s.created.IsZero() {
		// The partition's clock sets accepted-at: reserve through a
		// store whose clock stands at s.created.
		store = mailbox.New(h.rdb, h.ns, mailbox.Options{AnswerGrace: testAnswerGrace,
			Now: func() time.Time { return s.created }})
	}
	out, rec, err := store.Reserve(context.Background(), &mailbox.Command{
		Client: s.client, Device: s.device, ID: id, Method: s.method, Params: params,
		Fingerprint: protocol.Fingerprint(s.device, s.method, params, s.timeout, s.expiresIn),
		Timeout:     s.timeout, ExpiresIn: s.expiresIn, CreatedAt: s.created, Lane: s.lane, Delay: s.delay,
	})
	if err != nil {
		return nil, nil, err
	}
	if out != mailbox.Reserved {
		return nil, nil, fmt.Errorf("Reserve = %v, want reserved", out)
	}
	payload, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": s.method, "params": params})
	env := &protocol.Envelope{
		Kind: protocol.KindCommand, Client: s.client, Device: s.device, MsgID: id, Payload: payload,
		AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy, AnswerWithinMS: s.timeout.Milliseconds(), Attempt: 1,
	}
	return rec, env, nil
}

// send does what the apiserver does for one accepted command: reserve,
// publish with confirm, mark queued.
func (h *harness) send(s spec) *protocol.Envelope {
	h.t.Helper()
	env, err := h.trySend(s)
	require.NoError(h.t, err)
	return env
}

// trySend is send for other goroutines than the test's: it returns its
// error.
func (h *harness) trySend(s spec) (*protocol.Envelope, error) {
	_, env, err := h.reserve(s)
	if err != nil {
		return nil, err
	}
	return env, h.tryPublishTo(h.topo, env)
}

// tryPublishTo does the apiserver's publish and MarkQueued of a reserved
// command, to its device's queue in topo.
func (h *harness) tryPublishTo(topo protocol.Topology, env *protocol.Envelope) error {
	body, err := env.Encode()
	if err != nil {
		return err
	}
	exchange, key := topo.DeviceRoute(env.Device)
	if err := h.tryPublish(exchange, key, body); err != nil {
		return err
	}
	return h.store.MarkQueued(context.Background(), env.Device, env.Client, env.MsgID.Key())
}

// publishCommand publishes env to the command queue of its device.
func (h *harness) publishCommand(env *protocol.Envelope) {
	h.t.Helper()
	body, err := env.Encode()
	require.NoError(h.t, err)
	exchange, key := h.topo.DeviceRoute(env.Device)
	h.publish(exchange, key, body)
}

// publishToQueue publishes body to command queue q.
func (h *harness) publishToQueue(q int, body []byte) {
	h.t.Helper()
	exchange, key := h.topo.CommandRoute(q)
	h.publish(exchange, key, body)
}

func (h *harness) publish(exchange, key string, body []byte) {
	h.t.Helper()
	require.NoError(h.t, h.tryPublish(exchange, key, body))
}

func (h *harness) tryPublish(exchange, key string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	for range 5 { // ride out a reconnect of the publisher
		if err = h.pub.Publish(ctx, exchange, key, body, amqpx.Headers{}); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// answer completes the command env with its device's answer, as the push
// server that receives the answer does (DESIGN §5: answers do not cross
// RabbitMQ): a result, or an error when errCode is not 0. It returns what
// mailbox.Store.Complete did.
func (h *harness) answer(env *protocol.Envelope, errCode int) mailbox.Outcome {
	h.t.Helper()
	out, err := h.tryAnswer(env, errCode)
	require.NoError(h.t, err, "answer to %s:%s", env.Client, env.MsgID.Key())
	return out
}

// tryAnswer is answer returning its error, for use from other
// goroutines. Like the push server, it reads the command back from the
// response's device-facing id "{client}:{id}".
func (h *harness) tryAnswer(env *protocol.Envelope, errCode int) (mailbox.Outcome, error) {
	resp, err := protocol.ParseResponse(answerPayload(env, errCode))
	if err != nil {
		return "", fmt.Errorf("cannot parse the answer: %w", err)
	}
	var devID string
	if err := json.Unmarshal(resp.ID, &devID); err != nil {
		return "", fmt.Errorf("cannot read the answer's id: %w", err)
	}
	client, id, err := protocol.ParseDeviceMsgID(devID)
	if err != nil {
		return "", fmt.Errorf("cannot read the answer's id: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.store.Complete(ctx, client, id.Key(), env.Device, resp, 0, "")
}

// answerPayload is the device's JSON-RPC answer to env: a result naming
// the device-facing id, or an error with errCode when it is not 0.
func answerPayload(env *protocol.Envelope, errCode int) []byte {
	devID, _ := json.Marshal(protocol.DeviceMsgID(env.Client, env.MsgID))
	if errCode != 0 {
		return []byte(`{"jsonrpc":"2.0","error":{"code":` + strconv.Itoa(errCode) + `,"message":"device says no"},"id":` + string(devID) + `}`)
	}
	return []byte(`{"jsonrpc":"2.0","result":{"ok":true,"for":` + string(devID) + `},"id":` + string(devID) + `}`)
}

// legacyResultBody is an envelope of the former kind "result" answering
// env, as push servers once published to the results queue. Nothing
// publishes it any more; DecodeEnvelope refuses it.
func legacyResultBody(t testing.TB, env *protocol.Envelope) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"v": 1, "kind": "result", "client": env.Client, "device": env.Device,
		"msg_id": json.RawMessage(env.MsgID.Raw()), "payload": json.RawMessage(answerPayload(env, 0)),
		"accepted_at": time.Now().UTC(), "attempt": 1,
	})
	require.NoError(t, err)
	return b
}

// get returns the command record.
func (h *harness) get(env *protocol.Envelope) *mailbox.Command {
	h.t.Helper()
	c, err := h.store.Get(context.Background(), env.Client, env.MsgID.Key())
	require.NoError(h.t, err)
	return c
}

// waitStatus waits until the command has status st.
func (h *harness) waitStatus(env *protocol.Envelope, st protocol.Status, within time.Duration) *mailbox.Command {
	h.t.Helper()
	var c *mailbox.Command
	require.Eventually(h.t, func() bool {
		c = h.get(env)
		return c.Status == st
	}, within, 10*time.Millisecond, "command %s:%s never became %s", env.Client, env.MsgID.Key(), st)
	// One more read, for the fields the caller checks.
	return h.get(env)
}

// mailboxEntries reads an identity's mailbox with XRANGE: no side effect
// (Fetch would mark commands as on the wire).
func (h *harness) mailboxEntries(identity string) []map[string]any {
	h.t.Helper()
	xs, err := h.rdb.XRange(context.Background(), h.keys.Part(h.store.PartitionOf(identity)).Mailbox(identity), "-", "+").Result()
	require.NoError(h.t, err)
	out := make([]map[string]any, len(xs))
	for i, x := range xs {
		out[i] = x.Values
	}
	return out
}

// deliver plays the push server and the device's PUBACK: Fetch the
// device's mailbox and Ack every entry.
func (h *harness) deliver(device string) []mailbox.Entry {
	h.t.Helper()
	ctx := context.Background()
	es, err := h.store.Fetch(ctx, device, "", 10000)
	require.NoError(h.t, err)
	for _, e := range es {
		require.NoError(h.t, h.store.Ack(ctx, device, e))
	}
	return es
}

// results returns the client's results in its mailbox, by the id they
// carry (the client's own id, as JSON).
func (h *harness) results(client string) map[string][]*protocol.Response {
	h.t.Helper()
	out := map[string][]*protocol.Response{}
	for _, e := range h.mailboxEntries(client) {
		p, _ := e["p"].(string)
		r, err := protocol.ParseResponse([]byte(p))
		require.NoError(h.t, err, "result %s", p)
		out[string(r.ID)] = append(out[string(r.ID)], r)
	}
	return out
}

// oneResult checks that the client has exactly one result for env and
// returns it.
func (h *harness) oneResult(env *protocol.Envelope) *protocol.Response {
	h.t.Helper()
	// The result reaches the client's partition by the outbox relay,
	// right after the final step: wait for it.
	var rs []*protocol.Response
	require.Eventually(h.t, func() bool {
		rs = h.results(env.Client)[string(env.MsgID.Raw())]
		return len(rs) > 0
	}, 10*time.Second, 10*time.Millisecond, "no result of %s:%s", env.Client, env.MsgID.Key())
	require.Len(h.t, rs, 1, "results of %s:%s", env.Client, env.MsgID.Key())
	return rs[0]
}

// handled reads gw_worker_handled_total{queue,outcome} of w.
func handled(w *Worker, queue, outcome string) int {
	return int(counterValue(w.mx.handled.WithLabelValues(queue, outcome)))
}

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// waitHandled waits until w has handled n messages of queue with outcome.
func waitHandled(t testing.TB, w *Worker, queue, outcome string, n int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return handled(w, queue, outcome) >= n }, within, 10*time.Millisecond,
		"%s/%s: handled %d, want %d", queue, outcome, handled(w, queue, outcome), n)
}

// gatewayCode returns the code of a gateway error result, checking its
// source.
func gatewayCode(t testing.TB, r *protocol.Response) int {
	t.Helper()
	require.NotNil(t, r.Error, "want an error result, got %s", r.Result)
	require.Equal(t, protocol.SourceGateway, r.Error.Source())
	return r.Error.Code
}

// sendMany sends n commands, with par goroutines, and returns their
// envelopes. mk describes command i; nil means client c{i%7}, device
// d{i%50}, id i.
func (h *harness) sendMany(n, par int, mk func(i int) spec) []*protocol.Envelope {
	h.t.Helper()
	if mk == nil {
		mk = func(i int) spec {
			return spec{client: fmt.Sprintf("c%d", i%7), device: fmt.Sprintf("d%d", i%50), id: strconv.Itoa(i)}
		}
	}
	envs := make([]*protocol.Envelope, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range par {
		wg.Go(func() {
			for i := range next {
				envs[i], errs[i] = h.trySend(mk(i))
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		require.NoError(h.t, err, "command %d", i)
	}
	return envs
}
