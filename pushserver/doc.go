// Command pushserver is the gateway's MQTT side (DESIGN §5): an MQTT
// 3.1.1 and 5 broker (mochi-mqtt, embedded) that streams each connected
// identity's mailbox to it and forwards device responses to RabbitMQ.
//
// # What a connection goes through
//
//	step            rule                                           refusal
//	CONNECT         username = identity, password = HS256 token    0x86 (3.1.1: 0x04)
//	                whose sub is the identity
//	                client ID = identity                           0x85 (0x02)
//	                no will message                                0x87 (0x05)
//	                this node owns the identity (ring, with grace) 0x9C + server reference (0x03)
//	                fewer than max-clients connected               0x89 (0x03)
//	                at most 16 KiB (maxConnectSize)                closed, no CONNACK
//	                mochi's checks of the CONNECT                  its MQTT 5 code (3.1.1: 0x01, 0x02, 0x05;
//	                                                               malformed: closed without CONNACK)
//	session         always fresh: session present 0, nothing is
//	                inherited from an earlier connection; ends when
//	                the token expires (MQTT 5: DISCONNECT 0xA0)
//	SUBSCRIBE       own topics only (protocol.MaySubscribe), QoS 1  SUBACK 0x87 (3.1.1: 0x80)
//	                only; no #, no $share/…, no $SYS/…
//	                at most max-subscriptions filters a session     SUBACK 0x97 (3.1.1: 0x80)
//	PUBLISH         devices/{d}/responses by device d only          MQTT 5: PUBACK 0x87; 3.1.1: disconnect
//	                QoS 2 or retain flag                            DISCONNECT 0x9B / 0x9A
//
// MQTT 3.1.1 clients only ever get MQTT 3.1.1 return codes (0x01 to 0x05)
// in a CONNACK: every refusal goes through connackCode.
//
// # Delivery (store, then forward)
//
// Workers append to mailboxes in Redis and signal the node that holds the
// identity's live session (registered with mailbox.SetSessionConn, with a
// token per connection, so that the end of a connection that was taken
// over never clears its successor's registration) or the ring owner. For
// each session that has subscribed, a goroutine reads the mailbox in
// order, no more entries at once than the free slots of its window, and
// sends each entry a subscription matches as a QoS 1 PUBLISH, with at
// most Inflight unacknowledged; the entry is acknowledged only when the
// PUBACK for that packet ID arrives on that very connection: a result
// entry is then removed, a command entry marks its command delivered and
// stays until the command is final, offered again (same id) to the
// device's next connection, never twice to this one (PUBACKs that arrive
// together are acked in one mailbox.AckMany; a command entry its device
// refuses with an MQTT 5 PUBACK reason code of 0x80 or more ends the
// command rejected, -32005 with data.mqtt_reason_code, with
// mailbox.Store.Refuse). Reading a command entry
// marks the command as on the wire; a command entry read but not
// published (no subscription matches it, too large for the client,
// already in flight, the connection ended) is handed back with
// mailbox.Unsend, so that it can still be cancelled and expire. Reads are
// triggered by the subscription, by wake signals (Redis pub/sub) and by a
// sweep, which catches a lost signal: every two seconds the node's
// pending set, every ten seconds every subscribed session whose mailbox
// is listed as not empty.
// Whatever is not acknowledged when a connection ends stays in the
// mailbox and is sent again to the next session, on whichever node owns
// the identity then: duplicates are possible, loss is not; receivers
// deduplicate by id.
//
// # Device responses
//
// A response on devices/{d}/responses must be a JSON-RPC 2.0 response
// whose id is the string "{client}:{id}" of a command of device d. The
// node completes it in Redis itself (mailbox.Store.Complete: final
// status, response, outbox entry for the client; DESIGN §5: answers do
// not cross RabbitMQ), and only then does the device get its PUBACK.
// While Redis cannot take the step it holds the PUBACK and retries, for
// up to the answer grace; only past it is the answer refused (no PUBACK,
// the connection closed). Responses that can never succeed are dropped,
// counted in gw_push_responses_dropped_total{reason} and still
// acknowledged.
//
// # Ring
//
// The node joins the ring once it listens and leaves it at shutdown.
// After a ring change it honours the previous ring for a grace period
// (ring-grace), then closes the sessions it no longer owns at shed-rate
// per second (MQTT 5: DISCONNECT 0x9C with the new owner as server
// reference). Shutdown leaves the ring first, then closes the sessions
// gradually, then the broker, Redis and RabbitMQ.
//
// # Configuration
//
// Flags, or the GW_* variables of the same names: mqtt-addr,
// mqtt-ws-addr (MQTT over WebSocket, off by default; websocket.go),
// node-id, advertise-url, redis-url, amqp-url, namespace, auth-secret (required),
// metrics-addr, tls-cert, tls-key, confirm-timeout, inflight,
// max-packet-size, max-clients, max-subscriptions, max-keepalive,
// shed-rate, ring-grace, log-level, log-format. See Config for the
// defaults.
//
// # Memory
//
// An idle session costs about 9 KB of RSS (the benchmark's idle section,
// 15,000 sessions: 5.3 KB of heap, 2 KB of stack, the rest the runtime's
// headroom): mochi's client, the socket, the session, one goroutine.
//
//   - The node runs mochi's connections itself (conn.go), with mochi's
//     exported API: mochi's own loop would hold two goroutines per
//     connection whose stacks come to 20 KB (16 KB for the reader, which
//     packet handling grows to 32 KB and the garbage collector can only
//     halve once, 4 KB for the writer). Here a connection has one
//     goroutine at a time: between packets, a fresh one that only waits,
//     with Go's smallest stack (2 KB); the packets that arrive are read
//     and processed by a worker (a few are kept, with grown stacks, for
//     the bursts of all connections), which then starts a new waiting
//     goroutine. Mochi's write loop is not run: nothing is ever queued
//     for it.
//   - Subscriptions are recorded by the session only, not also in
//     mochi's topic index and client state (about 2.5 KB a session), which
//     only mochi's routing would read, and it routes nothing here.
//   - Buffers: mochi's read buffer is bufio's smallest (16 bytes); the
//     waiting goroutine reads up to 16 bytes into the connection's own
//     array, and whatever more arrives is read ahead into buffers from a
//     pool, held only while packets arrive. Nothing is queued for
//     writing. The CONNECT packet (with the token) is not kept.
//   - Before its CONNECT is accepted, a connection costs about what has
//     arrived of it (TestUnauthenticatedMemory: about 3 KB a socket,
//     both ends, for 2,000 sockets that announce a 16 KiB CONNECT and
//     send 100 bytes of it): the CONNECT, at most 16 KiB, is read into a
//     buffer that grows as it arrives before mochi reads it (mochi would
//     allocate the announced length at once: up to max-packet-size per
//     socket).
//   - Delivery state (the in-flight window, its maps, the ack queue) is
//     taken from process-wide pools when a session has something in
//     flight and given back when it has not; an idle session holds none
//     of it and no goroutine of the push server's own, and a session
//     that receives one message at a time allocates none of it per
//     message.
//   - The full sweep (every ten seconds) reads only mailboxes listed as
//     not empty (one pipelined set lookup per thousand sessions), at most
//     64 at once, on its own workers, instead of starting a goroutine,
//     and its stack, for every session at once.
//
// The binary runs its garbage collector at Go's default, GOGC=100
// (defaultGCPercent), unless the GOGC variable is set. Idle sessions cost
// about 9.5 KB each at 15,000 with it (8.6 KB at GOGC=50, 10.5 KB at
// 200, make bench), while live delivery, which allocates per message,
// spends about 7% less CPU per message than at 50. A TLS connection costs
// more: crypto/tls's state and buffers, and a waiting goroutine of 4 KB
// (a TLS read is deeper).
//
// # Untrusted bytes
//
// Every byte a socket sends is read by connReader (conn.go), which frames
// packets, and decoded by mochi's packets codec (readPacket). Mochi
// v2.7.9's codec can panic on a malformed packet (SubscribeDecode reads
// past the end of an MQTT 5 SUBSCRIBE whose last filter lacks its options
// byte); readPacket takes a panic raised in the codec for a malformed
// packet, which ends only its connection, counts it
// (gw_push_codec_panics_total) and logs it with bounded fields; any other
// panic goes on. FuzzConnReader fuzzes that path, with its corpus in
// testdata/fuzz/FuzzConnReader; the tests' packets are the table in
// packets_test.go (every packet type of MQTT 3.1.1 and 5), checked
// against the codec both ways.
//
// # Logs
//
// No packet, password, token or payload is ever logged. Mochi's logger
// (warnings and above) goes through redact, which writes a packet as its
// type and packet ID and a byte slice as its length; every value an
// outsider controls (a username, a client ID, an id in a device's
// answer) is clipped to a few hundred bytes (telemetry.Clip).
//
// # Metrics
//
// gw_push_sessions, gw_push_deliveries_total, gw_push_acks_total,
// gw_push_redirects_total, gw_push_sheds_total, gw_push_responses_total,
// gw_push_responses_dropped_total{reason}, gw_push_mailbox_reads_total,
// gw_push_unsent_total, gw_push_refusals_total{outcome},
// gw_push_connecting, gw_push_codec_panics_total.
package main
