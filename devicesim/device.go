package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// Behaviour is how simulated devices answer.
type Behaviour struct {
	Latency  time.Duration // fixed part of the answer latency
	Jitter   time.Duration // uniform random extra latency, 0..Jitter
	FailRate float64       // share of commands answered with an error
	DropRate float64       // share of commands never answered
	Reboot   time.Duration // how long "reboot" keeps the device offline
	// RefuseFirst refuses the first RefuseFirst attempts of every command
	// (by the attempt its id names, as FailFirst) with the MQTT 5 PUBACK
	// 0x87, not authorized: the gateway ends it rejected, or, with a retry
	// policy that retries rejected, tries it again. Over MQTT only.
	RefuseFirst int
	// FailFirst answers the first FailFirst attempts of every command
	// with an error: the attempt a device-facing id names with its suffix
	// "#{n}" (protocol.DeviceAttemptID; none: the first). With a retry
	// policy that retries device_error, the gateway tries it again.
	FailFirst int
}

// failsAttempt reports whether the behaviour fails the attempt the
// device-facing id names (FailFirst).
func (b Behaviour) failsAttempt(id json.RawMessage) bool {
	n := attemptOf(id)
	return n > 0 && n <= b.FailFirst
}

// attemptOf is the attempt a device-facing id names: n for the suffix
// "#{n}", 1 without one, 0 when id is not a string with a valid suffix.
func attemptOf(id json.RawMessage) int {
	var s string
	if json.Unmarshal(id, &s) != nil {
		return 0
	}
	if _, n, ok := protocol.SplitAttempt(s); ok {
		return max(n, 1)
	}
	return 0
}

// refusedCode is the PUBACK reason code with which the device refuses a
// command (RefuseFirst), 0 when it takes it.
func (d *Device) refusedCode(m Message) byte {
	var req struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(m.Payload, &req) != nil {
		return 0
	}
	if n := attemptOf(req.ID); n > 0 && n <= d.B.RefuseFirst {
		d.Stats.Refused.Add(1)
		return 0x87 // not authorized
	}
	return 0
}

// FleetStats counts what a fleet did.
type FleetStats struct {
	Received, Answered, Failed, Dropped, Duplicates, Unknown, PublishErrors atomic.Int64
	// Refused counts commands refused with a PUBACK (RefuseFirst).
	Refused atomic.Int64
	// Polls and PollErrors count the HTTP polls of devices over HTTP.
	Polls, PollErrors atomic.Int64
	// Answers, when not nil, records when each command was received and
	// answered (for fault tests: a command the device answered must never
	// end timeout, and a re-offer must be answered again).
	Answers *AnswerLog
}

// AnswerLog records, by the id a device saw ("{client}:{id}",
// protocol.DeviceMsgID), when the device received the command (every
// offer: the first and each re-offer of the same id) and when it sent
// its answer (the first and each copy answering a re-offer). It grows
// with every command: only for bounded runs (tests).
type AnswerLog struct {
	mu sync.Mutex
	m  map[string]*AnswerHistory
}

// AnswerHistory is what a device did with one command id.
type AnswerHistory struct {
	Offers  []time.Time // each time the device received the id
	Answers []time.Time // each time it sent its answer (a copy for a re-offer)
}

// idString is the device-facing id as a string ("{client}:{id}").
func idString(id json.RawMessage) string {
	var s string
	if json.Unmarshal(id, &s) != nil {
		s = string(id)
	}
	return s
}

// entry returns the history of id, made when absent; l.mu is held.
func (l *AnswerLog) entry(id string) *AnswerHistory {
	if l.m == nil {
		l.m = map[string]*AnswerHistory{}
	}
	h := l.m[id]
	if h == nil {
		h = &AnswerHistory{}
		l.m[id] = h
	}
	return h
}

func (l *AnswerLog) offered(id json.RawMessage, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.entry(idString(id))
	h.Offers = append(h.Offers, at)
}

func (l *AnswerLog) add(id json.RawMessage, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.entry(idString(id))
	h.Answers = append(h.Answers, at)
}

// At returns when the device first answered the command whose
// device-facing id is id, and whether it did.
func (l *AnswerLog) At(id string) (time.Time, bool) {
	h := l.History(id)
	if len(h.Answers) == 0 {
		return time.Time{}, false
	}
	return h.Answers[0], true
}

// History returns a copy of what the device did with id.
func (l *AnswerLog) History(id string) AnswerHistory {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.m[id]
	if h == nil {
		return AnswerHistory{}
	}
	return AnswerHistory{Offers: slices.Clone(h.Offers), Answers: slices.Clone(h.Answers)}
}

// HTTPChannel is how a device polls over HTTP (a sleepy device): it
// wakes, polls GET /v1/devices/{d}/commands/next (acknowledging what the
// previous poll returned) until nothing waits, answers with POST
// /v1/devices/{d}/responses, and sleeps Wake.
type HTTPChannel struct {
	Wake time.Duration // sleep between polls that found nothing
	Wait time.Duration // long-poll wait of each poll (0: none)
	Max  int           // commands per poll (0: the gateway's default)
}

// SimulatedFailureCode is the error code of a simulated device failure.
const SimulatedFailureCode = -32000

// Device is one simulated device.
type Device struct {
	ID    string
	Sess  *Session
	B     Behaviour
	Stats *FleetStats
	pause chan time.Duration
	// HTTP, when set, makes the device poll over HTTP instead of holding
	// an MQTT session; with Switch > 0 it alternates: MQTT for Switch,
	// then HTTP for Switch, and so on (Sess keeps the token either way).
	HTTP   *HTTPChannel
	Switch time.Duration

	onHTTP    atomic.Bool // answers go over HTTP now
	polling   atomic.Bool // the last poll succeeded
	ready     chan struct{}
	readyOnce sync.Once

	mu    sync.Mutex
	state map[string]json.RawMessage
	seen  map[string]*answer // by device-facing id: dedupe of redeliveries
	order []string           // FIFO of seen ids, bounded
	n     int64              // commands received (first receipts), for the seq method
}

type answer struct {
	done    chan struct{}
	payload []byte // nil: dropped
	tp      string // the traceparent sent with it
}

const seenLimit = 2048

// NewDevice returns a device using sess for MQTT.
func NewDevice(id string, sess *Session, b Behaviour, st *FleetStats) *Device {
	d := &Device{ID: id, Sess: sess, B: b, Stats: st, pause: make(chan time.Duration, 1),
		state: map[string]json.RawMessage{}, seen: map[string]*answer{}, ready: make(chan struct{})}
	sess.Filter = protocol.DeviceCommandsTopic(id)
	sess.Handler = d.onMessage
	if b.RefuseFirst > 0 {
		sess.Refuse = d.refusedCode
	}
	return d
}

// Run keeps the device connected (MQTT), polling (HTTP) or alternating
// between the two (Switch) until ctx is done.
func (d *Device) Run(ctx context.Context) {
	go func() {
		select {
		case <-d.Sess.Ready():
			d.markReady()
		case <-ctx.Done():
		}
	}()
	switch {
	case d.HTTP == nil:
		d.Sess.Run(ctx, d.pause)
	case d.Switch <= 0:
		d.runHTTP(ctx)
	default:
		for phase := 0; ctx.Err() == nil; phase++ {
			pctx, cancel := context.WithTimeout(ctx, d.Switch)
			if phase%2 == 0 {
				d.Sess.Run(pctx, d.pause)
			} else {
				d.runHTTP(pctx)
			}
			cancel()
		}
	}
}

// Ready is closed once the device first connected over MQTT or polled
// over HTTP.
func (d *Device) Ready() <-chan struct{} { return d.ready }

func (d *Device) markReady() { d.readyOnce.Do(func() { close(d.ready) }) }

// Online reports whether the device holds an MQTT session or polls over
// HTTP successfully.
func (d *Device) Online() bool { return d.Sess.Online() || d.polling.Load() }

// runHTTP polls over HTTP until ctx is done: each poll acknowledges the
// commands of the one before; a poll that found nothing is followed by
// Wake of sleep (the first time a random part of it). A 409 (the device's MQTT session is still registered,
// right after a switch) or any error is retried with a backoff.
func (d *Device) runHTTP(ctx context.Context) {
	d.onHTTP.Store(true)
	defer func() { d.onHTTP.Store(false); d.polling.Store(false) }()
	var acks []string
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		cmds, err := d.Sess.API.Poll(ctx, d.Sess.Token, d.ID, d.HTTP.Wait, d.HTTP.Max, acks)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.polling.Store(false)
			d.Stats.PollErrors.Add(1)
			if d.Sess.Log != nil {
				d.Sess.Log.Debug("poll failed", "device_id", d.ID, "err", err)
			}
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		d.polling.Store(true)
		d.markReady()
		d.Stats.Polls.Add(1)
		acks = acks[:0]
		for _, c := range cmds {
			acks = append(acks, c.Ack)
			d.handle(c.Request, "")
		}
		if len(cmds) == 0 {
			wake := d.HTTP.Wake
			if first && wake > 0 {
				// The first sleep is a random part of Wake, so that a
				// fleet started at once does not wake all at once.
				wake = time.Duration(rand.Int64N(int64(wake)))
			}
			first = false
			sleep(ctx, wake)
		}
	}
}

// GoOffline disconnects the device for dur.
func (d *Device) GoOffline(dur time.Duration) {
	select {
	case d.pause <- dur:
	default:
	}
}

// onMessage runs in paho's goroutine; the answer is computed and sent in
// another goroutine so that a slow method never blocks paho.
func (d *Device) onMessage(m Message) { d.handle(m.Payload, m.TraceParent) }

// handle takes one command, from MQTT or from an HTTP poll; tp is the
// traceparent that came with it ("" when none did).
func (d *Device) handle(payload []byte, tp string) {
	d.Stats.Received.Add(1)
	var req struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
		ID     json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(payload, &req); err != nil || len(req.ID) == 0 {
		d.Stats.Unknown.Add(1)
		return
	}
	key := string(req.ID)
	if d.Stats.Answers != nil {
		d.Stats.Answers.offered(req.ID, time.Now())
	}
	d.mu.Lock()
	if a, ok := d.seen[key]; ok {
		d.mu.Unlock()
		d.Stats.Duplicates.Add(1)
		// A re-offer of the same id (DESIGN §7a): answer it again
		// without executing it again.
		go func() {
			<-a.done
			if a.payload != nil {
				if d.Stats.Answers != nil {
					d.Stats.Answers.add(req.ID, time.Now())
				}
				d.publish(a.payload, a.tp)
			}
		}()
		return
	}
	a := &answer{done: make(chan struct{})}
	d.seen[key] = a
	d.order = append(d.order, key)
	if len(d.order) > seenLimit {
		delete(d.seen, d.order[0])
		d.order = d.order[1:]
	}
	d.n++
	n := d.n
	d.mu.Unlock()
	go d.execute(tp, req.Method, req.Params, req.ID, n, a)
}

// execute runs a command and answers it; n is its place among the
// commands the device received. Its span, "answer", continues the trace
// the push server sent with the command (tp), and the answer carries the
// span's traceparent back. The span ends before the answer is sent: its
// PUBACK may come after the client has the result.
func (d *Device) execute(tp, method string, params, id json.RawMessage, n int64, a *answer) {
	defer close(a.done)
	ctx, span := telemetry.Tracer().Start(telemetry.ContextWithTraceParent(context.Background(), tp), "answer",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("device_id", d.ID), attribute.String("method", method)))
	r := rand.Float64()
	if r < d.B.DropRate {
		d.Stats.Dropped.Add(1)
		span.SetAttributes(attribute.String("outcome", "dropped"))
		span.End()
		return
	}
	delay := d.B.Latency
	if d.B.Jitter > 0 {
		delay += time.Duration(rand.Int64N(int64(d.B.Jitter) + 1))
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	var resp *protocol.Response
	if r < d.B.DropRate+d.B.FailRate || d.B.failsAttempt(id) {
		resp = protocol.NewErrorResponse(id, &protocol.Error{Code: SimulatedFailureCode, Message: "simulated failure"})
		d.Stats.Failed.Add(1)
	} else {
		resp = d.call(method, params, id, n)
	}
	if resp.Error != nil {
		span.SetStatus(codes.Error, resp.Error.Message)
	}
	payload, _ := json.Marshal(resp)
	a.payload, a.tp = payload, telemetry.TraceParent(ctx)
	span.End()
	d.Stats.Answered.Add(1)
	if d.Stats.Answers != nil {
		d.Stats.Answers.add(id, time.Now())
	}
	d.publish(payload, a.tp)
	if method == "reboot" && resp.Error == nil {
		d.GoOffline(d.B.Reboot)
	}
}

// publish sends an answer over the channel the device uses now; a device
// that may poll over HTTP posts it when its MQTT session is gone (tp,
// the answer's traceparent, travels only over MQTT 5).
func (d *Device) publish(payload []byte, tp string) {
	if d.HTTP != nil && d.onHTTP.Load() {
		d.post(payload)
		return
	}
	err := d.Sess.Publish(protocol.DeviceResponsesTopic(d.ID), payload, tp)
	if err != nil && d.HTTP != nil {
		// Offline, or the session ended under the PUBLISH (a switch):
		// the answer goes over HTTP; a copy that got through is harmless
		// (the gateway keeps the first answer).
		d.post(payload)
		return
	}
	if err != nil {
		d.Stats.PublishErrors.Add(1)
	}
}

// post sends an answer with POST /v1/devices/{d}/responses.
func (d *Device) post(payload []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := d.Sess.API.PostResponse(ctx, d.Sess.Token, d.ID, payload); err != nil {
		d.Stats.PublishErrors.Add(1)
		if d.Sess.Log != nil {
			d.Sess.Log.Debug("answer not posted", "device_id", d.ID, "err", err)
		}
	}
}

// call runs one built-in method; n is the command's place among those
// the device received (the seq method returns it).
func (d *Device) call(method string, params, id json.RawMessage, n int64) *protocol.Response {
	ok := func(v any) *protocol.Response {
		b, _ := json.Marshal(v)
		return protocol.NewResult(id, b)
	}
	switch method {
	case "ping":
		return ok("pong")
	case "echo":
		if len(params) == 0 {
			return protocol.NewResult(id, json.RawMessage("null"))
		}
		return protocol.NewResult(id, params)
	case "seq":
		if len(params) == 0 {
			params = json.RawMessage("null")
		}
		return ok(map[string]any{"n": n, "params": params})
	case "get_state":
		d.mu.Lock()
		defer d.mu.Unlock()
		return ok(d.state)
	case "set_state":
		var in map[string]json.RawMessage
		if err := json.Unmarshal(params, &in); err != nil {
			return protocol.NewErrorResponse(id, &protocol.Error{Code: protocol.CodeInvalidParams, Message: "set_state takes an object"})
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		for k, v := range in {
			d.state[k] = v
		}
		return ok(d.state)
	case "sleep":
		ms, err := sleepMillis(params)
		if err != nil {
			return protocol.NewErrorResponse(id, &protocol.Error{Code: protocol.CodeInvalidParams, Message: err.Error()})
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		return ok(map[string]int64{"slept_ms": ms})
	case "reboot":
		return ok(map[string]any{"rebooting": true, "offline_ms": d.B.Reboot.Milliseconds()})
	}
	return protocol.NewErrorResponse(id, &protocol.Error{Code: protocol.CodeMethodNotFound, Message: "method not found: " + method})
}

// sleepMillis reads {"ms":N} or [N].
func sleepMillis(params json.RawMessage) (int64, error) {
	var obj struct {
		MS *int64 `json:"ms"`
	}
	var arr []int64
	switch {
	case json.Unmarshal(params, &obj) == nil && obj.MS != nil:
		return clampSleep(*obj.MS)
	case json.Unmarshal(params, &arr) == nil && len(arr) == 1:
		return clampSleep(arr[0])
	}
	return 0, errSleepParams
}

type paramError string

func (e paramError) Error() string { return string(e) }

const errSleepParams = paramError(`sleep takes {"ms": N} or [N] with 0 <= N <= 600000`)

func clampSleep(ms int64) (int64, error) {
	if ms < 0 || ms > 600000 {
		return 0, errSleepParams
	}
	return ms, nil
}
