package protocol

import (
	"fmt"
	"reflect"
	"testing"
)

func TestNewTopology(t *testing.T) {
	got := NewTopology("gw", 4, 256)
	want := Topology{
		NS:                "gw",
		QueueCount:        4,
		PartitionCount:    256,
		CommandsExchange:  "gw.commands",
		DeadExchange:      "gw.dead",
		CommandsDeadQueue: "gw.commands.dead",
		FenceQueue:        "gw.fence",
		CommandsGroup:     "gw.commands",
	}
	if got != want {
		t.Errorf("NewTopology(%q, 4, 256) = %+v, want %+v", "gw", got, want)
	}
	if got := NewTopology("test-7", 1, 1).CommandsDeadQueue; got != "test-7.commands.dead" {
		t.Errorf("NewTopology(%q).CommandsDeadQueue = %q, want %q", "test-7", got, "test-7.commands.dead")
	}
}

func TestTopologyLists(t *testing.T) {
	top := NewTopology("ns", 3, 16)
	if got, want := top.Exchanges(), []string{"ns.dead", "ns.commands"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Exchanges() = %q, want %q", got, want)
	}
	if got, want := top.CommandQueues(), []string{"ns.commands.0", "ns.commands.1", "ns.commands.2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("CommandQueues() = %q, want %q", got, want)
	}
	if got, want := top.Queues(), []string{"ns.commands.0", "ns.commands.1", "ns.commands.2", "ns.commands.dead"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Queues() = %q, want %q", got, want)
	}
	if got := NewTopology("ns", 0, 16).CommandQueues(); len(got) != 0 {
		t.Errorf("CommandQueues() with 0 queues = %q, want none", got)
	}
}

func TestTopologyBindings(t *testing.T) {
	top := NewTopology("ns", 2, 16)
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
	command := main("commands")
	command["x-queue-leader-locator"] = "balanced"
	dead := map[string]any{"x-queue-type": "quorum"}
	want := []Binding{
		{Queue: "ns.commands.dead", Exchange: "ns.dead", RoutingKey: "commands", Args: dead},
		{Queue: "ns.commands.0", Exchange: "ns.commands", RoutingKey: "command.0", Args: command},
		{Queue: "ns.commands.1", Exchange: "ns.commands", RoutingKey: "command.1", Args: command},
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
	// target is a binding of the dead exchange declared before its source,
	// and no two queues share a routing key on one exchange.
	queues := map[string]bool{}
	exchanges := map[string]bool{}
	routes := map[[2]string]string{}
	for _, x := range top.Exchanges() {
		exchanges[x] = true
	}
	for i, b := range got {
		queues[b.Queue] = true
		if !exchanges[b.Exchange] {
			t.Errorf("Bindings()[%d].Exchange = %q, want one of Exchanges()", i, b.Exchange)
		}
		if other, dup := routes[[2]string{b.Exchange, b.RoutingKey}]; dup {
			t.Errorf("Bindings()[%d]: %s and %s share %s/%s", i, b.Queue, other, b.Exchange, b.RoutingKey)
		}
		routes[[2]string{b.Exchange, b.RoutingKey}] = b.Queue
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
	if queues[top.FenceQueue] {
		t.Errorf("Bindings() binds the fence %s: nothing may route to it", top.FenceQueue)
	}

	// Each call returns fresh maps: a caller changing one cannot change the
	// topology of another.
	got[1].Args["x-delivery-limit"] = int32(99)
	if again := top.Bindings(); again[1].Args["x-delivery-limit"] != int32(DeliveryLimit) {
		t.Errorf("Bindings()[1] x-delivery-limit = %v after a caller changed a copy, want %d", again[1].Args["x-delivery-limit"], DeliveryLimit)
	}
	if got[2].Args["x-delivery-limit"] != int32(DeliveryLimit) {
		t.Errorf("Bindings()[2] shares its arguments with Bindings()[1]")
	}
}

// TestCommandQueueOf pins where a device's commands go: Partition(device,
// partitions) mod queues, with the vectors of TestPartitionVectors.
func TestCommandQueueOf(t *testing.T) {
	tests := []struct {
		device             string
		queues, partitions int
		want               int
	}{
		{"dev-1", 4, 256, 248 % 4},
		{"dev-1", 3, 256, 248 % 3},
		{"app-1", 4, 256, 253 % 4},
		{"abc", 7, 256, 153 % 7},
		{"dev-1", 1, 256, 0},
		{"dev-1", 4, 1, 0},
		{"dev-1", 0, 256, 0}, // an unchecked count: queue 0, not a panic
	}
	for _, tt := range tests {
		top := NewTopology("gw", tt.queues, tt.partitions)
		if got := top.CommandQueueOf(tt.device, tt.partitions); got != tt.want {
			t.Errorf("NewTopology(gw, %d, %d).CommandQueueOf(%q) = %d, want %d", tt.queues, tt.partitions, tt.device, got, tt.want)
		}
	}

	// Every device lands in a queue of the topology, and the devices
	// spread over all of them.
	top := NewTopology("gw", 4, 256)
	seen := map[int]int{}
	for i := range 1000 {
		q := top.CommandQueueOf(fmt.Sprintf("dev-%d", i), top.PartitionCount)
		if q < 0 || q >= top.QueueCount {
			t.Fatalf("CommandQueueOf(dev-%d) = %d, want 0..%d", i, q, top.QueueCount-1)
		}
		seen[q]++
	}
	for q := range top.QueueCount {
		if seen[q] < 150 {
			t.Errorf("queue %d got %d of 1000 devices, want about 250 (%v)", q, seen[q], seen)
		}
	}
}

func TestCommandRoute(t *testing.T) {
	top := NewTopology("gw", 4, 256)
	for q, b := range top.Bindings()[1:5] {
		ex, key := top.CommandRoute(q)
		if ex != b.Exchange || key != b.RoutingKey || b.Queue != top.CommandQueue(q) {
			t.Errorf("CommandRoute(%d) = %s, %s; the binding of %s is %s, %s", q, ex, key, top.CommandQueue(q), b.Exchange, b.RoutingKey)
		}
	}
	ex, key := top.DeviceRoute("dev-1")
	wantEx, wantKey := top.CommandRoute(top.CommandQueueOf("dev-1", 256))
	if ex != wantEx || key != wantKey {
		t.Errorf("DeviceRoute(dev-1) = %s, %s; want %s, %s", ex, key, wantEx, wantKey)
	}
}

func TestParseCommandQueue(t *testing.T) {
	top := NewTopology("gwt-1-ab.c", 12, 16)
	for q, name := range top.CommandQueues() {
		ns, n, ok := ParseCommandQueue(name)
		if !ok || ns != top.NS || n != q {
			t.Errorf("ParseCommandQueue(%q) = %q, %d, %v; want %q, %d, true", name, ns, n, ok, top.NS, q)
		}
	}
	for _, name := range []string{top.NS + ".results", top.CommandsDeadQueue, top.CommandsGroup, top.FenceQueue, "gw.commands.", "gw.commands.01", "gw.commands.-1", ".commands.1"} {
		if _, _, ok := ParseCommandQueue(name); ok {
			t.Errorf("ParseCommandQueue(%q) ok, want not a command queue", name)
		}
	}
}

func TestFence(t *testing.T) {
	top := NewTopology("ns", 4, 256)
	want := map[string]any{
		"x-queue-type":              "quorum",
		"x-dead-letter-exchange":    "ns.dead",
		"x-dead-letter-routing-key": "queues=4,partitions=256",
		"x-gw-queues":               int32(4),
		"x-gw-partitions":           int32(256),
	}
	if got := top.FenceArgs(); !reflect.DeepEqual(got, want) {
		t.Errorf("FenceArgs() = %v, want %v", got, want)
	}
	if a, b := NewTopology("ns", 8, 256).FenceArgs(), top.FenceArgs(); a["x-dead-letter-routing-key"] == b["x-dead-letter-routing-key"] {
		t.Errorf("the fences of 8 and 4 queues have the same compared argument %v", a["x-dead-letter-routing-key"])
	}
	if a, b := NewTopology("ns", 4, 128).FenceArgs(), top.FenceArgs(); a["x-dead-letter-routing-key"] == b["x-dead-letter-routing-key"] {
		t.Errorf("the fences of 128 and 256 partitions have the same compared argument %v", a["x-dead-letter-routing-key"])
	}
	for _, tt := range []struct {
		in   string
		q, p int
		ok   bool
	}{
		{FenceValue(4, 256), 4, 256, true},
		{FenceValue(256, 16384), 256, 16384, true},
		{"queues=4", 0, 0, false},
		{"partitions=4,queues=256", 0, 0, false},
		{"queues=x,partitions=1", 0, 0, false},
		{"", 0, 0, false},
	} {
		q, p, ok := ParseFenceValue(tt.in)
		if q != tt.q || p != tt.p || ok != tt.ok {
			t.Errorf("ParseFenceValue(%q) = %d, %d, %v; want %d, %d, %v", tt.in, q, p, ok, tt.q, tt.p, tt.ok)
		}
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
		{"LeaderLocator", LeaderLocator, "balanced"},
		{"RoutingDeadCommands", RoutingDeadCommands, "commands"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestResizeTopology(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		from, to      int
		resizing      bool
		queues, binds int // CommandQueues, Bindings (with the dead-letter queue)
		fence         string
	}{
		{0, 4, false, 4, 5, "queues=4,partitions=256"},
		{4, 4, false, 4, 5, "queues=4,partitions=256"},
		{2, 4, true, 4, 5, "queues=4,partitions=256"},
		{8, 2, true, 8, 9, "queues=2,partitions=256"},
	} {
		topo := NewResizeTopology("gw", tt.from, tt.to, 256)
		if got := topo.Resizing(); got != tt.resizing {
			t.Errorf("NewResizeTopology(%d, %d).Resizing() = %v, want %v", tt.from, tt.to, got, tt.resizing)
		}
		if got := len(topo.CommandQueues()); got != tt.queues {
			t.Errorf("NewResizeTopology(%d, %d): %d command queues, want %d", tt.from, tt.to, got, tt.queues)
		}
		if got := len(topo.Bindings()); got != tt.binds {
			t.Errorf("NewResizeTopology(%d, %d): %d bindings, want %d", tt.from, tt.to, got, tt.binds)
		}
		if got := topo.FenceArgs()["x-dead-letter-routing-key"]; got != tt.fence {
			t.Errorf("NewResizeTopology(%d, %d): fence %v, want %s", tt.from, tt.to, got, tt.fence)
		}
		if w := topo.WithQueues(tt.to); w.Resizing() || len(w.CommandQueues()) != tt.to {
			t.Errorf("NewResizeTopology(%d, %d).WithQueues(%d) = %+v, want %d queues, no resize", tt.from, tt.to, tt.to, w, tt.to)
		}
		for _, d := range []string{"dev-1", "dev-2", "lamp-7"} {
			if got, want := topo.CommandQueueOf(d, 256), Partition(d, 256)%tt.to; got != want {
				t.Errorf("NewResizeTopology(%d, %d).CommandQueueOf(%s) = %d, want %d (the new count)", tt.from, tt.to, d, got, want)
			}
		}
	}
}
