package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/gateway/protocol"
)

// Behaviour is how simulated devices answer.
type Behaviour struct {
	Latency  time.Duration // fixed part of the answer latency
	Jitter   time.Duration // uniform random extra latency, 0..Jitter
	FailRate float64       // share of commands answered with an error
	DropRate float64       // share of commands never answered
	Reboot   time.Duration // how long "reboot" keeps the device offline
}

// FleetStats counts what a fleet did.
type FleetStats struct {
	Received, Answered, Failed, Dropped, Duplicates, Unknown, PublishErrors atomic.Int64
	// Answers, when not nil, records when each command was answered (for
	// fault tests: a command the device answered must never end timeout).
	Answers *AnswerLog
}

// AnswerLog records, by the id a device saw ("{client}:{id}",
// protocol.DeviceMsgID), when the device first sent its answer. It grows
// with every command: only for bounded runs (tests).
type AnswerLog struct {
	m sync.Map // string -> time.Time
}

func (l *AnswerLog) add(id json.RawMessage, at time.Time) {
	var s string
	if json.Unmarshal(id, &s) != nil {
		s = string(id)
	}
	l.m.LoadOrStore(s, at)
}

// At returns when the device answered the command whose device-facing id
// is id, and whether it did.
func (l *AnswerLog) At(id string) (time.Time, bool) {
	v, ok := l.m.Load(id)
	if !ok {
		return time.Time{}, false
	}
	return v.(time.Time), true
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

	mu    sync.Mutex
	state map[string]json.RawMessage
	seen  map[string]*answer // by device-facing id: dedupe of redeliveries
	order []string           // FIFO of seen ids, bounded
}

type answer struct {
	done    chan struct{}
	payload []byte // nil: dropped
}

const seenLimit = 2048

// NewDevice returns a device using sess for MQTT.
func NewDevice(id string, sess *Session, b Behaviour, st *FleetStats) *Device {
	d := &Device{ID: id, Sess: sess, B: b, Stats: st, pause: make(chan time.Duration, 1),
		state: map[string]json.RawMessage{}, seen: map[string]*answer{}}
	sess.Filter = protocol.DeviceCommandsTopic(id)
	sess.Handler = d.onMessage
	return d
}

// Run keeps the device connected until ctx is done.
func (d *Device) Run(ctx context.Context) { d.Sess.Run(ctx, d.pause) }

// GoOffline disconnects the device for dur.
func (d *Device) GoOffline(dur time.Duration) {
	select {
	case d.pause <- dur:
	default:
	}
}

// onMessage runs in paho's goroutine; the answer is computed and sent in
// another goroutine so that a slow method never blocks paho.
func (d *Device) onMessage(_ mqtt.Client, m mqtt.Message) {
	d.Stats.Received.Add(1)
	var req struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
		ID     json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(m.Payload(), &req); err != nil || len(req.ID) == 0 {
		d.Stats.Unknown.Add(1)
		return
	}
	key := string(req.ID)
	d.mu.Lock()
	if a, ok := d.seen[key]; ok {
		d.mu.Unlock()
		d.Stats.Duplicates.Add(1)
		go func() {
			<-a.done
			if a.payload != nil {
				d.publish(a.payload)
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
	d.mu.Unlock()
	go d.execute(req.Method, req.Params, req.ID, a)
}

func (d *Device) execute(method string, params, id json.RawMessage, a *answer) {
	defer close(a.done)
	r := rand.Float64()
	if r < d.B.DropRate {
		d.Stats.Dropped.Add(1)
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
	if r < d.B.DropRate+d.B.FailRate {
		resp = protocol.NewErrorResponse(id, &protocol.Error{Code: SimulatedFailureCode, Message: "simulated failure"})
		d.Stats.Failed.Add(1)
	} else {
		resp = d.call(method, params, id)
	}
	payload, _ := json.Marshal(resp)
	a.payload = payload
	d.Stats.Answered.Add(1)
	if d.Stats.Answers != nil {
		d.Stats.Answers.add(id, time.Now())
	}
	d.publish(payload)
	if method == "reboot" && resp.Error == nil {
		d.GoOffline(d.B.Reboot)
	}
}

func (d *Device) publish(payload []byte) {
	if err := d.Sess.Publish(protocol.DeviceResponsesTopic(d.ID), payload); err != nil {
		d.Stats.PublishErrors.Add(1)
	}
}

// call runs one built-in method.
func (d *Device) call(method string, params, id json.RawMessage) *protocol.Response {
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
