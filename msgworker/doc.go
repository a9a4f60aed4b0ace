// Msgworker drives every command from queued to its final state, apart
// from delivered (set by the push server on PUBACK) and cancelled (set by
// the apiserver). Any number of msgworkers compete for the same queues.
//
// Usage:
//
//	msgworker [flags]
//
// Every flag is also a GW_* environment variable of the same name
// (--amqp-url is GW_AMQP_URL); a flag wins over the variable, which wins
// over the default. Run with -h for the list.
//
// # What it does
//
//	queue / loop          handler                         outcome → ack
//	{ns}.commands.{q},    mailbox.Dispatch                sent, expired (deliver-by passed),
//	q = 0..GW_QUEUES-1                                    rejected (device mailbox full),
//	                                                      noop (cancelled, sent or beyond)
//	{ns}.commands.dead    mailbox.MarkDead, which acts    dead (pending or queued): the
//	                      only on a pending or queued     client gets -32003; noop when
//	                      command                         sent or beyond (its timers or
//	                                                      the device's answer end it)
//	timer loop            mailbox.FireTimersIn on the     expired, timeout, rearmed
//	                      owned partitions that are due
//
// # Timers: only the partitions that are due
//
// A worker owns a share of the partitions (DESIGN §7) and fires their
// timers and relays their leftover outbox entries. It does not poll
// every owned partition each tick: it keeps a heap of when each has work
// next (due.go) and polls, every --timer-interval, only the due set
// (mailbox.Store.TakeReported: the partitions whose work a step of any
// process made due earlier) and the partitions the heap says are due;
// every Config.TimerSweep (30 s) it polls them all: that finds the work
// due later than steps report (mailbox.ReportHorizon, 30 s) before it is
// due, and is the backstop for a report lost with its process.
//
// Measured (TestIdleOwnerCallsRedisLittle, an idle worker owning all 256
// partitions at the default 200 ms interval, counting every command its
// Redis client sends): 2,565 Redis commands a second before the heap
// (two reads per owned partition and tick), 10 to 11 a second after, plus 512
// commands (one pipeline) per full sweep: about 28 a second in all,
// whatever the partitions a worker owns between sweeps.
//
// A worker never sees a device's answer: the push server that receives
// it completes the command in Redis (mailbox.Store.Complete, DESIGN §5),
// so there is no results queue to consume. The worker's timers still end
// a command whose answer never comes (timeout, -32001), and its partition
// owners relay the leftover outbox entries of completed commands.
//
// Every worker consumes every command queue, one consumer each; they
// share GW_PREFETCH and GW_CONCURRENCY (Config.Prefetch), and count as
// queue="commands" in the metrics. A worker started with another
// GW_QUEUES or GW_PARTITIONS than the namespace's stops at once: the
// namespace's fence refuses it (amqpx.ErrCounts). The exception is a
// resize of GW_QUEUES (resize.go; README "Resizing GW_QUEUES"): a worker
// with GW_QUEUES_FROM set consumes the old and the new queues, and once
// every worker does, one of them switches the namespace to the new count.
//
// A delivery is acknowledged only after the script that applied it has
// returned, that is, after its effect is in Redis (durable as far as
// Redis is: run it with appendfsync always; the worker warns at start when
// it is not). Every transition is a compare-and-set in one script of
// package mailbox, so a redelivery (after a crash between the script and
// the ack, or from a competing worker) changes nothing: a command enters a
// device's mailbox at most once, and every command gets exactly one final
// result.
//
// # Group commands
//
// A command queue also carries group envelopes (protocol.KindGroup, issue
// 14): the apiserver publishes one per group command. The worker that
// takes it creates the children (mailbox.RunGroup: claim, reserve and
// dispatch each, at the group's rate, stopping to create the rest as
// cancelled once the group is aborted or cancelled) and acks the
// delivery once every child exists; a redelivery resumes at the group's
// release cursor. The partition owner fires a stopped group's timer and
// cancels its children not yet on the wire.
//
// # Failures
//
//   - A body that is not a command envelope is poison (an envelope of
//     the former kind "result" included): it is rejected and goes to the
//     dead letters at once.
//   - Redis unavailable (network error, timeout, LOADING, READONLY…) is
//     transient, not poison: the handler returns amqpx.ErrTransient, the
//     consumer holds the delivery unacked (its delivery count does not
//     grow), stops taking new ones and retries with backoff. The timer
//     loop backs off the same way.
//   - Any other error nacks with requeue; after protocol.DeliveryLimit
//     attempts RabbitMQ dead-letters the message. A panic is recovered
//     and counts as such an error.
//   - A dead command is marked dead with the reason from the
//     x-first-death-reason header. When its body does not decode, its
//     client and msg_id fields are read leniently; a dead letter naming no
//     command is logged and dropped. Only a pending or queued command is
//     marked dead; one that is sent or delivered already (its Dispatch
//     succeeded, only the acks failed) is left alone: it ends normally,
//     by the device's answer or its timers.
//   - The dead-letter queue has no delivery limit: a dead letter whose
//     handling keeps failing (not transiently) is dropped with an error
//     log after protocol.DeliveryLimit retries instead of looping.
//   - RabbitMQ connection loss: the consumers reconnect with backoff and
//     redeclare the topology (amqpx); unacked deliveries return to the
//     queue and are handled again, harmlessly.
//
// On SIGINT or SIGTERM the worker stops taking deliveries, lets those in
// flight finish within 10 s, then closes its connections. A second signal
// exits at once.
//
// # Throughput
//
// The worker benchmark (go run ./bench --sections worker) measures one
// worker's messages/s and the CPU per message of it, RabbitMQ and Redis.
// What keeps the worker's own CPU per message low: handler goroutines
// that live as long as the consumer (amqpx), acks coalesced into one
// basic.ack with multiple=true per run of finished deliveries (amqpx;
// nacks and rejects still go one by one), concurrent mailbox scripts
// batched into one Redis call (mailbox), envelopes and responses decoded
// without reflection when they have the shape the gateway writes
// (protocol), and, unless GOGC is set, a GC target of 400 instead of Go's
// 100 (the live heap is about a megabyte, so the heap stays under 20 MB;
// see gcPercent).
//
// # Metrics
//
// Served at --metrics-addr (default 127.0.0.1:0, the bound address is
// logged): gw_worker_handled_total{queue,outcome},
// gw_worker_handler_duration_seconds{queue}, gw_worker_timers_fired_total,
// gw_worker_dead_letters_total{queue}, gw_worker_reconnects_total,
// gw_groups_runs_total (group commands whose children this worker began
// to create, issue 14), gw_final_conflicts_total (results that found a
// different final in the client's claim: not delivered),
// gw_commands_lost_total (claims its watchdog ended -32006 "lost by the
// gateway"), gw_redis_writes_lost_total (see below), and the Go and
// process collectors.
//
// # The write watch
//
// Every 250 ms the worker increments a counter in one partition of each
// Redis primary ({ns:p}:watch, followed by the durability barrier when
// GW_REDIS_WAIT_REPLICAS is set) and remembers the values Redis
// acknowledged (mailbox.WriteWatch). A counter that comes back lower
// means Redis lost writes it had acknowledged: a host crash with
// appendfsync everysec, a failover to a replica that was behind. The
// worker then logs a WARN "Redis lost writes it had acknowledged" with
// the time the lost span began (lost_since) and counts it in
// gw_redis_writes_lost_total: the commands accepted, answered or finished
// since then may be gone (GET 404), end lost, or reach their client twice
// with different outcomes (DESIGN §7a, "Relaxed durability says so").
package main
