// Command pushserver is the gateway's MQTT side (DESIGN §5): an MQTT
// 3.1.1 and 5 server of its own, on mochi-mqtt's packets codec, that
// streams each connected identity's mailbox to it and completes device
// answers in Redis.
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
//	                within connect-timeout of the accept           closed, no CONNACK
//	                the codec's checks of the CONNECT              its MQTT 5 code (3.1.1: 0x01, 0x02, 0x05;
//	                (ConnectValidate, validateConnect)             malformed: closed without CONNACK)
//	session         always fresh: session present 0, nothing is
//	                inherited from an earlier connection (which
//	                is taken over: MQTT 5 DISCONNECT 0x8E); ends
//	                when the token expires (MQTT 5: DISCONNECT 0xA0)
//	SUBSCRIBE       own topics only (topicAllowed), QoS 1 only;    SUBACK 0x87 (3.1.1: 0x80)
//	                no #, no $share/…, no $SYS/…
//	                a well-formed filter                           SUBACK 0x8F (0x80)
//	                at most max-subscriptions filters a session     SUBACK 0x97 (0x80)
//	PUBLISH         devices/{d}/responses by device d only          MQTT 5: PUBACK 0x87; 3.1.1: disconnect
//	                QoS 2 or retain flag                            DISCONNECT 0x9B / 0x9A
//	keep alive      a packet within 1.5 × keep alive (the socket's
//	                deadline, moved at most every 0.5 s: closed
//	                within 0.5 s after that); MQTT 5 clients get
//	                max-keepalive (10 s) as Server Keep Alive when
//	                theirs is longer or 0
//
// MQTT 3.1.1 clients only ever get MQTT 3.1.1 return codes (0x01 to 0x05)
// in a CONNACK: every refusal goes through connackCode.
//
// # The model: a connection, a session, their goroutines
//
// The node owns its connections outright: it frames and decodes packets
// with mochi's packets codec (Packet, FixedHeader, the Decode and Encode
// methods) and nothing else of mochi's: no mochi Server, Client, hooks,
// topic index, Info counters or logger. These files hold the model:
//
//   - codec.go: encode and decode, the codec's methods by packet type;
//   - reader.go: connReader, the socket as packets are read from it: the
//     CONNECT read whole before it is decoded (memory that grows with what
//     has arrived), the wait for the next packet, the read-ahead;
//   - conn.go: client, one connection: its connState, its read path
//     (readPacket, then receive dispatches each packet type to its
//     handler) and its write path (writePacket: encode, one write at a
//     time; encodeTo and writeEncoded for several packets in one write);
//   - connect.go: the CONNECT, its refusals and the CONNACK (connect,
//     admit, establish);
//   - session.go: session, the streaming of one identity's mailbox to one
//     connection: its sessionState, the window of PUBLISHes in flight,
//     the runner that fills it, the background goroutine that acks;
//   - expiry.go: the node's heap of token expiries, one timer for all.
//
// A connection moves through connState (only forward):
//
//	connAwaiting ──CONNACK 0x00──▶ connOpen ──disconnect──▶ connClosing ──▶ connClosed
//
// and its session through sessionState (sessionTransitions lists the
// moves):
//
//	sessionNew ──register──▶ sessionIdle ◀──SUBACK / last UNSUBSCRIBE──▶ sessionStreaming
//	     └────────┴───── shed, token expiry, lame duck, failed write ──▶ sessionClosing
//	     └────────┴──────────────┴───── the connection ended ──────────▶ sessionClosed ──▶ sessionEnded
//
// Goroutines: an idle connection has exactly one, which waits for the
// next packet with Go's smallest stack (client.waitPacket); the packets
// that arrive are read and handled by a worker (a pool of goroutines
// whose stacks have grown already), which then starts a new waiting
// goroutine; but when what arrived is nothing but plain PUBACKs (4 bytes
// each, no reason code: client.pubacks, the live case), the waiting
// goroutine processes them itself, without the codec, and waits again.
// A session has goroutines only while it has work: its runner
// (session.runSession, from another pool: register, fetch, PUBLISH) and
// its background goroutine (AckMany, Refuse, Unsend; session.background,
// from a third pool, Node.acker: a goroutine started per PUBACK grew its
// stack through go-redis's call path each time). A connection that
// holds device answers Redis could not take has a completer
// (response.go).
//
// A PUBACK goes from the socket to Redis with at most two hand-offs
// between goroutines (a plain PUBACK, one); the goroutine that reads it
// handles it itself, with no detour through the runner:
//
//	socket
//	  │  client.waitPacket (the waiting goroutine) reads its first bytes
//	  │    nothing but plain PUBACKs (client.pubacks): no hand-off, it
//	  │    calls session.puback itself (below), then waits again
//	  ▼  else hand-off 1: workers.run, to a parked worker (none parked: none)
//	worker: client.readPackets → readPacket (codec) → receive
//	  │       → session.puback: the entry leaves the window, joins ackQ
//	  ▼  hand-off 2: to the background goroutine (started if not running,
//	  │              on a parked acker worker, else a new goroutine)
//	session.background → mailbox.Store.AckMany (a refused command:
//	                     mailbox.Store.Refuse) ──▶ Redis
//
// The freed slot of the window pokes the runner, which fetches more: that
// is the next PUBLISH's path, not the PUBACK's.
//
// # Why a model of our own, on mochi's codec
//
// Issue 13 offered two options: stock mochi, with hooks and nothing
// re-implemented, or a connection and session model of our own on
// mochi's packets codec. Stock mochi runs two goroutines per connection
// whose stacks come to about 20 KB for an idle one (its reader grows to
// 32 KB while it handles a packet and is only halved back), allocates the
// announced length of a packet before authentication, keeps a topic
// index and client state per session, and logs whole packets: about 40 KB
// per idle session, against a budget of 8 KB. The earlier code ran
// mochi's connections itself but kept mochi's Server and Client beneath
// (9-10 KB an idle session, hooks called on mochi's behalf, its counters
// patched). Measured on 2026-12-07 on this machine (2 cores, shared
// with other work: load 10 and more), before and after the change:
// the bench's idle section (go run ./bench -sections idle: 15,000
// sessions, the push server's RSS alone); TestIdleMemory (9,000 idle MQTT
// 3.1.1 sessions subscribed, both ends of the sockets in one process,
// two runs); BenchmarkDelivery (20,000 messages to 100 clients, CPU of
// the whole process, clients and Puts included, best of two runs):
//
//	                                   mochi Server and Client   own model
//	                                   beneath (before)          on the codec
//	idle section: RSS per session      10.9 KB                   7.2 KB
//	TestIdleMemory: RSS per session    12.1-12.5 KB              7.0-7.5 KB
//	  heap in use per session          6.4-6.6 KB                3.0-3.1 KB
//	  goroutine stacks per session     2.3-2.4 KB                2.4-2.5 KB
//	CPU per message, from a backlog    27.7 µs                   27.7 µs
//	CPU per message, live              236 µs                    181 µs
//
// The memory is mochi's Client (its state, in-flight map, topic aliases,
// contexts, buffered reader), its Server's bookkeeping and the token
// cache, gone, and the CONNECT no longer kept (the codec's strings share
// the packet's bytes: the client ID is copied). The CPU per message is
// the same within the noise of this machine (single runs varied by 20%):
// the codec does the same work, the write path is one encode and one
// write either way, and a PUBACK no longer wakes the session's runner
// unless the window has room for a refill. (Since then the PUBLISHes of
// a page go out in one write, and only a PUBACK that unblocks a refill
// wakes the runner: see "Delivery".)
//
// # Delivery (store, then forward)
//
// Workers append to mailboxes in Redis and signal the node that holds the
// identity's live session (registered with mailbox.SetSessionConn, with a
// token per connection, so that the end of a connection that was taken
// over never clears its successor's registration) or the ring owner. For
// each session that has subscribed, its runner reads the mailbox in
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
// pending set (a session reads its mailbox only when the mailbox's last
// entry, read for all of them in one pipeline, comes after its cursor:
// session.nudge), every ten seconds every subscribed session whose
// mailbox is listed as not empty.
//
// A wake signal may carry its entry (mailbox.Wake; mailbox.Put's do,
// with the ID of the mailbox's last entry before it): a session that has
// read its mailbox up to there sends the entry at once, without a read
// (session.sendCarried, gw_push_carried_total), in the same step and
// window as a fetched page. Anything else (a gap: an entry whose signal
// was lost, or came in another order; a full window; a command entry,
// which its read must stamp; an expired entry) falls back to the read,
// which finds every entry whose signal has arrived: an entry is appended
// before its signal is sent.
//
// A step writes the PUBLISHes of the page it fetched with one write:
// each is encoded into one buffer (in the window before it is encoded,
// so that its PUBACK always finds it), the buffer is written when the
// page is done or has reached 64 KiB, under the connection's write lock
// and deadline like any other write. A write that fails completes none
// of the batch: its entries leave the window and are handed back. A
// wake that arrives while the runner steps (a fetch under way, the
// window full) sets one pending flag and makes at most one more step
// (runAgain); a full window is refilled by the PUBACK that frees a
// quarter of it (or the last one), which alone wakes the runner: the
// runner records that it stopped for want of room (blocked) in the same
// critical section in which PUBACKs read it, so none is lost and other
// PUBACKs cost no step.
//
// Measured on 2026-12-07 (2 cores shared with other work, load 6-15),
// before and after these two changes, alternating builds: the bench's
// push section (go run ./bench --quick --sections push: 1,000 clients,
// 10,000 messages, two runs each) and BenchmarkDelivery (10,000 messages
// to 100 clients, CPU of the whole process, clients and Puts included):
//
//	                                            before            after
//	bench push, live / Mosquitto                0.273, 0.287      0.281, 0.283
//	bench push, live: push server CPU per msg   60, 64 µs         55, 60 µs
//	bench push, live: XRANGE per message        1.63, 1.76        1.68, 1.72
//	BenchmarkDelivery live: CPU per message     147.6, 144.0 µs   144.2, 140.3 µs
//	BenchmarkDelivery drain: CPU per message    26.6, 26.4 µs     22.2, 23.9 µs
//
// Then the live path itself (issue 13's live figure): before, each
// wake-up cost the session a fetch (XRANGE, then the stamp script: two
// round trips, 45% of the push server's CPU in the live profile; the
// bench's summary showed mailbox.(*Store).fetchPage as 31-45% "flat"
// only because its -show filter folds go-redis and the syscalls beneath
// into the last gateway frame), and each Put a pipeline of its own
// (SADD, PEXPIRE, PUBLISH). Now wake-ups are group-committed (one
// pipeline and one message per node for all those queued), a Put's
// wake-up carries its entry, which the session sends without a read
// when its cursor is at the entry before it (sendCarried), the sweep of
// the pending set reads only mailboxes whose tail is after the
// session's cursor (nudge), acks run on parked workers and the PUBLISH
// being encoded is off the runner's stack. Measured on 2026-12-07, 2
// cores shared with other helpers' benches and tests (load 7-15: the
// rates, Mosquitto's included, swing by 3 × between runs, so the CPU per
// message is the figure to compare), eight pairs of runs alternating
// builds, bench push (50,000 messages to 1,000 clients), CPU per
// delivered message live (median, range):
//
//	                                 before (ff2a6e1)     after (7a0a058 to 84f6f38)
//	push server                      77.7 (55.6-99.0) µs  47.7 (41.2-53.2) µs
//	bench (Puts and the clients)     56.8 (44.8-67.0) µs  37.8 (32.4-41.4) µs
//	Redis (others' work on it too)   72.1 (56.6-151) µs   59.7 (38.8-90.0) µs
//	live / Mosquitto (both           0.375 (0.218-0.733)  0.537 (0.261-0.614)
//	  disturbed by the load)
//	BenchmarkDelivery live, 100      309.9 µs, 14,571     165.9 µs, 202
//	  clients, 10,000 messages: CPU    fetches              fetches
//	  of the process, mailbox reads
//
// In quieter windows (others' CPU under 0.2 s over the live run; load
// 3-9), bench push, live:
//
//	                                 before (ff2a6e1)        after
//	                                                         1614641                 40d3ade
//	live / Mosquitto                 0.263, 0.294            0.330, 0.385, 0.305     0.358
//	live msgs/s (Mosquitto's)        12,534 (47,678),        14,522 (43,996),        18,655 (52,101)
//	                                 13,812 (46,974)         18,772 (48,733),
//	                                                         15,843 (51,937)
//	CPU per message: push server     53.6, 49.8 µs           46.8, 35.8, 42.0 µs     34.6 µs
//	  bench (Puts and clients)       41.4, 38.8 µs           38.0, 29.0, 33.2 µs     30.2 µs
//	  Redis                          53.6, 47.0 µs           40.8, 30.8, 37.6 µs     30.0 µs
//	  all processes                  149, 136 µs             126, 96, 113 µs         94.8 µs
//
// and later, load 2-3, others' CPU under 0.3 s: before 0.308, 0.262 ×
// (16,070 and 12,859 msgs/s; 116, 143 µs per message in all); after
// (648c647) 0.377, 0.511, 0.365 × (17,696, 19,339 and 21,259 msgs/s,
// Mosquitto 46,881, 37,822 and 58,199; 102, 92.6, 84.4 µs in all).
//
// The live run is bound by the Puts (they end with the last delivery):
// the whole path's CPU per message decides its rate, and 0.5 × Mosquitto
// (about 26,000 msgs/s) needs about 75 µs of CPU per message on the two
// cores. Still short: what is left is mostly the Redis steps (the Put's
// and the ack's Lua, about 10 Redis calls per message), the bench's own
// Puts and clients, and two syscalls per message on the socket.
//
// What is left per message live: the Put step (batched), its share of a wake
// pipeline, one PUBLISH write and one PUBACK read on the socket, and
// the ack step (batched across sessions). A command entry still takes
// the fetch (its stamp marks it on the wire), and so do results relayed
// by the relay step, whose wake-up does not carry its entry yet.
//
// The Redis commands of a live message (about 10.6, INFO commandstats,
// the bench's Put included, before the ack's XRANGE went) are the steps'
// own, not fetches: the Put (XREVRANGE for the previous tail, XLEN, XADD,
// PEXPIRE and SADD, the mailbox being empty again by then, GET of the
// session), its share of a group-committed wake pipeline (SADD, PEXPIRE,
// PUBLISH per node for about 20 wake-ups), and the ack (XDEL, XLEN,
// SREM; a carried entry is marked read, as one Fetch returned, so the
// step no longer reads it to check that it carries no command). The bench's push section
// notes how many PUBLISHes went out as their wake-up carried them
// (gw_push_carried_total) against the mailbox reads. The live run sends
// one PUBLISH per write: the bench's Puts go round the 1,000 clients, so
// a session has one entry at a time to send (Mosquitto's run, whose
// publishers outrun it, has many per write).
//
// Per PUBACK the push server then pays: the read, the wake-up of the
// connection's waiting goroutine, and the hand-off to the background
// goroutine. A plain PUBACK (4 bytes) no longer goes through a worker
// and a new waiting goroutine (client.pubacks; BenchmarkPubacks: 50-125
// ns against 395-880 ns and an allocation through the codec, the
// hand-offs saved besides), and the socket's deadline moves only when it
// must (refreshDeadline, 0.5 s of slack: BenchmarkRefreshDeadline).
// Measured on 2026-12-08, the bench's push section (50,000 messages),
// five pairs of runs alternating builds, load 2-8 (others' benches and
// Redis work; Mosquitto's own rate swung from 8,630 to 24,546 msgs/s
// between runs, so the ratio says little), CPU per live message, median
// (range):
//
//	                             before (f5ea66b)     after (db13a58)
//	push server                  83.4 (70.8-99.4) µs  75.8 (66.6-81.4) µs
//	bench (Puts and clients)     71.2 (59.2-87.4) µs  66.2 (57.8-71.6) µs
//	Redis                        78.6 (68.8-98.8) µs  75.4 (72.4-81.6) µs
//	all processes                238 (203-288) µs     217 (197-235) µs
//	live / Mosquitto             0.464 (0.383-0.569)  0.393 (0.356-0.853)
//
// The push server was lower in four pairs of five (by 4.4 µs, the
// median of the pairs): a gain, but within the spread of these runs.
// Under load 15-25 (quick runs, 10,000 messages, seven pairs) it was
// lost in the noise: 100 µs median before, 95 after. (38 µs in the
// last quiet report: the shared machine inflates every figure.)
//
// Whatever is not acknowledged when a connection ends stays in the
// mailbox and is sent again to the next session, on whichever node owns
// the identity then: duplicates are possible, loss is not; receivers
// deduplicate by id. When the node reaches Redis again after an outage
// (its sweep, or the session's own mailbox read, failed and then
// succeeded), each subscribed session reads its mailbox again from the
// start and offers its delivered, unanswered commands again, once
// (session.offerAgain, gw_push_reoffers_total; DESIGN §7a).
//
// # Device responses
//
// A response on devices/{d}/responses must be a JSON-RPC 2.0 response
// whose id is the string "{client}:{id}" of a command of device d. The
// node completes it in Redis itself (mailbox.Store.Complete: final
// status, response, outbox entry for the client; DESIGN §5: answers do
// not cross RabbitMQ), and only then does the device get its PUBACK.
// While Redis cannot take the step, the answer is held off the read loop
// by the connection's completer (response.go), with every answer read
// after it, so that PUBACKs go in arrival order; the connection keeps
// reading, and the completer retries and then writes the PUBACKs. A
// connection holding answers is not closed by the gateway (shedding,
// token expiry, lame duck) until they are acknowledged, at most the
// answer grace later (closeAnswered).
// Responses that can never succeed are dropped, counted in
// gw_push_responses_dropped_total{reason} and still acknowledged.
//
// # Ring
//
// The node joins the ring once it listens and leaves it at shutdown.
// After a ring change it honours the previous ring for a grace period
// (ring-grace), then closes the sessions it no longer owns at shed-rate
// per second (MQTT 5: DISCONNECT 0x9C with the new owner as server
// reference). Shutdown leaves the ring first, then closes the sessions
// gradually, then whatever connection remains, then Redis and RabbitMQ.
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
// An idle session costs about 7.2 KB of RSS (the benchmark's idle
// section, 15,000 sessions): the client, the socket, the session, one
// goroutine.
//
//   - A connection has one goroutine at a time (see the model above):
//     between packets, a fresh one that only waits, with Go's smallest
//     stack (2 KB); mochi's own loop would hold two per connection whose
//     stacks come to 20 KB.
//   - Subscriptions are the session's list of filters, nothing else.
//   - Tokens: the node keeps no cache of verified tokens (a token is
//     verified once per connection), nor the token itself: the codec's
//     strings share the CONNECT's bytes, so the client ID is copied. A
//     token's expiry is an entry in one heap of the node with one timer,
//     not a timer per session (expiry.go).
//   - Buffers: the waiting goroutine reads up to 16 bytes into the
//     connection's own array, and whatever more arrives is read ahead
//     into buffers from a pool, held only while packets arrive; writes
//     are encoded into pooled buffers. The CONNECT packet (with the
//     token) is not kept.
//   - Before its CONNECT is accepted, a connection costs about what has
//     arrived of it (TestUnauthenticatedMemory: about 3 KB a socket,
//     both ends, for 2,000 sockets that announce a 16 KiB CONNECT and
//     send 100 bytes of it): the CONNECT, at most 16 KiB, is read into a
//     buffer that grows as it arrives before it is decoded (a packet
//     after the CONNECT gets its announced length, up to
//     max-packet-size, at once).
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
// (defaultGCPercent), unless the GOGC variable is set: with mochi's
// Server and Client beneath, idle sessions cost about 9.5 KB each at
// 15,000 with it (8.6 KB at GOGC=50, 10.5 KB at 200, make bench), while
// live delivery, which allocates per message, spent about 7% less CPU
// per message than at 50. A TLS connection costs
// more: crypto/tls's state and buffers, and a waiting goroutine of 4 KB
// (a TLS read is deeper).
//
// # Untrusted bytes
//
// Every byte a socket sends is read by connReader (reader.go) and
// client.readPacket (conn.go), which frame packets (a packet beyond
// max-packet-size ends the connection before its body is read), and
// decoded by mochi's packets codec. Mochi
// v2.7.9's codec can panic on a malformed packet (SubscribeDecode reads
// past the end of an MQTT 5 SUBSCRIBE whose last filter lacks its options
// byte); readPacket takes a panic raised in the codec for a malformed
// packet, which ends only its connection, counts it
// (gw_push_codec_panics_total) and logs it with bounded fields; any other
// panic goes on. FuzzConnReader fuzzes that path, with its corpus in
// testdata/fuzz/FuzzConnReader; the tests' packets are the table in
// packets_test.go (every packet type of MQTT 3.1.1 and 5), checked
// against the codec both ways. The one packet read without the codec, a
// plain PUBACK on the waiting goroutine (client.pubacks: exactly 0x40
// 0x02 and a packet ID, or the bytes go to readPacket), is fuzzed
// against the codec's path by FuzzPubacks, with its corpus in
// testdata/fuzz/FuzzPubacks.
//
// # Logs
//
// No packet, password, token or payload is ever logged: a packet is
// logged as its type and packet ID (packetSummary); every value an
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
