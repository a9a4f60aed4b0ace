package testenv

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// LogKeys are the gateway's log schema, the same in every binary: what
// each line has, and the one spelling of each thing a line may name.
//
//	key        on              meaning
//	time       every line      the time
//	level      every line      DEBUG, INFO, WARN, ERROR
//	msg        every line      what happened
//	service    every line      the binary: apiserver, msgworker, pushserver
//	client_id  about a client  the client's identity
//	device_id  about a device  the device's identity
//	msg_id     about a command the client's id of the command
//	node       push servers    the node's name in the ring
//	namespace  start lines     GW_NAMESPACE
//	err        failures        the error
//
// The keys of notLogKeys are the other spellings the binaries used to
// write; [RequireLogSchema] refuses them.
var LogKeys = []string{"time", "level", "msg", "service", "client_id", "device_id", "msg_id", "node", "namespace", "err"}

// notLogKeys maps a refused key to the schema's spelling of it.
var notLogKeys = map[string]string{
	"ns": "namespace", "error": "err", "client": "client_id", "device": "device_id",
	"id": "msg_id", "msgid": "msg_id", "node_id": "node",
}

// textKey finds the keys of a line of slog's text handler.
var textKey = regexp.MustCompile(`(?:^| )([A-Za-z0-9_.]+)=`)

// RequireLogSchema fails t unless every line (JSON or slog text) that a
// binary of service wrote has time, level, msg and service = service, and
// none of the refused spellings as a key (see LogKeys). It also fails t
// when lines is empty: a check of nothing passes vacuously.
func RequireLogSchema(t testing.TB, service string, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		t.Fatalf("%s wrote no log line to check", service)
	}
	for _, line := range lines {
		keys := map[string]string{}
		if strings.HasPrefix(line, "{") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Errorf("%s: a log line is not JSON (%v): %s", service, err, line)
				continue
			}
			for k, v := range m {
				s, _ := v.(string)
				keys[k] = s
			}
		} else {
			for _, m := range textKey.FindAllStringSubmatch(line, -1) {
				keys[m[1]] = ""
			}
			if strings.Contains(line, " service="+service) {
				keys["service"] = service
			}
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := keys[k]; !ok {
				t.Errorf("%s: a log line has no %q: %s", service, k, line)
			}
		}
		if keys["service"] != service {
			t.Errorf("%s: a log line has service %q, want %q: %s", service, keys["service"], service, line)
		}
		for k := range keys {
			if want, bad := notLogKeys[k]; bad {
				t.Errorf("%s: a log line has the key %q, want %q: %s", service, k, want, line)
			}
		}
	}
}
