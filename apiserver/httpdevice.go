package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Devices over HTTP (issue 15): a sleepy device that cannot hold an MQTT
// session polls for its commands and posts its answers, with a device
// token whose subject is the device.
//
//	GET  /v1/devices/{d}/commands/next?max=10&wait=30s&ack=ID,ID
//	POST /v1/devices/{d}/responses
//
// A poll returns the waiting commands, each with the device-facing
// JSON-RPC request (id "{client}:{id}", as over MQTT) and an ack token. A
// returned command is on the wire; it is delivered when the device
// answers it (POST …/responses) or acknowledges it (ack= in a later
// poll), and offered again after httpVisibility if neither came, as a
// queue redelivers. Expiry, timeout, cancel and one-way work as over
// MQTT, with the same ids, so a device may switch between the two, but
// it uses one at a time: a poll while it holds an MQTT session is 409.

// httpVisibility is how long a polled command stays hidden from the next
// polls of its device, waiting for its ack or its answer.
const httpVisibility = 30 * time.Second

// Bounds of a poll.
const (
	defaultPollMax = 10
	maxPollMax     = 100
	maxAcks        = 100
)

// ackToken is the form of an ack token: a mailbox stream entry ID.
var ackToken = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

// polledCommand is one command of a poll's answer. TraceParent is the
// command's W3C trace context (the worker's dispatch span): a device
// that sends it as the traceparent header of its answer continues the
// command's trace.
type polledCommand struct {
	Ack         string          `json:"ack"`
	Request     json.RawMessage `json:"request"`
	TraceParent string          `json:"traceparent,omitempty"`
}

type pollView struct {
	Commands []polledCommand `json:"commands"`
}

// pollingDevice checks that the token is the device's own.
func pollingDevice(c echo.Context) (string, error) {
	d := c.Param("device_id")
	if !protocol.ValidIdentity(d) {
		return "", errBadRequest("device_id: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	if sub := claimsOf(c).Subject; sub != d {
		return "", errForbidden(fmt.Sprintf("the token is %q's, not the device %q's", sub, d))
	}
	return d, nil
}

// pollCommands is GET /v1/devices/{d}/commands/next.
func (s *Server) pollCommands(c echo.Context) error {
	d, err := pollingDevice(c)
	if err != nil {
		return err
	}
	q := c.QueryParams()
	n := defaultPollMax
	if v := q.Get("max"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxPollMax {
			return errBadRequest(fmt.Sprintf("max: must be an integer from 1 to %d", maxPollMax))
		}
	}
	wait, err := durationParam(q, "wait", 0, 0, s.cfg.MaxWait)
	if err != nil {
		return err
	}
	var acks []mailbox.Entry
	if v := q.Get("ack"); v != "" {
		for _, id := range strings.Split(v, ",") {
			if !ackToken.MatchString(id) {
				return errBadRequest(fmt.Sprintf("ack: %q is not an ack token this endpoint returned", id))
			}
			acks = append(acks, mailbox.Entry{ID: id})
		}
		if len(acks) > maxAcks {
			return errBadRequest(fmt.Sprintf("ack: at most %d tokens", maxAcks))
		}
	}
	ctx := c.Request().Context()
	if node, err := s.store.SessionNode(ctx, d); err != nil {
		return s.storeError(err, "")
	} else if node != "" {
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			"conflict: the device holds an MQTT session; it receives its commands there", nil))
	}
	if err := s.store.SeenPolling(ctx, d); err != nil {
		return s.storeError(err, "")
	}
	if len(acks) > 0 {
		if err := s.store.AckMany(ctx, d, acks); err != nil {
			return s.storeError(err, "")
		}
	}
	es, err := s.store.Poll(ctx, d, n, httpVisibility)
	if err != nil {
		return s.storeError(err, "")
	}
	if len(es) == 0 && wait > 0 {
		if err := s.takePoll(d); err != nil {
			return err
		}
		defer s.polls.give(d)
		s.leaveInFlight(c)
		rc := http.NewResponseController(c.Response().Writer)
		_ = rc.SetWriteDeadline(time.Now().Add(wait + s.cfg.WriteTimeout))
		if es, err = s.waitCommands(c, d, n, time.Now().Add(wait)); err != nil {
			return err
		}
	}
	out := pollView{Commands: make([]polledCommand, 0, len(es))}
	for _, e := range es {
		out.Commands = append(out.Commands, polledCommand{Ack: e.ID, Request: e.Payload, TraceParent: e.TraceParent})
	}
	return c.JSON(http.StatusOK, out)
}

// waitCommands polls the device's mailbox until something is there, the
// deadline passes, the client goes away or the server shuts down.
func (s *Server) waitCommands(c echo.Context, d string, n int, deadline time.Time) ([]mailbox.Entry, error) {
	ctx := c.Request().Context()
	var es []mailbox.Entry
	err := s.pollUntil(ctx, deadline, 50*time.Millisecond, 500*time.Millisecond, func() (bool, error) {
		var err error
		if es, err = s.store.Poll(ctx, d, n, httpVisibility); err != nil {
			return false, s.storeError(err, "")
		}
		return len(es) > 0, nil
	})
	if err != nil {
		return nil, err
	}
	return es, nil
}

// responseOutcome is the outcome of one posted answer.
type responseOutcome struct {
	ID      json.RawMessage `json:"id,omitempty"`
	Outcome string          `json:"outcome"`
	Error   string          `json:"error,omitempty"`
}

// postResponses is POST /v1/devices/{d}/responses: one JSON-RPC response
// or a batch (at most protocol.MaxBatch), each completed as the push server
// completes an answer read over MQTT (mailbox.Store.Complete). It answers
// 200 with the outcome of each: succeeded, failed, late, duplicate,
// timeout, or why it changed nothing (malformed, unknown, other_device,
// not_sent). A single response that is not JSON (-32700), not a JSON-RPC
// response or without a "{client}:{id}" id (-32600) is a 400; in a batch
// such an entry's outcome is malformed.
func (s *Server) postResponses(c echo.Context) error {
	d, err := pollingDevice(c)
	if err != nil {
		return err
	}
	body, err := s.readBody(c)
	if err != nil {
		return err
	}
	var raws []json.RawMessage
	batch := len(bytes.TrimSpace(body)) > 0 && bytes.TrimSpace(body)[0] == '['
	if batch {
		if err := json.Unmarshal(body, &raws); err != nil {
			return newAPIError(protocol.ErrParse("the body is not a JSON array of responses"))
		}
		if len(raws) == 0 || len(raws) > protocol.MaxBatch {
			return errBadRequest(fmt.Sprintf("a batch holds 1 to %d responses", protocol.MaxBatch))
		}
	} else {
		// One response: one that cannot be read is the request's error
		// (400), not an outcome; in a batch it is that entry's outcome.
		if !json.Valid(body) {
			return newAPIError(protocol.ErrParse("the body is not JSON"))
		}
		resp, err := protocol.ParseResponse(body)
		if err == nil {
			_, _, err = protocol.AnswerTarget(resp)
		}
		if err != nil {
			return errBadRequest(strings.TrimPrefix(err.Error(), "protocol: "))
		}
		raws = []json.RawMessage{body}
	}
	ctx := c.Request().Context()
	out := make([]responseOutcome, 0, len(raws))
	for _, raw := range raws {
		o, err := s.completeAnswer(ctx, d, raw)
		if err != nil {
			return err
		}
		out = append(out, o)
	}
	if !batch {
		return c.JSON(http.StatusOK, out[0])
	}
	return c.JSON(http.StatusOK, out)
}

// completeAnswer completes one answer of device d. Its span, "complete",
// is a child of the request's: when the device sent the traceparent it
// got with the command, the result's relay continues it (a span of
// another trace is not kept by the record, mailbox.Complete).
func (s *Server) completeAnswer(ctx context.Context, d string, raw json.RawMessage) (responseOutcome, error) {
	resp, err := protocol.ParseResponse(raw)
	if err != nil {
		return responseOutcome{Outcome: "malformed", Error: err.Error()}, nil
	}
	o := responseOutcome{ID: resp.ID}
	client, id, err := protocol.AnswerTarget(resp)
	if err != nil {
		o.Outcome, o.Error = "malformed", strings.TrimPrefix(err.Error(), "protocol: ")
		return o, nil
	}
	ctx, span := telemetry.Tracer().Start(ctx, "complete", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("client_id", client), attribute.String("device_id", d),
			attribute.String("msg_id", id.Key())))
	defer span.End()
	out, err := s.store.Complete(ctx, client, id.Key(), d, resp, 0, "")
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return o, s.storeError(err, "")
	}
	span.SetAttributes(attribute.String("outcome", string(out)))
	if out == mailbox.OutcomeNoop {
		out = mailbox.OutcomeUnknown
	}
	o.Outcome = string(out)
	return o, nil
}
