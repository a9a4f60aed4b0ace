package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/codes"

	"github.com/iotgw/gateway/apiserver/web"
	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// The operations part of the API (DESIGN §3): GET /v1/stats, the dead
// letters (GET /v1/dead, POST /v1/dead/{id}/replay), the gauges of queue
// depth and mailbox totals on /metrics, and the dashboard at /.
//
// Where the numbers come from:
//
//   - ready and consumers of each queue: a passive queue.declare on the
//     publisher's connection at the moment of the call (exact, what
//     rabbitmqctl list_queues says then). The GW_QUEUES command queues
//     are read one by one and shown as one entry, {ns}.commands, with
//     their sums and the list of them (queueView); the gauges have one
//     series per command queue and none for the sum;
//   - unacked, publish and deliver rates and the oldest message's age:
//     RabbitMQ's management API, which samples every 5 s; they are labelled
//     "sampled": true, "source": "management". When the management API is
//     unreachable the stats say so (management.available false) and these
//     fields are null; the call does not fail. RabbitMQ 3.x reports no
//     head-message timestamp for quorum queues, so the command queues'
//     oldest_age_s comes from the gateway's own records instead
//     (oldest_age_source "gateway"): the acceptance of the oldest command
//     still queued, from the partitions' queued sets
//     (mailbox.Totals.Queued), exact at the moment of the call;
//   - mailbox totals, timers and dead letters: mailbox.Store.Totals;
//     statuses and events over the last 15 minutes: Store.StatusCounts and
//     Store.EventCounts; sessions per push server: SCARD of
//     protocol.Keys.NodeSessions for each ring member.
//
// A source that fails leaves its fields null and is named in "errors";
// /v1/stats answers 200 regardless, since operators need it most when
// something is down.

// Settings of the operations endpoints.
const (
	// statsWindowMinutes is the window of the status and event counts.
	statsWindowMinutes = 15
	// statsTimeout bounds the reads of one GET /v1/stats or one sample.
	statsTimeout = 4 * time.Second
	// mgmtTimeout bounds one management API request.
	mgmtTimeout = 2 * time.Second
	// sampleEvery is the period of the sampler behind the gauges.
	sampleEvery = 5 * time.Second
	// sampleIdle stops the sampler when nothing has read the gauges for
	// this long; the next scrape starts it again.
	sampleIdle = 2 * time.Minute
	// firstSampleWait is how long a scrape waits for the first sample of
	// a sampler it just started.
	firstSampleWait = 2 * time.Second
	// defaultDeadLimit and maxDeadLimit bound ?limit= of GET /v1/dead.
	defaultDeadLimit = 50
	maxDeadLimit     = 100
)

// queueInspector is what a Publisher needs for the exact queue depth
// (*amqpx.Publisher has it: a passive declare on its connection).
type queueInspector interface {
	QueueDepth(ctx context.Context, queues ...string) (map[string]amqpx.QueueInfo, error)
}

// ops serves the operations endpoints of one Server.
type ops struct {
	s       *Server
	mgmt    *mgmtClient // nil when the management URL is unusable
	mgmtErr string      // why mgmt is nil
	sampler *sampler
}

// registerOps adds the operations routes to e (GET /v1/stats, GET
// /v1/dead, POST /v1/dead/:id/replay, the dashboard at / and /assets/*)
// and the queue and mailbox gauges to the Server's registry. Call it
// once, from routes.
func (s *Server) registerOps(e *echo.Echo) {
	o := &ops{s: s}
	mc, err := newMgmtClient(s.cfg.AMQPMgmtURL, s.cfg.AMQPURL)
	if err != nil {
		o.mgmtErr = err.Error()
		s.log.Warn("management API unusable; /v1/stats has no rates or ages", "err", err)
	}
	o.mgmt = mc
	o.sampler = newSampler(o.sample, s.stopping, s.log.Warn)
	if err := s.registry.Register(&opsCollector{o: o}); err != nil {
		s.log.Error("cannot register the queue and mailbox gauges", "err", err)
	}

	operator := []echo.MiddlewareFunc{s.authenticate(auth.RoleOperator), s.rateLimit}
	e.GET("/v1/stats", o.stats, operator...)
	e.GET("/v1/dead", o.deadList, operator...)
	e.POST("/v1/dead/:id/replay", o.replay, operator...)

	page := echo.WrapHandler(web.Handler())
	e.GET("/", page)
	e.GET(web.AssetPrefix+"*", page)
}

// statsView is GET /v1/stats. A null number is one whose source failed
// (see Errors) or that the source does not report.
type statsView struct {
	At        time.Time `json:"at"`
	Namespace string    `json:"namespace"`
	// Queues holds {ns}.commands (the GW_QUEUES command queues together,
	// each listed in its Queues) and {ns}.commands.dead.
	Queues      map[string]queueView `json:"queues"`
	Management  mgmtStatus           `json:"management"`
	Mailboxes   mailboxView          `json:"mailboxes"`
	Timers      *int64               `json:"timers"`
	Dead        *int64               `json:"dead"`
	Outbox      *outboxView          `json:"outbox"`
	Statuses    statusesView         `json:"statuses"`
	PushServers []pushServerView     `json:"push_servers"`
	Ring        []memberView         `json:"ring"`
	// Errors names the sources that failed: "rabbitmq" (the passive
	// declare) and "redis". The management API reports in Management.
	Errors map[string]string `json:"errors,omitempty"`
}

// queueView is one queue of the stats: Ready and Consumers are exact
// (passive declare), the others sampled by the management API.
//
// The entry {ns}.commands stands for the command queues together: each
// number is the sum over them (null when it is null for any of them),
// but OldestAgeS, the oldest message of any; Queues lists them one by
// one, queue 0 first. Every worker consumes every command queue, so its
// Consumers is GW_QUEUES times the workers.
type queueView struct {
	Ready       *int     `json:"ready"`
	Consumers   *int     `json:"consumers"`
	Unacked     *int64   `json:"unacked"`
	PublishRate *float64 `json:"publish_rate"`
	DeliverRate *float64 `json:"deliver_rate"`
	OldestAgeS  *float64 `json:"oldest_age_s"`
	// OldestAgeSource is where OldestAgeS came from: "gateway" (the
	// command queues: the oldest queued command in the gateway's own
	// records, exact at the moment of the call, 0 when none waits) or
	// "management" (RabbitMQ's sampled head-message timestamp; null for
	// quorum queues on RabbitMQ 3.x).
	OldestAgeSource string `json:"oldest_age_source"`
	Sampled         bool   `json:"sampled"`
	Source          string `json:"source"`
	// Queues is set in the entry {ns}.commands only.
	Queues []commandQueueView `json:"queues,omitempty"`
}

// commandQueueView is one command queue, {ns}.commands.{index}.
type commandQueueView struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	queueView
}

// sumQueues is the entry of the command queues together (see queueView).
func sumQueues(qs []commandQueueView) queueView {
	v := queueView{
		Ready:       total(qs, func(q queueView) *int { return q.Ready }),
		Consumers:   total(qs, func(q queueView) *int { return q.Consumers }),
		Unacked:     total(qs, func(q queueView) *int64 { return q.Unacked }),
		PublishRate: total(qs, func(q queueView) *float64 { return q.PublishRate }),
		DeliverRate: total(qs, func(q queueView) *float64 { return q.DeliverRate }),
		Sampled:     true,
		Source:      "management",
		Queues:      qs,
	}
	for _, q := range qs {
		if a := q.OldestAgeS; a != nil && (v.OldestAgeS == nil || *a > *v.OldestAgeS) {
			v.OldestAgeS = a
		}
		v.OldestAgeSource = q.OldestAgeSource
	}
	return v
}

// total is the sum of a field over qs; nil when the field is nil in any
// of them (a sum of the queues that could be read would look exact), or
// when there are none.
func total[T int | int64 | float64](qs []commandQueueView, field func(queueView) *T) *T {
	if len(qs) == 0 {
		return nil
	}
	var sum T
	for _, q := range qs {
		p := field(q.queueView)
		if p == nil {
			return nil
		}
		sum += *p
	}
	return &sum
}

type mgmtStatus struct {
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
}

type mailboxView struct {
	Mailboxes *int64 `json:"mailboxes"`
	Entries   *int64 `json:"entries"`
}

// outboxView is the partitions' outboxes: results on their way to the
// clients' partitions (DESIGN §7).
type outboxView struct {
	Entries    int64                 `json:"entries"`
	OldestAgeS float64               `json:"oldest_age_s"`
	Partitions []outboxPartitionView `json:"partitions"`
}

type outboxPartitionView struct {
	Partition  int     `json:"partition"`
	Entries    int64   `json:"entries"`
	OldestAgeS float64 `json:"oldest_age_s"`
}

// queuedAges is, for each of the queues command queues, the age in seconds
// of its oldest queued command (0 when none): partition p's commands are
// in queue p mod queues (protocol.Topology.CommandQueueOf).
func queuedAges(parts []mailbox.PartitionQueued, queues int) []float64 {
	ages := make([]float64, max(queues, 1))
	for _, p := range parts {
		q := p.Partition % len(ages)
		ages[q] = max(ages[q], p.Oldest.Seconds())
	}
	return ages[:queues]
}

// newOutboxView sums the non-empty outboxes of the totals.
func newOutboxView(parts []mailbox.PartitionOutbox) *outboxView {
	v := &outboxView{Partitions: make([]outboxPartitionView, 0, len(parts))}
	for _, p := range parts {
		age := p.Oldest.Seconds()
		v.Entries += p.Entries
		v.OldestAgeS = max(v.OldestAgeS, age)
		v.Partitions = append(v.Partitions, outboxPartitionView{Partition: p.Partition, Entries: p.Entries, OldestAgeS: age})
	}
	return v
}

type statusesView struct {
	WindowMinutes int              `json:"window_minutes"`
	Counts        map[string]int64 `json:"counts"`
	Events        map[string]int64 `json:"events"`
}

type pushServerView struct {
	Node     string `json:"node"`
	MQTTURL  string `json:"mqtt_url"`
	Sessions *int64 `json:"sessions"`
}

// knownEvents are the non-status counts of mailbox.Store.EventCounts,
// shown as zero before they first happen.
var knownEvents = []string{"late", "result_dropped", "lane_wait", "retried"}

// stats is GET /v1/stats: everything is read at the moment of the call,
// the sources in parallel.
func (o *ops) stats(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), statsTimeout)
	defer cancel()
	return c.JSON(http.StatusOK, o.collect(ctx))
}

// collect reads every source of the stats.
func (o *ops) collect(ctx context.Context) statsView {
	s := o.s
	queues := s.topo.Queues()
	v := statsView{
		At:        time.Now().UTC(),
		Namespace: s.cfg.Namespace,
		Queues:    make(map[string]queueView, len(queues)),
		Statuses: statusesView{
			WindowMinutes: statsWindowMinutes,
			Counts:        make(map[string]int64, len(protocol.Statuses)),
			Events:        make(map[string]int64, len(knownEvents)),
		},
		PushServers: []pushServerView{},
		Ring:        []memberView{},
	}
	var (
		wg       sync.WaitGroup
		depth    map[string]amqpx.QueueInfo
		depthErr error
		mq       map[string]mgmtQueue
		mqErr    error
		totals   mailbox.Totals
		totErr   error
		counts   map[protocol.Status]int64
		events   map[string]int64
		cntErr   error
		sessions []*redis.IntCmd
		sessErr  error
	)
	members := s.ring.Members()
	wg.Add(5)
	go func() { defer wg.Done(); depth, depthErr = o.queueDepth(ctx, queues) }()
	go func() { defer wg.Done(); mq, mqErr = o.mgmtQueues(ctx, queues) }()
	go func() { defer wg.Done(); totals, totErr = s.store.Totals(ctx) }()
	go func() {
		defer wg.Done()
		if counts, cntErr = s.store.StatusCounts(ctx, statsWindowMinutes); cntErr == nil {
			events, cntErr = s.store.EventCounts(ctx, statsWindowMinutes)
		}
	}()
	go func() {
		defer wg.Done()
		keys := s.store.Keys()
		sessions = make([]*redis.IntCmd, len(members))
		_, sessErr = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, m := range members {
				sessions[i] = p.SCard(ctx, keys.NodeSessions(m.Node))
			}
			return nil
		})
	}()
	wg.Wait()

	errs := map[string]string{}
	if depthErr != nil {
		errs["rabbitmq"] = depthErr.Error()
	}
	if err := cmp.Or(totErr, cntErr, sessErr); err != nil {
		errs["redis"] = err.Error()
		s.log.Debug("stats: redis unavailable", "err", err)
	}
	if len(errs) > 0 {
		v.Errors = errs
	}

	v.Management = mgmtStatus{Available: mqErr == nil}
	if mqErr != nil {
		v.Management.Error = mqErr.Error()
	}
	view := func(q string) queueView {
		qv := queueView{Sampled: true, Source: "management", OldestAgeSource: "management"}
		if qi, ok := depth[q]; ok {
			qv.Ready, qv.Consumers = ptr(qi.Messages), ptr(qi.Consumers)
		}
		if m, ok := mq[q]; ok {
			qv.Unacked, qv.PublishRate, qv.DeliverRate = m.unacked(), m.publishRate(), m.deliverRate()
			qv.OldestAgeS = m.oldestAge(v.At)
		}
		return qv
	}
	// The command queues' oldest_age_s comes from the gateway's records
	// when Redis answered: partition p's queued commands are in queue
	// p mod GW_QUEUES (protocol.Topology.CommandQueueOf).
	var queuedAge []float64
	if totErr == nil {
		queuedAge = queuedAges(totals.Queued, s.topo.QueueCount)
	}
	commands := make([]commandQueueView, 0, s.topo.QueueCount)
	for i, q := range s.topo.CommandQueues() {
		cv := commandQueueView{Name: q, Index: i, queueView: view(q)}
		if queuedAge != nil {
			cv.OldestAgeS, cv.OldestAgeSource = ptr(queuedAge[i]), "gateway"
		}
		commands = append(commands, cv)
	}
	v.Queues[s.topo.CommandsGroup] = sumQueues(commands)
	v.Queues[s.topo.CommandsDeadQueue] = view(s.topo.CommandsDeadQueue)
	if totErr == nil {
		v.Mailboxes = mailboxView{Mailboxes: ptr(totals.Mailboxes), Entries: ptr(totals.Entries)}
		v.Timers, v.Dead = ptr(totals.Timers), ptr(totals.Dead)
		v.Outbox = newOutboxView(totals.Outbox)
	}
	if cntErr == nil {
		for _, st := range protocol.Statuses {
			v.Statuses.Counts[string(st)] = counts[st]
		}
		v.Statuses.Events = recentEvents(events)
	}
	for i, m := range members {
		ps := pushServerView{Node: m.Node, MQTTURL: m.URL}
		if sessErr == nil {
			ps.Sessions = ptr(sessions[i].Val())
		}
		v.PushServers = append(v.PushServers, ps)
		v.Ring = append(v.Ring, memberView{Node: m.Node, MQTTURL: m.URL})
	}
	return v
}

func ptr[T any](v T) *T { return &v }

// queueDepth is the passive declare of queues on the publisher's
// connection: the map holds every queue that could be inspected.
func (o *ops) queueDepth(ctx context.Context, queues []string) (map[string]amqpx.QueueInfo, error) {
	qi, ok := o.s.pub.(queueInspector)
	if !ok {
		return nil, errors.New("the publisher cannot inspect queues")
	}
	return qi.QueueDepth(ctx, queues...)
}

// mgmtQueues asks the management API about queues, in parallel. Any
// failure makes the whole answer unavailable: a partial one would mix
// queues that exist with queues that could not be read.
func (o *ops) mgmtQueues(ctx context.Context, queues []string) (map[string]mgmtQueue, error) {
	if o.mgmt == nil {
		return nil, errors.New(o.mgmtErr)
	}
	out := make([]mgmtQueue, len(queues))
	errs := make([]error, len(queues))
	var wg sync.WaitGroup
	for i, q := range queues {
		wg.Add(1)
		go func() { defer wg.Done(); out[i], errs[i] = o.mgmt.queue(ctx, q) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first: the others are most likely the same
		}
	}
	m := make(map[string]mgmtQueue, len(queues))
	for i, q := range queues {
		m[q] = out[i]
	}
	return m, nil
}

// mgmtClient reads queues from RabbitMQ's management API.
type mgmtClient struct {
	base       string // scheme://host:port[/path], no credentials, no trailing slash
	user, pass string
	vhost      string // escaped for a path segment
	http       *http.Client
}

// newMgmtClient parses the management URL (http(s)://user:pass@host:port)
// and takes the virtual host from the AMQP URL.
func newMgmtClient(mgmtURL, amqpURL string) (*mgmtClient, error) {
	u, err := url.Parse(mgmtURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("management URL %q is not http(s)://user:password@host:port", redactURL(mgmtURL))
	}
	vhost := "/"
	if uri, err := amqp.ParseURI(amqpURL); err == nil {
		vhost = uri.Vhost
	}
	c := &mgmtClient{
		vhost: url.PathEscape(vhost),
		http:  &http.Client{Timeout: mgmtTimeout},
	}
	if u.User != nil {
		c.user = u.User.Username()
		c.pass, _ = u.User.Password()
	}
	u.User = nil
	u.RawQuery, u.Fragment = "", ""
	c.base = strings.TrimSuffix(u.String(), "/")
	return c, nil
}

// redactURL hides the password of a URL, for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// mgmtQueue is the part of GET /api/queues/{vhost}/{name} the stats use.
// Absent fields stay nil.
type mgmtQueue struct {
	MessagesUnacked *int64 `json:"messages_unacknowledged"`
	// HeadMessageTimestamp is the timestamp property (unix seconds) of
	// the oldest message; classic queues report it, quorum queues on
	// RabbitMQ 3.x do not.
	HeadMessageTimestamp *int64 `json:"head_message_timestamp"`
	MessageStats         *struct {
		PublishDetails    *mgmtRate `json:"publish_details"`
		DeliverGetDetails *mgmtRate `json:"deliver_get_details"`
	} `json:"message_stats"`
}

type mgmtRate struct {
	Rate float64 `json:"rate"`
}

func (q mgmtQueue) unacked() *int64 { return q.MessagesUnacked }

// publishRate and deliverRate are messages per second over RabbitMQ's
// last sample; 0 when the queue has seen no such traffic yet.
func (q mgmtQueue) publishRate() *float64 {
	if q.MessageStats == nil || q.MessageStats.PublishDetails == nil {
		return ptr(0.0)
	}
	return ptr(q.MessageStats.PublishDetails.Rate)
}

func (q mgmtQueue) deliverRate() *float64 {
	if q.MessageStats == nil || q.MessageStats.DeliverGetDetails == nil {
		return ptr(0.0)
	}
	return ptr(q.MessageStats.DeliverGetDetails.Rate)
}

// oldestAge is the age of the head message in seconds at now; nil when
// unknown.
func (q mgmtQueue) oldestAge(now time.Time) *float64 {
	if q.HeadMessageTimestamp == nil || *q.HeadMessageTimestamp <= 0 {
		return nil
	}
	age := now.Sub(time.Unix(*q.HeadMessageTimestamp, 0)).Seconds()
	return ptr(max(age, 0))
}

// queue reads one queue.
func (c *mgmtClient) queue(ctx context.Context, name string) (mgmtQueue, error) {
	var q mgmtQueue
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/queues/"+c.vhost+"/"+url.PathEscape(name), nil)
	if err != nil {
		return q, fmt.Errorf("cannot ask the management API: %w", err)
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return q, fmt.Errorf("management API unreachable: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return q, fmt.Errorf("management API: GET queue %s: %s", name, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&q); err != nil {
		return q, fmt.Errorf("management API: cannot decode queue %s: %w", name, err)
	}
	return q, nil
}

// deadView is GET /v1/dead.
type deadView struct {
	Commands   []commandView `json:"commands"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// deadList is GET /v1/dead?limit=&cursor=: dead-lettered commands, newest
// first, each with its reason and attempts.
func (o *ops) deadList(c echo.Context) error {
	limit := defaultDeadLimit
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDeadLimit {
			return errBadRequest(fmt.Sprintf("limit: must be an integer from 1 to %d", maxDeadLimit))
		}
		limit = n
	}
	cmds, next, err := o.s.store.DeadList(c.Request().Context(), limit, c.QueryParam("cursor"))
	if err != nil {
		return o.s.storeError(err, "")
	}
	out := deadView{Commands: make([]commandView, 0, len(cmds)), NextCursor: next}
	caller := claimsOf(c).Subject
	for _, cmd := range cmds {
		out.Commands = append(out.Commands, viewFor(cmd, caller))
	}
	return c.JSON(http.StatusOK, out)
}

// replay is POST /v1/dead/{id}/replay?client=: the dead command goes back
// to queued (mailbox.Store.ReplayDead) and its envelope is published to
// the commands exchange as intake does (persistent, mandatory, confirmed),
// with attempt one more than before. 202 with the command; 404 when there
// is no such command; 409 when it is neither dead nor replayed and still
// waiting for a worker. When the publish fails the answer is 503 and the
// command stays queued and listed in the dead letters: replaying it again
// publishes it again (mailbox keeps a replay in the dead set until it is
// dispatched), and if nobody does, its deliver-by timer expires it.
func (o *ops) replay(c echo.Context) error {
	s := o.s
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	key := id.Key()
	rec, err := s.store.ReplayDead(ctx, client, key)
	if errors.Is(err, mailbox.ErrState) && rec != nil {
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			fmt.Sprintf("conflict: the command is %s, not dead", rec.Status),
			map[string]any{"status": string(rec.Status)})).withID(rec.ID.Raw())
	}
	if err != nil {
		return s.storeError(err, "no such command")
	}

	// The replay's publish continues the operator's request trace.
	ctx, span := s.publishSpan(ctx, rec.Device)
	defer span.End()
	trace := telemetry.TraceParent(ctx)
	body, err := replayEnvelope(rec, o.attempt(ctx, client, key), trace)
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ConfirmTimeout+2*time.Second)
		err = s.publishCommand(pctx, body, client, rec.Device, rec.ID, trace)
		cancel()
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		reason := s.publishFailed(err)
		s.log.WarnContext(ctx, "replay: publish failed; the command waits for another replay", "client_id", client, "msg_id", key, "reason", reason, "err", err)
		return errUnavailable("the replayed command could not be published (" + reason + "); replay it again")
	}
	s.log.InfoContext(ctx, "replayed dead command", "client_id", client, "msg_id", key, "device_id", rec.Device)
	return c.JSON(http.StatusAccepted, viewFor(rec, claimsOf(c).Subject))
}

// replayEnvelope is the envelope of a replayed command: as intake built
// it (accepted at the record's creation), with the record's fresh
// deliver-by and the given attempt.
func replayEnvelope(rec *mailbox.Command, attempt int, trace string) ([]byte, error) {
	payload, err := json.Marshal(&protocol.Request{JSONRPC: "2.0", Method: rec.Method, Params: rec.Params, ID: rec.ID})
	if err != nil {
		return nil, fmt.Errorf("cannot encode the request: %w", err)
	}
	env := commandEnvelope(rec.Client, rec.Device, rec.ID, payload, rec.CreatedAt, rec.DeliverBy, rec.Timeout, attempt, trace)
	return env.Encode()
}

// attempt is the envelope attempt of a replay: the first publish was
// attempt 1 and each replay adds one (a replay published again counts
// once). mailbox.Command does not carry the replay count, so it is read
// from the record's "replays" field (see the record layout in
// mailbox/record.go); 2 when that read fails.
func (o *ops) attempt(ctx context.Context, client, key string) int {
	c, err := o.s.store.Get(ctx, client, key)
	if err != nil || c.Replays < 1 {
		return 2
	}
	return 1 + c.Replays
}

// opsSample is what the sampler keeps for the gauges.
type opsSample struct {
	at     time.Time
	queues map[string]amqpx.QueueInfo // the queues that could be inspected
	totals *mailbox.Totals            // nil when Redis failed
	// counts and events are the transitions into each status and the
	// events of the last statsWindowMinutes (nil when Redis failed).
	counts map[protocol.Status]int64
	events map[string]int64
}

// sample reads the gauges' sources once.
func (o *ops) sample(ctx context.Context) (*opsSample, error) {
	smp := &opsSample{at: time.Now()}
	var errs []error
	q, err := o.queueDepth(ctx, o.s.topo.Queues())
	smp.queues = q
	if err != nil {
		errs = append(errs, err)
	}
	t, err := o.s.store.Totals(ctx)
	if err == nil {
		smp.totals = &t
	} else {
		errs = append(errs, err)
	}
	counts, err := o.s.store.StatusCounts(ctx, statsWindowMinutes)
	if err == nil {
		var events map[string]int64
		if events, err = o.s.store.EventCounts(ctx, statsWindowMinutes); err == nil {
			smp.counts, smp.events = counts, events
		}
	}
	if err != nil {
		errs = append(errs, err)
	}
	return smp, errors.Join(errs...)
}

// sampler refreshes a snapshot every sampleEvery in the background while
// someone reads it: the first read starts it, and it stops after
// sampleIdle without a read or when the server shuts down. So /metrics
// never waits on RabbitMQ or Redis (but for the first scrape, which waits
// up to firstSampleWait), and an apiserver nobody scrapes polls nothing.
type sampler struct {
	sample   func(context.Context) (*opsSample, error)
	stopping <-chan struct{}
	warn     func(msg string, args ...any)
	every    time.Duration
	idle     time.Duration

	mu       sync.Mutex
	last     *opsSample
	first    chan struct{} // closed at the first sample of a run
	lastRead time.Time
	running  bool
	failing  bool // the last sample failed (logged once per streak)
	// runs counts the run goroutines that have not returned.
	runs sync.WaitGroup
}

func newSampler(sample func(context.Context) (*opsSample, error), stopping <-chan struct{}, warn func(string, ...any)) *sampler {
	return &sampler{sample: sample, stopping: stopping, warn: warn, every: sampleEvery, idle: sampleIdle}
}

// snapshot returns the latest sample, starting the sampler if it is not
// running; nil when there is none yet after waiting up to wait.
func (sm *sampler) snapshot(wait time.Duration) *opsSample {
	sm.mu.Lock()
	sm.lastRead = time.Now()
	if !sm.running {
		select {
		case <-sm.stopping:
		default:
			sm.running = true
			first := make(chan struct{})
			sm.first = first
			if sm.last != nil && time.Since(sm.last.at) > 2*sm.every {
				sm.last = nil // too old to show while the new run starts
			}
			sm.runs.Go(func() { sm.run(first) })
		}
	}
	last, first := sm.last, sm.first
	sm.mu.Unlock()
	if last != nil || first == nil {
		return last
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-first:
	case <-t.C:
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	return sm.last
}

func (sm *sampler) run(first chan struct{}) {
	t := time.NewTicker(sm.every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
		smp, err := sm.sample(ctx)
		cancel()
		sm.mu.Lock()
		sm.last = smp
		if err != nil && !sm.failing {
			sm.warn("gauges: cannot sample queues or mailboxes", "err", err)
		}
		sm.failing = err != nil
		sm.mu.Unlock()
		if first != nil {
			close(first)
			first = nil
		}
		select {
		case <-sm.stopping:
			return
		case <-t.C:
		}
		sm.mu.Lock()
		if time.Since(sm.lastRead) > sm.idle {
			sm.running = false
			sm.mu.Unlock()
			return
		}
		sm.mu.Unlock()
	}
}

// opsCollector exports the sampler's snapshot as gauges.
type opsCollector struct{ o *ops }

var (
	descQueueReady = prometheus.NewDesc("gw_queue_ready_messages",
		"Messages ready in each queue of the namespace, each command queue ({ns}.commands.{q}) on its own (passive declare, sampled every 5 s while scraped).", []string{"queue"}, nil)
	descQueueConsumers = prometheus.NewDesc("gw_queue_consumers",
		"Consumers of each queue of the namespace, each command queue ({ns}.commands.{q}) on its own (passive declare, sampled every 5 s while scraped).", []string{"queue"}, nil)
	descMailboxEntries = prometheus.NewDesc("gw_mailbox_entries",
		"Entries waiting in all mailboxes.", nil, nil)
	descMailboxes = prometheus.NewDesc("gw_mailboxes",
		"Non-empty mailboxes.", nil, nil)
	descTimers = prometheus.NewDesc("gw_timers_pending",
		"Armed deliver-by and answer timers.", nil, nil)
	descDead = prometheus.NewDesc("gw_dead_commands",
		"Dead-lettered commands kept for the operator.", nil, nil)
	descOutboxEntries = prometheus.NewDesc("gw_outbox_entries",
		"Final results in the partitions' outboxes, on their way to the clients' partitions.", nil, nil)
	descOutboxAge = prometheus.NewDesc("gw_outbox_oldest_age_seconds",
		"Age of the oldest outbox entry of any partition (0 when none): above a few seconds, relays are failing.", nil, nil)
	descPartOutboxEntries = prometheus.NewDesc("gw_outbox_partition_entries",
		"Entries in one partition's outbox (non-empty outboxes only).", []string{"partition"}, nil)
	descPartOutboxAge = prometheus.NewDesc("gw_outbox_partition_oldest_age_seconds",
		"Age of the oldest entry of one partition's outbox (non-empty outboxes only).", []string{"partition"}, nil)
	descRecentStatuses = prometheus.NewDesc("gw_commands_recent",
		"Transitions into each status over the last "+strconv.Itoa(statsWindowMinutes)+" minutes, as in /v1/stats (scheduled: commands waiting for not_before or a retry's backoff; every status shown, 0 included).", []string{"status"}, nil)
	descRecentEvents = prometheus.NewDesc("gw_command_events_recent",
		"Events over the last "+strconv.Itoa(statsWindowMinutes)+" minutes, as in /v1/stats: retried (next attempts of a retry policy) and retried_{outcome} by the outcome that ended the attempt, late, result_dropped, lane_wait.", []string{"event"}, nil)
	descQueueOldestAge = prometheus.NewDesc("gw_queue_oldest_age_seconds",
		"Age of the oldest command still queued in each command queue, from the gateway's records (0 when none waits).", []string{"queue"}, nil)
)

func (oc *opsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueReady, descQueueConsumers, descMailboxEntries, descMailboxes, descTimers, descDead,
		descOutboxEntries, descOutboxAge, descPartOutboxEntries, descPartOutboxAge, descQueueOldestAge, descRecentStatuses, descRecentEvents} {
		ch <- d
	}
}

// Collect sends the latest sample. A source that failed at the last
// sample is left out, so that its gauges are absent rather than stale.
func (oc *opsCollector) Collect(ch chan<- prometheus.Metric) {
	smp := oc.o.sampler.snapshot(firstSampleWait)
	if smp == nil {
		return
	}
	for _, q := range oc.o.s.topo.Queues() {
		qi, ok := smp.queues[q]
		if !ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descQueueReady, prometheus.GaugeValue, float64(qi.Messages), q)
		ch <- prometheus.MustNewConstMetric(descQueueConsumers, prometheus.GaugeValue, float64(qi.Consumers), q)
	}
	if t := smp.totals; t != nil {
		ch <- prometheus.MustNewConstMetric(descMailboxEntries, prometheus.GaugeValue, float64(t.Entries))
		ch <- prometheus.MustNewConstMetric(descMailboxes, prometheus.GaugeValue, float64(t.Mailboxes))
		ch <- prometheus.MustNewConstMetric(descTimers, prometheus.GaugeValue, float64(t.Timers))
		ch <- prometheus.MustNewConstMetric(descDead, prometheus.GaugeValue, float64(t.Dead))
		ob := newOutboxView(t.Outbox)
		ch <- prometheus.MustNewConstMetric(descOutboxEntries, prometheus.GaugeValue, float64(ob.Entries))
		ch <- prometheus.MustNewConstMetric(descOutboxAge, prometheus.GaugeValue, ob.OldestAgeS)
		for _, p := range ob.Partitions {
			part := strconv.Itoa(p.Partition)
			ch <- prometheus.MustNewConstMetric(descPartOutboxEntries, prometheus.GaugeValue, float64(p.Entries), part)
			ch <- prometheus.MustNewConstMetric(descPartOutboxAge, prometheus.GaugeValue, p.OldestAgeS, part)
		}
		for i, age := range queuedAges(t.Queued, oc.o.s.topo.QueueCount) {
			ch <- prometheus.MustNewConstMetric(descQueueOldestAge, prometheus.GaugeValue, age, oc.o.s.topo.CommandQueue(i))
		}
	}
	if smp.counts != nil {
		for _, st := range protocol.Statuses {
			ch <- prometheus.MustNewConstMetric(descRecentStatuses, prometheus.GaugeValue, float64(smp.counts[st]), string(st))
		}
		for name, n := range recentEvents(smp.events) {
			ch <- prometheus.MustNewConstMetric(descRecentEvents, prometheus.GaugeValue, float64(n), name)
		}
	}
}

// recentEvents is events with every known event present (0 before it
// first happens), as /v1/stats shows them.
func recentEvents(events map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(knownEvents)+len(events))
	for _, e := range knownEvents {
		out[e] = 0
	}
	for e, n := range events {
		out[e] = n
	}
	return out
}
