package protocol

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// The fast paths must take what the gateway itself writes; if they ever
// stop doing so, everything still works, only slower, so this test is
// what notices.
func TestFastPathsTakeTheGatewaysOwnShapes(t *testing.T) {
	cmd := sampleEnvelope(t)
	minimal := &Envelope{Kind: KindCommand, Client: "c", Device: "d", MsgID: mustID(t, `7`),
		Payload: json.RawMessage(`{"jsonrpc":"2.0","method":"m","id":7}`), AcceptedAt: time.Now()}
	for _, e := range []*Envelope{cmd, minimal} {
		b, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		fast, ok := decodeEnvelopeFast(b)
		if !ok {
			t.Errorf("decodeEnvelopeFast(%s) gave up", b)
			continue
		}
		if fast.Client != e.Client || fast.MsgID.Key() != e.MsgID.Key() || !fast.AcceptedAt.Equal(wireTime(e.AcceptedAt)) {
			t.Errorf("decodeEnvelopeFast(%s) = %+v", b, fast)
		}
		if e.Kind == KindCommand {
			if _, _, ok := deviceRequestFast(fast.Payload, DeviceMsgID(fast.Client, fast.MsgID)); !ok {
				t.Errorf("deviceRequestFast(%s) gave up", fast.Payload)
			}
		}
	}
	for _, p := range []string{
		`{"jsonrpc":"2.0","result":{"ok":true},"id":"app-1:r-42"}`,
		`{"jsonrpc":"2.0","result":null,"id":"c:7"}`,
		`{"id":"c:7","result":[1,2],"jsonrpc":"2.0"}`,
	} {
		if _, ok := parseResponseFast([]byte(p)); !ok {
			t.Errorf("parseResponseFast(%s) gave up", p)
		}
	}
}

// What the fast paths must leave to encoding/json (and what they decode
// the same way).
func TestFastPathsGiveUpOnOtherShapes(t *testing.T) {
	for _, b := range []string{
		`{"V":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1,"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1,"kind":"comm\u0061nd","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1.0,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{} }`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}} `,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{},"future":1}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":null,"payload":{}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{"a":}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{"a":[}]}`,
		`{"v":01,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{},"accepted_at":"yesterday"}`,
	} {
		if e, ok := decodeEnvelopeFast([]byte(b)); ok {
			t.Errorf("decodeEnvelopeFast(%s) = %+v, want it to give up", b, e)
		}
	}
	for _, p := range []string{
		`{"jsonrpc":"2.0","error":{"code":1,"message":"m"},"id":1}`,
		`{"jsonrpc":"2.0","result":1,"error":null,"id":1}`,
		`{"jsonrpc":"2\u002e0","result":1,"id":1}`,
		`{"jsonrpc":"2.0","result":[1, 2],"id":1}`,
		`{"jsonrpc":"2.0","result":1,"\u0069d":1}`,
		`{"jsonrpc":"2.0","result":1,"id":null}`,
	} {
		if r, ok := parseResponseFast([]byte(p)); ok {
			t.Errorf("parseResponseFast(%s) = %+v, want it to give up", p, r)
		}
	}
	for _, p := range []string{
		`{"METHOD":"a","method":"b"}`,
		`{"method":"a","method":"b"}`,
		`{"method":"<b>"}`,
		`{"method":"m","params":{"a": 1}}`,
		`{"method":"m","params":"<"}`,
		`{"method":null}`,
		`{"method":"m"`,
	} {
		if _, out, ok := deviceRequestFast([]byte(p), "c:1"); ok {
			t.Errorf("deviceRequestFast(%s) = %s, want it to give up", p, out)
		}
	}
}

func TestDeviceCommand(t *testing.T) {
	for _, p := range []string{
		`{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"r-42"}`,  // fast path
		`{"jsonrpc":"2.0","METHOD":"reboot","params":{"delay": 5},"id":"r-42"}`, // encoding/json
	} {
		e := sampleEnvelope(t)
		e.Payload = json.RawMessage(p)
		method, req, err := e.DeviceCommand()
		const want = `{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"app-1:r-42"}`
		if err != nil || method != "reboot" || string(req) != want {
			t.Errorf("DeviceCommand(%s) = %q, %s, %v; want %q, %s", p, method, req, err, "reboot", want)
		}
		if again, err := e.DeviceRequest(); err != nil || string(again) != string(req) {
			t.Errorf("DeviceRequest(%s) = %s, %v; want %s", p, again, err, req)
		}
	}
	e := sampleEnvelope(t)
	e.Payload = json.RawMessage(`{"method":1}`)
	if _, _, err := e.DeviceCommand(); !errors.Is(err, ErrEnvelope) {
		t.Errorf("DeviceCommand with a numeric method: err = %v, want %v", err, ErrEnvelope)
	}
}
