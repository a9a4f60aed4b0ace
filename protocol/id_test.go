package protocol

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		raw string
		key string // the key of an accepted id
		out string // Raw() of an accepted id
		err error
	}{
		{raw: `1`, key: "1", out: `1`},
		{raw: `"1"`, key: "1", out: `"1"`},
		{raw: ` 42 `, key: "42", out: `42`},
		{raw: `0`, key: "0", out: `0`},
		{raw: `-0`, key: "0", out: `0`},
		{raw: `-7`, key: "-7", out: `-7`},
		{raw: `123456789012345`, key: "123456789012345", out: `123456789012345`},
		{raw: `-123456789012345`, key: "-123456789012345", out: `-123456789012345`},
		{raw: `1234567890123456`, err: ErrIDDigits},
		{raw: `-1234567890123456`, err: ErrIDDigits},
		{raw: `"1234567890123456"`, key: "1234567890123456", out: `"1234567890123456"`},
		{raw: `"007"`, key: "007", out: `"007"`},
		{raw: `007`, err: ErrIDType}, // not JSON
		{raw: `-01`, err: ErrIDType},
		{raw: `"a"`, key: "a", out: `"a"`},
		{raw: `"` + id128 + `"`, key: id128, out: `"` + id128 + `"`},
		{raw: `"` + id129 + `"`, err: ErrIDTooLong},
		{raw: `"Z9._:-"`, key: "Z9._:-", out: `"Z9._:-"`},
		{raw: `"c:1"`, key: "c:1", out: `"c:1"`},
		{raw: `"\u0041"`, key: "A", out: `"\u0041"`},
		{raw: `""`, err: ErrIDChars},
		{raw: `"_a"`, err: ErrIDChars},
		{raw: `"-1"`, err: ErrIDChars},
		{raw: `".1"`, err: ErrIDChars},
		{raw: `":a"`, err: ErrIDChars},
		{raw: `"a b"`, err: ErrIDChars},
		{raw: `"a/b"`, err: ErrIDChars},
		{raw: `"a#"`, err: ErrIDChars},
		{raw: `"a+"`, err: ErrIDChars},
		{raw: `"a\n"`, err: ErrIDChars},
		{raw: `"é"`, err: ErrIDChars},
		{raw: `"aé"`, err: ErrIDChars},
		{raw: `"日本"`, err: ErrIDChars},
		{raw: `"a\u0000"`, err: ErrIDChars},
		{raw: `"a`, err: ErrIDType},
		{raw: `1.5`, err: ErrIDFraction},
		{raw: `1.0`, err: ErrIDFraction},
		{raw: `1e2`, err: ErrIDFraction},
		{raw: `1E2`, err: ErrIDFraction},
		{raw: `1e+2`, err: ErrIDFraction},
		{raw: `-1.5`, err: ErrIDFraction},
		{raw: `-`, err: ErrIDType},
		{raw: `1 2`, err: ErrIDType},
		{raw: `null`, err: ErrIDNull},
		{raw: ` null `, err: ErrIDNull},
		{raw: `nul`, err: ErrIDType},
		{raw: `nullx`, err: ErrIDType},
		{raw: `true`, err: ErrIDType},
		{raw: `false`, err: ErrIDType},
		{raw: `{}`, err: ErrIDType},
		{raw: `{"id":1}`, err: ErrIDType},
		{raw: `[]`, err: ErrIDType},
		{raw: `[1]`, err: ErrIDType},
		{raw: ``, err: ErrIDMissing},
		{raw: `  `, err: ErrIDMissing},
		{raw: "\t1\r\n", key: "1", out: `1`},
		{raw: "\v1", err: ErrIDType},
		{raw: "1\f", err: ErrIDType},
		{raw: "\u00a0\"a\"", err: ErrIDType},
	}
	for _, tt := range tests {
		id, err := ParseID(json.RawMessage(tt.raw))
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("ParseID(%q) = %q, %v, want %v", tt.raw, id.Key(), err, tt.err)
			}
			if !id.IsZero() {
				t.Errorf("ParseID(%q) = %q with an error, want the zero ID", tt.raw, id.Key())
			}
			continue
		}
		if err != nil || id.Key() != tt.key || string(id.Raw()) != tt.out || id.String() != tt.key || id.IsZero() {
			t.Errorf("ParseID(%q) = key %q raw %s, %v, want key %q raw %s", tt.raw, id.Key(), id.Raw(), err, tt.key, tt.out)
		}
		if b, err := json.Marshal(id); err != nil || string(b) != tt.out {
			t.Errorf("json.Marshal(ParseID(%q)) = %s, %v, want %s", tt.raw, b, err, tt.out)
		}
	}
}

func TestIDSameKey(t *testing.T) {
	same := [][]string{
		{`1`, `"1"`},
		{`0`, `-0`, `"0"`},
		{`-5`, ` -5 `},
		{`"A"`, `"\u0041"`},
		{`123456789012345`, `"123456789012345"`},
	}
	for _, group := range same {
		first, err := ParseID(json.RawMessage(group[0]))
		if err != nil {
			t.Fatalf("ParseID(%q) error = %v", group[0], err)
		}
		for _, raw := range group[1:] {
			id, err := ParseID(json.RawMessage(raw))
			if err != nil || id.Key() != first.Key() {
				t.Errorf("ParseID(%q).Key() = %q, %v, want %q", raw, id.Key(), err, first.Key())
			}
		}
	}
	different := [][2]string{
		{`"01"`, `1`},
		{`"a"`, `"A"`},
		{`-1`, `1`},
		{`"1.0"`, `1`},
	}
	for _, pair := range different {
		a, _ := ParseID(json.RawMessage(pair[0]))
		b, _ := ParseID(json.RawMessage(pair[1]))
		if a.Key() == b.Key() {
			t.Errorf("ParseID(%q).Key() = ParseID(%q).Key() = %q, want different keys", pair[0], pair[1], a.Key())
		}
	}
}

func TestParseIDKey(t *testing.T) {
	tests := []struct {
		key string
		raw string // Raw() of the ID it names
		err error
	}{
		{key: "1", raw: `1`},
		{key: "0", raw: `0`},
		{key: "-0", raw: `0`},
		{key: "-42", raw: `-42`},
		{key: "123456789012345", raw: `123456789012345`},
		{key: "-123456789012345", raw: `-123456789012345`},
		{key: "1234567890123456", raw: `"1234567890123456"`}, // only a string id can have 16 digits
		{key: "-1234567890123456", err: ErrIDDigits},
		{key: "007", raw: `"007"`},
		{key: "00", raw: `"00"`},
		{key: "1e3", raw: `"1e3"`},
		{key: "1.5", raw: `"1.5"`},
		{key: "abc", raw: `"abc"`},
		{key: "a:b:c", raw: `"a:b:c"`},
		{key: id128, raw: `"` + id128 + `"`},
		{key: id129, err: ErrIDTooLong},
		{key: "", err: ErrIDChars},
		{key: "-", err: ErrIDChars},
		{key: "-a", err: ErrIDChars},
		{key: "a b", err: ErrIDChars},
		{key: "é", err: ErrIDChars},
		{key: `"a"`, err: ErrIDChars},
	}
	for _, tt := range tests {
		id, err := ParseIDKey(tt.key)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("ParseIDKey(%q) = %s, %v, want %v", tt.key, id.Raw(), err, tt.err)
			}
			continue
		}
		if err != nil || string(id.Raw()) != tt.raw {
			t.Errorf("ParseIDKey(%q) = %s, %v, want %s", tt.key, id.Raw(), err, tt.raw)
		}
		back, err := ParseID(id.Raw())
		if err != nil || back.Key() != id.Key() {
			t.Errorf("ParseID(ParseIDKey(%q).Raw()) = %q, %v, want %q", tt.key, back.Key(), err, id.Key())
		}
	}
}

// TestIDKeyRoundTrip checks that the key of every valid ID names it again.
func TestIDKeyRoundTrip(t *testing.T) {
	for _, raw := range []string{`1`, `"1"`, `-0`, `-9`, `999999999999999`, `"9999999999999999"`,
		`"0"`, `"00"`, `"a"`, `"` + id128 + `"`, `"x:1"`, `"1-2"`, `"1.5"`, `"1e5"`} {
		id, err := ParseID(json.RawMessage(raw))
		if err != nil {
			t.Fatalf("ParseID(%q) error = %v", raw, err)
		}
		back, err := ParseIDKey(id.Key())
		if err != nil || back.Key() != id.Key() {
			t.Errorf("ParseIDKey(%q) = %q, %v, want %q", id.Key(), back.Key(), err, id.Key())
		}
	}
}

func TestIDUnmarshalJSON(t *testing.T) {
	var v struct {
		ID ID `json:"id"`
	}
	if err := json.Unmarshal([]byte(`{"id":"x-1"}`), &v); err != nil || v.ID.Key() != "x-1" {
		t.Errorf(`json.Unmarshal({"id":"x-1"}) = %q, %v, want "x-1"`, v.ID.Key(), err)
	}
	for _, in := range []string{`{"id":null}`, `{"id":1.5}`, `{"id":"a b"}`, `{"id":true}`} {
		v.ID = ID{}
		if err := json.Unmarshal([]byte(in), &v); err == nil {
			t.Errorf("json.Unmarshal(%q) = %q, nil, want an error", in, v.ID.Key())
		}
	}
	var zero ID
	if b, err := json.Marshal(zero); err != nil || string(b) != "null" || !zero.IsZero() {
		t.Errorf("json.Marshal(ID{}) = %s, %v, want null", b, err)
	}
}

func TestValidIdentity(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{"a", true},
		{"0", true},
		{"dev-1", true},
		{"Dev_1.eu-west", true},
		{"app.backend_2", true},
		{id128, true},
		{id129, false},
		{"", false},
		{"-a", false},
		{"_a", false},
		{".a", false},
		{"a:b", false}, // a colon would make DeviceMsgID ambiguous
		{"a/b", false},
		{"+", false},
		{"#", false},
		{"a+", false},
		{"a#", false},
		{"$SYS", false},
		{"a b", false},
		{"é", false},
		{"dév", false},
		{"a\x00", false},
		{"a\n", false},
	}
	for _, tt := range tests {
		if got := ValidIdentity(tt.s); got != tt.want {
			t.Errorf("ValidIdentity(%q) = %v, want %v", tt.s, got, tt.want)
		}
		err := CheckIdentity(tt.s)
		if (err == nil) != tt.want || (err != nil && (!errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), strconv.Quote(tt.s)))) {
			t.Errorf("CheckIdentity(%q) = %v, want valid %v", tt.s, err, tt.want)
		}
	}
}

func TestDeviceMsgID(t *testing.T) {
	tests := []struct {
		client string
		id     string // raw JSON id
		want   string
	}{
		{"app-1", `42`, "app-1:42"},
		{"app-1", `"42"`, "app-1:42"},
		{"app-1", `-0`, "app-1:0"},
		{"app-1", `-3`, "app-1:-3"},
		{"a", `"x:y:z"`, "a:x:y:z"},
		{"c.1_2", `"007"`, "c.1_2:007"},
		{"c", `"1234567890123456"`, "c:1234567890123456"},
		{id128, `"` + id128 + `"`, id128 + ":" + id128},
	}
	for _, tt := range tests {
		id, err := ParseID(json.RawMessage(tt.id))
		if err != nil {
			t.Fatalf("ParseID(%q) error = %v", tt.id, err)
		}
		if got := DeviceMsgID(tt.client, id); got != tt.want {
			t.Errorf("DeviceMsgID(%q, %s) = %q, want %q", tt.client, tt.id, got, tt.want)
		}
		client, back, err := ParseDeviceMsgID(tt.want)
		if err != nil || client != tt.client || back.Key() != id.Key() {
			t.Errorf("ParseDeviceMsgID(%q) = %q, %q, %v, want %q, %q", tt.want, client, back.Key(), err, tt.client, id.Key())
		}
	}
}

func TestParseDeviceMsgID(t *testing.T) {
	tests := []struct {
		s      string
		client string
		raw    string // Raw() of the id
		err    error  // besides ErrDeviceMsgID, which every failure wraps
	}{
		{s: "c:1", client: "c", raw: `1`},
		{s: "c:abc", client: "c", raw: `"abc"`},
		{s: "c:a:b", client: "c", raw: `"a:b"`},
		{s: "c::", err: ErrIDChars},
		{s: "c::a", err: ErrIDChars},
		{s: "c:007", client: "c", raw: `"007"`},
		{s: "c:-5", client: "c", raw: `-5`},
		{s: "c:" + id128, client: "c", raw: `"` + id128 + `"`},
		{s: "c:" + id129, err: ErrIDTooLong},
		{s: "c:-1234567890123456", err: ErrIDDigits},
		{s: "c:a b", err: ErrIDChars},
		{s: "", err: ErrDeviceMsgID},
		{s: "c", err: ErrDeviceMsgID},
		{s: "c:", err: ErrDeviceMsgID},
		{s: ":1", err: ErrDeviceMsgID},
		{s: ":", err: ErrDeviceMsgID},
		{s: "-c:1", err: ErrDeviceMsgID},
		{s: "c d:1", err: ErrDeviceMsgID},
		{s: id129 + ":1", err: ErrDeviceMsgID},
		{s: "é:1", err: ErrDeviceMsgID},
	}
	for _, tt := range tests {
		client, id, err := ParseDeviceMsgID(tt.s)
		if tt.err != nil {
			if !errors.Is(err, ErrDeviceMsgID) || !errors.Is(err, tt.err) || client != "" || !id.IsZero() {
				t.Errorf("ParseDeviceMsgID(%q) = %q, %q, %v, want %v", tt.s, client, id.Key(), err, tt.err)
			}
			continue
		}
		if err != nil || client != tt.client || string(id.Raw()) != tt.raw {
			t.Errorf("ParseDeviceMsgID(%q) = %q, %s, %v, want %q, %s", tt.s, client, id.Raw(), err, tt.client, tt.raw)
		}
		if got := DeviceMsgID(client, id); got != tt.s {
			t.Errorf("DeviceMsgID(ParseDeviceMsgID(%q)) = %q, want %q", tt.s, got, tt.s)
		}
	}
}

func TestAnswerTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id      string // the answer's id, as JSON
		client  string
		key     string
		wantErr string // a part of the error, "" for none
	}{
		{`"app-1:42"`, "app-1", "42", ""},
		{`"app-1:a:b"`, "app-1", "a:b", ""},
		{`42`, "", "", "is not the string"},
		{`"` + strings.Repeat("x", 200) + `"`, "", "", "protocol:"},
		{`{"a":1}`, "", "", "is not the string"},
		{`"no-colon"`, "", "", "protocol:"},
	}
	for _, tt := range tests {
		client, id, err := AnswerTarget(&Response{JSONRPC: "2.0", ID: json.RawMessage(tt.id)})
		switch {
		case tt.wantErr == "" && (err != nil || client != tt.client || id.Key() != tt.key):
			t.Errorf("AnswerTarget(id %s) = %q, %q, %v; want %q, %q", tt.id, client, id.Key(), err, tt.client, tt.key)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("AnswerTarget(id %s) = %v, want an error about %q", tt.id, err, tt.wantErr)
		case err != nil && len(err.Error()) > 200:
			t.Errorf("AnswerTarget(id %.40s…): error of %d bytes, want it short", tt.id, len(err.Error()))
		}
	}
}

func TestDeviceAttemptID(t *testing.T) {
	id := ID{}
	var err error
	if id, err = ParseID([]byte(`"r-1"`)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		attempt int
		want    string
	}{
		{0, "app-1:r-1"}, {1, "app-1:r-1"}, {2, "app-1:r-1#2"}, {11, "app-1:r-1#11"},
	}
	for _, tt := range tests {
		got := DeviceAttemptID("app-1", id, tt.attempt)
		if got != tt.want {
			t.Errorf("DeviceAttemptID(app-1, r-1, %d) = %q, want %q", tt.attempt, got, tt.want)
		}
		client, back, attempt, err := ParseDeviceAttempt(got)
		want := tt.attempt
		if want < 2 {
			want = 0
		}
		if err != nil || client != "app-1" || back.Key() != "r-1" || attempt != want {
			t.Errorf("ParseDeviceAttempt(%q) = %q, %q, %d, %v; want app-1, r-1, %d", got, client, back.Key(), attempt, err, want)
		}
	}
	for _, bad := range []string{"app-1:r-1#1", "app-1:r-1#0", "app-1:r-1#02", "app-1:r-1#100", "app-1:r-1#", "app-1:r-1#x", "app-1:r-1#2#3"} {
		if _, _, _, err := ParseDeviceAttempt(bad); err == nil {
			t.Errorf("ParseDeviceAttempt(%q) = nil error, want %v", bad, ErrDeviceMsgID)
		}
	}
}

func TestAnswerAttempt(t *testing.T) {
	tests := []struct {
		id   string
		want int
	}{
		{`"c:1"`, 0}, {`"c:1#3"`, 3}, {`"c:1#1"`, 0}, {`7`, 0}, {`"c:1#x"`, 0},
	}
	for _, tt := range tests {
		if got := AnswerAttempt(&Response{ID: []byte(tt.id)}); got != tt.want {
			t.Errorf("AnswerAttempt(id %s) = %d, want %d", tt.id, got, tt.want)
		}
	}
}

func TestParseRetryOn(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"timeout", "timeout", ""},
		{"rejected,device_error", "device_error,rejected", ""},
		{" expired , timeout ", "timeout,expired", ""},
		{"timeout,expired,device_error,rejected", "timeout,expired,device_error,rejected", ""},
		{"", "", "retry_on is empty"},
		{"timeout,", "", `unknown outcome ""`},
		{"failed", "", `unknown outcome "failed"`},
		{"timeout,timeout", "", `"timeout" is named twice`},
	}
	for _, tt := range tests {
		got, err := ParseRetryOn(tt.in)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("ParseRetryOn(%q) = %q, %v; want %q, an error with %q", tt.in, got, err, tt.want, tt.err)
		}
	}
}
