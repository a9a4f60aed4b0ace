package main

import (
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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// batchParallelism bounds the commands of one batch that are reserved and
// published at the same time.
const batchParallelism = 16

// acceptedBody is the answer to an accepted command, and an accepted
// entry of a batch.
type acceptedBody struct {
	ID        json.RawMessage `json:"id"`
	Status    protocol.Status `json:"status"`
	StatusURL string          `json:"status_url"`
}

// intakeResult is what became of one request of a POST.
type intakeResult struct {
	accepted bool             // 202: published, confirmed, queued
	existing *mailbox.Command // 200: the same request was accepted before
	err      *apiError        // the error of this request
}

// postCommands is POST /v1/devices/{device_id}/commands: one JSON-RPC
// request or a batch. Every command is reserved in Redis, published with
// a confirm, and marked queued before it is answered 202.
func (s *Server) postCommands(c echo.Context) error {
	device := c.Param("device_id")
	if !protocol.ValidIdentity(device) {
		return errBadRequest("device_id: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	cl := claimsOf(c)
	if q := c.QueryParam("client"); q != "" && q != cl.Subject {
		return errBadRequest("client: a command is always sent as the token's subject")
	}
	if !cl.MayCommand(device) {
		return errForbidden(fmt.Sprintf("the token may not command device %q", device))
	}
	q := c.QueryParams()
	timeout, err := durationParam(q, "timeout", DefaultTimeout, MinTimeout, MaxTimeout)
	if err != nil {
		return err
	}
	// A one-way command awaits no answer: its PUBACK is its success. It
	// is stored with answer timeout 0, which is also what tells it apart
	// in the fingerprint (a command with an answer has one of at least
	// MinTimeout).
	switch v := q.Get("one_way"); v {
	case "", "false", "0":
	case "true", "1":
		if q.Has("timeout") {
			return errBadRequest("timeout: a one-way command awaits no answer, so it takes no timeout")
		}
		timeout = 0
	default:
		return errBadRequest(fmt.Sprintf("one_way: %q is neither true nor false", v))
	}
	expiresIn, err := durationParam(q, "expires_in", DefaultExpiresIn, MinExpiresIn, MaxExpiresIn)
	if err != nil {
		return err
	}
	delay, err := notBeforeParam(q.Get("not_before"), time.Now())
	if err != nil {
		return err
	}
	retry, err := retryParams(q, timeout == 0)
	if err != nil {
		return err
	}
	// An ordered lane: the commands of one lane of one device go on the
	// wire one at a time, in acceptance order (part of the body's
	// identity).
	lane := ""
	if q.Has("lane") {
		if lane, err = protocol.ParseLane(q.Get("lane")); err != nil {
			return errBadRequest("lane: " + strings.TrimPrefix(err.Error(), "protocol: "))
		}
	}
	// lane_mode=puback: the lane's next command goes once this one is
	// delivered, not once it is final (part of the body's identity).
	laneMode := ""
	switch v := q.Get("lane_mode"); {
	case !q.Has("lane_mode") || v == "final":
	case v != protocol.LaneModePUBACK:
		return errBadRequest(fmt.Sprintf("lane_mode: %q is neither final nor puback", v))
	case lane == "":
		return errBadRequest("lane_mode: only with a lane")
	case retry.retries > 0:
		return errBadRequest("lane_mode: a command that moves its lane on at its PUBACK is not retried (retries)")
	default:
		laneMode = v
	}
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	entries, batch, perr := protocol.ParseBody(body)
	if perr != nil {
		return newAPIError(perr)
	}
	in := intake{
		client:    cl.Subject,
		device:    device,
		timeout:   timeout,
		expiresIn: expiresIn,
		delay:     delay,
		notBefore: q.Get("not_before"),
		retry:     retry,
		lane:      lane,
		laneMode:  laneMode,
	}
	if !batch {
		e := entries[0]
		if e.Err != nil {
			return newAPIError(e.Err).withID(e.ID)
		}
		c.Set(ctxMsgID, e.Req.ID.Key())
		r := s.intakeOne(c.Request().Context(), in, e.Req)
		switch {
		case r.err != nil:
			return r.err.withID(e.Req.ID.Raw())
		case r.existing != nil:
			return c.JSON(http.StatusOK, viewFor(r.existing, in.client))
		}
		return c.JSONBlob(http.StatusAccepted, acceptedJSON(e.Req.ID))
	}

	results := make([]intakeResult, len(entries))
	var wg sync.WaitGroup
	par := batchParallelism
	if in.lane != "" {
		// A lane's order is the order of acceptance: the batch's order.
		par = 1
	}
	sem := make(chan struct{}, par)
	for i, e := range entries {
		if e.Err != nil {
			results[i] = intakeResult{err: newAPIError(e.Err).withID(e.ID)}
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = s.intakeOne(c.Request().Context(), in, e.Req)
			if results[i].err != nil {
				results[i].err.withID(e.Req.ID.Raw())
			}
		}()
	}
	wg.Wait()

	out := make([]any, len(results))
	ok := false
	var firstErr, unavailable *apiError
	for i, r := range results {
		switch {
		case r.err != nil:
			out[i] = r.err.body()
			if firstErr == nil {
				firstErr = r.err
			}
			if r.err.status == http.StatusServiceUnavailable && unavailable == nil {
				unavailable = r.err
			}
		case r.existing != nil:
			ok = true
			out[i] = viewFor(r.existing, in.client)
		default:
			ok = true
			id := entries[i].Req.ID
			out[i] = acceptedBody{ID: id.Raw(), Status: protocol.StatusQueued, StatusURL: statusURL(id, "")}
		}
	}
	if ok {
		return c.JSON(http.StatusAccepted, out)
	}
	// Nothing accepted: the error status, 503 first since a retry may
	// succeed, with every entry's error in the body.
	decisive := firstErr
	if unavailable != nil {
		decisive = unavailable
		c.Response().Header().Set("Retry-After", fmt.Sprint(unavailable.retryAfter))
	}
	return c.JSON(decisive.status, out)
}

// intake is what the requests of one POST share.
type intake struct {
	client, device     string
	timeout, expiresIn time.Duration
	// delay is how long after acceptance the command waits (not_before,
	// as given in notBefore; part of the body's identity).
	delay     time.Duration
	notBefore string
	// retry: the retry policy (part of the body's identity).
	retry retryPolicy
	// lane: the ordered lane, "" for none; laneMode "puback" or "" (both
	// part of the body's identity).
	lane, laneMode string
}

// fingerprint is the body's identity: the request and its options.
func fingerprint(in intake, req *protocol.Request) string {
	var extra []string
	if in.notBefore != "" {
		extra = append(extra, "not_before="+in.notBefore)
	}
	if in.retry.retries > 0 {
		extra = append(extra, "retries="+strconv.Itoa(in.retry.retries))
	}
	if in.lane != "" {
		extra = append(extra, "lane="+in.lane)
	}
	if in.laneMode != "" {
		extra = append(extra, "lane_mode="+in.laneMode)
	}
	if in.retry.backoffAs != "" {
		extra = append(extra, "retry_backoff="+in.retry.backoffAs)
	}
	extra = append(extra, in.retry.onIdentity()...)
	return protocol.Fingerprint(in.device, req.Method, req.Params, in.timeout, in.expiresIn, extra...)
}

// Bounds of retry_backoff.
const (
	MinBackoff        = 100 * time.Millisecond
	MaxBackoff        = time.Hour
	MaxBackoffFactor  = 10.0
	DefaultBackoffMul = 2.0
)

// backoffParam reads retry_backoff, "initial[,multiplier[,max]]" (a
// duration, a number from 1 to 10, a duration; default multiplier 2 and
// max the larger of initial and 1m; durations from 100ms to 1h, max not
// below initial). It needs retries of at least 1. "" is no backoff.
func backoffParam(v string, retries int) (mailbox.Backoff, error) {
	var b mailbox.Backoff
	if v == "" {
		return b, nil
	}
	bad := func(why string) (mailbox.Backoff, error) {
		return mailbox.Backoff{}, errBadRequest(fmt.Sprintf("retry_backoff: %q: %s (initial[,multiplier[,max]], e.g. 1s,2,30s)", v, why))
	}
	if retries < 1 {
		return bad("needs retries of at least 1")
	}
	parts := strings.Split(v, ",")
	if len(parts) > 3 {
		return bad("at most three parts")
	}
	dur := func(s string) (time.Duration, bool) {
		d, err := config.ParseDuration(strings.TrimSpace(s))
		return d, err == nil && d >= MinBackoff && d <= MaxBackoff
	}
	var ok bool
	if b.Initial, ok = dur(parts[0]); !ok {
		return bad("the initial wait must be a duration from 100ms to 1h")
	}
	b.Multiplier, b.Max = DefaultBackoffMul, max(b.Initial, time.Minute)
	if len(parts) > 1 {
		m, err := strconv.ParseFloat(strings.TrimSpace(parts[1]), 64)
		if err != nil || !(m >= 1 && m <= MaxBackoffFactor) {
			return bad("the multiplier must be a number from 1 to 10")
		}
		b.Multiplier = m
	}
	if len(parts) > 2 {
		if b.Max, ok = dur(parts[2]); !ok || b.Max < b.Initial {
			return bad("the longest wait must be a duration from the initial wait to 1h")
		}
	}
	return b, nil
}

// notBeforeParam reads not_before: an RFC 3339 time or a duration from
// now, at most MaxNotBefore ahead; it returns the delay (0 when absent or
// in the past: the command is due at once).
func notBeforeParam(v string, now time.Time) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	var d time.Duration
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		d = t.Sub(now)
	} else if d, err = config.ParseDuration(v); err != nil || d < 0 {
		return 0, errBadRequest(fmt.Sprintf("not_before: %q is neither an RFC 3339 time nor a duration (10m, 2h)", v))
	}
	if d > MaxNotBefore {
		return 0, errBadRequest("not_before: at most 30 days ahead")
	}
	return max(d, 0), nil
}

// intakeOne reserves, publishes and queues one command. A request seen
// before with the same body answers the existing command (200); one whose
// earlier attempt is still pending under another request's lease waits
// for that outcome, at most about one lease.
//
// Its span, "intake", is a child of the request's (observe); the
// publish's span is its child.
func (s *Server) intakeOne(ctx context.Context, in intake, req *protocol.Request) (r intakeResult) {
	ctx, span := telemetry.Tracer().Start(ctx, "intake", trace.WithAttributes(
		attribute.String("client_id", in.client), attribute.String("device_id", in.device),
		attribute.String("msg_id", req.ID.Key()), attribute.String("method", req.Method)))
	defer func() {
		switch {
		case r.err != nil:
			span.SetStatus(codes.Error, r.err.Error())
		case r.existing != nil:
			span.SetAttributes(attribute.String("outcome", "existing"))
		default:
			span.SetAttributes(attribute.String("outcome", "accepted"))
		}
		span.End()
	}()
	cmd := &mailbox.Command{
		Client:      in.client,
		Device:      in.device,
		ID:          req.ID,
		Method:      req.Method,
		Params:      req.Params,
		Fingerprint: fingerprint(in, req),
		Status:      protocol.StatusPending,
		Timeout:     in.timeout,
		ExpiresIn:   in.expiresIn,
		Delay:       in.delay,
		Retries:     in.retry.retries,
		RetryOn:     in.retry.on,
		Lane:        in.lane,
		LaneMode:    in.laneMode,
		Backoff:     in.retry.backoff,
	}
	lease := 2 * s.cfg.ConfirmTimeout
	giveUp := time.Now().Add(lease + s.cfg.ConfirmTimeout)
	poll := 5 * time.Millisecond
	for {
		outcome, rec, err := s.store.Reserve(ctx, cmd)
		switch {
		case errors.Is(err, mailbox.ErrConflict):
			return intakeResult{err: newAPIError(protocol.NewError(protocol.CodeConflict,
				"conflict: this id was used before with a different body (device, method, params, timeout, expires_in, one_way, not_before, retries, retry_on, retry_backoff, lane or lane_mode)", nil))}
		case err != nil:
			if ctx.Err() != nil {
				return intakeResult{err: errNotAccepted("request cancelled")}
			}
			s.metrics.publishFailures.WithLabelValues("redis").Inc()
			s.log.WarnContext(ctx, "cannot reserve command", "client_id", in.client, "msg_id", req.ID.Key(), "err", err)
			if mailbox.NotSent(err) && !errors.Is(err, mailbox.ErrClaimed) {
				return intakeResult{err: errNotAccepted("Redis is unavailable")}
			}
			// A step may have run (the claim at least): a retry with the
			// same id completes it; without one the claim's watchdog ends
			// the command, and the client gets that result.
			return intakeResult{err: errOutcomeUnknown("Redis did not complete the reservation")}
		}
		if outcome == mailbox.Reserved || outcome == mailbox.Retake {
			return s.publish(ctx, in, req, rec)
		}
		if rec.Status != protocol.StatusPending {
			return intakeResult{existing: rec}
		}
		// Pending under another request's lease: wait for its outcome
		// (queued, released, or the lease running out, which we retake).
		// An earlier request's publish is under way: its outcome is not
		// known yet.
		if time.Now().After(giveUp) {
			return intakeResult{err: errOutcomeUnknown("an earlier request with this id is still being published")}
		}
		select {
		case <-ctx.Done():
			return intakeResult{err: errOutcomeUnknown("request cancelled while an earlier request with this id was being published")}
		case <-s.stopping:
			return intakeResult{err: errOutcomeUnknown("the server is shutting down while an earlier request with this id is being published")}
		case <-time.After(poll):
		}
		poll = min(2*poll, 100*time.Millisecond)
	}
}

// publish publishes a reserved command with a confirm and marks it
// queued; on failure it releases the reservation. It does not stop when
// the client goes away: its own deadline is one confirm timeout plus the
// Redis calls around it, so no reservation is left behind by a hang-up.
func (s *Server) publish(reqCtx context.Context, in intake, req *protocol.Request, rec *mailbox.Command) intakeResult {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), s.cfg.ConfirmTimeout+2*time.Second)
	defer cancel()
	key := req.ID.Key()

	payload, err := json.Marshal(req)
	if err != nil {
		return intakeResult{err: errBadRequest("cannot encode the request")}
	}
	accepted := rec.CreatedAt
	if accepted.IsZero() {
		accepted = time.Now()
	}
	deliverBy := rec.DeliverBy
	if deliverBy.IsZero() {
		deliverBy = accepted.Add(in.expiresIn)
	}
	ctx, span := s.publishSpan(ctx, in.device)
	defer span.End()
	env := commandEnvelope(in.client, in.device, req.ID, payload, accepted, deliverBy, in.timeout, 1, telemetry.TraceParent(ctx))
	body, err := env.Encode()
	if err != nil {
		s.release(in.device, in.client, key, rec.LeaseToken)
		return intakeResult{err: errBadRequest("cannot encode the command")}
	}
	if err := s.publishCommand(ctx, body, in.client, in.device, req.ID, env.TraceParent); err != nil {
		span.SetStatus(codes.Error, err.Error())
		reason := s.publishFailed(err)
		if definitelyNotPublished(reason) {
			s.log.WarnContext(ctx, "publish failed; command not accepted", "client_id", in.client, "msg_id", key, "reason", reason, "err", err)
			s.release(in.device, in.client, key, rec.LeaseToken)
			return intakeResult{err: errNotAccepted(unavailableDetail(reason))}
		}
		// The message may be in a queue: the reservation keeps its lease,
		// the worker that takes the message queues the command, and a
		// retry with the same id learns the outcome (DESIGN §8.4).
		s.log.WarnContext(ctx, "publish not confirmed; outcome unknown", "client_id", in.client, "msg_id", key, "reason", reason, "err", err)
		return intakeResult{err: errOutcomeUnknown(unavailableDetail(reason))}
	}
	if err := s.store.MarkQueued(ctx, in.device, in.client, key); err != nil {
		// The command is durable in RabbitMQ: the worker queues a pending
		// record when it takes the message, so the command is accepted.
		s.log.WarnContext(ctx, "published but cannot mark queued; the worker will", "client_id", in.client, "msg_id", key, "err", err)
	}
	s.metrics.accepted.Inc()
	return intakeResult{accepted: true}
}

// commandEnvelope is the envelope of a command: as intake publishes it
// (attempt 1), and as a replay publishes it again (a higher attempt).
// The times are sent in UTC to the millisecond.
func commandEnvelope(client, device string, id protocol.ID, payload []byte, accepted, deliverBy time.Time, answerWithin time.Duration, attempt int, trace string) protocol.Envelope {
	return protocol.Envelope{
		Kind:           protocol.KindCommand,
		Client:         client,
		Device:         device,
		MsgID:          id,
		Payload:        payload,
		AcceptedAt:     accepted.UTC().Truncate(time.Millisecond),
		DeliverBy:      deliverBy.UTC().Truncate(time.Millisecond),
		AnswerWithinMS: answerWithin.Milliseconds(),
		Attempt:        attempt,
		TraceParent:    trace,
	}
}

// publishSpan starts the span of a command's publish to RabbitMQ (a
// producer span): its traceparent goes into the envelope and the AMQP
// headers, so that the worker continues it.
func (s *Server) publishSpan(ctx context.Context, device string) (context.Context, trace.Span) {
	exchange, key := s.deviceRoute(device)
	return telemetry.Tracer().Start(ctx, "publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.destination.name", exchange),
			attribute.String("messaging.rabbitmq.destination.routing_key", key)))
}

// publishCommand publishes an encoded command envelope to the device's
// command queue, protocol.Partition(device, GW_PARTITIONS) mod GW_QUEUES
// (persistent, mandatory, with a publisher confirm), with the message id
// of the client's command id.
func (s *Server) publishCommand(ctx context.Context, body []byte, client, device string, id protocol.ID, trace string) error {
	exchange, key := s.deviceRoute(device)
	return s.pub.Publish(ctx, exchange, key, body, amqpx.Headers{
		MessageID:   protocol.DeviceMsgID(client, id),
		TraceParent: trace,
		Type:        protocol.KindCommand,
	})
}

// publishFailed counts a failed publish in gw_api_publish_failures_total
// and returns its reason.
func (s *Server) publishFailed(err error) string {
	reason := publishReason(err)
	s.metrics.publishFailures.WithLabelValues(reason).Inc()
	return reason
}

// definitelyNotPublished reports whether a publish failure means that no
// queue has the message (nothing sent, nacked, returned). After a confirm
// timeout or a channel lost before the confirm the message may still be
// enqueued: the reservation is then kept until its lease runs out, so the
// worker can still take the message and a retry retakes it (mailbox.Release).
func definitelyNotPublished(reason string) bool {
	switch reason {
	case "not_connected", "blocked", "nacked", "returned", "closed":
		return true
	}
	return false
}

// release ends a reservation whose publish failed, so that a retry
// publishes at once.
func (s *Server) release(device, client, key, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.store.Release(ctx, device, client, key, token); err != nil {
		s.log.Warn("cannot release reservation; it ends with its lease", "client_id", client, "msg_id", key, "err", err)
	}
}

// unavailableDetail explains a 503 of a failed publish (the error adds
// whether the command was accepted).
func unavailableDetail(reason string) string {
	switch reason {
	case "not_connected", "closed":
		return "RabbitMQ is unavailable"
	case "channel_closed":
		return "the connection to RabbitMQ closed before it confirmed the command"
	case "blocked":
		return "RabbitMQ is blocked (resource alarm)"
	case "returned":
		return "no queue took the command"
	case "nacked":
		return "RabbitMQ refused the command (queue full?)"
	case "confirm_timeout":
		return "RabbitMQ did not confirm the command in time"
	}
	return "the command could not be published"
}

// bodyReadTimeout bounds the reading of a request body (at most 64 KiB by
// default: a healthy client sends it in milliseconds).
const bodyReadTimeout = 5 * time.Second

// readBody reads the request body within Config.BodyLimit: 413 (-32014)
// beyond it, and within bodyReadTimeout.
func (s *Server) readBody(c echo.Context) ([]byte, error) {
	return s.readBodyLimit(c, s.cfg.BodyLimit)
}

// readBodyLimit is readBody with its own limit (the group endpoints take
// up to GroupBodyLimit).
func (s *Server) readBodyLimit(c echo.Context, limit int64) ([]byte, error) {
	r := c.Request()
	if r.ContentLength > limit {
		return nil, errTooLarge(limit)
	}
	// A body trickled in byte by byte would hold its place in flight for
	// the whole ReadTimeout: it gets bodyReadTimeout.
	_ = http.NewResponseController(c.Response().Writer).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	c.Set(ctxBodyRead, true)
	b, err := io.ReadAll(http.MaxBytesReader(c.Response().Writer, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge(limit)
		}
		return nil, errBadRequest("cannot read the body")
	}
	if len(b) == 0 {
		return nil, newAPIError(protocol.ErrParse("empty body"))
	}
	return b, nil
}

// durationParam reads a query duration (Go syntax or whole seconds),
// def when absent, 400 when unparsable or outside [lo, hi].
func durationParam(q url.Values, name string, def, lo, hi time.Duration) (time.Duration, error) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	d, err := config.ParseDuration(v)
	if err != nil {
		return 0, errBadRequest(fmt.Sprintf("%s: %q is neither a duration (30s) nor whole seconds", name, v))
	}
	if d < lo || d > hi {
		return 0, errBadRequest(fmt.Sprintf("%s: %s is out of range [%s, %s]", name, d, lo, hi))
	}
	return d, nil
}

// acceptedJSON is the body of a 202 for one command: acceptedBody, as
// encoding/json writes it, without reflection (it is the answer to every
// accepted command).
func acceptedJSON(id protocol.ID) []byte {
	raw, u := id.Raw(), statusURL(id, "")
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	b := make([]byte, 0, len(raw)+len(u)+48)
	b = append(b, `{"id":`...)
	b = append(b, raw...)
	b = append(b, `,"status":"`+string(protocol.StatusQueued)+`","status_url":`...)
	b = appendJSONString(b, u)
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// statusURL is the path of a command's status; client is added for an
// operator reading another client's command.
func statusURL(id protocol.ID, client string) string {
	u := "/v1/commands/" + url.PathEscape(id.Key())
	if client != "" {
		u += "?client=" + url.QueryEscape(client)
	}
	return u
}
