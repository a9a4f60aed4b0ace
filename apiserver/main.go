// Command apiserver is the gateway's HTTP API (DESIGN §3): the front door
// through which clients send commands to devices, read their status, and
// find the push server that owns an identity.
//
// # Intake
//
// POST /v1/devices/{device_id}/commands takes one JSON-RPC 2.0 request or
// a batch. Each command goes through three steps, and is answered 202 only
// after the last:
//
//  1. Reserve (client, id) as pending with a lease (mailbox.Store.Reserve),
//     atomically in Redis. The same id with the same body finds the
//     existing command (200, nothing published); with a different body it
//     is a conflict (409). A pending record whose lease ran out (the
//     apiserver that held it died) is retaken and published again; one
//     within its lease is waited for.
//  2. Publish the envelope to the commands exchange: persistent, mandatory,
//     with a publisher confirm (amqpx.Publisher). A nack, a return (no
//     queue took it), a confirm timeout or no connection is a 503 with
//     Retry-After, and the reservation is released.
//  3. Mark the record queued.
//
// # Order of checks
//
// The request log and metrics wrap everything. On the client API the
// bound on requests in flight comes first (GW_MAX_INFLIGHT: one more is a
// 503 "server overloaded" with Retry-After, at once). Authentication
// (HS256 token, role; verified tokens are remembered until they expire)
// runs before the per-client rate limit, and both before a handler reads
// the body: a request without a valid token is a 401 whatever its size.
// Then the device globs (403), the query, the body limit (413) and the
// JSON-RPC validation (400).
//
// # Choices the design left open
//
//   - A publish whose outcome is unknown (confirm timeout, channel lost
//     before the confirm) is a 503 like any failure, but its reservation
//     is not released: the message may be in the queue, so the record
//     stays pending until its lease ends (the worker accepts a pending
//     record; a retry after the lease publishes again). Definite failures
//     (not connected, blocked, nack, return) release it at once.
//   - If the publish was confirmed but marking the record queued fails
//     (Redis lost meanwhile), the answer is still 202: the command is
//     durable in RabbitMQ and the worker queues a pending record.
//   - A batch in which nothing was accepted answers 503 (with Retry-After)
//     if any request failed for an unavailable broker or Redis, else the
//     status of the first failed request; the body lists every entry.
//   - Commands are always sent as the token's subject (an operator's
//     ?client= on POST is a 400); ?client= serves reads and cancels.
//   - GET /v1/connect/{identity} for another identity with a non-operator
//     token is 403 (-32011).
//   - Cancelling a pending command (publish in progress) is 409 with
//     status pending.
//   - The rate limit counts requests: a batch takes one token.
//   - GET /v1/devices/{device_id}/commands pages at most 100 commands
//     (mailbox.Store.List's bound).
//
// # Running
//
// Configuration comes from flags and GW_* variables (DESIGN §9); see
// Config. GW_AUTH_SECRET is required. The process serves until SIGINT or
// SIGTERM, then stops accepting, lets in-flight requests finish within
// 10 s, and closes the publisher and Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/iotgw/gateway/internal/telemetry"
)

func main() {
	// The live heap is a few MB and every request allocates ~20 KB, so
	// with the default (100) the collector ran ten times a second under
	// load and took ~5% of the CPU; four times the live heap between
	// collections costs some tens of MB.
	telemetry.DefaultGCPercent(400)
	ctx, cancel := telemetry.SignalContext(context.Background())
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	cancel()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "apiserver:", err)
		os.Exit(1)
	}
}
