package protocol

import (
	"encoding/json"
	"testing"
	"time"
)

func TestFingerprint(t *testing.T) {
	const dev, method = "dev-1", "set"
	base := Fingerprint(dev, method, json.RawMessage(`{"a":1,"b":[1,2]}`), 30*time.Second, time.Hour)
	if len(base) != 32 {
		t.Errorf("Fingerprint(…) = %q, want 32 hex digits", base)
	}
	same := []struct {
		name   string
		params string
	}{
		{"key order", `{"b":[1,2],"a":1}`},
		{"whitespace", " {\n\t\"a\" : 1 ,\r\n \"b\" : [ 1 , 2 ] }\n"},
		{"escaped key", `{"\u0061":1,"b":[1,2]}`},
	}
	for _, tt := range same {
		if got := Fingerprint(dev, method, json.RawMessage(tt.params), 30*time.Second, time.Hour); got != base {
			t.Errorf("Fingerprint(%q, %q, %q, 30s, 1h) = %q, want %q (%s does not matter)", dev, method, tt.params, got, base, tt.name)
		}
	}
	different := []struct {
		name               string
		device, method     string
		params             string
		timeout, expiresIn time.Duration
	}{
		{"number literal 1.0", dev, method, `{"a":1.0,"b":[1,2]}`, 30 * time.Second, time.Hour},
		{"number literal 1e0", dev, method, `{"a":1e0,"b":[1,2]}`, 30 * time.Second, time.Hour},
		{"string instead of number", dev, method, `{"a":"1","b":[1,2]}`, 30 * time.Second, time.Hour},
		{"array order", dev, method, `{"a":1,"b":[2,1]}`, 30 * time.Second, time.Hour},
		{"no params", dev, method, ``, 30 * time.Second, time.Hour},
		{"device", "dev-2", method, `{"a":1,"b":[1,2]}`, 30 * time.Second, time.Hour},
		{"method", dev, "get", `{"a":1,"b":[1,2]}`, 30 * time.Second, time.Hour},
		{"timeout", dev, method, `{"a":1,"b":[1,2]}`, 31 * time.Second, time.Hour},
		{"expires_in", dev, method, `{"a":1,"b":[1,2]}`, 30 * time.Second, 2 * time.Hour},
		{"timeout and expires_in swapped", dev, method, `{"a":1,"b":[1,2]}`, time.Hour, 30 * time.Second},
	}
	for _, tt := range different {
		if got := Fingerprint(tt.device, tt.method, json.RawMessage(tt.params), tt.timeout, tt.expiresIn); got == base {
			t.Errorf("Fingerprint(%q, %q, %q, %v, %v) = %q, want a different fingerprint (%s matters)", tt.device, tt.method, tt.params, tt.timeout, tt.expiresIn, got, tt.name)
		}
	}
	// The parts are delimited: moving text from one part to the next changes it.
	if Fingerprint("ab", "c", nil, 0, 0) == Fingerprint("a", "bc", nil, 0, 0) {
		t.Errorf("Fingerprint(%q, %q, …) = Fingerprint(%q, %q, …), want different", "ab", "c", "a", "bc")
	}
	if Fingerprint("d", "m", json.RawMessage(`[]`), 0, 0) == Fingerprint("d", "m", json.RawMessage(`{}`), 0, 0) {
		t.Errorf("Fingerprint(…, %q, …) = Fingerprint(…, %q, …), want different", "[]", "{}")
	}
	// nil and empty params are the same (no params).
	if Fingerprint("d", "m", nil, 0, 0) != Fingerprint("d", "m", json.RawMessage(" "), 0, 0) {
		t.Errorf("Fingerprint(…, nil, …) != Fingerprint(…, %q, …), want equal", " ")
	}
	// Params that are not JSON (ParseBody never gives them) are hashed as
	// they are.
	if Fingerprint("d", "m", json.RawMessage(`{`), 0, 0) == Fingerprint("d", "m", json.RawMessage(`{}`), 0, 0) {
		t.Errorf("Fingerprint(…, %q, …) = Fingerprint(…, %q, …), want different", "{", "{}")
	}
	// Durations count in milliseconds.
	if Fingerprint("d", "m", nil, time.Second, 0) != Fingerprint("d", "m", nil, time.Second+time.Microsecond, 0) {
		t.Errorf("Fingerprint(…, 1s, …) != Fingerprint(…, 1.000001s, …), want equal (milliseconds)")
	}
}

// TestFingerprintOfParsedRequests checks "the same body" end to end: two
// bodies whose requests differ only in layout give the same fingerprint.
func TestFingerprintOfParsedRequests(t *testing.T) {
	a := `{"jsonrpc":"2.0","method":"set","params":{"x":1,"y":{"b":2,"a":1}},"id":7}`
	b := `{ "id" : "7", "params" : { "y" : { "a" : 1, "b" : 2 }, "x" : 1 }, "method" : "set", "jsonrpc" : "2.0" }`
	ra, ea := ParseRequest([]byte(a))
	rb, eb := ParseRequest([]byte(b))
	if ea != nil || eb != nil {
		t.Fatalf("ParseRequest = %v, %v, want two requests", ea, eb)
	}
	if ra.ID.Key() != rb.ID.Key() {
		t.Errorf("ParseRequest(%q).ID.Key() = %q, want %q", b, rb.ID.Key(), ra.ID.Key())
	}
	fa := Fingerprint("d", ra.Method, ra.Params, 30*time.Second, time.Hour)
	fb := Fingerprint("d", rb.Method, rb.Params, 30*time.Second, time.Hour)
	if fa != fb {
		t.Errorf("Fingerprint(ParseRequest(%q)) = %q, want %q", b, fb, fa)
	}
}
