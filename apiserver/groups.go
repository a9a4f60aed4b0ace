package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Group commands (issue 14): POST /v1/commands sends one JSON-RPC request
// to a list of devices or to a named group; GET and DELETE
// /v1/group-commands/{id} read (long-poll) and cancel it; PUT, GET and
// DELETE /v1/groups/{name} keep the named groups (operators). The group's
// record and counters live in the client's partition (mailbox/group.go);
// intake writes the record and publishes one envelope, and a worker
// creates the children, so the 202 does not wait for 10,000 of them.

// GroupBodyLimit is the largest body of POST /v1/commands and PUT
// /v1/groups/{name}: 10,000 device IDs of up to 128 characters.
const GroupBodyLimit = 2 << 20

// MaxGroupRate is the highest rate (children per second) of a rollout.
const MaxGroupRate = 100000

// groupBody is the body of POST /v1/commands.
type groupBody struct {
	Request json.RawMessage `json:"request"`
	Devices []string        `json:"devices,omitempty"`
	Group   string          `json:"group,omitempty"`
}

// groupOptions are the query options of a group command.
type groupOptions struct {
	timeout, expiresIn time.Duration
	rate               float64
	abortAfter         string // as given
	abortAt            int    // failures that stop the group (0: never)
	// retry is every child's retry policy.
	retry retryPolicy
}

// decodeStrict decodes one JSON object into v: unknown fields and
// trailing data are errors.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON object")
	}
	return nil
}

// bodyError is the 400 of a body that did not decode: -32700 when it is
// not JSON, else -32600.
func bodyError(raw []byte, detail string) error {
	if !json.Valid(raw) {
		return newAPIError(protocol.ErrParse(detail))
	}
	return errBadRequest(detail)
}

// parseGroupBody parses the body of POST /v1/commands (an outsider's
// bytes): one JSON object with a valid JSON-RPC request and one target,
// a device list or a valid group name. It does not check the devices
// (checkDevices does).
func parseGroupBody(raw []byte) (*groupBody, *protocol.Request, error) {
	var b groupBody
	if err := decodeStrict(raw, &b); err != nil {
		return nil, nil, bodyError(raw, "the body must be {\"request\": a JSON-RPC request, \"devices\": [device IDs] or \"group\": a group's name}: "+err.Error())
	}
	if len(b.Request) == 0 {
		return nil, nil, errBadRequest("request: missing (one JSON-RPC request)")
	}
	req, perr := protocol.ParseRequest(b.Request)
	if perr != nil {
		return nil, nil, newAPIError(perr)
	}
	switch {
	case b.Group != "" && len(b.Devices) > 0:
		return nil, nil, errBadRequest("devices and group: give one target, not both")
	case b.Group != "" && !protocol.ValidIdentity(b.Group):
		return nil, nil, errBadRequest("group: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	return &b, req, nil
}

// parseGroupOptions reads timeout, expires_in, rate and abort_after for
// total children; the single-command options a group does not take are
// a 400.
func parseGroupOptions(q url.Values, total int) (groupOptions, error) {
	var o groupOptions
	for _, name := range []string{"one_way", "not_before"} {
		if q.Has(name) {
			return o, errBadRequest(name + ": not supported for group commands")
		}
	}
	var err error
	if o.timeout, err = durationParam(q, "timeout", DefaultTimeout, MinTimeout, MaxTimeout); err != nil {
		return o, err
	}
	if o.expiresIn, err = durationParam(q, "expires_in", DefaultExpiresIn, MinExpiresIn, MaxExpiresIn); err != nil {
		return o, err
	}
	if v := q.Get("rate"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(r) || r <= 0 || r > MaxGroupRate {
			return o, errBadRequest(fmt.Sprintf("rate: %q is not a number of children per second above 0 and at most %d", v, MaxGroupRate))
		}
		o.rate = r
	}
	if v := q.Get("abort_after"); v != "" {
		if o.abortAt, err = abortAt(v, total); err != nil {
			return o, err
		}
		o.abortAfter = v
	}
	if o.retry, err = retryParams(q, false); err != nil {
		return o, err
	}
	return o, nil
}

// abortAt turns abort_after (a count of failures, or a percentage of the
// children such as "5%") into the failure count that stops the group: a
// percentage rounds up, and is at least 1.
func abortAt(v string, total int) (int, error) {
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsNaN(f) || f <= 0 || f > 100 {
			return 0, errBadRequest(fmt.Sprintf("abort_after: %q is not a percentage above 0%% and at most 100%%", v))
		}
		return max(1, int(math.Ceil(f*float64(total)/100-1e-9))), nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > total {
		return 0, errBadRequest(fmt.Sprintf("abort_after: %q is neither a count of failures from 1 to %d (the children) nor a percentage (5%%)", v, total))
	}
	return n, nil
}

// checkDevices checks a target list: 1 to MaxGroupDevices valid device
// IDs without repeats, whose child ids are valid (400), all covered by
// the token (403 naming the first that is not).
func checkDevices(cl *auth.Claims, gid protocol.ID, devices []string) error {
	if len(devices) == 0 {
		return errBadRequest("devices: at least one device")
	}
	if len(devices) > protocol.MaxGroupDevices {
		return errBadRequest(fmt.Sprintf("devices: at most %d devices", protocol.MaxGroupDevices))
	}
	seen := make(map[string]struct{}, len(devices))
	for _, d := range devices {
		if !protocol.ValidIdentity(d) {
			return errBadRequest(fmt.Sprintf("devices: %q: %s", d, strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: ")))
		}
		if _, dup := seen[d]; dup {
			return errBadRequest(fmt.Sprintf("devices: %q appears twice", d))
		}
		seen[d] = struct{}{}
		if gid.IsZero() {
			continue
		}
		if _, err := protocol.ChildID(gid, d); err != nil {
			return errBadRequest(fmt.Sprintf("id: the child id of device %q, \"{id}:{device}\", would be longer than 128 characters", d))
		}
	}
	if cl != nil {
		for _, d := range devices {
			if !cl.MayCommand(d) {
				return errForbidden(fmt.Sprintf("the token may not command device %q", d))
			}
		}
	}
	return nil
}

// groupFingerprint is a group body's identity: the request, the options
// and the target (the group's name, or the device list).
func groupFingerprint(req *protocol.Request, o groupOptions, b *groupBody) string {
	target := "group=" + b.Group
	if b.Group == "" {
		h := sha256.New()
		for _, d := range b.Devices {
			h.Write([]byte(d))
			h.Write([]byte{'\n'})
		}
		target = "devices=" + hex.EncodeToString(h.Sum(nil)[:16])
	}
	extra := append([]string{"rate=" + strconv.FormatFloat(o.rate, 'f', -1, 64), "abort_after=" + o.abortAfter,
		"retries=" + strconv.Itoa(o.retry.retries), "retry_backoff=" + o.retry.backoffAs}, o.retry.onIdentity()...)
	return protocol.Fingerprint(target, req.Method, req.Params, o.timeout, o.expiresIn, extra...)
}

// postGroupCommand is POST /v1/commands: a group command. 202 once its
// record is in Redis and its envelope durable in RabbitMQ; 200 with the
// group's view for the same id and body again; 409 for another body.
func (s *Server) postGroupCommand(c echo.Context) error {
	cl := claimsOf(c)
	if q := c.QueryParam("client"); q != "" && q != cl.Subject {
		return errBadRequest("client: a command is always sent as the token's subject")
	}
	raw, err := s.readBodyLimit(c, GroupBodyLimit)
	if err != nil {
		return err
	}
	b, req, err := parseGroupBody(raw)
	if err != nil {
		return err
	}
	c.Set(ctxMsgID, req.ID.Key())
	ctx := c.Request().Context()
	devices := b.Devices
	if b.Group != "" {
		dg, err := s.store.GetDeviceGroup(ctx, b.Group)
		if err != nil {
			return s.storeError(err, fmt.Sprintf("no device group %q", b.Group))
		}
		devices = dg.Devices
	}
	if err := checkDevices(cl, req.ID, devices); err != nil {
		return err
	}
	o, err := parseGroupOptions(c.QueryParams(), len(devices))
	if err != nil {
		return err
	}
	g := &mailbox.Group{
		Client: cl.Subject, ID: req.ID, Fingerprint: groupFingerprint(req, o, b), Method: req.Method,
		Params: req.Params, Timeout: o.timeout, ExpiresIn: o.expiresIn, Target: b.Group, Rate: o.rate,
		AbortAfter: o.abortAfter, AbortAt: o.abortAt, Retries: o.retry.retries, RetryOn: o.retry.on, Backoff: o.retry.backoff,
	}
	created, rec, err := s.store.ClaimGroup(ctx, g, devices)
	if errors.Is(err, mailbox.ErrConflict) {
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			"conflict: this group command id was used before with a different body (request, target, timeout, expires_in, rate or abort_after)", nil)).withID(req.ID.Raw())
	}
	if err != nil {
		return s.storeError(err, "no such group command")
	}
	if !created && rec.State == "queued" {
		return c.JSON(http.StatusOK, groupViewFor(rec))
	}
	// New, or an earlier publish whose outcome is not known: publish (a
	// second envelope is harmless: the worker resumes at the cursor).
	env := protocol.GroupEnvelope{Client: cl.Subject, MsgID: req.ID, Method: req.Method, Params: req.Params,
		TimeoutMS: o.timeout.Milliseconds(), ExpiresMS: o.expiresIn.Milliseconds(), Fingerprint: g.Fingerprint,
		TraceParent: telemetry.TraceParent(c.Request().Context())}
	body, err := env.Encode()
	if err != nil {
		return errBadRequest("cannot encode the group command")
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ConfirmTimeout+2*time.Second)
	defer cancel()
	exchange, key := s.deviceRoute(cl.Subject)
	if err := s.pub.Publish(pctx, exchange, key, body, amqpx.Headers{
		MessageID: "group:" + protocol.DeviceMsgID(cl.Subject, req.ID), TraceParent: env.TraceParent, Type: protocol.KindGroup,
	}); err != nil {
		reason := s.publishFailed(err)
		s.log.Warn("group command publish failed", "client_id", cl.Subject, "msg_id", req.ID.Key(), "reason", reason, "err", err)
		// Nothing was created yet: the record stays pending, and a retry
		// with the same id and body publishes again.
		if definitelyNotPublished(reason) {
			return errNotAccepted(unavailableDetail(reason))
		}
		return errOutcomeUnknown(unavailableDetail(reason))
	}
	if err := s.store.MarkGroupQueued(pctx, cl.Subject, req.ID.Key()); err != nil {
		s.log.Warn("group command published but not marked queued; the worker will", "client_id", cl.Subject, "msg_id", req.ID.Key(), "err", err)
	}
	s.metrics.groupsAccepted.Inc()
	return c.JSON(http.StatusAccepted, acceptedBody{ID: req.ID.Raw(), Status: protocol.StatusQueued,
		StatusURL: "/v1/group-commands/" + url.PathEscape(req.ID.Key())})
}

// groupView is GET /v1/group-commands/{id}.
type groupView struct {
	ID     json.RawMessage `json:"id"`
	Client string          `json:"client"`
	// Status: pending (not yet durable), queued (no child created yet),
	// running, completed (every child final), aborted or cancelled (it
	// stopped; Done tells whether every child is final yet).
	Status string `json:"status"`
	// Done: every child is final.
	Done   bool   `json:"done"`
	Method string `json:"method"`
	Group  string `json:"group,omitempty"`
	// Total children; Released created so far; Final of them final, by
	// status in Counts; InFlight created and not final; Failures final
	// as neither succeeded nor cancelled.
	Total    int            `json:"total"`
	Released int            `json:"released"`
	Final    int            `json:"final"`
	InFlight int            `json:"in_flight"`
	Failures int            `json:"failures"`
	Counts   map[string]int `json:"counts"`
	// Rate (children per second, 0: all at once), AbortAfter as given and
	// the failure count it means.
	Rate       float64 `json:"rate,omitempty"`
	AbortAfter string  `json:"abort_after,omitempty"`
	AbortAt    int     `json:"abort_at,omitempty"`
	Timeout    string  `json:"timeout"`
	ExpiresIn  string  `json:"expires_in"`
	// Retries, RetryOn and RetryBackoff are every child's.
	Retries      int    `json:"retries,omitempty"`
	RetryOn      string `json:"retry_on,omitempty"`
	RetryBackoff string `json:"retry_backoff,omitempty"`
	// ChildIDs says how a child's id is made (GET /v1/commands/{child id}).
	ChildIDs   string    `json:"child_ids"`
	CreatedAt  time.Time `json:"created_at"`
	StopReason string    `json:"stop_reason,omitempty"`
	StoppedAt  time.Time `json:"stopped_at,omitzero"`
}

func groupViewFor(g *mailbox.Group) groupView {
	v := groupView{
		ID: g.ID.Raw(), Client: g.Client, Done: g.Final(), Method: g.Method, Group: g.Target, Total: g.Total,
		Released: g.Released, Final: g.Done, InFlight: max(0, g.Released-g.Done), Failures: g.Failures,
		Counts: g.Counts, Rate: g.Rate, AbortAfter: g.AbortAfter, AbortAt: g.AbortAt,
		Timeout: g.Timeout.String(), ExpiresIn: g.ExpiresIn.String(),
		ChildIDs: g.ID.Key() + ":{device}", CreatedAt: utc(g.CreatedAt), StopReason: g.StopReason, StoppedAt: utc(g.StoppedAt),
	}
	v.Retries, v.RetryOn = g.Retries, g.RetryOn
	if b := g.Backoff; b.Initial > 0 {
		v.RetryBackoff = fmt.Sprintf("%s,%s,%s", b.Initial, strconv.FormatFloat(b.Multiplier, 'f', -1, 64), b.Max)
	}
	switch {
	case g.Stopped != "":
		v.Status = g.Stopped
	case v.Done:
		v.Status = "completed"
	case g.State != "queued":
		v.Status = "pending"
	case g.Released == 0:
		v.Status = "queued"
	default:
		v.Status = "running"
	}
	return v
}

// getGroupCommand is GET /v1/group-commands/{id}[?wait=30s]: the group's
// counts, long-polled until every child is final or the wait ends.
func (s *Server) getGroupCommand(c echo.Context) error {
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	wait := time.Duration(0)
	if v := c.QueryParam("wait"); v != "" {
		if wait, err = config.ParseDuration(v); err != nil || wait < 0 {
			return errBadRequest(fmt.Sprintf("wait: %q is neither a duration (30s) nor whole seconds", v))
		}
		wait = min(wait, s.cfg.MaxWait)
	}
	ctx := c.Request().Context()
	g, err := s.store.GetGroup(ctx, client, id.Key())
	if err != nil {
		return s.storeError(err, "no such group command")
	}
	if wait > 0 && !g.Final() {
		rc := http.NewResponseController(c.Response().Writer)
		_ = rc.SetWriteDeadline(time.Now().Add(wait + s.cfg.WriteTimeout))
		caller := claimsOf(c).Subject
		if err := s.takePoll(caller); err != nil {
			return err
		}
		defer s.polls.give(caller)
		s.leaveInFlight(c)
		err := s.pollUntil(ctx, time.Now().Add(wait), 20*time.Millisecond, 250*time.Millisecond, func() (bool, error) {
			next, err := s.store.GetGroup(ctx, client, id.Key())
			if err != nil {
				return false, s.storeError(err, "the group command is gone")
			}
			g = next
			return g.Final(), nil
		})
		if err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, groupViewFor(g))
}

// listGroupCommands is GET /v1/group-commands?limit=20 (operators): the
// newest group commands of every client.
func (s *Server) listGroupCommands(c echo.Context) error {
	limit := 20
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return errBadRequest("limit: an integer from 1 to 100")
		}
		limit = n
	}
	gs, err := s.store.ListGroups(c.Request().Context(), limit)
	if err != nil {
		return s.storeError(err, "no group commands")
	}
	out := struct {
		Groups []groupView `json:"groups"`
	}{Groups: make([]groupView, len(gs))}
	for i, g := range gs {
		out.Groups[i] = groupViewFor(g)
	}
	return c.JSON(http.StatusOK, out)
}

// cancelGroupCommand is DELETE /v1/group-commands/{id}: the group stops
// releasing children and every child not yet on the wire is cancelled
// (-32004, data.reason "group cancelled: …"); 200 with the group's view,
// 409 when every child was final already.
func (s *Server) cancelGroupCommand(c echo.Context) error {
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	g, err := s.store.GetGroup(ctx, client, id.Key())
	if err != nil {
		return s.storeError(err, "no such group command")
	}
	if g.Final() {
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			"conflict: every child of the group command is final", map[string]any{"status": groupViewFor(g).Status})).withID(g.ID.Raw())
	}
	if _, err := s.store.StopGroup(ctx, client, id.Key(), "cancelled", "cancelled by the client"); err != nil {
		return s.storeError(err, "no such group command")
	}
	// The partition's owner does this too (the group's timer); doing it
	// here makes the answer show it.
	if _, err := s.store.CancelChildren(ctx, client, id.Key()); err != nil {
		return s.storeError(err, "no such group command")
	}
	s.metrics.groupsCancelled.Inc()
	if g, err = s.store.GetGroup(ctx, client, id.Key()); err != nil {
		return s.storeError(err, "no such group command")
	}
	return c.JSON(http.StatusOK, groupViewFor(g))
}

// deviceGroupView is the body of PUT and the answer of GET /v1/groups/{name}.
type deviceGroupView struct {
	Name      string    `json:"name"`
	Devices   []string  `json:"devices"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// groupName parses {name}.
func groupName(c echo.Context) (string, error) {
	n := c.Param("name")
	if !protocol.ValidIdentity(n) {
		return "", errBadRequest("name: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	return n, nil
}

// putDeviceGroup is PUT /v1/groups/{name} (operators): body
// {"devices": [...]}, 1 to 10,000 device IDs; 201 when new, else 200.
func (s *Server) putDeviceGroup(c echo.Context) error {
	name, err := groupName(c)
	if err != nil {
		return err
	}
	raw, err := s.readBodyLimit(c, GroupBodyLimit)
	if err != nil {
		return err
	}
	var b struct {
		Devices []string `json:"devices"`
	}
	if err := decodeStrict(raw, &b); err != nil {
		return bodyError(raw, "the body must be {\"devices\": [device IDs]}: "+err.Error())
	}
	if err := checkDevices(nil, protocol.ID{}, b.Devices); err != nil {
		return err
	}
	ctx := c.Request().Context()
	created, err := s.store.PutDeviceGroup(ctx, name, b.Devices)
	if err != nil {
		return s.storeError(err, "no such group")
	}
	dg, err := s.store.GetDeviceGroup(ctx, name)
	if err != nil {
		return s.storeError(err, "no such group")
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	return c.JSON(code, deviceGroupView{Name: name, Devices: dg.Devices, UpdatedAt: utc(dg.UpdatedAt)})
}

// getDeviceGroup is GET /v1/groups/{name} (operators).
func (s *Server) getDeviceGroup(c echo.Context) error {
	name, err := groupName(c)
	if err != nil {
		return err
	}
	dg, err := s.store.GetDeviceGroup(c.Request().Context(), name)
	if err != nil {
		return s.storeError(err, fmt.Sprintf("no device group %q", name))
	}
	return c.JSON(http.StatusOK, deviceGroupView{Name: name, Devices: dg.Devices, UpdatedAt: utc(dg.UpdatedAt)})
}

// deleteDeviceGroup is DELETE /v1/groups/{name} (operators): 204.
func (s *Server) deleteDeviceGroup(c echo.Context) error {
	name, err := groupName(c)
	if err != nil {
		return err
	}
	if err := s.store.DeleteDeviceGroup(c.Request().Context(), name); err != nil {
		return s.storeError(err, fmt.Sprintf("no device group %q", name))
	}
	return c.NoContent(http.StatusNoContent)
}

// retryCommand is POST /v1/commands/{id}/retry: a command of the caller
// (or, for an operator, of ?client=) that ended failed, timeout, expired
// or rejected is queued and published again under the same id, like the
// replay of a dead letter: 202 with the command, queued; its client gets
// a second final result. 409 for any other status.
func (s *Server) retryCommand(c echo.Context) error {
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	rec, err := s.store.Retry(ctx, client, id.Key())
	if errors.Is(err, mailbox.ErrState) && rec != nil {
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			fmt.Sprintf("conflict: the command is %s; only a failed, timeout, expired or rejected command may be retried", rec.Status),
			map[string]any{"status": string(rec.Status)})).withID(rec.ID.Raw())
	}
	if err != nil {
		return s.storeError(err, "no such command")
	}
	trace := telemetry.TraceParent(c.Request().Context())
	body, err := replayEnvelope(rec, 1+rec.Replays, trace)
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ConfirmTimeout+2*time.Second)
		err = s.publishCommand(pctx, body, client, rec.Device, rec.ID, trace)
		cancel()
	}
	if err != nil {
		// The record is queued: its deliver-by timer expires it if no
		// message ever comes; a retry now publishes it again.
		reason := s.publishFailed(err)
		s.log.Warn("retry: publish failed", "client_id", client, "msg_id", id.Key(), "reason", reason, "err", err)
		return errUnavailable("the retried command could not be published (" + reason + "); retry it again")
	}
	s.metrics.retried.Inc()
	return c.JSON(http.StatusAccepted, viewFor(rec, claimsOf(c).Subject))
}
