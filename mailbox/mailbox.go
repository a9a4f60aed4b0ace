// Package mailbox holds all Redis state of delivery: the command records
// (status machine and idempotency), one mailbox per identity (a Redis
// Stream), the timer set, the live-session registry, the node wake
// signals, and the Lua scripts that change several of them at once.
//
// # Design
//
// Every status transition of a command is a compare-and-set inside one
// Lua script, so a transition and its side effects are atomic: a command
// enters a device's mailbox at most once (Dispatch), leaves it at the
// first PUBACK (Ack) or when the command becomes final, and every script
// that sets a final status also removes the command's device-mailbox
// entry, cancels its timers, appends exactly one result to the client's
// mailbox and sets the record's expiry to Options.Retention.
//
// Any script that appends to a mailbox signals the push servers that
// should stream it ("store, then forward", DESIGN §5): the node named by
// the identity's live session, whether or not that node's ring key is
// alive (a heartbeat gap must not hide a connected identity), and the
// ring owner the caller passed, when that is another node. A signal is
// SADD NodePending(node) plus PUBLISH NodeWake(node); the pub/sub message
// is the fast path, the pending set (TakePending, Repend) is what a
// node's sweep reads when a message was lost.
//
// # Timers
//
// Every command that is not final has exactly one timer, so none can be
// forgotten (a lane timer, due at once, may come on top for a command
// waiting in an ordered lane whose head just ended: lane.go). The deliver-by timer is armed by Reserve, at DeliverBy but
// not before the lease ends, as the watchdog of a pending or queued
// command; Dispatch moves it to DeliverBy exactly, as the deadline of the
// sent command; Ack replaces it by the answer-within timer, and so does a
// deliver-by timer that finds the command on the wire; ReplayDead arms a
// new one; a final transition removes them. So a command whose AMQP
// message is lost still ends (expired), as does a pending command whose
// publish outcome never came back (past its lease). A message that merely
// arrives late is expired by its own Dispatch.
//
// # Retry policies
//
// A command with Retries > 0 is tried at most Retries + 1 times. Wherever
// an attempt ends with an outcome its RetryOn names (timeout: the answer
// timer; expired: the deliver-by timer or Dispatch; device_error:
// Complete; rejected: Refuse or a full mailbox), the step starts the next
// attempt instead of a final status, in the same script (lua/lib.lua,
// again): the attempt's mailbox entry and timers go, Tries is counted,
// and the command's device request goes into the mailbox again with a
// fresh expires_in window and the id "{client}:{id}#{n}"
// (protocol.DeviceAttemptID), or waits out its Backoff as scheduled.
// Complete and Refuse then wake the device's push server themselves
// (OutcomeRetried). The final result carries the attempts
// (protocol/doc.go, "Retry policies").
//
// # Who calls what
//
//   - apiserver: Reserve, then publish with confirm, then MarkQueued (or
//     Release when the publish definitely failed); Get, List, Cancel,
//     CancelAll, DeadList, ReplayDead, Totals, StatusCounts, Lanes (the
//     device view), Poll, SeenPolling and AckMany (devices over HTTP).
//   - msgworker: Dispatch for each command delivery, Complete for each
//     device response (and for dead results), FireTimers in a loop,
//     MarkDead for dead command letters.
//   - pushserver: SetSessionConn/ClearSessionConn (or SetSession/
//     ClearSession), Wake, TakePending and Repend to learn which
//     mailboxes to stream, Fetch to read them, Unsend for fetched entries
//     it did not publish, and Ack or AckMany on PUBACK.
//
// # How scripts run
//
// On Redis 7 and later the scripts are the functions of one library,
// loaded once and called with FCALL; on older servers they run with
// EVALSHA (functions.go). Concurrent calls of one script are coalesced
// into one batched call, each item keeping the semantics of its own call
// (batch.go: Options.BatchInFlight and BatchMax); on Cluster a batch is
// the calls of the partitions one primary serves, one call per partition,
// sent in one pipeline. A step that made its
// partition's work due earlier than anything the partition held reports
// it in its reply, which the Store unwraps and adds to the due set that
// the partitions' owners read (due.go).
//
// # What a round trip costs in Redis
//
// BenchmarkRoundTripCost (cost_test.go) runs every step of a round trip
// as a phase over thousands of commands on a Redis of its own and reports
// per command the steps (FCALLs), the calls they make inside (inner), their
// server time and redis-server's CPU. Before and after issue 11's cuts,
// per command, in one run (3 × 5,000 round trips each, alternating, nice
// −10, load average 14-15 from other work on the 2 CPUs, so µs are ±10%;
// calls are exact); the steps of one command at a time, but for the last
// row:
//
//	step (Go side)                    inner calls   step µs    CPU µs
//	claim + reserve (Reserve)         14.1 → 11.1    69 → 58   101 → 98
//	mark_queued                       10.1 → 10.1    34 → 30    49 → 49
//	dispatch (+ wake-up)              13.1 → 11.1    64 → 64   102 → 104
//	device fetch (XRANGE + stamp)      5.0 → 3.0     18 → 17    49 → 54
//	device ack                         8.1 → 8.1     47 → 34    63 → 51
//	complete + relay (+ XDEL, wake)   23.1 → 20.1   126 → 116  210 → 196
//	client fetch (XRANGE + stamp)      1.0 → 0       8 → 0     36 → 14
//	client ack                         5.0 → 5.0     21 → 17    35 → 32
//	round trip, one at a time         79.2 → 68.3   387 → 337  645 → 597
//	round trip, 32 at once (batched)  72.2 → 61.8   369 → 309  420 → 394
//
// The cuts: arm reads the timer set's earliest only for a timer due within
// ReportHorizon; reserve deletes only a void record; stamp writes once;
// finalize takes a sent or delivered command out of no queued set and
// reports its outbox entry without an XLEN; the trace goes into the
// record with the step's other fields; mark_queued reads nine fields, not
// the record; a fetch of results far from expiry needs no step; the
// relay's wake-up and outbox XDEL share one pipeline. What is left is
// mostly per call and per round trip, not Lua: at one round trip at a
// time about 40% of redis-server's CPU is outside the steps (14 network
// round trips per command: reads, writes, the AOF write). A profile of
// redis-server (perf, 32 at once, before the cuts) splits its CPU into the
// kernel 23% (network, AOF, scheduling), the Lua VM 19%, Redis's commands
// and key lookups 32% (dictFind alone 7%), malloc 9%, libc 7% and the
// redis.call glue 2%. In a loop on a warm key an inner call costs 0.5-1.5
// µs (HGETALL of a 20-field record with its table 5-9 µs); on the cold
// keys of a real round trip about 4 µs.
//
// Since that table the ack step reads no entry its record vouches for
// (sent or delivered through it, before deliver-by) nor one Fetch read
// that carries no command: device ack 8.1 → 7.1 and client ack 5.0 → 4.0
// inner calls, a round trip 68.4 → 66.4 one at a time and 62.2 → 60.2
// batched. The benchmark's inner µs column (the inner calls' own
// commandstats time) shows where the rest goes: the inner calls are about
// 30% of the steps' time (210 of 713 µs a round trip one at a time, 142 of
// 470 batched, load 20); the other 70% is per step and per call, not per
// command run: the FCALL itself (an empty function with a step's 11 keys
// and 15 arguments costs about twice one without: Redis builds KEYS and
// ARGV), the Lua of the step (tables of the record's fields, string
// building) and each redis.call's glue (its argument objects, checks and
// the conversion of its reply). So what is left to cut is steps (FCALLs)
// and network round trips per command rather than inner calls.
//
// # Errors
//
// Callers test errors with errors.Is against ErrNotFound, ErrConflict,
// ErrFull and ErrState. Any other error means Redis is unavailable (or
// answered something unexpected); it wraps the go-redis error.
//
// A corrupt record (one missing a field a transition reads) is never
// changed, not even in part: every script checks the record before its
// first write. The msgworker-side operations then answer OutcomeNoop and
// log a warning (a retry could not help); the others return an error.
//
// # Redis layout
//
// Keys come from protocol.Keys. A command record is a hash at
// Keys.Command(client, idKey) with the fields listed in record.go. A
// mailbox entry has the fields t (topic), p (payload), x (expiry, unix ms)
// and, for a command entry, c (client) and k (message ID key). Timer set
// members are "d|{client}|{key}" (deliver-by) and "a|{client}|{key}"
// (answer-within), scored by due time in unix ms. The per-(client,
// device) index Keys.ClientCommands is scored by creation (unix ms);
// members older than Retention + MaxLifetime + Lease are pruned when a
// command is queued. One key is the package's own: Keys.Session(identity)
// + ":conn" holds the connection token of the live session
// (SetSessionConn); identities cannot contain ':', so it never collides.
package mailbox

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Options configure a Store. The zero value of every field means its
// default.
type Options struct {
	// Partitions is the number of partitions of the state (GW_PARTITIONS,
	// a power of two). Default protocol.DefaultPartitions.
	Partitions int
	// Retention is how long final records and their result entries are
	// kept. Default 24h.
	Retention time.Duration
	// MailboxCap is the number of entries a mailbox holds at most.
	// Default 10000.
	MailboxCap int
	// Lease is how long a pending reservation is held (twice the confirm
	// timeout). Default 10s.
	Lease time.Duration
	// MaxLifetime is the longest Delay + ExpiresIn + Timeout of a command
	// (default 38 days: a not_before of up to 30 days, then up to 7 days
	// to deliver and 1 to answer).
	// Default 8 days (the apiserver's maxima: 7 days and 24 hours). It
	// bounds the per-(client, device) listing: members created more than
	// Retention + MaxLifetime + Lease ago are pruned. CancelAll looks only
	// at commands created within MaxLifetime + Lease.
	MaxLifetime time.Duration
	// AnswerGrace (GW_ANSWER_GRACE, DESIGN §7a) is how long after an
	// answer deadline the answer timer waits, so that an answer read by a
	// push server in time is recorded even when Redis could not take it
	// at once. Default 10s.
	AnswerGrace time.Duration
	// WaitReplicas (GW_REDIS_WAIT_REPLICAS) is the durability barrier:
	// when above 0, every step is followed, on the same connection, by a
	// write to the partition's barrier key and WAIT WaitReplicas
	// WaitTimeout; fewer replicas make the step fail with ErrNotDurable.
	// Default 0: no barrier.
	WaitReplicas int
	// WaitTimeout bounds each WAIT. Default 1s.
	WaitTimeout time.Duration
	// BatchInFlight is how many calls of one step run at once on one
	// server (on Cluster, on each primary) before further concurrent
	// calls wait and are coalesced into one batch (see batch.go).
	// Default 4. Negative: no batching.
	BatchInFlight int
	// BatchMax is the most calls one batched call carries. Default 64.
	BatchMax int
	// OwnerOf, when set, names the push server that owns an identity (its
	// ring owner). After a step that appends to a mailbox the Store wakes
	// the node of the identity's live session and, when that is another
	// node, OwnerOf(identity). Default: only live sessions are woken.
	OwnerOf func(identity string) string
	// Now is a clock for tests. Unset (production), the steps take their
	// time from Redis's TIME: one clock per partition, whatever the
	// processes' clocks say (DESIGN §7a). Set, every step runs at Now()
	// instead, to the millisecond, so tests can step over deadlines.
	Now func() time.Time
	// Logger receives diagnostics. Default discards.
	Logger *slog.Logger

	redisClock bool // Now was unset: the steps read Redis's TIME
}

func (o *Options) ensureDefaults() {
	if o.Partitions <= 0 {
		o.Partitions = protocol.DefaultPartitions
	}
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.MailboxCap <= 0 {
		o.MailboxCap = 10000
	}
	if o.Lease <= 0 {
		o.Lease = 10 * time.Second
	}
	if o.MaxLifetime <= 0 {
		o.MaxLifetime = 38 * 24 * time.Hour
	}
	if o.AnswerGrace <= 0 {
		o.AnswerGrace = 10 * time.Second
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = time.Second
	}
	if o.BatchInFlight == 0 {
		o.BatchInFlight = 4
	}
	if o.BatchMax <= 0 {
		o.BatchMax = 64
	}
	if o.Now == nil {
		o.redisClock = true
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Store is the Redis state of delivery of one namespace. It is safe for
// concurrent use.
type Store struct {
	rdb     redis.UniversalClient
	keys    protocol.Keys
	opts    Options
	log     *slog.Logger
	cluster bool

	batchMu  sync.Mutex
	batchers map[batchKey]*batcher

	waker waker // group-commits wake-ups (wake.go)

	loadMu sync.Mutex
	loads  atomic.Int64 // libraries loaded so far

	finalConflicts atomic.Int64
	lost           atomic.Int64
	missing        atomic.Int64
	orphans        atomic.Int64

	dueReports, dueLost atomic.Int64 // next-due reports sent, failed (due.go)
	dueMu               sync.Mutex
	duePending          map[int]int64 // reports not sent yet: partition → due (unix ms)
	dueFlushing         bool          // reports are pending: a flush is scheduled (dueTimer) or runs
	dueTimer            *time.Timer   // the scheduled flush, nil once it runs
	dueAt               time.Time     // when dueTimer fires
}

// New returns the Store of namespace ns on rdb: a *redis.Client (one
// server or Sentinel) or a *redis.ClusterClient.
func New(rdb redis.UniversalClient, ns string, opts Options) *Store {
	opts.ensureDefaults()
	_, cluster := rdb.(*redis.ClusterClient)
	return &Store{rdb: rdb, keys: protocol.NewKeys(ns), opts: opts, log: opts.Logger,
		cluster: cluster, batchers: map[batchKey]*batcher{}}
}

// Partitions is the partition count of the store.
func (s *Store) Partitions() int { return s.opts.Partitions }

// PartitionOf is the partition of identity.
func (s *Store) PartitionOf(identity string) int {
	return protocol.Partition(identity, s.opts.Partitions)
}

// part is the key builder of identity's partition.
func (s *Store) part(identity string) protocol.PartKeys {
	return s.keys.Part(s.PartitionOf(identity))
}

func (s *Store) now() time.Time { return s.opts.Now() }

// clockMs is the time the steps run at: 0 tells them to read Redis's TIME,
// anything else is the test clock (Options.Now) in unix milliseconds.
func (s *Store) clockMs() int64 {
	if s.opts.redisClock {
		return 0
	}
	return s.opts.Now().UnixMilli()
}

// Keys returns the key builder of the store's namespace.
func (s *Store) Keys() protocol.Keys { return s.keys }

// Errors returned by the Store. Wrapped errors (ErrState carries the
// status) are tested with errors.Is.
var (
	ErrNotFound = errors.New("mailbox: command not found")
	ErrConflict = errors.New("mailbox: same id with a different body")
	// ErrClaimed: Reserve made the id's claim but could not reserve the
	// record. The outcome is not known to the caller: a retry with the
	// same id completes the reservation, and without one the claim's
	// watchdog ends the command (DESIGN §7a).
	ErrClaimed = errors.New("mailbox: id claimed, record not reserved")
	// ErrBadCursor: a page cursor that no listing returned.
	ErrBadCursor = errors.New("mailbox: not a cursor of this listing")
	ErrFull      = errors.New("mailbox: mailbox full")
	ErrState     = errors.New("mailbox: command is not in a state that allows this")
	// ErrNodeAlive: ForgetSessions of a node that is a live ring member.
	ErrNodeAlive = errors.New("mailbox: the node is a live ring member")
)

// Backoff is the wait before each retry of a command (retries=N with
// retry_backoff): the first waits Initial, each next one Multiplier times
// longer, never longer than Max.
type Backoff struct {
	Initial    time.Duration
	Multiplier float64
	Max        time.Duration
}

// Wait is the wait before retry n (1 for the first).
func (b Backoff) Wait(n int) time.Duration {
	if b.Initial <= 0 {
		return 0
	}
	w := float64(b.Initial)
	for i := 1; i < n && w < float64(b.Max); i++ {
		w *= b.Multiplier
	}
	return min(time.Duration(w), b.Max)
}

// Command is one command record.
type Command struct {
	Client, Device string
	// ID is the client's ID as written (the record keeps Raw()).
	ID          protocol.ID
	Method      string
	Params      json.RawMessage
	Fingerprint string // protocol.Fingerprint(...)
	Status      protocol.Status
	Timeout     time.Duration // answer within this after delivery
	ExpiresIn   time.Duration // deliver within this after acceptance (after NotBefore, when set)
	// Delay, given to Reserve, makes the command wait that long after
	// acceptance: NotBefore is then the partition's clock plus Delay, and
	// DeliverBy counts ExpiresIn from it (a scheduled command, status
	// scheduled once a worker took it from its queue).
	Delay     time.Duration
	NotBefore time.Time
	// Retries is how many times a command is tried again (its retry
	// policy: at most Retries + 1 attempts) when an attempt ends with an
	// outcome named in RetryOn, each with a fresh expires_in window and
	// its own device-facing id (protocol.DeviceAttemptID); Tries counts
	// those done, so the current attempt is Tries + 1 (Attempt).
	Retries, Tries int
	// RetryOn, with Retries, names the outcomes an attempt may end with
	// and be retried: protocol.ParseRetryOn's form ("" given to Reserve:
	// protocol.DefaultRetryOn, timeout).
	RetryOn string
	// RetriedOn is the outcome that ended the previous attempt ("" before
	// the first retry).
	RetriedOn string
	// Lane, given to Reserve, puts the command into an ordered lane of
	// its device (protocol.ParseLane): the commands of one lane go on the
	// wire one at a time, in acceptance order, each only once the one
	// before is final. LaneWait is set while the command is queued behind
	// its lane's head.
	Lane     string
	LaneWait bool
	// Backoff, with Retries, is the wait before each retry: try n waits
	// min(Initial × Multiplier^(n−1), Max), status scheduled meanwhile.
	// Zero: a retry is sent at once.
	Backoff Backoff
	// Group is the key of the group command this command is a child of
	// ("" for a command of its own): the relay of its final result
	// counts it in the group's record (group.go).
	Group string
	// LaneMode "puback" (protocol.LaneModePUBACK) lets the lane's next
	// command go on the wire once this one is delivered (its PUBACK, or
	// the ack of an HTTP poll) instead of once it is final ("").
	LaneMode string

	// Times of the transitions; zero means not yet.
	CreatedAt, QueuedAt, SendingAt, SentAt, DeliveredAt, FinishedAt time.Time
	DeliverBy                                                       time.Time // CreatedAt + ExpiresIn

	// Attempts counts PUBLISHes to the device (incremented by Fetch),
	// redeliveries included; the attempts of a retry policy are Attempt.
	Attempts int
	// Response is the JSON-RPC response the client gets once the command
	// is final, with the client's own id: the device's result or error,
	// or the gateway's error (-32001..-32005, data.source "gateway").
	Response json.RawMessage
	// Late is a device answer that arrived after the command was final
	// (recorded, then dropped).
	Late json.RawMessage
	// Reason says why the command is dead, rejected, expired, timed out or
	// cancelled (free text).
	Reason string
	// Replays counts operator replays from the dead letters: the
	// command's generation.
	Replays int
	// ResultDropped is set when the client's mailbox was full at the final
	// transition: the result was not appended (it stays readable here).
	ResultDropped bool

	// LeaseToken and LeaseUntil describe a pending reservation. The token
	// is only returned to the caller that holds the lease (Reserved or
	// Retake); Get and Exists leave it empty.
	LeaseToken string
	LeaseUntil time.Time
}

// Attempt is the number of the command's current attempt under its retry
// policy, or of its last one once final: Tries + 1.
func (c *Command) Attempt() int { return c.Tries + 1 }

// ReserveOutcome says what Reserve did.
type ReserveOutcome int

// The outcomes of Reserve.
const (
	// Reserved: a new pending record with a lease; the caller publishes,
	// then calls MarkQueued, or Release if the publish failed.
	Reserved ReserveOutcome = iota
	// Retake: an earlier pending record with the same fingerprint had
	// run out of lease; the caller now holds a fresh lease and publishes
	// again.
	Retake
	// Exists: the same fingerprint, not pending or pending within someone
	// else's lease. The existing command is returned: the caller returns
	// it, or, when it is still pending, polls Get for the outcome.
	Exists
)

// String names the outcome.
func (o ReserveOutcome) String() string {
	switch o {
	case Reserved:
		return "reserved"
	case Retake:
		return "retake"
	case Exists:
		return "exists"
	}
	return "unknown"
}

// Outcome is what a msgworker-side operation did to a command.
type Outcome string

// The outcomes of Dispatch, Complete, FireTimers, MarkDead and Refuse.
const (
	OutcomeNoop      Outcome = "noop"      // nothing changed
	OutcomeSent      Outcome = "sent"      // queued → sent, in the device's mailbox
	OutcomeScheduled Outcome = "scheduled" // queued → scheduled: waits in Redis for its NotBefore
	OutcomeLaneWait  Outcome = "lane_wait" // queued, waits in Redis until it is its lane's head
	OutcomeExpired   Outcome = "expired"   // deliver-by passed
	OutcomeRejected  Outcome = "rejected"  // the device's mailbox was full (Dispatch), or the device refused it (Refuse)
	OutcomeSucceeded Outcome = "succeeded" // the device answered with a result
	OutcomeFailed    Outcome = "failed"    // the device answered with an error
	OutcomeLate      Outcome = "late"      // an answer after the command was final: recorded, dropped
	OutcomeDuplicate Outcome = "duplicate" // the answer that made the command final, again (a redelivery): nothing changed
	OutcomeTimeout   Outcome = "timeout"   // no answer within the timeout
	OutcomeDead      Outcome = "dead"      // dead-lettered
	// Complete's answers that change nothing, by why (the push server
	// counts them by reason):
	OutcomeUnknown     Outcome = "unknown"      // no command with this id waits: never accepted, or gone
	OutcomeOtherDevice Outcome = "other_device" // the command is another device's
	OutcomeNotSent     Outcome = "not_sent"     // the command was not sent yet (pending or queued)
	// A retry policy (Command.Retries) took the next attempt instead of
	// ending the command: sent again at once (OutcomeRetried), waiting out
	// its backoff as scheduled, or waiting where it was (queued: its AMQP
	// message or its lane's turn sends it) with a fresh window.
	OutcomeRetried        Outcome = "retried"
	OutcomeRetryScheduled Outcome = "retry_scheduled"
	OutcomeRetryWaits     Outcome = "retry_waits"
	OutcomeRearmed        Outcome = "rearmed" // a deliver-by timer that could not decide yet (on the wire: waits one timeout; pending within its lease) was re-armed
)

// Entry is one message of a mailbox.
type Entry struct {
	ID      string // stream entry ID
	Topic   string // MQTT topic to publish on
	Payload []byte // bytes to publish
	Expires time.Time
	// Client and MsgKey name the command a command entry carries; both are
	// "" for other entries (results).
	Client, MsgKey string
	// TraceParent is the W3C trace context the entry carries (the worker's
	// dispatch span for a command, the relay's span for a result), "" when
	// none: the push server's span of the send continues it.
	TraceParent string
	// read: the entry as Fetch read it from its mailbox, so Client and
	// MsgKey are what it carries and the ack step need not read it again.
	read bool
}

// Totals are the monitoring totals of a namespace.
type Totals struct {
	Mailboxes int64 // non-empty mailboxes
	Entries   int64 // entries in all mailboxes
	Timers    int64 // armed timers
	Dead      int64 // dead-lettered commands (replays not yet dispatched included)
	// Outbox lists the partitions whose outbox holds results on their way
	// to the clients' partitions, by partition; empty outboxes are left
	// out. An entry older than a few seconds means relays are failing.
	Outbox []PartitionOutbox
	// Queued lists the partitions that have queued commands (accepted,
	// in a command queue, not yet taken by a worker), by partition; the
	// others are left out. Partition p's commands are in command queue
	// p mod GW_QUEUES.
	Queued []PartitionQueued
}

// PartitionQueued is the queued commands of one partition: how many, and
// how long ago the oldest was accepted (a replayed one: replayed).
type PartitionQueued struct {
	Partition int
	Commands  int64
	Oldest    time.Duration
}

// PartitionOutbox is the outbox of one partition: its length and the age
// of its oldest entry.
type PartitionOutbox struct {
	Partition int
	Entries   int64
	Oldest    time.Duration
}
