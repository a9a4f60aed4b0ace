package protocol

// Queue arguments shared by every process that declares the topology. They
// must be identical everywhere: RabbitMQ refuses a second declaration of a
// queue with different arguments (PRECONDITION_FAILED).
const (
	// DeliveryLimit is x-delivery-limit: a message redelivered more often
	// than this is dead-lettered.
	DeliveryLimit = 5
	// RoutingCommand routes commands from the commands exchange.
	RoutingCommand = "command"
	// RoutingResult routes device results from the results exchange.
	RoutingResult = "result"
	// RoutingDeadCommands and RoutingDeadResults route dead letters.
	RoutingDeadCommands = "commands"
	RoutingDeadResults  = "results"
	// ExchangeKind is the kind of every exchange of the topology.
	ExchangeKind = "direct"
)

// Topology names the exchanges and queues of one namespace. All are
// durable; queues are quorum queues. See doc.go for the table.
type Topology struct {
	NS string

	CommandsExchange  string // {ns}.commands, direct
	ResultsExchange   string // {ns}.results, direct
	DeadExchange      string // {ns}.dead, direct
	CommandsQueue     string // {ns}.commands, quorum
	ResultsQueue      string // {ns}.results, quorum
	CommandsDeadQueue string // {ns}.commands.dead, quorum
	ResultsDeadQueue  string // {ns}.results.dead, quorum
}

// NewTopology returns the names for namespace ns.
func NewTopology(ns string) Topology {
	return Topology{
		NS:                ns,
		CommandsExchange:  ns + ".commands",
		ResultsExchange:   ns + ".results",
		DeadExchange:      ns + ".dead",
		CommandsQueue:     ns + ".commands",
		ResultsQueue:      ns + ".results",
		CommandsDeadQueue: ns + ".commands.dead",
		ResultsDeadQueue:  ns + ".results.dead",
	}
}

// Binding is one queue bound to one exchange with one routing key.
type Binding struct {
	Queue, Exchange, RoutingKey string
	// Args are the queue's declaration arguments.
	Args map[string]any
}

// Bindings lists every queue of the topology with its exchange, routing
// key and arguments, in declaration order (dead-letter queues first, so
// that a main queue's dead-letter target exists when it is declared).
func (t Topology) Bindings() []Binding {
	return []Binding{
		{Queue: t.CommandsDeadQueue, Exchange: t.DeadExchange, RoutingKey: RoutingDeadCommands, Args: deadQueueArgs()},
		{Queue: t.ResultsDeadQueue, Exchange: t.DeadExchange, RoutingKey: RoutingDeadResults, Args: deadQueueArgs()},
		{Queue: t.CommandsQueue, Exchange: t.CommandsExchange, RoutingKey: RoutingCommand, Args: t.mainQueueArgs(RoutingDeadCommands)},
		{Queue: t.ResultsQueue, Exchange: t.ResultsExchange, RoutingKey: RoutingResult, Args: t.mainQueueArgs(RoutingDeadResults)},
	}
}

// Exchanges lists the exchanges of the topology.
func (t Topology) Exchanges() []string {
	return []string{t.DeadExchange, t.CommandsExchange, t.ResultsExchange}
}

// Queues lists the queues of the topology.
func (t Topology) Queues() []string {
	return []string{t.CommandsQueue, t.ResultsQueue, t.CommandsDeadQueue, t.ResultsDeadQueue}
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
