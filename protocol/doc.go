// Package protocol is the wire contract of the IoT command gateway: what
// goes over HTTP, AMQP and MQTT and what is kept in Redis, written down
// once so that apiserver, msgworker, pushserver, devicesim and outside
// tools agree. It uses the standard library only and does no I/O.
//
// It provides JSON-RPC 2.0 parsing and validation ([ParseBody],
// [ParseRequest], [ParseResponse]), the message ID and identity rules
// ([ParseID], [ParseIDKey], [ValidIdentity], [DeviceMsgID]), error codes
// and their HTTP statuses ([Error], [HTTPStatus]), the AMQP [Envelope]
// and [Topology], the MQTT topics and their ACL ([ParseTopic],
// [MaySubscribe], [MayPublish]), the statuses of a command and who may
// change them ([Status], [Transitions], [CanTransition]), the Redis key
// layout ([Keys]) and the fingerprint of "the same body" ([Fingerprint]).
//
// The tables below are normative. MUST, MUST NOT and MAY are used as in
// RFC 2119. {ns} is the namespace (GW_NAMESPACE, default "gw"), {client}
// and {device} are identities, {id} is the key of a message ID.
//
// # Identities and message IDs
//
// An identity names a client or a device. It is the MQTT username and
// client ID and the "sub" of its token.
//
//	what        rule                                                    checked by
//	identity    1 to 128 characters of [A-Za-z0-9._-], the first a      ValidIdentity, CheckIdentity
//	            letter or digit; never a colon, "/", "+", "#" or "$"
//	message ID  a JSON string of 1 to 128 characters of                 ParseID
//	            [A-Za-z0-9._:-], the first a letter or digit; or a
//	            JSON integer of at most 15 digits (optionally negative)
//	ID key      the string itself, or the integer in decimal            ID.Key, ParseIDKey
//	            (-0 is 0); 1 and "1" have the same key "1" and are
//	            the same ID; "01" and 1 are different IDs
//
// A client MUST make its IDs unique for the retention period
// (GW_RETENTION, default 24 h after the command became final). Sending
// the same ID again with the same body is harmless (the existing command
// is returned); with a different body it is a conflict (-32013). "The
// same body" is the same device, method, canonical params, timeout and
// expires_in ([Fingerprint], after defaults are applied).
//
// In a URL path an ID is written as its key ([ParseIDKey]): an integer key
// of at most 15 digits names the integer ID, any other valid key the
// string ID.
//
// # HTTP: sending a command
//
// POST /v1/devices/{device_id}/commands sends one command, or a batch, to
// one device. It returns as soon as the command is durable in RabbitMQ;
// it never waits for the device.
//
//	name           mandatory  location  type               meaning
//	device_id      yes        path      identity           The device that MUST receive the command.
//	Authorization  yes        header    "Bearer " + JWT    A client token whose "devices" globs match
//	                                                       device_id, or an operator token.
//	timeout        no         query     duration           The device MUST answer within this long after
//	                                                       the command was delivered to it, or the command
//	                                                       ends "timeout". Default 30s; 1s to 24h.
//	expires_in     no         query     duration           The command MUST be delivered within this long
//	                                                       after it was accepted, or it ends "expired".
//	                                                       Default 1h; 1s to 7 days (168h).
//	lane           no         query     lane name          An ordered lane of the device ([ParseLane]: 1 to
//	                                                       64 characters of [A-Za-z0-9._-], the first a
//	                                                       letter or digit). The commands of one lane of one
//	                                                       device, from every client, MUST go on the wire one
//	                                                       at a time in acceptance order, each only once the
//	                                                       one before is final. Part of the body's identity.
//	lane_mode      no         query     final or puback    With lane: "puback" lets the lane's next command
//	                                                       go on the wire once this one is delivered (its
//	                                                       PUBACK, or the ack of an HTTP poll) instead of once
//	                                                       it is final. Not with retries. Part of the body's
//	                                                       identity.
//	retries        no         query     0 to 10            A retry policy (see "Retry policies"): at most
//	                                                       retries + 1 attempts. Default 0. Not with one_way.
//	                                                       Part of the body's identity.
//	max_attempts   no         query     1 to 11            retries + 1, another way to say it; not with retries.
//	retry_on       no         query     outcome list       With retries: the outcomes retried, comma-separated
//	                                                       ([ParseRetryOn]): timeout, expired, device_error,
//	                                                       rejected. Default timeout. Part of the body's
//	                                                       identity as a set.
//	retry_backoff  no         query     "1s,2,30s"         With retries: initial[,multiplier[,max]]; retry n
//	                                                       waits min(initial × multiplier^(n−1), max) as
//	                                                       scheduled. Part of the body's identity.
//	(body)         yes        body      object or array    One JSON-RPC 2.0 request object, or a batch: an
//	                                                       array of 1 to 100 (MaxBatch) request objects.
//	                                                       At most GW_BODY_LIMIT bytes (default 64 KiB).
//
// Ordered lanes. A command of a lane whose earlier commands are not all
// final waits in Redis (status "queued", "lane_wait": true in its view)
// and enters the device's mailbox, for MQTT and HTTP polls alike, when the
// command before it ends. Whatever ends a command releases its lane:
// an answer, a one-way PUBACK, a refusal, cancel, expiry (a command
// waiting in a lane expires at its deliver-by like any queued one),
// timeout, a dead letter, a released publish. So a lane never deadlocks;
// it waits at most for its head's deliver-by, then timeout plus grace.
// GET /v1/devices/{device_id} shows each lane's commands, waiting count
// and its head's status. The commands of a batch join the lane in the
// batch's order. A command replayed from the dead letters joins the end
// of its lane. Commands without a lane are never held by one.
//
// A duration is written in Go syntax ("30s", "1m30s", "2h"; there is no
// "d" unit) or as whole seconds ("90"). A timeout or expires_in that
// cannot be read or is out of range is refused with 400 and -32600.
//
// Each request object of the body:
//
//	name     mandatory  type               meaning
//	jsonrpc  yes        string             MUST be exactly "2.0".
//	method   yes        string             The command. MUST NOT be empty and MUST NOT start with
//	                                       "rpc." (reserved by JSON-RPC). Passed to the device as is.
//	params   no         object or array    The command's arguments. If present it MUST be an object or
//	                                       an array (not null). Passed to the device compacted.
//	id       yes        string or integer  The message ID (see above). A request without id is a
//	                                       JSON-RPC notification; the gateway MUST refuse it, because
//	                                       every command is tracked. The id MUST NOT be null, a
//	                                       fraction, an exponent, a boolean, an object or an array.
//
// Other members are ignored. In a batch every element is checked on its
// own, and an id that an earlier element of the same batch already has
// (as a key: 1 and "1" clash) makes the later element invalid.
//
// [ParseBody] checks the body. Its errors, in the order they are checked:
//
//	condition                                   code    message
//	not JSON (also empty, or trailing data)     -32700  parse error: body is not valid JSON
//	JSON, but not an object or an array         -32600  invalid request: body must be a JSON-RPC request object or a batch array
//	[]                                          -32600  invalid request: empty batch
//	more than 100 elements                      -32600  invalid request: batch of N requests, at most 100 allowed
//	element not an object                       -32600  invalid request: request must be a JSON object
//	jsonrpc missing or not "2.0"                -32600  invalid request: "jsonrpc" must be exactly "2.0"
//	method missing                              -32600  invalid request: "method" is missing
//	method not a string                         -32600  invalid request: "method" must be a string
//	method ""                                   -32600  invalid request: "method" must not be empty
//	method "rpc.…"                              -32600  invalid request: "method" names starting with "rpc." are reserved
//	params neither object nor array             -32600  invalid request: "params" must be an object or an array
//	id missing (a notification)                 -32600  invalid request: "id" is missing: notifications are not accepted, every command is tracked
//	id null                                     -32600  invalid request: "id": id is null
//	id a fraction or with an exponent           -32600  invalid request: "id": id must be an integer, not a fraction or exponent
//	id boolean, object or array                 -32600  invalid request: "id": id must be a string or an integer
//	integer id of more than 15 digits           -32600  invalid request: "id": integer id has more than 15 digits
//	string id of more than 128 characters       -32600  invalid request: "id": id is longer than 128 characters
//	string id with other characters, or ""      -32600  invalid request: "id": id may only contain A-Z a-z 0-9 . _ : - and must start with a letter or digit
//	id already used in this batch               -32600  invalid request: id ID appears more than once in the batch
//
// The first four are errors of the whole body; the others belong to one
// element. An element's error carries the element's id when that id is
// valid ([Entry].ID); otherwise it has none.
//
// Responses:
//
//	status   when                                       body
//	202      one command accepted (durable)             {"id": ID, "status": "queued", "status_url": URL}
//	200      the same id and the same body again        the existing command
//	4xx/5xx  the body or the one command is refused     {"error": {"code": C, "message": M, "data": {"source": "gateway", …}},
//	                                                     "id": ID}  (id left out when it is not known)
//	202      a batch of which at least one element      an array, one entry per element, in order: an accepted
//	         was accepted (or already existed)          entry as above, the existing command, or an error entry
//	                                                    {"error": {…}, "id": ID}
//	4xx/5xx  a batch of which no element was accepted   the same array, with the status of the first error, or
//	                                                    503 with Retry-After when any element got a 503
//
// A 202 is given only after a publisher confirm of a message that a
// queue took. A 503 (-32016) says in data.reason what became of the
// command:
//
//	reason           meaning                                                     retry with the same id
//	overloaded       refused before the body was read (over GW_MAX_INFLIGHT)     publishes it
//	not_accepted     certainly not queued: Redis could not be reached, or        publishes it
//	                 RabbitMQ was unreachable, blocked, nacked or returned it
//	outcome_unknown  may be queued: the confirm never came, the channel closed   200 with the command once known;
//	                 before it, an earlier request with this id is still being   after the reservation's lease
//	                 published, or Redis failed midway through the reservation   (2 × GW_CONFIRM_TIMEOUT) it
//	                 (without a retry the command ends expired or lost, and      publishes again (harmless)
//	                 the client gets that result)
//
// # HTTP: group commands
//
// POST /v1/commands sends one request to many devices (issue 14). Body:
//
//	field    mandatory  type                  meaning
//	request  yes        JSON-RPC request      the request every device gets; its id is the group command's
//	                                          id, in a space of its own (a single command may share it)
//	devices  one of     array of device IDs   1 to MaxGroupDevices (10,000), no repeats, each covered by the
//	                    the two               token's globs (else 403 naming the first that is not)
//	group    one of     identity              a named group (PUT /v1/groups/{name}, operators); its devices
//	                    the two               when the command is accepted, all covered by the token's globs
//
// Query options (each bad value is a 400 naming it; one_way and
// not_before are refused for groups):
//
//	option         default   meaning
//	timeout        30s       each child's answer timeout after delivery (1s to 24h)
//	expires_in     1h        each child must be delivered within this of its release (1s to 7d)
//	rate           all       children released per second (above 0, at most 100000)
//	abort_after    never     a count of failed children (1 to the number of children) or a percentage
//	                         ("5%", rounded up, at least 1); a failure is a child final in anything but
//	                         succeeded or cancelled
//	retries        0         every child's retries, as for one command (or max_attempts)
//	retry_on       timeout   every child's retry_on, as for one command (needs retries)
//	retry_backoff  none      every child's retry backoff, as for one command (needs retries)
//
// A child retried by its policy is not final, so it counts towards
// abort_after only once its last attempt ended it.
//
// Answers: 202 {"id","status":"queued","status_url":"/v1/group-commands/{id}"}
// once the group's record is in Redis and its envelope (KindGroup,
// [GroupEnvelope]) is confirmed on a command queue; a worker then
// creates the children, at the rate. The same id and body again: 200
// with the group's view; another body: 409.
//
// Children: one per device, a normal command of the same client with the
// id [ChildID] "{id}:{device}" (a string; the device sees
// "{client}:{id}:{device}"), its own status (GET /v1/commands/{child id}),
// timestamps, and result on clients/{client}/results/{device}. When the
// group stops, every child not yet released or not yet on the wire ends
// cancelled:
//
//	stop                       how        child result
//	abort_after reached        aborted    -32004, data.reason "group aborted: abort_after reached: N failed",
//	                                      data.group the group's id
//	DELETE of the group        cancelled  -32004, data.reason "group cancelled: cancelled by the client"
//
// GET /v1/group-commands/{id}[?wait=30s] gives the group's view; wait
// long-polls until every child is final:
//
//	field       meaning
//	status      pending (not yet durable), queued (no child created), running, completed (every child
//	            final), aborted, cancelled
//	done        every child is final
//	total       children; released: created so far; final: final so far; in_flight: released − final
//	counts      final children per status (skipped: the child's id was taken by another command)
//	failures    final children in neither succeeded nor cancelled; abort_at: the failures that stop it
//
// # Retry policies
//
// A command with retries = N > 0 (or max_attempts = N + 1) is tried at
// most N + 1 times. An attempt starts when the command goes into the
// device's mailbox (or would: see expired) with a fresh expires_in
// window, and ends with one outcome. An outcome named in retry_on, with
// attempts left, is not final: the next attempt starts, after the wait
// of retry_backoff (status scheduled meanwhile, cancellable); any other
// outcome, or the last attempt's, is final as usual.
//
//	retry_on      the attempt ended                         would be   retried by
//	timeout       no answer within timeout of delivery      timeout    msgworker (answer timer)
//	expired       not delivered within expires_in of the    expired    msgworker (deliver-by timer,
//	              attempt's start (queued in RabbitMQ,                 dispatch)
//	              waiting for its lane, or in the mailbox)
//	device_error  the device answered with an "error"       failed     pushserver (the answer's step)
//	rejected      the device refused it (MQTT 5 PUBACK       rejected   pushserver (refusal),
//	              0x80+), or its mailbox was full                      msgworker (full mailbox)
//
// An expired attempt of a command not yet taken from its command queue,
// or waiting for its lane, gets its new window where it is (a lane keeps
// its place: a retried command is still its lane's head, or still waits
// behind it). One-way commands are never retried (a 400 names the
// option), nor are lane_mode=puback ones.
//
// Attempt n ≥ 2 reaches the device with the id "{client}:{id}#{n}"
// ([DeviceAttemptID]); the first keeps "{client}:{id}". A device that must
// not run a command twice deduplicates by the part before "#"; one that
// should run a retry again (the point of device_error) uses the whole id.
// The device answers with the id it got; an answer without the suffix is
// taken for the current attempt. An answer naming an earlier attempt
// counts while the command is not final if it is a "result" (the device
// did the work); an earlier attempt's "error", an answer naming an
// attempt not made yet, and any answer while the next attempt waits out
// its backoff are kept as late (the record's late) and change nothing.
//
// The client gets exactly one result, the last attempt's, with its own
// id. Its top-level member "attempts" counts the attempts (every final
// status, a success too: JSON-RPC's "result" is the device's and has no
// data); an error the gateway made carries it in data.attempts as well.
// A device's error reaches the client unchanged. GET /v1/commands/{id}
// shows retries, retry_on, tries, attempts (1 + tries) and retried_on
// (the outcome that ended the previous attempt).
//
// # Error codes
//
// Every error the gateway makes is a JSON-RPC error object whose data has
// "source": "gateway" ([NewError]; a caller cannot override source). A
// device MAY use the same codes for its own errors: source tells them
// apart, and a device's errors reach the client unchanged.
//
//	code    constant            HTTP  meaning
//	-32700  CodeParseError      400   the body is not JSON
//	-32600  CodeInvalidRequest  400   not a valid request (see above), including a missing id
//	-32601  CodeMethodNotFound  400   (JSON-RPC; the gateway does not check methods, devices MAY use it)
//	-32602  CodeInvalidParams   400   (JSON-RPC; for devices)
//	-32603  CodeInternalError   500   (JSON-RPC)
//	-32010  CodeUnauthorized    401   no token, bad signature, expired, or a role not allowed here
//	-32011  CodeForbidden       403   the device is outside the token's globs
//	-32012  CodeNotFound        404   no such command, device or dead letter (for this caller)
//	-32013  CodeConflict        409   the id was used with a different body; or cancel too late
//	-32014  CodeTooLarge        413   the body is larger than GW_BODY_LIMIT
//	-32015  CodeRateLimited     429   over GW_RATE / GW_BURST; with Retry-After
//	-32016  CodeUnavailable     503   RabbitMQ or Redis unavailable or blocked, or the apiserver
//	                                  overloaded (over GW_MAX_INFLIGHT requests); with Retry-After;
//	                                  data.reason says whether the command was accepted (above);
//	                                  a retry with the same id is always safe
//
// Gateway result codes are not HTTP errors: they are the error of a
// command's result when the gateway, not the device, decided its final
// status ([ResultError]; data also carries "status").
//
//	code    constant       status
//	-32001  CodeTimeout    timeout
//	-32002  CodeExpired    expired
//	-32003  CodeDead       dead
//	-32004  CodeCancelled  cancelled
//	-32005  CodeRejected   rejected
//	-32006  CodeLost       lost (the gateway lost the command's state beyond repair)
//
// [HTTPStatus] maps every other code, these included, to 500.
//
// # Statuses
//
// A command has one status at a time ([Status]). Every change is a
// compare-and-set in package mailbox, allowed only if it is in
// [Transitions]. Final statuses never change again, with one exception:
// an operator's replay of a dead command (see below).
//
//	status     final  set by      meaning                                                ThingsBoard  result code
//	pending    no     apiserver   id reserved, publish not yet confirmed (internal)      QUEUED       -
//	queued     no     apiserver   durable in RabbitMQ                                    QUEUED       -
//	scheduled  no     msgworker   waits in Redis for its not_before                      QUEUED       -
//	sent       no     msgworker   in the device's mailbox                                SENT         -
//	delivered  no     pushserver  the device PUBACKed it                                 DELIVERED    -
//	succeeded  yes    pushserver  the device answered with "result"                      SUCCESSFUL   -
//	failed     yes    pushserver  the device answered with "error"                       FAILED       -
//	timeout    yes    msgworker   no answer within timeout of delivery                   TIMEOUT      -32001
//	expired    yes    msgworker   not delivered within expires_in                        EXPIRED      -32002
//	cancelled  yes    apiserver   cancelled before it went on the wire                   FAILED       -32004
//	rejected   yes    msgworker,  the device's mailbox was full (msgworker), or the       FAILED       -32005
//	                  pushserver  device refused it: an MQTT 5 PUBACK with a reason code
//	                              of 0x80 or more (pushserver; data.mqtt_reason_code)
//	dead       yes    msgworker   not processed within the delivery limit (dead letter)  FAILED       -32003
//	lost       yes    msgworker   the gateway lost the record beyond repair (the claim's  FAILED       -32006
//	                              watchdog, DESIGN §7a)
//	void       no     apiserver   internal tombstone: reserved, then released after a    -            -
//	                              definite publish failure; shown as "not found"
//
// The ThingsBoard column is [Status.ThingsBoard]: ThingsBoard's persistent
// RPC states QUEUED, SENT, DELIVERED, SUCCESSFUL, TIMEOUT, EXPIRED and
// FAILED. ThingsBoard has no cancelled, rejected or dead: they are FAILED,
// and the result code tells which.
//
// The legal transitions ([Transitions]; anything else MUST be refused):
//
//	from       to                                         by
//	pending    queued, void                               apiserver
//	void       pending (a retry reserves afresh)          apiserver
//	queued     sent, expired, rejected, dead              msgworker
//	queued     cancelled                                  apiserver
//	queued     scheduled (not_before in the future)       msgworker
//	scheduled  sent, expired, rejected, lost              msgworker
//	scheduled  cancelled                                  apiserver
//	sent       delivered, succeeded, failed, rejected     pushserver
//	sent       expired, timeout, dead                     msgworker
//	sent       cancelled                                  apiserver
//	delivered  succeeded, failed                          pushserver
//	delivered  timeout, dead                              msgworker
//	delivered  sent (a retry: timeout, expired)           msgworker
//	sent, delivered → scheduled (a retry's backoff)       msgworker
//	delivered  sent (a retry: device_error, rejected)     pushserver
//	sent, delivered → scheduled (the same, with backoff)  pushserver
//	pending, queued, sent, delivered → lost               msgworker (the claim's watchdog)
//	dead       queued (operator replay)                   apiserver
//	failed, timeout, expired, rejected → queued (retry)   apiserver
//
// The push server that receives a device's answer completes it (DESIGN §5):
// there is no results queue between the device and the record.
// sent → succeeded/failed: the answer can arrive before its PUBACK is
// seen. sent → timeout: the deliver-by deadline passed while the command
// was on the wire, so the worker waits one timeout instead of expiring it.
// sent → rejected by the push server: the device refused the command with
// an MQTT 5 PUBACK whose reason code is 0x80 or more (it will never take
// it); the client's result carries that code in data.mqtt_reason_code.
// A late answer (after timeout) is recorded and dropped. Every transition
// into a final status removes the command from the device's mailbox and
// puts exactly one result into the client's.
//
// Two ways lead out of a final status, both back to queued with a fresh
// expires_in window and the next generation of the command, published
// again: an operator's replay of a dead letter (POST /v1/dead/{id}/replay,
// package mailbox's ReplayDead), and the retry of a command that ended
// failed, timeout, expired or rejected (POST /v1/commands/{id}/retry, its
// client or an operator; mailbox.Retry). Its client then gets a second
// final result for the same id, the one that counts. Succeeded,
// cancelled and lost are final for good.
//
// # AMQP
//
// Every process that publishes or consumes declares the whole topology of
// its namespace, identically ([Topology.Bindings]; a different argument
// makes RabbitMQ refuse the declaration with PRECONDITION_FAILED). All
// exchanges are durable and of kind direct; all queues are durable quorum
// queues. Q is GW_QUEUES and P is GW_PARTITIONS, both fixed per namespace.
//
//	name                kind      arguments                                         bound to, routing key
//	{ns}.dead           exchange  direct                                            -
//	{ns}.commands       exchange  direct                                            -
//	{ns}.fence          queue     x-queue-type=quorum,                              - (nothing routes to it)
//	                              x-dead-letter-exchange={ns}.dead,
//	                              x-dead-letter-routing-key="queues=Q,partitions=P",
//	                              x-gw-queues=Q, x-gw-partitions=P (int32)
//	{ns}.commands.dead  queue     x-queue-type=quorum                               {ns}.dead, "commands"
//	{ns}.commands.{q}   queue     x-queue-type=quorum, x-delivery-limit=5 (int32),  {ns}.commands, "command.{q}"
//	(q = 0..Q-1)                  x-dead-letter-exchange={ns}.dead,
//	                              x-dead-letter-routing-key=commands,
//	                              x-dead-letter-strategy=at-least-once,
//	                              x-overflow=reject-publish,
//	                              x-queue-leader-locator=balanced
//
// Declare in this order: the fence first, then the dead-letter queue
// before the queues that dead-letter into it. No queue is named
// {ns}.commands.
//
// Device answers do not cross RabbitMQ (DESIGN §5): the push server that
// receives one completes it in Redis. There is no results exchange,
// results queue or results dead-letter queue; namespaces created by older
// versions may still hold {ns}.results and {ns}.results.dead, which
// nothing declares, publishes to or consumes any more.
//
// The fence keeps the counts (DESIGN §7a). RabbitMQ compares
// x-dead-letter-routing-key on every declaration, so a process whose Q or
// P differ from those of the namespace's first process is refused at the
// fence (PRECONDITION_FAILED, "received 'queues=8,partitions=256' but
// current is 'queues=4,partitions=256'") before it declares anything
// else, and MUST NOT start. x-gw-queues and x-gw-partitions only repeat
// the counts for the reader: RabbitMQ does not compare arguments it does
// not know. Changing Q is a resize (workers consume the old and the new
// queues, apiservers switch when every worker does, the operator deletes
// the fence so the new count can declare it, an old queue goes once
// empty); changing P is a new deployment.
//
//	message   publisher                      exchange, routing key              consumer
//	command   apiserver (and dead replay)    {ns}.commands, "command.{q}"       msgworker (competing, every queue)
//	          to device d: q = Partition(d, P) mod Q ([Topology.CommandQueueOf], [Topology.DeviceRoute])
//
// Every message MUST be persistent and published mandatory with publisher
// confirms; a returned (unroutable), nacked or unconfirmed message is a
// failure. Consumers ack manually, only after the effect is durable, with
// a bounded prefetch. A message returned to its queue more than
// DeliveryLimit (5) times is dead-lettered.
//
// The body of every message is an [Envelope], in JSON ([Envelope.Encode],
// [DecodeEnvelope]):
//
//	name              mandatory  type               meaning
//	v                 yes        integer            Envelope version, 1 (EnvelopeVersion). A reader MUST refuse
//	                                                a version it does not know and MUST ignore unknown fields.
//	kind              yes        string             "command", the only kind. A reader MUST refuse any other,
//	                                                "result" included (answers no longer cross RabbitMQ).
//	client            yes        identity           The client that sent the command.
//	device            yes        identity           The device the command is for.
//	msg_id            yes        string or integer  The client's message ID, as the client wrote it.
//	payload           yes        object             The client's JSON-RPC request (the device gets its
//	                                                method and params, see Envelope.DeviceRequest).
//	accepted_at       yes*       RFC 3339 time      When the apiserver accepted the command (UTC, milliseconds).
//	deliver_by        no         RFC 3339 time      Deadline for delivery: accepted_at + expires_in.
//	answer_within_ms  no         integer            The timeout, in milliseconds after delivery.
//	attempt           yes*       integer            1 for the first publish; a replay of a dead letter adds 1.
//	traceparent       no         string             W3C trace context of the apiserver's publish (a child of the
//	                                                request's); also sent as the AMQP header traceparent.
//
// (*) Writers MUST set it; [DecodeEnvelope] does not check it. Times are
// written in UTC with millisecond precision ([Envelope.Encode] truncates),
// durations as integer milliseconds; absent optional fields are left out.
//
// # MQTT
//
// Devices and clients connect to the push server that owns their
// identity (GET /v1/connect/{identity}). Username and client ID MUST be
// the identity, the password its token. The session ends when the token
// expires. A push server that does not own the identity refuses it: MQTT
// 3.1.1 CONNACK 0x03 (server unavailable), MQTT 5 CONNACK 0x9C (use
// another server) with the owner as server reference.
//
//	topic                     subscriber     publisher    payload
//	devices/{d}/commands      device d       push server  JSON-RPC request, id "{client}:{id}" ("#{n}" added
//	                                                      for attempt n ≥ 2 of a retry policy)
//	devices/{d}/responses     push server    device d     JSON-RPC response, the same id (with or without "#{n}")
//	clients/{c}/results/{d}   client c       push server  JSON-RPC response to c's command to d, c's own id
//
// A client subscribes to clients/{c}/results/+ (all devices) or to one
// clients/{c}/results/{d}. Everything else is refused ([MaySubscribe],
// [MayPublish]): other identities' topics, any other wildcard ("#", "+"
// elsewhere), $share/…, $SYS/…, publishing by clients, publishing by a
// device anywhere but its own responses topic. Subscriptions MUST be QoS
// 1: QoS 0 and QoS 2 are refused (a mailbox entry is acknowledged only by
// the PUBACK of its PUBLISH). Retained messages are refused. Sessions always
// start fresh (session present = 0).
//
// The id a device sees is "{client}:{id}" ([DeviceMsgID]), where {id} is
// the key of the client's ID: ids of different clients never collide at a
// device, and an identity has no colon, so the first colon splits it
// ([ParseDeviceMsgID]). A device MUST answer on its responses topic with
// the same id, "jsonrpc": "2.0" and exactly one of "result" and "error"
// (an object with an integer code and a string message), see
// [ParseResponse]; a response it refuses is not an answer. A device MUST
// deduplicate by id: a redelivered command is answered again, not
// executed again.
//
// Trace context (OpenTelemetry, W3C): a PUBLISH to an MQTT 5 device or
// client carries the user property "traceparent" when the command has a
// trace; an MQTT 5 device MAY send the traceparent of its own span (a
// child of the one it received) as the user property "traceparent" of
// its answer, and the result then continues it. MQTT 3.1.1 sessions get
// no trace context; nothing else changes.
//
// Because {id} is the key, a device sees "app-1:42" for both 42 and "42"
// (and "app-1:0" for -0), and [ParseDeviceMsgID] gives back the integer
// ID 42: only the key survives the round trip through the device. The
// client's own id, as the client wrote it, comes from the command record.
//
// A client's result is a JSON-RPC response with the client's own id:
//
//	final status       result payload ("attempts":N after the id for a command with retries)
//	succeeded          {"jsonrpc":"2.0","result":<the device's result>,"id":ID}
//	failed             {"jsonrpc":"2.0","error":<the device's error, unchanged>,"id":ID}
//	timeout, expired,  {"jsonrpc":"2.0","error":{"code":-3200x,"message":STATUS[": " detail],
//	dead, cancelled,     "data":{"source":"gateway","status":STATUS}},"id":ID}   (ResultError)
//	rejected
//
// A command the device refused (rejected by the push server) carries the
// device's PUBACK reason code as well:
// {"code":-32005,"message":"rejected: refused by the device","data":{"source":"gateway",
// "status":"rejected","mqtt_reason_code":135}}.
//
// Every message to an identity goes through its mailbox (Redis) and is
// delivered at least once, at QoS 1; receivers deduplicate by id. No order
// is promised between commands, even to the same device. When the recipient is not connected, or has not subscribed:
//
//	recipient  outcome
//	device     The command waits in the device's mailbox (status sent) and is delivered when the device
//	           connects and subscribes. The timeout clock starts only at delivery. If it is not delivered
//	           within expires_in it ends expired (-32002); if the mailbox is full it ends rejected (-32005).
//	           A command already on the wire when the device disconnects is sent again on reconnect.
//	client     The result waits in the client's mailbox until the client connects and subscribes, until
//	           the retention period ends, or until the mailbox is full (then it is dropped and counted).
//	           It stays readable with GET /v1/commands/{id} (long-poll with ?wait=) either way.
//
// # Redis
//
// State lives in GW_PARTITIONS partitions ([Partition]: xxhash64 of the
// identity, modulo the count). Every key of partition p starts with the
// hash tag "{ns:p}:" ([Keys.Part]), so one partition is one Redis Cluster
// slot and every script touches the keys of one partition only, all passed
// in KEYS. A command's record lives in its device's partition p(d); the id
// claim and the results mailbox live in its client's partition p(c).
//
//	key                              type        method                   content
//	{ns:p}:cmd:{client}:{id}         hash        PartKeys.Command         one command record, in p(device); no
//	                                                                      expiry until final, then GW_RETENTION
//	{ns:p}:claim:{client}:{id}       hash        PartKeys.Claim           the id claim, in p(client): device,
//	                                                                      fingerprint, generation, state, and the
//	                                                                      final status once relayed
//	{ns:p}:cmds:{client}:{device}    sorted set  PartKeys.ClientCommands  a client's commands to a device
//	                                                                      (score: accepted-at, ms), in p(device)
//	{ns:p}:lanes:{device}            sorted set  PartKeys.Lanes           the device's ordered lanes: one member
//	                                                                      "{lane}|{seq}|{client}|{id}" per command
//	                                                                      not final yet (score 0, sorted by name)
//	{ns:p}:polled:{device}           string      PartKeys.Polled          the last HTTP poll of the device (unix ms)
//	{ns:p}:mbox:{identity}           stream      PartKeys.Mailbox         messages waiting for an identity
//	{ns:p}:mboxes                    set         PartKeys.Mailboxes       identities whose mailbox may be non-empty
//	{ns:p}:timers                    sorted set  PartKeys.Timers          deadlines (score: due time, ms)
//	{ns:p}:dead                      sorted set  PartKeys.Dead            dead commands (score: dead-lettered at)
//	{ns:p}:outbox                    stream      PartKeys.Outbox          final results on their way to p(client)
//	{ns:p}:queued                    sorted set  PartKeys.Queued          queued commands "{client}|{key}" (score:
//	                                                                      accepted at, ms; a replay: replayed at)
//	{ns:p}:meta                      hash        PartKeys.Meta            the partition and queue counts recorded
//	                                                                      at first start (the fence)
//	{ns:p}:barrier                   string      PartKeys.Barrier         written before a durability barrier
//	{ns:p}:watch                     string      PartKeys.Watch           the write watch's counter, in one
//	                                                                      partition per primary (workers)
//	{ns:p}:sess:{identity}           string      PartKeys.Session         the push server holding the session
//	{ns:p}:stats:{unix minute}       hash        PartKeys.StatusCounts    transitions into each status that minute
//	{ns:p}:grp:{client}:{id}         hash        PartKeys.Group           a group command, in p(client): its
//	                                                                      request, options, devices, release
//	                                                                      cursor and counts per final status
//	{ns:p}:grps                      sorted set  PartKeys.Groups          the partition's group commands
//	                                                                      (score: accepted at, ms; "{client}|{id}")
//	{ns:p}:devgrp:{name}             hash        PartKeys.DeviceGroup     a named device group, in p(name)
//	{ns:ring:g}:nodes                set         RingKeys.Nodes           members of ring g ("push", "workers")
//	{ns:ring:g}:node:{node}          string      RingKeys.Node            one live member (expiry; advertise URL)
//	{ns:ring:g}:changes              pub/sub     RingKeys.Changes         ring membership changes
//	ns:due                           sorted set  Keys.Due                 partitions a step made due earlier
//	                                                                      (member: partition; score: due, ms),
//	                                                                      read and cleared by their owners
//	ns:node:{node}:sessions          set         Keys.NodeSessions        identities connected to a push server
//	ns:node:{node}:pending           set         Keys.NodePending         identities with entries to stream
//	ns:node:{node}:wake              pub/sub     Keys.NodeWake            "these identities have new entries"
//	                                                                      (records, some carrying the entry:
//	                                                                      mailbox.ParseWake; sharded pub/sub
//	                                                                      on Redis Cluster)
//
// {id} in a key is always the ID's key (ID.Key), so 1 and "1" are one
// record.
//
// The mailbox is as durable as Redis: a deployment that must lose nothing
// runs Redis with appendonly yes and appendfsync always.
package protocol
