package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// writeTree shows the sum of the command queues and each one under it,
// by name.
func TestWriteTreeCommandQueues(t *testing.T) {
	var stats map[string]any
	if err := json.Unmarshal([]byte(`{"queues":{"gw.commands":{"ready":3,"queues":[
		{"name":"gw.commands.0","index":0,"ready":1},{"name":"gw.commands.1","index":1,"ready":2}]},
		"gw.commands.dead":{"ready":0}},"push_servers":[{"node":"push-1"}]}`), &stats); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeTree(&b, "", stats)
	want := `push_servers:
  - [0]
    node: push-1
queues:
  gw.commands:
    queues:
      - gw.commands.0
        index: 0
        ready: 1
      - gw.commands.1
        index: 1
        ready: 2
    ready: 3
  gw.commands.dead:
    ready: 0
`
	if got := b.String(); got != want {
		t.Errorf("writeTree =\n%s\nwant\n%s", got, want)
	}
}
