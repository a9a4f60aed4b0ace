package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustID(t testing.TB, raw string) ID {
	t.Helper()
	id, err := ParseID(json.RawMessage(raw))
	if err != nil {
		t.Fatalf("ParseID(%q) error = %v", raw, err)
	}
	return id
}

func sampleEnvelope(t testing.TB) *Envelope {
	return &Envelope{
		Kind:           KindCommand,
		Client:         "app-1",
		Device:         "dev-1",
		MsgID:          mustID(t, `"r-42"`),
		Payload:        json.RawMessage(`{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"r-42"}`),
		AcceptedAt:     time.Date(2025, 1, 2, 3, 4, 5, 678_000_000, time.UTC),
		DeliverBy:      time.Date(2025, 1, 2, 4, 4, 5, 678_000_000, time.UTC),
		AnswerWithinMS: 30_000,
		Attempt:        1,
		TraceParent:    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}
}

func TestEnvelopeEncode(t *testing.T) {
	e := sampleEnvelope(t)
	b, err := e.Encode()
	if err != nil {
		t.Fatalf("Encode() error = %v", err)
	}
	const want = `{"v":1,"kind":"command","client":"app-1","device":"dev-1","msg_id":"r-42",` +
		`"payload":{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"r-42"},` +
		`"accepted_at":"2025-01-02T03:04:05.678Z","deliver_by":"2025-01-02T04:04:05.678Z",` +
		`"answer_within_ms":30000,"attempt":1,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`
	if string(b) != want {
		t.Errorf("Encode() = %s, want %s", b, want)
	}
	if e.V != EnvelopeVersion {
		t.Errorf("Encode() left V = %d, want %d", e.V, EnvelopeVersion)
	}
}

func TestEnvelopeEncodeTimes(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	e := sampleEnvelope(t)
	e.AcceptedAt = time.Date(2025, 1, 2, 4, 4, 5, 678_999_999, cet)
	e.DeliverBy = time.Time{}
	e.AnswerWithinMS = 0
	e.TraceParent = ""
	b, err := e.Encode()
	if err != nil {
		t.Fatalf("Encode() error = %v", err)
	}
	s := string(b)
	if !strings.Contains(s, `"accepted_at":"2025-01-02T03:04:05.678Z"`) {
		t.Errorf("Encode() = %s, want accepted_at in UTC with milliseconds", s)
	}
	for _, omitted := range []string{"deliver_by", "answer_within_ms", "traceparent"} {
		if strings.Contains(s, omitted) {
			t.Errorf("Encode() = %s, want no %s when zero", s, omitted)
		}
	}
	if e.AcceptedAt.Nanosecond() != 678_999_999 || e.AcceptedAt.Location() != cet {
		t.Errorf("Encode() changed AcceptedAt to %v, want it kept", e.AcceptedAt)
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, e := range []*Envelope{
		sampleEnvelope(t),
		{Kind: KindCommand, Client: "c", Device: "d", MsgID: mustID(t, `7`),
			Payload: json.RawMessage(`{"jsonrpc":"2.0","method":"m","id":7}`), Attempt: 1},
		{Kind: KindCommand, Client: id128, Device: id128, MsgID: mustID(t, `"`+id128+`"`),
			Payload: json.RawMessage(`{"jsonrpc":"2.0","method":"m","id":"x"}`), AcceptedAt: time.UnixMilli(1_700_000_000_123).UTC(), Attempt: 3},
	} {
		b, err := e.Encode()
		if err != nil {
			t.Fatalf("Encode() error = %v", err)
		}
		got, err := DecodeEnvelope(b)
		if err != nil {
			t.Fatalf("DecodeEnvelope(%q) error = %v", b, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("DecodeEnvelope(%q) = %+v, want %+v", b, got, e)
		}
		if got.MsgID.Key() != e.MsgID.Key() || string(got.MsgID.Raw()) != string(e.MsgID.Raw()) {
			t.Errorf("DecodeEnvelope(%q).MsgID = %s, want %s", b, got.MsgID.Raw(), e.MsgID.Raw())
		}
	}
}

func TestDecodeEnvelopeTolerates(t *testing.T) {
	tests := []string{
		// Unknown fields, at the top and inside the payload.
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{"method":"m","x":1},"attempt":1,"future":{"a":[1,2]},"priority":9}`,
		// Fields in any order, whitespace, no optional fields.
		` { "payload" : { } , "msg_id" : "a" , "device" : "d" , "client" : "c" , "kind" : "command" , "v" : 1 } `,
		// Times with an offset.
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{},"accepted_at":"2025-01-02T04:04:05+01:00"}`,
	}
	for _, in := range tests {
		if _, err := DecodeEnvelope([]byte(in)); err != nil {
			t.Errorf("DecodeEnvelope(%q) error = %v, want nil", in, err)
		}
	}
}

func TestDecodeEnvelopeRefuses(t *testing.T) {
	const ok = `"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}`
	tests := []struct {
		in   string
		want string // part of the error
	}{
		{``, "invalid envelope"},
		{`x`, "invalid envelope"},
		{`[]`, "invalid envelope"},
		{`null`, "unsupported version 0"},
		{`{}`, "unsupported version 0"},
		{`{` + ok + `}`, "unsupported version 0"},
		{`{"v":0,` + ok + `}`, "unsupported version 0"},
		{`{"v":2,` + ok + `}`, "unsupported version 2"},
		{`{"v":-1,` + ok + `}`, "unsupported version -1"},
		{`{"v":1.5,` + ok + `}`, "invalid envelope"},
		{`{"v":"1",` + ok + `}`, "invalid envelope"},
		{`{"v":1,` + ok + `} x`, "invalid envelope"},
		{`{"v":1,"kind":"","client":"c","device":"d","msg_id":1,"payload":{}}`, `unknown kind ""`},
		{`{"v":1,"client":"c","device":"d","msg_id":1,"payload":{}}`, `unknown kind ""`},
		{`{"v":1,"kind":"Command","client":"c","device":"d","msg_id":1,"payload":{}}`, `unknown kind "Command"`},
		// Device answers no longer cross RabbitMQ (DESIGN §5).
		{`{"v":1,"kind":"result","client":"c","device":"d","msg_id":7,"payload":{"jsonrpc":"2.0","result":{"ok":true},"id":"c:7"},"attempt":1}`, `kind "result" is no longer carried over AMQP`},
		{`{"v":1,"kind":"command","device":"d","msg_id":1,"payload":{}}`, `client ""`},
		{`{"v":1,"kind":"command","client":"a:b","device":"d","msg_id":1,"payload":{}}`, `client "a:b"`},
		{`{"v":1,"kind":"command","client":"c","device":"d/e","msg_id":1,"payload":{}}`, `device "d/e"`},
		{`{"v":1,"kind":"command","client":"c","device":"+","msg_id":1,"payload":{}}`, `device "+"`},
		{`{"v":1,"kind":"command","client":"c","msg_id":1,"payload":{}}`, `device ""`},
		{`{"v":1,"kind":"command","client":"c","device":"d","payload":{}}`, "msg_id missing"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":null,"payload":{}}`, "id is null"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1.5,"payload":{}}`, "id must be an integer"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":"a b","payload":{}}`, "id may only contain"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":{},"payload":{}}`, "id must be a string or an integer"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1}`, "payload is not a JSON object"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":null}`, "payload is not a JSON object"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":"{}"}`, "payload is not a JSON object"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":1}`, "payload is not a JSON object"},
		{`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":[]}`, "payload is not a JSON object"},
		{`{"v":1,` + ok + `,"accepted_at":"yesterday"}`, "invalid envelope"},
		{`{"v":1,` + ok + `,"attempt":"1"}`, "invalid envelope"},
		{`{"v":1,` + ok + `,"answer_within_ms":1.5}`, "invalid envelope"},
	}
	for _, tt := range tests {
		e, err := DecodeEnvelope([]byte(tt.in))
		if err == nil || !errors.Is(err, ErrEnvelope) || !strings.Contains(err.Error(), tt.want) || e != nil {
			t.Errorf("DecodeEnvelope(%q) = %v, %v, want %v: %q", tt.in, e, err, ErrEnvelope, tt.want)
		}
	}
}

func TestEnvelopeAnswerWithin(t *testing.T) {
	e := &Envelope{AnswerWithinMS: 1500}
	if got := e.AnswerWithin(); got != 1500*time.Millisecond {
		t.Errorf("AnswerWithin() = %v, want %v", got, 1500*time.Millisecond)
	}
}

func TestDeviceRequest(t *testing.T) {
	tests := []struct {
		client, msgID, payload string
		want                   string
	}{
		{"app-1", `42`, `{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":42}`,
			`{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"app-1:42"}`},
		{"app-1", `"42"`, `{"jsonrpc":"2.0","method":"reboot","params":[1, 2],"id":"42"}`,
			`{"jsonrpc":"2.0","method":"reboot","params":[1,2],"id":"app-1:42"}`},
		{"c", `"x:y"`, `{"method":"ping"}`,
			`{"jsonrpc":"2.0","method":"ping","id":"c:x:y"}`},
		{"c", `-0`, `{"jsonrpc":"2.0","method":"set","params":{"b":1.0,"a":"<&>"},"id":-0,"extra":1}`,
			`{"jsonrpc":"2.0","method":"set","params":{"b":1.0,"a":"<&>"},"id":"c:0"}`},
	}
	for _, tt := range tests {
		e := &Envelope{Kind: KindCommand, Client: tt.client, Device: "d", MsgID: mustID(t, tt.msgID), Payload: json.RawMessage(tt.payload)}
		b, err := e.DeviceRequest()
		if err != nil {
			t.Errorf("DeviceRequest(%s) error = %v", tt.payload, err)
			continue
		}
		if string(b) != strings.ReplaceAll(tt.want, "<&>", `\u003c\u0026\u003e`) {
			t.Errorf("DeviceRequest(%s) = %s, want %s", tt.payload, b, tt.want)
		}
		// The device gets a request it could send to us: a valid one.
		r, perr := ParseRequest(b)
		if perr != nil {
			t.Errorf("ParseRequest(DeviceRequest(%s)) error = %v", tt.payload, perr)
			continue
		}
		client, id, err := ParseDeviceMsgID(r.ID.Key())
		if err != nil || client != tt.client || id.Key() != e.MsgID.Key() {
			t.Errorf("ParseDeviceMsgID(%q) = %q, %q, %v, want %q, %q", r.ID.Key(), client, id.Key(), err, tt.client, e.MsgID.Key())
		}
	}
	for _, payload := range []string{`[]`, `"x"`, `{"method":1}`, `{`} {
		e := &Envelope{Kind: KindCommand, Client: "c", Device: "d", MsgID: mustID(t, `1`), Payload: json.RawMessage(payload)}
		if b, err := e.DeviceRequest(); err == nil || !errors.Is(err, ErrEnvelope) {
			t.Errorf("DeviceRequest(%s) = %s, %v, want %v", payload, b, err, ErrEnvelope)
		}
	}
}
