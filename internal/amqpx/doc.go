// Package amqpx is the AMQP plumbing shared by apiserver, pushserver and
// msgworker: it declares the topology of a namespace, publishes with
// publisher confirms, and consumes with manual acks, reconnecting after
// failures.
//
// # Topology
//
// [Declare] declares what [protocol.Topology] names: durable direct
// exchanges, durable quorum queues with the exact arguments of
// [protocol.Topology.Bindings] (delivery limit, dead-letter exchange,
// at-least-once dead-lettering, reject-publish overflow; the GW_QUEUES
// command queues also x-queue-leader-locator balanced) and their
// bindings. Every process calls it identically on every (re)connect, so the
// declarations are idempotent and never fail with PRECONDITION_FAILED.
//
// The one declaration meant to fail is the fence (DESIGN §7a). Before any
// queue, Declare declares {ns}.fence, a quorum queue that carries no
// messages and whose x-dead-letter-routing-key is
// "queues=Q,partitions=P" ([protocol.FenceValue]). RabbitMQ compares that
// argument on every declaration, so a process started with another
// GW_QUEUES or GW_PARTITIONS than the namespace's first one gets
// PRECONDITION_FAILED there and creates nothing; Declare turns it into an
// [*Error] wrapping [ErrCounts] that names both pairs of counts.
// [NewPublisher] returns it and [Consumer.Run] stops with it, so the
// services refuse to start. (RabbitMQ 3.10 accepts arguments of one's own
// naming, such as x-gw-queues, but never compares them: they could not
// fence anything. The fence repeats the counts in x-gw-queues and
// x-gw-partitions only for the reader of the management UI.)
//
// # Publishing
//
// A [Publisher] owns one connection and a small pool of confirm-mode
// channels. Every message is persistent and published mandatory, and every
// publish waits for its own publisher confirm. [Publisher.Publish] returns
// nil only when the broker acked the message and did not return it (a
// basic.return means no queue took it): this is what lets the apiserver
// answer 202 only for durable commands (DESIGN.md §8, guarantee 3). Any
// other outcome is an [*Error] wrapping one of [ErrNotConnected],
// [ErrBlocked], [ErrNacked], [ErrReturned], [ErrConfirmTimeout],
// [ErrChannelClosed] or [ErrClosed], or ctx's error; callers answer 503.
//
// Publishing is concurrent: a publish holds its channel's lock only to take
// the next sequence number and write the frames, then waits for the confirm
// without any lock, so confirms of many publishes overlap. It waits on the
// library's deferred confirmation, resolved by the library's reader; a
// message carries its sequence number in the x-amqpx-seq header so a return
// is matched to its publish, and because the library hands over a message's
// basic.return before its basic.ack, a publish that takes the waiting
// returns after its ack came gets the order right. The frames of concurrent
// publishes are coalesced into as few socket writes as there is time for.
//
// Publish fails fast: when the connection is down (the Publisher
// reconnects with backoff in the background) or blocked by a memory or
// disk alarm (connection.blocked), it returns at once instead of waiting.
// It never waits longer than Options.ConfirmTimeout for a confirm.
//
// A message whose confirm timed out, or whose channel closed before the
// confirm, may still have been enqueued: the outcome is unknown, and the
// caller must treat it as not accepted (a retry with the same message ID is
// harmless because consumers deduplicate by ID).
//
// # Consuming
//
// A [Consumer] consumes one queue with manual acks and a bounded prefetch,
// calling a [Handler] concurrently (a msgworker runs one for each command
// queue). The handler's result decides the
// acknowledgement:
//
//	handler returns              consumer does
//	nil                          ack
//	error wrapping ErrReject     reject, requeue=false: dead-lettered at once
//	error wrapping ErrTransient  hold it unacked, pause dispatching, call the
//	                             handler again after a backoff (see below)
//	any other error              nack, requeue=true (counts toward
//	                             x-delivery-limit; a poison message is
//	                             dead-lettered after DeliveryLimit attempts)
//
// # Quorum queues and the delivery limit
//
// Measured on RabbitMQ 3.10.8 (TestBrokerCountsEveryReturn keeps it
// checked): a quorum queue adds one to a message's x-delivery-count every
// time a delivered message goes back to the queue, whatever the way:
// basic.nack or basic.reject with requeue, closing the channel, or closing
// the connection with the message unacked. basic.cancel does not return
// anything: the cancelled consumer keeps its unacked messages until it
// settles them. With x-delivery-limit 5 a message is delivered at most six
// times (counts 0 to 5); the next return dead-letters it. (From RabbitMQ
// 4.3 a basic.nack with requeue no longer counts; 3.10 makes no such
// distinction.)
//
// So neither requeueing nor closing the channel lets a consumer sit out an
// outage of a dependency without burning the limit: a Redis restart of a
// few seconds would dead-letter every command in flight. The only way that
// does not count is to keep the delivery unacked. That is what
// [ErrTransient] does: the Consumer holds the delivery on its open channel,
// pauses (takes no new deliveries from its prefetch buffer), and calls the
// handler again for the same delivery after a backoff, until the handler
// succeeds or fails for good. The hold is bounded by
// ConsumerOptions.MaxTransientHold (default 10 minutes, well under the
// broker's consumer_timeout of 30 minutes), after which the delivery is
// requeued, counting once. At shutdown the Consumer first cancels itself
// and only then requeues held deliveries, so each counts once and is not
// delivered back to it.
//
// # Pitfalls
//
//   - Notify* channels of amqp091-go must be drained: on a full one the
//     library stalls its reader for up to 5 s and then drops the
//     notification (a dropped basic.return would turn an unroutable publish
//     into a success). This package reads each one in its own goroutine
//     through a buffered channel.
//   - A consumer must ack on the channel that delivered the message; after
//     a reconnect, deliveries of the old channel cannot be acked (they are
//     already back in the queue).
package amqpx
