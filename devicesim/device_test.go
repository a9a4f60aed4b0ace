package main

import (
	"encoding/json"
	"testing"

	"github.com/iotgw/gateway/protocol"
)

func TestDeviceCall(t *testing.T) {
	d := NewDevice("dev-1", &Session{}, Behaviour{}, &FleetStats{})
	id := json.RawMessage(`"app:1"`)
	tests := []struct {
		method, params string
		result         string
		code           int
	}{
		{"ping", ``, `"pong"`, 0},
		{"echo", `{"b":1,"a":[2]}`, `{"b":1,"a":[2]}`, 0},
		{"echo", ``, `null`, 0},
		{"set_state", `{"led":"on"}`, `{"led":"on"}`, 0},
		{"get_state", ``, `{"led":"on"}`, 0},
		{"set_state", `[1]`, ``, protocol.CodeInvalidParams},
		{"sleep", `{"ms":1}`, `{"slept_ms":1}`, 0},
		{"sleep", `[2]`, `{"slept_ms":2}`, 0},
		{"sleep", `{"ms":-1}`, ``, protocol.CodeInvalidParams},
		{"sleep", `"x"`, ``, protocol.CodeInvalidParams},
		{"nope", ``, ``, protocol.CodeMethodNotFound},
		{"seq", `{"a":1}`, `{"n":7,"params":{"a":1}}`, 0},
		{"seq", ``, `{"n":7,"params":null}`, 0},
	}
	for _, tt := range tests {
		r := d.call(tt.method, json.RawMessage(tt.params), id, 7)
		if string(r.ID) != string(id) {
			t.Errorf("%s(%s) id = %s, want %s", tt.method, tt.params, r.ID, id)
		}
		if tt.code != 0 {
			if r.Error == nil || r.Error.Code != tt.code {
				t.Errorf("%s(%s) error = %v, want code %d", tt.method, tt.params, r.Error, tt.code)
			}
			continue
		}
		if r.Error != nil || !sameJSON(r.Result, []byte(tt.result)) {
			t.Errorf("%s(%s) = %s, %v; want %s", tt.method, tt.params, r.Result, r.Error, tt.result)
		}
	}
}

func TestBrokerURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mqtt://127.0.0.1:1884", "tcp://127.0.0.1:1884"},
		{"mqtts://gw.example:8883", "ssl://gw.example:8883"},
		{"http://x:1", ""},
		{"::", ""},
	}
	for _, tt := range tests {
		got, err := brokerURL(tt.in)
		if (err != nil) != (tt.want == "") || got != tt.want {
			t.Errorf("brokerURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
