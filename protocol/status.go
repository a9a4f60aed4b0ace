package protocol

import (
	"fmt"
	"slices"
)

// Status is the state of one command (DESIGN §4).
type Status string

// The statuses of a command. See doc.go for their meaning, owners and
// ThingsBoard equivalents.
const (
	StatusPending Status = "pending"
	StatusQueued  Status = "queued"
	// StatusScheduled: taken from its queue before its not_before; it
	// waits in Redis until then, cancellable.
	StatusScheduled Status = "scheduled"
	StatusSent      Status = "sent"
	StatusDelivered Status = "delivered"
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusTimeout   Status = "timeout"
	StatusExpired   Status = "expired"
	StatusCancelled Status = "cancelled"
	StatusRejected  Status = "rejected"
	StatusDead      Status = "dead"
	// StatusLost ends a command whose state the gateway lost beyond
	// repair (a Redis failover that lost its record): the claim's
	// watchdog says so (-32006) instead of leaving the client waiting.
	StatusLost Status = "lost"
	// StatusVoid is an internal tombstone: reserved, then released after
	// a definite publish failure (DESIGN §7a). It is never shown to a
	// client (a void command is "not found") and never final.
	StatusVoid Status = "void"
)

// Statuses lists every status in lifecycle order.
var Statuses = []Status{
	StatusPending, StatusQueued, StatusScheduled, StatusSent, StatusDelivered,
	StatusSucceeded, StatusFailed, StatusTimeout, StatusExpired,
	StatusCancelled, StatusRejected, StatusDead, StatusLost, StatusVoid,
}

// OneWayResult is the result of a one-way command (POST …?one_way=true):
// the device's PUBACK is its success, no answer is awaited (an answer the
// device sends anyway is kept as late and dropped).
const OneWayResult = `{"one_way":true,"delivered":true}`

// Owner is the part of the gateway that may set a status.
type Owner string

// The owners of transitions.
const (
	OwnerAPI    Owner = "apiserver"
	OwnerWorker Owner = "msgworker"
	OwnerPush   Owner = "pushserver"
)

// Transition is one legal change of status and the part that makes it.
type Transition struct {
	From, To Status
	By       Owner
}

// Transitions is the table of every legal status change. Anything not in
// it is refused by the scripts in package mailbox.
var Transitions = []Transition{
	{StatusPending, StatusQueued, OwnerAPI},
	{StatusQueued, StatusSent, OwnerWorker},
	// A command with a not_before waits in Redis until then.
	{StatusQueued, StatusScheduled, OwnerWorker},
	{StatusScheduled, StatusSent, OwnerWorker},
	{StatusScheduled, StatusCancelled, OwnerAPI},
	{StatusScheduled, StatusExpired, OwnerWorker},
	{StatusScheduled, StatusRejected, OwnerWorker},
	{StatusScheduled, StatusLost, OwnerWorker},
	{StatusQueued, StatusCancelled, OwnerAPI},
	{StatusQueued, StatusExpired, OwnerWorker},
	{StatusQueued, StatusRejected, OwnerWorker},
	{StatusQueued, StatusDead, OwnerWorker},
	{StatusSent, StatusDelivered, OwnerPush},
	{StatusPending, StatusVoid, OwnerAPI},
	{StatusSent, StatusSucceeded, OwnerPush},
	{StatusSent, StatusFailed, OwnerPush},
	// The device refused the command: an MQTT 5 PUBACK with a reason code
	// of 0x80 or more for its mailbox entry (mailbox.Store.Refuse).
	{StatusSent, StatusRejected, OwnerPush},
	{StatusSent, StatusCancelled, OwnerAPI},
	{StatusSent, StatusExpired, OwnerWorker},
	{StatusSent, StatusTimeout, OwnerWorker},
	{StatusSent, StatusDead, OwnerWorker},
	{StatusDelivered, StatusSucceeded, OwnerPush},
	{StatusDelivered, StatusFailed, OwnerPush},
	{StatusDelivered, StatusTimeout, OwnerWorker},
	{StatusDelivered, StatusDead, OwnerWorker},
	// A retry policy (retries=N, retry_on) takes the next attempt instead
	// of a final status: sent again (sent → sent is a new mailbox entry),
	// or, with a backoff (retry_backoff), waiting as scheduled. The worker
	// does it for a timeout or an expiry (and a full mailbox), the push
	// server for a device's error answer or its refusal (MQTT 5 PUBACK).
	{StatusDelivered, StatusSent, OwnerWorker},
	{StatusSent, StatusScheduled, OwnerWorker},
	{StatusDelivered, StatusScheduled, OwnerWorker},
	{StatusDelivered, StatusSent, OwnerPush},
	{StatusSent, StatusScheduled, OwnerPush},
	{StatusDelivered, StatusScheduled, OwnerPush},
	// The operator's replay of a dead letter (POST /v1/dead/{id}/replay,
	// mailbox.ReplayDead): the only way out of a final status; the client
	// then gets a second final result for the same id.
	{StatusDead, StatusQueued, OwnerAPI},
	// The client's retry (POST /v1/commands/{id}/retry, mailbox.Retry):
	// the same way out for a command that failed, timed out, expired or
	// was rejected; the client gets a second final result.
	{StatusFailed, StatusQueued, OwnerAPI},
	{StatusTimeout, StatusQueued, OwnerAPI},
	{StatusExpired, StatusQueued, OwnerAPI},
	{StatusRejected, StatusQueued, OwnerAPI},
	// A retry of a void id reserves it afresh (DESIGN §7a).
	{StatusVoid, StatusPending, OwnerAPI},
	// The claim's watchdog (a partition owner) ends a command whose record
	// is gone beyond rebuild (DESIGN §7a): a transition of the claim, the
	// client's ledger, since the record is no more.
	{StatusPending, StatusLost, OwnerWorker},
	{StatusQueued, StatusLost, OwnerWorker},
	{StatusSent, StatusLost, OwnerWorker},
	{StatusDelivered, StatusLost, OwnerWorker},
}

// Final reports whether s is a final status: the command has its result,
// and nothing changes it again, except an operator's replay of a dead
// command (dead → queued, the one transition out of a final status in
// Transitions).
func (s Status) Final() bool {
	switch s {
	case StatusSucceeded, StatusFailed, StatusTimeout, StatusExpired,
		StatusCancelled, StatusRejected, StatusDead, StatusLost:
		return true
	}
	return false
}

// Valid reports whether s is one of the statuses.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// ParseStatus returns the status named s.
func ParseStatus(s string) (Status, error) {
	if st := Status(s); st.Valid() {
		return st, nil
	}
	return "", fmt.Errorf("protocol: unknown status %q", s)
}

// CanTransition reports whether by may change a command from one status
// to another.
func CanTransition(from, to Status, by Owner) bool {
	for _, t := range Transitions {
		if t.From == from && t.To == to && t.By == by {
			return true
		}
	}
	return false
}

// Sources lists the statuses from which to is legal, in table order.
func Sources(to Status) []Status {
	var out []Status
	for _, t := range Transitions {
		if t.To == to && !slices.Contains(out, t.From) {
			out = append(out, t.From)
		}
	}
	return out
}

// ThingsBoard maps a status to ThingsBoard's persistent RPC state.
func (s Status) ThingsBoard() string {
	switch s {
	case StatusPending, StatusQueued, StatusScheduled:
		return "QUEUED"
	case StatusSent:
		return "SENT"
	case StatusDelivered:
		return "DELIVERED"
	case StatusSucceeded:
		return "SUCCESSFUL"
	case StatusTimeout:
		return "TIMEOUT"
	case StatusExpired:
		return "EXPIRED"
	case StatusFailed, StatusCancelled, StatusRejected, StatusDead, StatusLost:
		return "FAILED"
	}
	return ""
}

// ResultCode is the gateway error code carried by the client's result for
// a final status the gateway decided (0 for succeeded and failed, whose
// result comes from the device).
func (s Status) ResultCode() int {
	switch s {
	case StatusTimeout:
		return CodeTimeout
	case StatusExpired:
		return CodeExpired
	case StatusDead:
		return CodeDead
	case StatusCancelled:
		return CodeCancelled
	case StatusRejected:
		return CodeRejected
	case StatusLost:
		return CodeLost
	}
	return 0
}
