package config

import (
	"fmt"
	"time"

	"github.com/iotgw/gateway/protocol"
)

// Scale holds the fixed counts and the durability settings of a
// deployment (DESIGN §7, §7a). Every service embeds it; a process whose
// counts differ from the ones stored at first start refuses to run.
type Scale struct {
	// Partitions is the number of state partitions, a power of two fixed
	// for the life of a deployment (partitions, GW_PARTITIONS). Default
	// protocol.DefaultPartitions.
	Partitions int
	// Queues is the number of command queues (queues, GW_QUEUES).
	// Default protocol.DefaultQueues.
	Queues int
	// QueuesFrom is, during a resize of GW_QUEUES, the count the
	// namespace is resized from (queues-from, GW_QUEUES_FROM; README
	// "Running at scale"): workers consume the old and the new queues,
	// apiservers publish to the old ones until every worker runs with
	// the new count, and both accept a namespace that records either
	// count. Default 0: no resize.
	QueuesFrom int
	// WaitReplicas is how many replicas must have a step before it is
	// revealed outside its partition (redis-wait-replicas,
	// GW_REDIS_WAIT_REPLICAS). Default 0: no barrier.
	WaitReplicas int
	// WaitTimeout bounds each barrier's WAIT (redis-wait-timeout,
	// GW_REDIS_WAIT_TIMEOUT). Default 1s.
	WaitTimeout time.Duration
	// Durability is "strict" (readiness fails unless Redis is durable)
	// or "relaxed" (durability, GW_DURABILITY). Default strict.
	Durability string
	// AnswerGrace is how long after an answer deadline the timer waits
	// for an answer read in time (answer-grace, GW_ANSWER_GRACE).
	// Default 10s.
	AnswerGrace time.Duration
}

// Defaults of Scale.
const (
	DefaultWaitTimeout = time.Second
	DefaultAnswerGrace = 10 * time.Second
	DurabilityStrict   = "strict"
	DurabilityRelaxed  = "relaxed"
)

// Bind defines the flags of Scale with their GW_* variables.
func (s *Scale) Bind(b *Binder) {
	b.Int(&s.Partitions, "partitions", protocol.DefaultPartitions, "state partitions, a power of two fixed per deployment")
	b.Int(&s.Queues, "queues", protocol.DefaultQueues, "command queues")
	b.Int(&s.QueuesFrom, "queues-from", 0, "during a resize of the command queues, the count resized from (0: no resize)")
	b.Int(&s.WaitReplicas, "redis-wait-replicas", 0, "replicas that must have a step before it is acknowledged")
	b.Duration(&s.WaitTimeout, "redis-wait-timeout", DefaultWaitTimeout, "longest wait for those replicas")
	b.String(&s.Durability, "durability", DurabilityStrict, "strict (readiness needs durable Redis) or relaxed")
	b.Duration(&s.AnswerGrace, "answer-grace", DefaultAnswerGrace, "how long past an answer deadline an answer read in time may still be recorded")
}

// SetDefaults fills the zero fields with their defaults.
func (s *Scale) SetDefaults() {
	if s.Partitions == 0 {
		s.Partitions = protocol.DefaultPartitions
	}
	if s.Queues == 0 {
		s.Queues = protocol.DefaultQueues
	}
	if s.WaitTimeout <= 0 {
		s.WaitTimeout = DefaultWaitTimeout
	}
	if s.Durability == "" {
		s.Durability = DurabilityStrict
	}
	if s.AnswerGrace <= 0 {
		s.AnswerGrace = DefaultAnswerGrace
	}
}

// Topology is the AMQP topology of namespace ns for these counts: during
// a resize (QueuesFrom set), the union of the old and the new queues.
func (s *Scale) Topology(ns string) protocol.Topology {
	return protocol.NewResizeTopology(ns, s.QueuesFrom, s.Queues, s.Partitions)
}

// Check returns an error for a count or a setting out of range.
func (s *Scale) Check() error {
	if err := protocol.CheckPartitions(s.Partitions); err != nil {
		return fmt.Errorf("partitions: %w", err)
	}
	if err := protocol.CheckQueues(s.Queues); err != nil {
		return fmt.Errorf("queues: %w", err)
	}
	if s.QueuesFrom != 0 {
		if err := protocol.CheckQueues(s.QueuesFrom); err != nil {
			return fmt.Errorf("queues-from: %w", err)
		}
	}
	if s.WaitReplicas < 0 || s.WaitReplicas > 16 {
		return fmt.Errorf("redis-wait-replicas %d must be from 0 to 16", s.WaitReplicas)
	}
	if s.Durability != DurabilityStrict && s.Durability != DurabilityRelaxed {
		return fmt.Errorf("durability %q must be strict or relaxed", s.Durability)
	}
	return nil
}
