package protocol

import (
	"regexp"
	"strconv"
)

// Queue arguments shared by every process that declares the topology. They
// must be identical everywhere: RabbitMQ refuses a second declaration of a
// queue with different arguments (PRECONDITION_FAILED).
const (
	// DeliveryLimit is x-delivery-limit: a message redelivered more often
	// than this is dead-lettered.
	DeliveryLimit = 5
	// RoutingDeadCommands routes dead-lettered commands to the
	// commands dead-letter queue. (Device answers do not cross RabbitMQ,
	// DESIGN §5: there is no results queue.)
	RoutingDeadCommands = "commands"
	// ExchangeKind is the kind of every exchange of the topology.
	ExchangeKind = "direct"
	// LeaderLocator is x-queue-leader-locator of the command queues:
	// RabbitMQ places the leader of each new queue on the node with the
	// fewest leaders, so the command queues spread over a cluster.
	LeaderLocator = "balanced"
)

// routingCommand prefixes the routing key of each command queue:
// "command.{q}".
const routingCommand = "command."

// Topology names the exchanges and queues of one namespace and holds the
// two counts it is built on. All exchanges and queues are durable; queues
// are quorum queues. See doc.go for the table.
//
// Commands are spread over QueueCount command queues, {ns}.commands.{q}
// for q = 0..QueueCount-1: a command to device d goes to queue
// CommandQueueOf(d, PartitionCount), which RabbitMQ routes by the routing
// key of CommandRoute (DeviceRoute does both).
// The counts are fenced (DESIGN §7a): FenceQueue is declared with them in
// an argument RabbitMQ compares, so a process whose counts differ from
// those of the namespace's first process is refused (see FenceArgs).
type Topology struct {
	NS string
	// QueueCount is the number of command queues (GW_QUEUES) and
	// PartitionCount the number of state partitions (GW_PARTITIONS).
	QueueCount, PartitionCount int
	// ResizeFrom, when not 0, is the queue count a resize of GW_QUEUES
	// comes from (GW_QUEUES_FROM, DESIGN §7a "Fixed counts, fenced
	// twice"): the topology's queues are the union of the old and the new
	// ones (CommandQueues, Bindings, Queues), and its fence accepts a
	// namespace that still records ResizeFrom. CommandQueueOf and the
	// fence value it declares use QueueCount.
	ResizeFrom int

	CommandsExchange  string // {ns}.commands, direct
	DeadExchange      string // {ns}.dead, direct
	CommandsDeadQueue string // {ns}.commands.dead, quorum
	// FenceQueue is {ns}.fence, a quorum queue that carries no messages:
	// its arguments hold the counts (FenceArgs).
	FenceQueue string
	// CommandsGroup is {ns}.commands, the name of the command queues
	// taken together (the sum in GET /v1/stats). No queue has this name.
	CommandsGroup string
}

// NewTopology returns the names for namespace ns with queues command
// queues and partitions state partitions. It does not check the counts
// (CheckQueues, CheckPartitions); declaring a topology with counts out of
// range fails.
func NewTopology(ns string, queues, partitions int) Topology {
	return Topology{
		NS:                ns,
		QueueCount:        queues,
		PartitionCount:    partitions,
		CommandsExchange:  ns + ".commands",
		DeadExchange:      ns + ".dead",
		CommandsDeadQueue: ns + ".commands.dead",
		FenceQueue:        ns + ".fence",
		CommandsGroup:     ns + ".commands",
	}
}

// NewResizeTopology is NewTopology for a resize of the queue count from
// from to queues (see Topology.ResizeFrom); from equal to queues, or 0,
// is no resize.
func NewResizeTopology(ns string, from, queues, partitions int) Topology {
	t := NewTopology(ns, queues, partitions)
	if from != queues {
		t.ResizeFrom = from
	}
	return t
}

// Resizing reports whether the topology is that of a resize.
func (t Topology) Resizing() bool { return t.ResizeFrom > 0 && t.ResizeFrom != t.QueueCount }

// WithQueues returns the topology of the same namespace with queues
// command queues and no resize: where a process publishes once the
// namespace has switched to queues.
func (t Topology) WithQueues(queues int) Topology {
	return NewTopology(t.NS, queues, t.PartitionCount)
}

// unionCount is how many command queues the topology declares and lists:
// QueueCount, or during a resize the larger of both counts.
func (t Topology) unionCount() int {
	if t.Resizing() {
		return max(t.QueueCount, t.ResizeFrom, 0)
	}
	return max(t.QueueCount, 0)
}

// CommandQueue returns the name of command queue q: "{ns}.commands.{q}".
func (t Topology) CommandQueue(q int) string { return t.CommandsGroup + "." + strconv.Itoa(q) }

// CommandQueues lists the command queues, queue 0 first (during a
// resize, the old and the new ones).
func (t Topology) CommandQueues() []string {
	out := make([]string, 0, t.unionCount())
	for q := range t.unionCount() {
		out = append(out, t.CommandQueue(q))
	}
	return out
}

// CommandQueueOf returns the command queue of device among the
// topology's QueueCount: Partition(device, partitions) mod QueueCount.
// Pass the topology's PartitionCount (another count only to plan a
// resize); the queue of a device is stable as long as both counts are.
func (t Topology) CommandQueueOf(device string, partitions int) int {
	if t.QueueCount <= 1 || partitions < 1 {
		return 0
	}
	return Partition(device, partitions) % t.QueueCount
}

// CommandRoute returns the exchange and routing key that put a message
// into command queue q: {ns}.commands and "command.{q}". Publish
// mandatory: a returned message means no such queue.
func (t Topology) CommandRoute(q int) (exchange, routingKey string) {
	return t.CommandsExchange, routingCommand + strconv.Itoa(q)
}

// DeviceRoute is CommandRoute(CommandQueueOf(device, t.PartitionCount)):
// where a command to device is published.
func (t Topology) DeviceRoute(device string) (exchange, routingKey string) {
	return t.CommandRoute(t.CommandQueueOf(device, t.PartitionCount))
}

// commandQueueRE matches the name of a command queue and captures its
// namespace and number.
var commandQueueRE = regexp.MustCompile(`^(.+)\.commands\.(0|[1-9][0-9]*)$`)

// ParseCommandQueue returns the namespace and number of a command queue
// name ("gw.commands.3": "gw", 3); ok is false for any other name.
func ParseCommandQueue(name string) (ns string, q int, ok bool) {
	m := commandQueueRE.FindStringSubmatch(name)
	if m == nil {
		return "", 0, false
	}
	q, err := strconv.Atoi(m[2])
	if err != nil {
		return "", 0, false
	}
	return m[1], q, true
}

// Binding is one queue bound to one exchange with one routing key.
type Binding struct {
	Queue, Exchange, RoutingKey string
	// Args are the queue's declaration arguments.
	Args map[string]any
}

// Bindings lists every queue of the topology but the fence with its
// exchange, routing key and arguments, in declaration order (the
// dead-letter queue first, so that a command queue's dead-letter target
// exists when it is declared; then the command queues, 0 first).
func (t Topology) Bindings() []Binding {
	out := []Binding{
		{Queue: t.CommandsDeadQueue, Exchange: t.DeadExchange, RoutingKey: RoutingDeadCommands, Args: deadQueueArgs()},
	}
	for q := range t.unionCount() {
		args := t.mainQueueArgs(RoutingDeadCommands)
		args["x-queue-leader-locator"] = LeaderLocator
		_, key := t.CommandRoute(q)
		out = append(out, Binding{Queue: t.CommandQueue(q), Exchange: t.CommandsExchange, RoutingKey: key, Args: args})
	}
	return out
}

// Exchanges lists the exchanges of the topology.
func (t Topology) Exchanges() []string {
	return []string{t.DeadExchange, t.CommandsExchange}
}

// Queues lists the queues that carry messages: the command queues, 0
// first, then the commands dead-letter queue. The fence is not one of
// them.
func (t Topology) Queues() []string {
	return append(t.CommandQueues(), t.CommandsDeadQueue)
}

func (t Topology) mainQueueArgs(deadKey string) map[string]any {
	return map[string]any{
		"x-queue-type":              "quorum",
		"x-delivery-limit":          int32(DeliveryLimit),
		"x-dead-letter-exchange":    t.DeadExchange,
		"x-dead-letter-routing-key": deadKey,
		"x-dead-letter-strategy":    "at-least-once",
		"x-overflow":                "reject-publish",
	}
}

func deadQueueArgs() map[string]any {
	return map[string]any{"x-queue-type": "quorum"}
}

// The fence (DESIGN §7a: the counts are stored as queue arguments, so
// that RabbitMQ refuses a process with other counts).
//
// RabbitMQ 3.10 accepts arguments of its own naming (x-gw-queues) on a
// quorum queue but does not compare them when the queue is declared
// again: a redeclaration with other values succeeds and changes nothing.
// It does compare the arguments it knows, x-dead-letter-routing-key among
// them, whatever their value. So the fence queue carries the counts as
// its dead-letter routing key, FenceValue(queues, partitions); a
// declaration with other counts fails with PRECONDITION_FAILED, "received
// 'queues=8,partitions=256' but current is 'queues=4,partitions=256'".
// x-gw-queues and x-gw-partitions repeat them as integers for the
// management UI (informational: never compared). The fence holds no
// messages: nothing routes to it.

// FenceValue is the fence's x-dead-letter-routing-key for the counts:
// "queues=Q,partitions=P".
func FenceValue(queues, partitions int) string {
	return "queues=" + strconv.Itoa(queues) + ",partitions=" + strconv.Itoa(partitions)
}

var fenceValueRE = regexp.MustCompile(`^queues=([0-9]+),partitions=([0-9]+)$`)

// ParseFenceValue reads the counts of a FenceValue; ok is false for
// anything else.
func ParseFenceValue(s string) (queues, partitions int, ok bool) {
	m := fenceValueRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, false
	}
	q, err1 := strconv.Atoi(m[1])
	p, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return q, p, true
}

// FenceArgs are the arguments of FenceQueue: a quorum queue whose
// dead-letter routing key is FenceValue(t.QueueCount, t.PartitionCount), with
// x-gw-queues and x-gw-partitions for the reader.
func (t Topology) FenceArgs() map[string]any {
	return map[string]any{
		"x-queue-type":              "quorum",
		"x-dead-letter-exchange":    t.DeadExchange,
		"x-dead-letter-routing-key": FenceValue(t.QueueCount, t.PartitionCount),
		"x-gw-queues":               int32(t.QueueCount),
		"x-gw-partitions":           int32(t.PartitionCount),
	}
}
