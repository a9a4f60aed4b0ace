package protocol

import (
	"reflect"
	"testing"
)

func TestNewTopology(t *testing.T) {
	got := NewTopology("gw")
	want := Topology{
		NS:                "gw",
		CommandsExchange:  "gw.commands",
		ResultsExchange:   "gw.results",
		DeadExchange:      "gw.dead",
		CommandsQueue:     "gw.commands",
		ResultsQueue:      "gw.results",
		CommandsDeadQueue: "gw.commands.dead",
		ResultsDeadQueue:  "gw.results.dead",
	}
	if got != want {
		t.Errorf("NewTopology(%q) = %+v, want %+v", "gw", got, want)
	}
	if got := NewTopology("test-7").CommandsDeadQueue; got != "test-7.commands.dead" {
		t.Errorf("NewTopology(%q).CommandsDeadQueue = %q, want %q", "test-7", got, "test-7.commands.dead")
	}
}

func TestTopologyLists(t *testing.T) {
	top := NewTopology("ns")
	if got, want := top.Exchanges(), []string{"ns.dead", "ns.commands", "ns.results"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Exchanges() = %q, want %q", got, want)
	}
	if got, want := top.Queues(), []string{"ns.commands", "ns.results", "ns.commands.dead", "ns.results.dead"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Queues() = %q, want %q", got, want)
	}
}

func TestTopologyBindings(t *testing.T) {
	top := NewTopology("ns")
	main := func(deadKey string) map[string]any {
		return map[string]any{
			"x-queue-type":              "quorum",
			"x-delivery-limit":          int32(5),
			"x-dead-letter-exchange":    "ns.dead",
			"x-dead-letter-routing-key": deadKey,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}
	}
	dead := map[string]any{"x-queue-type": "quorum"}
	want := []Binding{
		{Queue: "ns.commands.dead", Exchange: "ns.dead", RoutingKey: "commands", Args: dead},
		{Queue: "ns.results.dead", Exchange: "ns.dead", RoutingKey: "results", Args: dead},
		{Queue: "ns.commands", Exchange: "ns.commands", RoutingKey: "command", Args: main("commands")},
		{Queue: "ns.results", Exchange: "ns.results", RoutingKey: "result", Args: main("results")},
	}
	got := top.Bindings()
	if len(got) != len(want) {
		t.Fatalf("Bindings() = %d bindings, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("Bindings()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}

	// Every queue and exchange of the lists is bound, every dead-letter
	// target is a binding of the dead exchange declared before its source.
	queues := map[string]bool{}
	exchanges := map[string]bool{}
	for _, x := range top.Exchanges() {
		exchanges[x] = true
	}
	for i, b := range got {
		queues[b.Queue] = true
		if !exchanges[b.Exchange] {
			t.Errorf("Bindings()[%d].Exchange = %q, want one of Exchanges()", i, b.Exchange)
		}
		if dlx, ok := b.Args["x-dead-letter-exchange"]; ok {
			key := b.Args["x-dead-letter-routing-key"]
			found := false
			for _, d := range got[:i] {
				if d.Exchange == dlx && d.RoutingKey == key {
					found = true
				}
			}
			if !found {
				t.Errorf("Bindings()[%d] dead-letters to %v/%v, want a queue bound there before it", i, dlx, key)
			}
		}
	}
	for _, q := range top.Queues() {
		if !queues[q] {
			t.Errorf("Bindings() lacks queue %q", q)
		}
	}

	// Each call returns fresh maps: a caller changing one cannot change the
	// topology of another.
	got[2].Args["x-delivery-limit"] = int32(99)
	if again := top.Bindings(); again[2].Args["x-delivery-limit"] != int32(DeliveryLimit) {
		t.Errorf("Bindings()[2] x-delivery-limit = %v after a caller changed a copy, want %d", again[2].Args["x-delivery-limit"], DeliveryLimit)
	}
}

func TestTopologyConstants(t *testing.T) {
	for _, tt := range []struct {
		name string
		got  any
		want any
	}{
		{"DeliveryLimit", DeliveryLimit, 5},
		{"ExchangeKind", ExchangeKind, "direct"},
		{"RoutingCommand", RoutingCommand, "command"},
		{"RoutingResult", RoutingResult, "result"},
		{"RoutingDeadCommands", RoutingDeadCommands, "commands"},
		{"RoutingDeadResults", RoutingDeadResults, "results"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}
