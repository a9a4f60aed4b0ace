package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Seeds shared by the fuzz targets; the checked-in corpus under
// testdata/fuzz/<FuzzName>/ holds more, including anything a run found.

var specBodies = []string{
	`{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}`,
	`{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}`,
	`{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}`,
	`{"jsonrpc": "2.0", "method": "foobar", "id": "1"}`,
	`{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]`,
	`{"jsonrpc": "2.0", "method": 1, "params": "bar"}`,
	`[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]`,
	`[]`,
	`[1]`,
	`[1,2,3]`,
	`[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},{"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},{"foo": "boo"},{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},{"jsonrpc": "2.0", "method": "get_data", "id": "9"}]`,
	`[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]`,
	`[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":"1"},{"jsonrpc":"2.0","method":1,"id":-0},{"jsonrpc":"2.0","method":"c","id":0}]`,
	`{"jsonrpc":"2.0","method":"rpc.x","params":null,"id":1.5}`,
	`{"jsonrpc":"2.0","method":"m\u0000","params":{"b":[1.0,"\ud800"],"a":1e999},"id":"\u0041:b"}`,
}

func FuzzParseBody(f *testing.F) {
	for _, s := range specBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		entries, batch, err := ParseBody(body)
		if err != nil {
			if entries != nil {
				t.Fatalf("ParseBody(%q) = %d entries and %v, want no entries with an error", body, len(entries), err)
			}
			switch {
			case err.Code == CodeParseError && json.Valid(body):
				t.Fatalf("ParseBody(%q) = %v, want -32700 only for a body that is not JSON", body, err)
			case err.Code == CodeInvalidRequest && !json.Valid(body):
				t.Fatalf("ParseBody(%q) = %v, want -32700 for a body that is not JSON", body, err)
			case err.Code != CodeParseError && err.Code != CodeInvalidRequest:
				t.Fatalf("ParseBody(%q) = %v, want code -32700 or -32600", body, err)
			}
			if err.Source() != SourceGateway {
				t.Fatalf("ParseBody(%q).Source() = %q, want %q", body, err.Source(), SourceGateway)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("ParseBody(%q) accepted a body that is not JSON", body)
		}
		if len(entries) == 0 || len(entries) > MaxBatch || (!batch && len(entries) != 1) {
			t.Fatalf("ParseBody(%q) = %d entries (batch %v), want 1 to %d", body, len(entries), batch, MaxBatch)
		}
		if first := bytes.TrimLeft(body, " \t\r\n")[0]; batch != (first == '[') {
			t.Fatalf("ParseBody(%q) batch = %v, want %v", body, batch, first == '[')
		}
		seen := map[string]int{}
		for i, e := range entries {
			if (e.Req == nil) == (e.Err == nil) {
				t.Fatalf("ParseBody(%q)[%d] = %s, want exactly one of Req and Err", body, i, describe(e))
			}
			var key string
			if len(e.ID) > 0 {
				id, perr := ParseID(e.ID)
				if perr != nil {
					t.Fatalf("ParseBody(%q)[%d].ID = %s, not a valid id: %v", body, i, e.ID, perr)
				}
				key = id.Key()
			}
			if e.Err != nil {
				if e.Err.Code != CodeInvalidRequest || e.Err.Source() != SourceGateway || !strings.HasPrefix(e.Err.Message, "invalid request: ") {
					t.Fatalf("ParseBody(%q)[%d] = %v, want a -32600 gateway error", body, i, e.Err)
				}
			} else {
				checkRequest(t, body, i, e)
				if j, dup := seen[key]; dup {
					t.Fatalf("ParseBody(%q)[%d] accepted id %q, which entry %d already has", body, i, key, j)
				}
			}
			if key != "" {
				if _, dup := seen[key]; !dup {
					seen[key] = i
				}
			}
		}
	})
}

// checkRequest checks an accepted entry and that the request, marshaled
// again, parses to the same request.
func checkRequest(t *testing.T, body []byte, i int, e Entry) {
	t.Helper()
	r := e.Req
	if r.JSONRPC != Version || r.Method == "" || strings.HasPrefix(r.Method, "rpc.") || r.ID.IsZero() ||
		!bytes.Equal(e.ID, r.ID.Raw()) {
		t.Fatalf("ParseBody(%q)[%d] = %s, want a valid request", body, i, describe(e))
	}
	if r.Params != nil && (len(r.Params) == 0 || (r.Params[0] != '{' && r.Params[0] != '[') || !json.Valid(r.Params)) {
		t.Fatalf("ParseBody(%q)[%d].Params = %q, want an object or an array", body, i, r.Params)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("json.Marshal(ParseBody(%q)[%d]) error = %v", body, i, err)
	}
	again, batch, perr := ParseBody(b)
	if perr != nil || batch || len(again) != 1 || again[0].Req == nil {
		t.Fatalf("ParseBody(%q) = %v, %v, want one request (marshaled from ParseBody(%q)[%d])", b, describeAll(again), perr, body, i)
	}
	r2 := again[0].Req
	c1, err1 := CanonicalJSON(r.Params)
	c2, err2 := CanonicalJSON(r2.Params)
	if err1 != nil || err2 != nil {
		t.Fatalf("CanonicalJSON(%q), CanonicalJSON(%q) = %v, %v, want no error", r.Params, r2.Params, err1, err2)
	}
	if r2.ID.Key() != r.ID.Key() || r2.Method != r.Method || !bytes.Equal(c1, c2) {
		t.Fatalf("ParseBody(%q) = %s, want %s", b, describe(again[0]), describe(e))
	}
}

func describeAll(es []Entry) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, describe(e))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// validKeyString reports whether s satisfies the string id rules, written
// independently of checkIDString.
func validKeyString(s string) bool {
	if len(s) < 1 || len(s) > 128 {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return false
		}
		if !alnum && !strings.ContainsRune("._:-", c) {
			return false
		}
	}
	return true
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{`1`, `"1"`, `-0`, `0`, `-7`, `999999999999999`, `1000000000000000`, `"1000000000000000"`,
		`"007"`, `007`, `1.5`, `1e3`, `null`, `nul`, `true`, `{}`, `[1]`, `""`, `"a b"`, `"é"`, `"\u0041"`,
		`"` + id128 + `"`, `"` + id129 + `"`, `"a:b.c_d-e"`, ` 42 `, `-`, `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if s, ok := plainIDString(raw); ok {
			var want string
			if err := json.Unmarshal(raw, &want); err != nil || s != want {
				t.Fatalf("plainIDString(%q) = %q, json.Unmarshal gives %q, %v", raw, s, want, err)
			}
		}
		id, err := ParseID(raw)
		if ref, refOK := referenceID(raw); refOK != (err == nil) || (refOK && ref != id.Key()) {
			t.Fatalf("ParseID(%q) = %q, %v, want key %q (accepted %v)", raw, id.Key(), err, ref, refOK)
		}
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("ParseID(%q) = %q with error %v, want the zero ID", raw, id.Key(), err)
			}
			return
		}
		key := id.Key()
		if bytes.TrimLeft(raw, " \t\r\n")[0] == '"' {
			if !validKeyString(key) || id.Raw()[0] != '"' {
				t.Fatalf("ParseID(%q) = %q, which breaks the string id rules", raw, key)
			}
		} else if !isIntKey(key) || len(strings.TrimPrefix(key, "-")) > MaxIDDigits || key == "-0" {
			t.Fatalf("ParseID(%q) = %q, want an integer of at most 15 digits", raw, key)
		}
		back, err := ParseIDKey(key)
		if err != nil || back.Key() != key {
			t.Fatalf("ParseIDKey(%q) = %q, %v, want %q", key, back.Key(), err, key)
		}
		again, err := ParseID(id.Raw())
		if err != nil || again.Key() != key || !bytes.Equal(again.Raw(), id.Raw()) {
			t.Fatalf("ParseID(%q) = %q, %v, want %q (Raw of ParseID(%q))", id.Raw(), again.Key(), err, key, raw)
		}
		if b, err := json.Marshal(id); err != nil || !bytes.Equal(b, id.Raw()) {
			t.Fatalf("json.Marshal(ParseID(%q)) = %s, %v, want %s", raw, b, err, id.Raw())
		}
		client, fromDevice, err := ParseDeviceMsgID(DeviceMsgID("c", id))
		if err != nil || client != "c" || fromDevice.Key() != key {
			t.Fatalf("ParseDeviceMsgID(%q) = %q, %q, %v, want %q, %q", DeviceMsgID("c", id), client, fromDevice.Key(), err, "c", key)
		}
	})
}

// referenceID is the id rule written with encoding/json alone: a JSON
// string satisfying validKeyString, or a JSON number that is an integer
// of at most 15 digits (-0 is 0). It returns the key.
func referenceID(raw []byte) (string, bool) {
	if !json.Valid(raw) {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, validKeyString(v)
	case json.Number:
		s := v.String()
		if strings.ContainsAny(s, ".eE") || len(strings.TrimPrefix(s, "-")) > MaxIDDigits {
			return "", false
		}
		if s == "-0" {
			s = "0"
		}
		return s, true
	}
	return "", false
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range [][2]string{
		{"dev-1", "devices/dev-1/commands"}, {"dev-1", "devices/dev-1/responses"},
		{"app", "clients/app/results/+"}, {"app", "clients/app/results/dev-1"},
		{"app", "#"}, {"app", "+/app/results/+"}, {"app", "$share/g/clients/app/results/+"},
		{"app", "$SYS/#"}, {"app", "clients/other/results/+"}, {"+", "clients/+/results/+"},
		{"a/b", "devices/a/b/commands"}, {"", "devices//commands"}, {"app", "clients/app/results/"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, identity, topic string) {
		// ParseTopic and the builders are inverses.
		if tp, err := ParseTopic(topic); err == nil {
			var rebuilt string
			switch tp.Kind {
			case TopicDeviceCommands:
				rebuilt = DeviceCommandsTopic(tp.Identity)
			case TopicDeviceResponse:
				rebuilt = DeviceResponsesTopic(tp.Identity)
			case TopicClientResults:
				rebuilt = ClientResultsTopic(tp.Identity, tp.Device)
			default:
				t.Fatalf("ParseTopic(%q) = %+v, want a known kind", topic, tp)
			}
			if rebuilt != topic || !ValidIdentity(tp.Identity) || (tp.Kind == TopicClientResults) != (tp.Device != "") ||
				(tp.Device != "" && !ValidIdentity(tp.Device)) {
				t.Fatalf("ParseTopic(%q) = %+v, rebuilt as %q", topic, tp, rebuilt)
			}
		} else if !errors.Is(err, ErrTopic) {
			t.Fatalf("ParseTopic(%q) error = %v, want %v", topic, err, ErrTopic)
		}
		if ValidIdentity(identity) {
			for _, tt := range []struct {
				topic string
				want  Topic
			}{
				{DeviceCommandsTopic(identity), Topic{Kind: TopicDeviceCommands, Identity: identity}},
				{DeviceResponsesTopic(identity), Topic{Kind: TopicDeviceResponse, Identity: identity}},
				{ClientResultsTopic(identity, identity), Topic{Kind: TopicClientResults, Identity: identity, Device: identity}},
			} {
				if got, err := ParseTopic(tt.topic); err != nil || got != tt.want {
					t.Fatalf("ParseTopic(%q) = %+v, %v, want %+v", tt.topic, got, err, tt.want)
				}
			}
			if !MaySubscribe(identity, DeviceCommandsTopic(identity)) || !MaySubscribe(identity, ClientResultsFilter(identity)) ||
				!MayPublish(identity, DeviceResponsesTopic(identity)) {
				t.Fatalf("identity %q may not use its own topics", identity)
			}
		}

		// MaySubscribe: own topics only; the only wildcard is the single
		// trailing + of one's own results filter.
		if MaySubscribe(identity, topic) {
			own := topic == DeviceCommandsTopic(identity) || topic == ClientResultsFilter(identity)
			if tp, err := ParseTopic(topic); err == nil && tp.Kind == TopicClientResults && tp.Identity == identity {
				own = true
			}
			if !ValidIdentity(identity) || !own || strings.HasPrefix(topic, "$") ||
				(strings.ContainsAny(topic, "+#") && topic != ClientResultsFilter(identity)) {
				t.Fatalf("MaySubscribe(%q, %q) = true, want false", identity, topic)
			}
			// A filter one may hold matches only one's own result topics.
			for _, other := range []string{DeviceCommandsTopic("x"), ClientResultsTopic("x", "d"), ClientResultsTopic("x", identity),
				DeviceResponsesTopic(identity), ClientResultsTopic(identity, "d")} {
				if !FilterMatches(topic, other) || other == topic {
					continue
				}
				if tp, err := ParseTopic(other); err != nil || tp.Kind != TopicClientResults || tp.Identity != identity {
					t.Fatalf("FilterMatches(%q, %q) = true for an allowed filter of %q", topic, other, identity)
				}
			}
		}
		if MayPublish(identity, topic) && topic != DeviceResponsesTopic(identity) {
			t.Fatalf("MayPublish(%q, %q) = true, want false", identity, topic)
		}

		// FilterMatches of one's results filter agrees with ParseTopic.
		if ValidIdentity(identity) {
			filter := ClientResultsFilter(identity)
			tp, err := ParseTopic(topic)
			mine := err == nil && tp.Kind == TopicClientResults && tp.Identity == identity
			matches := FilterMatches(filter, topic)
			if mine && !matches {
				t.Fatalf("FilterMatches(%q, %q) = false, want true", filter, topic)
			}
			if matches && err == nil && !mine {
				t.Fatalf("FilterMatches(%q, %q) = true for %+v", filter, topic, tp)
			}
		}
	})
}

func FuzzParseDeviceMsgID(f *testing.F) {
	for _, s := range []string{"app-1:42", "c:1", "c:abc", "c:a:b", "c::", "c:007", "c:-5", "c:-0", "c:1234567890123456",
		"c:-1234567890123456", "", "c", "c:", ":1", "-c:1", "c d:1", "é:1", id128 + ":" + id128, id129 + ":1",
		"c:1#2", "c:a#99", "c:a#100", "c:a#1", "c:a#0", "c:a#02", "c:a#", "c:a##2", "c:#2", "c#2:a", "c:a#2#3", "c:a#x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		client, id, attempt, err := ParseDeviceAttempt(s)
		if c1, id1, err1 := ParseDeviceMsgID(s); c1 != client || id1.Key() != id.Key() || (err1 == nil) != (err == nil) {
			t.Fatalf("ParseDeviceMsgID(%q) = %q, %q, %v; ParseDeviceAttempt gives %q, %q, %v", s, c1, id1.Key(), err1, client, id.Key(), err)
		}
		if err != nil {
			if !errors.Is(err, ErrDeviceMsgID) || client != "" || !id.IsZero() || attempt != 0 {
				t.Fatalf("ParseDeviceAttempt(%q) = %q, %q, %d, %v, want %v", s, client, id.Key(), attempt, err, ErrDeviceMsgID)
			}
			return
		}
		if attempt != 0 && (attempt < 2 || attempt > MaxAttempt) {
			t.Fatalf("ParseDeviceAttempt(%q) = attempt %d, want 0 or 2 to %d", s, attempt, MaxAttempt)
		}
		if !ValidIdentity(client) || id.IsZero() {
			t.Fatalf("ParseDeviceMsgID(%q) = %q, %q, want a valid client and id", s, client, id.Key())
		}
		if back, err := ParseID(id.Raw()); err != nil || back.Key() != id.Key() {
			t.Fatalf("ParseID(%q) = %q, %v, want %q", id.Raw(), back.Key(), err, id.Key())
		}
		rebuilt := DeviceAttemptID(client, id, attempt)
		if rebuilt != s && !strings.HasPrefix(s, client+":-0") {
			t.Fatalf("DeviceAttemptID(ParseDeviceAttempt(%q)) = %q, want %q", s, rebuilt, s)
		}
		c2, id2, a2, err := ParseDeviceAttempt(rebuilt)
		if err != nil || c2 != client || id2.Key() != id.Key() || a2 != attempt {
			t.Fatalf("ParseDeviceAttempt(%q) = %q, %q, %d, %v, want %q, %q, %d", rebuilt, c2, id2.Key(), a2, err, client, id.Key(), attempt)
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc": "2.0", "result": 19, "id": 1}`,
		`{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}`,
		`{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}`,
		`{"jsonrpc":"2.0","result":null,"id":"c:1"}`,
		`{"jsonrpc":"2.0","error":{"code":-32001,"message":"busy","data":{"source":"device"}},"id":"c:1"}`,
		`{"jsonrpc":"2.0","error":{"code":"-32000","message":"m"},"id":1}`,
		`{"jsonrpc":"2.0","error":{"code":1.5,"message":"m"},"id":1}`,
		`{"jsonrpc":"2.0","result":1,"error":null,"id":1}`,
		`{"jsonrpc":"2.0","result":"<\u00e9>","id":-1.5e3}`,
		`[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if tb := trimJSONSpace(b); len(tb) > 0 && tb[0] == '{' && json.Valid(tb) {
			if fast, ok := parseResponseFast(tb); ok {
				std, err := parseResponseStd(tb)
				if err != nil || !reflect.DeepEqual(fast, std) {
					t.Fatalf("parseResponseFast(%q) = %+v, encoding/json gives %+v, %v", b, fast, std, err)
				}
			}
		}
		r, err := ParseResponse(b)
		if err != nil {
			if r != nil || !strings.HasPrefix(err.Error(), "protocol: ") {
				t.Fatalf("ParseResponse(%q) = %+v, %v, want nil and a protocol error", b, r, err)
			}
			return
		}
		if !json.Valid(b) || r.JSONRPC != Version || (r.Result == nil) == (r.Error == nil) {
			t.Fatalf("ParseResponse(%q) = %+v, want a response with exactly one of result and error", b, r)
		}
		if len(r.ID) == 0 || !json.Valid(r.ID) || (r.ID[0] != '"' && r.ID[0] != '-' && (r.ID[0] < '0' || r.ID[0] > '9')) {
			t.Fatalf("ParseResponse(%q).ID = %s, want a string or a number", b, r.ID)
		}
		if r.Result != nil && !json.Valid(r.Result) {
			t.Fatalf("ParseResponse(%q).Result = %s, want JSON", b, r.Result)
		}
		if r.Error != nil && r.Error.Data != nil && !json.Valid(r.Error.Data) {
			t.Fatalf("ParseResponse(%q).Error.Data = %s, want JSON", b, r.Error.Data)
		}
		out, merr := json.Marshal(r)
		if merr != nil {
			t.Fatalf("json.Marshal(ParseResponse(%q)) error = %v", b, merr)
		}
		r2, err := ParseResponse(out)
		if err != nil {
			t.Fatalf("ParseResponse(%q) error = %v (marshaled from ParseResponse(%q))", out, err, b)
		}
		if !sameJSON(r.ID, r2.ID) || !sameJSON(r.Result, r2.Result) || (r.Error == nil) != (r2.Error == nil) ||
			(r.Error != nil && (r.Error.Code != r2.Error.Code || r.Error.Message != r2.Error.Message || !sameJSON(r.Error.Data, r2.Error.Data))) {
			t.Fatalf("ParseResponse(%q) = %+v, want %+v", out, r2, r)
		}
	})
}

func sameJSON(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	ca, err1 := CanonicalJSON(a)
	cb, err2 := CanonicalJSON(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"kind":"command","client":"app-1","device":"dev-1","msg_id":"r-42","payload":{"jsonrpc":"2.0","method":"reboot","params":{"delay":5},"id":"r-42"},"accepted_at":"2025-01-02T03:04:05.678Z","deliver_by":"2025-01-02T04:04:05.678Z","answer_within_ms":30000,"attempt":1,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
		`{"v":1,"kind":"result","client":"c","device":"d","msg_id":7,"payload":{"jsonrpc":"2.0","result":{"ok":true},"id":"c:7"},"attempt":1}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{"method":"<&>"},"future":[1],"accepted_at":"0000-01-01T00:30:00+01:00"}`,
		`{"v":2,"kind":"command","client":"c","device":"d","msg_id":1,"payload":{}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":null,"payload":{}}`,
		`{"v":1,"kind":"command","client":"c","device":"d","msg_id":1,"payload":null}`,
		`{"V":1,"KIND":"command","Client":"c","device":"d","msg_id":-0,"payload":{ }}`,
		`null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if fast, ok := decodeEnvelopeFast(b); ok {
			var std Envelope
			if err := json.Unmarshal(b, &std); err != nil || !reflect.DeepEqual(*fast, std) {
				t.Fatalf("decodeEnvelopeFast(%q) = %+v, encoding/json gives %+v, %v", b, *fast, std, err)
			}
		}
		e, err := DecodeEnvelope(b)
		if err != nil {
			if e != nil || !errors.Is(err, ErrEnvelope) {
				t.Fatalf("DecodeEnvelope(%q) = %+v, %v, want nil and %v", b, e, err, ErrEnvelope)
			}
			return
		}
		if e.V != EnvelopeVersion || e.Kind != KindCommand || !ValidIdentity(e.Client) ||
			!ValidIdentity(e.Device) || e.MsgID.IsZero() || len(e.Payload) == 0 || e.Payload[0] != '{' || !json.Valid(e.Payload) {
			t.Fatalf("DecodeEnvelope(%q) = %+v, want a valid envelope", b, e)
		}
		if _, err := ParseID(e.MsgID.Raw()); err != nil {
			t.Fatalf("DecodeEnvelope(%q).MsgID = %s: %v", b, e.MsgID.Raw(), err)
		}
		if e.Kind == KindCommand {
			if req, err := e.DeviceRequest(); err == nil {
				var out struct {
					ID string `json:"id"`
				}
				if err := json.Unmarshal(req, &out); err != nil || out.ID != DeviceMsgID(e.Client, e.MsgID) {
					t.Fatalf("DeviceRequest() = %s, %v, want id %q", req, err, DeviceMsgID(e.Client, e.MsgID))
				}
			} else if !errors.Is(err, ErrEnvelope) {
				t.Fatalf("DeviceRequest() error = %v, want %v", err, ErrEnvelope)
			}
		}

		// Encode and decode again: the same envelope, times in UTC
		// milliseconds. A time whose UTC year is outside 0..9999 cannot be
		// written as RFC 3339.
		before := *e
		out, err := e.Encode()
		if err != nil {
			if !outOfRange(e.AcceptedAt) && !outOfRange(e.DeliverBy) {
				t.Fatalf("Encode(DecodeEnvelope(%q)) error = %v", b, err)
			}
			return
		}
		e2, err := DecodeEnvelope(out)
		if err != nil {
			t.Fatalf("DecodeEnvelope(%q) error = %v (encoded from DecodeEnvelope(%q))", out, err, b)
		}
		if !e2.AcceptedAt.Equal(wireTime(before.AcceptedAt)) || !e2.DeliverBy.Equal(wireTime(before.DeliverBy)) ||
			(!e2.AcceptedAt.IsZero() && e2.AcceptedAt.Location() != time.UTC) {
			t.Fatalf("DecodeEnvelope(%q) times = %v, %v, want %v, %v", out, e2.AcceptedAt, e2.DeliverBy, wireTime(before.AcceptedAt), wireTime(before.DeliverBy))
		}
		if !sameJSON(e2.Payload, before.Payload) {
			t.Fatalf("DecodeEnvelope(%q).Payload = %s, want %s", out, e2.Payload, before.Payload)
		}
		e2.AcceptedAt, e2.DeliverBy, e2.Payload = before.AcceptedAt, before.DeliverBy, before.Payload
		if !reflect.DeepEqual(*e2, before) {
			t.Fatalf("DecodeEnvelope(%q) = %+v, want %+v", out, *e2, before)
		}
	})
}

func outOfRange(t time.Time) bool {
	y := t.UTC().Year()
	return y < 0 || y > 9999
}

func FuzzDeviceRequest(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","method":"echo","params":{"i":1},"id":"r-1"}`,
		`{"jsonrpc":"2.0","method":"reboot","id":1}`,
		`{"method":"m","params":null}`,
		`{"method":"m","params":[1, 2]}`,
		`{"method":"<&>","params":{"a":"\u2028"}}`,
		`{"METHOD":"a","method":"b"}`,
		`{"paramſ":1,"params":2,"method":"x"}`,
		`{"method":"a","method":"b"}`,
		`{"method":null}`,
		`{"method":1}`,
		` {"method" : "m" , "params" : { "a" : 1 } } `,
		`{"method":"m\"q"}`,
		`[]`, `{`, ``,
	} {
		f.Add([]byte(s), "c:1")
	}
	f.Add([]byte(`{"method":"m"}`), `c:<1>`)
	f.Fuzz(func(t *testing.T, payload []byte, id string) {
		stdMethod, std, stdErr := deviceRequestStd(payload, id)
		method, fast, ok := deviceRequestFast(payload, id)
		if ok && (stdErr != nil || !bytes.Equal(fast, std) || method != stdMethod) {
			t.Fatalf("deviceRequestFast(%q, %q) = %q, %s; encoding/json gives %q, %s, %v", payload, id, method, fast, stdMethod, std, stdErr)
		}
		if stdErr == nil {
			var m struct {
				Method string `json:"method"`
			}
			if err := json.Unmarshal(payload, &m); err != nil || m.Method != stdMethod {
				t.Fatalf("DeviceCommand(%q) method = %q, json.Unmarshal gives %q, %v", payload, stdMethod, m.Method, err)
			}
		}
	})
}

// FuzzGroupEnvelope: a group envelope (bytes off a queue) never panics;
// one that decodes encodes and decodes to the same group command.
func FuzzGroupEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"kind":"group","client":"app-1","msg_id":"g1","method":"reboot","params":{"a":1},"timeout_ms":30000,"expires_ms":3600000,"fp":"x"}`,
		`{"v":1,"kind":"group","client":"app-1","msg_id":7,"method":"m"}`,
		`{"v":2,"kind":"group","client":"app-1","msg_id":"g","method":"m"}`,
		`{"v":1,"kind":"command","client":"app-1","msg_id":"g","method":"m"}`,
		`{"v":1,"kind":"group","client":"a b","msg_id":"g","method":"m"}`,
		`{"v":1,"kind":"group","client":"a","msg_id":null,"method":"m"}`, `{`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeGroupEnvelope(b)
		if err != nil {
			return
		}
		out, err := e.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded group envelope: %v", err)
		}
		e2, err := DecodeGroupEnvelope(out)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", out, err)
		}
		if e2.Client != e.Client || e2.MsgID.Key() != e.MsgID.Key() || e2.Method != e.Method || e2.TimeoutMS != e.TimeoutMS {
			t.Errorf("round trip changed the envelope: %+v → %+v", e, e2)
		}
	})
}

func FuzzParseRetryOn(f *testing.F) {
	for _, s := range []string{"timeout", "expired", "device_error", "rejected", "timeout,expired,device_error,rejected",
		"rejected,timeout", " device_error , expired ", "", " ", ",", "timeout,", "timeout,timeout", "Timeout", "error",
		"device-error", "timeout;expired", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseRetryOn(s)
		if err != nil {
			if got != "" {
				t.Fatalf("ParseRetryOn(%q) = %q, %v; want no value with an error", s, got, err)
			}
			return
		}
		// The canonical form is a fixed point, and names each outcome of
		// s once, in the order of RetryOutcomes.
		again, err := ParseRetryOn(got)
		if err != nil || again != got {
			t.Fatalf("ParseRetryOn(%q) = %q, %v; want %q (canonical)", got, again, err, got)
		}
		last := -1
		for _, name := range strings.Split(got, ",") {
			i := slices.Index(RetryOutcomes, name)
			if i <= last {
				t.Fatalf("ParseRetryOn(%q) = %q: %q out of order or unknown", s, got, name)
			}
			last = i
		}
	})
}
