package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// EnvelopeVersion is the version written into every envelope. Readers
// accept any envelope whose version is at most this and ignore unknown
// fields, so a newer writer may add fields without breaking older readers.
const EnvelopeVersion = 1

// KindCommand is the only envelope kind: apiserver → commands queue, a
// client's request. Device answers do not cross RabbitMQ (DESIGN §5: the
// push server completes them in Redis), so the former kind "result" is
// refused like any other unknown kind.
const KindCommand = "command"

// Envelope is the body of every AMQP message (DESIGN §6). Times are UTC
// with millisecond precision; durations are milliseconds.
type Envelope struct {
	V      int    `json:"v"`
	Kind   string `json:"kind"`
	Client string `json:"client"`
	Device string `json:"device"`
	// MsgID is the client's own ID, as the client wrote it.
	MsgID ID `json:"msg_id"`
	// Payload is the client's JSON-RPC request as the device will get it
	// apart from its id.
	Payload json.RawMessage `json:"payload"`
	// AcceptedAt is when the apiserver accepted the command.
	AcceptedAt time.Time `json:"accepted_at"`
	// DeliverBy is the deadline for delivery to the device (expires_in).
	DeliverBy time.Time `json:"deliver_by,omitzero"`
	// AnswerWithinMS is the device's answer deadline after delivery (timeout).
	AnswerWithinMS int64 `json:"answer_within_ms,omitempty"`
	// Attempt counts publishes of this command (1 for the first; a replay
	// from the dead letters adds one).
	Attempt int `json:"attempt"`
	// TraceParent is the W3C trace context of the request.
	TraceParent string `json:"traceparent,omitempty"`
}

// AnswerWithin returns AnswerWithinMS as a duration.
func (e *Envelope) AnswerWithin() time.Duration {
	return time.Duration(e.AnswerWithinMS) * time.Millisecond
}

// Errors of envelope decoding.
var ErrEnvelope = errors.New("protocol: invalid envelope")

// Encode returns the JSON of e, stamping the current version. Times are
// written in UTC, truncated to the millisecond (e itself keeps them as
// they are).
func (e *Envelope) Encode() ([]byte, error) {
	e.V = EnvelopeVersion
	c := *e
	c.AcceptedAt = wireTime(c.AcceptedAt)
	c.DeliverBy = wireTime(c.DeliverBy)
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("protocol: cannot encode envelope: %w", err)
	}
	return b, nil
}

func wireTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

// DecodeEnvelope parses and checks an envelope: known version and kind,
// valid identities and message ID, a payload that is a JSON object.
// Unknown fields are ignored.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	e, ok := decodeEnvelopeFast(b)
	if !ok {
		e = &Envelope{}
		if err := json.Unmarshal(b, e); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrEnvelope, err)
		}
	}
	switch {
	case e.V < 1 || e.V > EnvelopeVersion:
		return nil, fmt.Errorf("%w: unsupported version %d", ErrEnvelope, e.V)
	case e.Kind == "result":
		return nil, fmt.Errorf("%w: kind %q is no longer carried over AMQP (device answers are completed by the push server)", ErrEnvelope, e.Kind)
	case e.Kind != KindCommand:
		return nil, fmt.Errorf("%w: unknown kind %q", ErrEnvelope, e.Kind)
	case !ValidIdentity(e.Client):
		return nil, fmt.Errorf("%w: client %q", ErrEnvelope, e.Client)
	case !ValidIdentity(e.Device):
		return nil, fmt.Errorf("%w: device %q", ErrEnvelope, e.Device)
	case e.MsgID.IsZero():
		return nil, fmt.Errorf("%w: msg_id missing", ErrEnvelope)
	case len(e.Payload) == 0 || e.Payload[0] != '{':
		// Either decoder leaves only valid JSON in Payload.
		return nil, fmt.Errorf("%w: payload is not a JSON object", ErrEnvelope)
	}
	return e, nil
}

// DeviceRequest returns the JSON-RPC request the device receives for a
// command envelope: the client's method and params, with the id
// "{client}:{id}".
func (e *Envelope) DeviceRequest() ([]byte, error) {
	_, req, err := e.DeviceCommand()
	return req, err
}

// DeviceCommand is DeviceRequest that also returns the method, read in
// the same pass over the payload.
func (e *Envelope) DeviceCommand() (method string, req []byte, err error) {
	id := DeviceMsgID(e.Client, e.MsgID)
	if method, req, ok := deviceRequestFast(e.Payload, id); ok {
		return method, req, nil
	}
	return deviceRequestStd(e.Payload, id)
}

// deviceRequestStd is DeviceCommand through encoding/json.
func deviceRequestStd(payload []byte, id string) (string, []byte, error) {
	var req struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params,omitempty"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return "", nil, fmt.Errorf("%w: payload: %w", ErrEnvelope, err)
	}
	out := struct {
		JSONRPC string          `json:"jsonrpc"`
		Method  string          `json:"method"`
		Params  json.RawMessage `json:"params,omitempty"`
		ID      string          `json:"id"`
	}{Version, req.Method, req.Params, id}
	b, err := json.Marshal(out)
	if err != nil {
		return "", nil, fmt.Errorf("%w: payload: %w", ErrEnvelope, err)
	}
	return req.Method, b, nil
}
