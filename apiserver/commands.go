package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// commandView is a command as GET /v1/commands/{id} shows it. Times are
// absent until the transition happened.
type commandView struct {
	ID          json.RawMessage `json:"id"`
	Client      string          `json:"client"`
	Device      string          `json:"device"`
	Method      string          `json:"method"`
	Params      json.RawMessage `json:"params,omitempty"`
	Status      protocol.Status `json:"status"`
	StatusURL   string          `json:"status_url"`
	TimeoutMS   int64           `json:"timeout_ms"`
	OneWay      bool            `json:"one_way,omitempty"`
	ExpiresInMS int64           `json:"expires_in_ms"`
	NotBefore   time.Time       `json:"not_before,omitzero"`
	Retries     int             `json:"retries,omitempty"`
	Tries       int             `json:"tries,omitempty"`
	// RetryOn names the outcomes its retries take (with retries);
	// RetriedOn the one that ended its previous attempt.
	RetryOn   string `json:"retry_on,omitempty"`
	RetriedOn string `json:"retried_on,omitempty"`
	Lane      string `json:"lane,omitempty"`
	LaneWait  bool   `json:"lane_wait,omitempty"`
	LaneMode  string `json:"lane_mode,omitempty"`
	// RetryBackoff is the wait before each retry, "initial,multiplier,max".
	RetryBackoff string `json:"retry_backoff,omitempty"`
	// Group is the id (key) of the group command this command is a
	// child of.
	Group       string    `json:"group,omitempty"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	QueuedAt    time.Time `json:"queued_at,omitzero"`
	SendingAt   time.Time `json:"sending_at,omitzero"`
	SentAt      time.Time `json:"sent_at,omitzero"`
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	DeliverBy   time.Time `json:"deliver_by,omitzero"`
	// Attempts is the number of its attempts under its retry policy so
	// far (1 + tries: the current one, or the last once final); Publishes
	// counts the PUBLISHes to the device, redeliveries included.
	Attempts      int             `json:"attempts"`
	Publishes     int             `json:"publishes"`
	Response      json.RawMessage `json:"response,omitempty"`
	Reason        string          `json:"reason,omitempty"`
	ResultDropped bool            `json:"result_dropped,omitempty"`
}

// viewFor returns the JSON view of a command; caller is the identity
// asking (an operator reading another client's command gets a status_url
// with ?client=).
func viewFor(c *mailbox.Command, caller string) commandView {
	forClient := ""
	if caller != c.Client {
		forClient = c.Client
	}
	v := commandView{
		ID:            c.ID.Raw(),
		Client:        c.Client,
		Device:        c.Device,
		Method:        c.Method,
		Params:        c.Params,
		Status:        c.Status,
		StatusURL:     statusURL(c.ID, forClient),
		TimeoutMS:     c.Timeout.Milliseconds(),
		OneWay:        c.Timeout == 0,
		ExpiresInMS:   c.ExpiresIn.Milliseconds(),
		NotBefore:     utc(c.NotBefore),
		Retries:       c.Retries,
		Tries:         c.Tries,
		Lane:          c.Lane,
		LaneWait:      c.LaneWait && !c.Status.Final(),
		LaneMode:      c.LaneMode,
		Group:         c.Group,
		CreatedAt:     utc(c.CreatedAt),
		QueuedAt:      utc(c.QueuedAt),
		SendingAt:     utc(c.SendingAt),
		SentAt:        utc(c.SentAt),
		DeliveredAt:   utc(c.DeliveredAt),
		FinishedAt:    utc(c.FinishedAt),
		DeliverBy:     utc(c.DeliverBy),
		Attempts:      c.Attempt(),
		Publishes:     c.Attempts,
		RetryOn:       c.RetryOn,
		RetriedOn:     c.RetriedOn,
		Reason:        c.Reason,
		ResultDropped: c.ResultDropped,
	}
	if b := c.Backoff; b.Initial > 0 {
		v.RetryBackoff = fmt.Sprintf("%s,%s,%s", b.Initial, strconv.FormatFloat(b.Multiplier, 'f', -1, 64), b.Max)
	}
	if c.Status.Final() {
		v.Response = c.Response
	}
	return v
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// idParam parses the {id} path parameter as an ID key (protocol.ParseIDKey).
func idParam(c echo.Context) (protocol.ID, error) {
	id, err := protocol.ParseIDKey(c.Param("id"))
	if err != nil {
		return protocol.ID{}, errBadRequest("id: " + strings.TrimPrefix(err.Error(), "protocol: "))
	}
	c.Set(ctxMsgID, id.Key())
	return id, nil
}

// deviceParam parses {device_id} and checks that the token covers it.
func deviceParam(c echo.Context) (string, error) {
	d := c.Param("device_id")
	if !protocol.ValidIdentity(d) {
		return "", errBadRequest("device_id: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	if !claimsOf(c).MayCommand(d) {
		return "", errForbidden(fmt.Sprintf("the token does not cover device %q", d))
	}
	return d, nil
}

// commandParams parses {id} (idParam), then names the acting client
// (actingClient): the command a request reads, cancels or replays.
func commandParams(c echo.Context) (protocol.ID, string, error) {
	id, err := idParam(c)
	if err != nil {
		return protocol.ID{}, "", err
	}
	client, err := actingClient(c)
	if err != nil {
		return protocol.ID{}, "", err
	}
	return id, client, nil
}

// deviceClientParams parses {device_id} (deviceParam), then names the
// acting client (actingClient): whose commands to the device a request
// lists or cancels.
func deviceClientParams(c echo.Context) (device, client string, err error) {
	d, err := deviceParam(c)
	if err != nil {
		return "", "", err
	}
	client, err = actingClient(c)
	if err != nil {
		return "", "", err
	}
	return d, client, nil
}

// storeError maps a mailbox error: not found is 404, anything else means
// Redis is unavailable (503).
func (s *Server) storeError(err error, what string) error {
	if errors.Is(err, mailbox.ErrNotFound) {
		return errNotFound(what)
	}
	if errors.Is(err, mailbox.ErrBadCursor) {
		return errBadRequest("cursor: not a cursor this listing returned")
	}
	s.log.Warn("redis unavailable", "err", err)
	return errUnavailable("Redis is unavailable")
}

// getCommand is GET /v1/commands/{id}[?wait=30s]: the command's status,
// long-polled until it is final or the wait (capped at Config.MaxWait)
// ends.
func (s *Server) getCommand(c echo.Context) error {
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	wait := time.Duration(0)
	if v := c.QueryParam("wait"); v != "" {
		wait, err = config.ParseDuration(v)
		if err != nil {
			return errBadRequest(fmt.Sprintf("wait: %q is neither a duration (30s) nor whole seconds", v))
		}
		wait = min(wait, s.cfg.MaxWait)
	}
	ctx := c.Request().Context()
	rec, err := s.store.Get(ctx, client, id.Key())
	if err != nil {
		return s.storeError(err, "no such command")
	}
	if wait > 0 && !rec.Status.Final() {
		// The long-poll may outlast the server's write timeout.
		rc := http.NewResponseController(c.Response().Writer)
		_ = rc.SetWriteDeadline(time.Now().Add(wait + s.cfg.WriteTimeout))
		// Waiting costs a goroutine and a poll now and then, not a place
		// among the requests in flight; the waiting polls are bounded
		// per client and in total instead.
		caller := claimsOf(c).Subject
		if err := s.takePoll(caller); err != nil {
			return err
		}
		defer s.polls.give(caller)
		s.leaveInFlight(c)
		if rec, err = s.waitFinal(ctx, rec, time.Now().Add(wait)); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, viewFor(rec, claimsOf(c).Subject))
}

// waitFinal polls rec until it is final, the deadline passes, the client
// goes away or the server shuts down; it returns the latest record.
func (s *Server) waitFinal(ctx context.Context, rec *mailbox.Command, deadline time.Time) (*mailbox.Command, error) {
	err := s.pollUntil(ctx, deadline, 20*time.Millisecond, 250*time.Millisecond, func() (bool, error) {
		next, err := s.store.Get(ctx, rec.Client, rec.ID.Key())
		if err != nil {
			return false, s.storeError(err, "the command is gone")
		}
		rec = next
		return rec.Status.Final(), nil
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// pollUntil is the wait of a long-poll whose caller just looked: it waits
// first, then calls check, doubling the wait up to most, until check
// reports done, the deadline passes, the client goes away or the server
// shuts down (nil in all those cases). An error of check ends it, unless
// the client went away.
func (s *Server) pollUntil(ctx context.Context, deadline time.Time, first, most time.Duration, check func() (bool, error)) error {
	for wait := first; ; wait = min(2*wait, most) {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.stopping:
			t.Stop()
			return nil
		case <-t.C:
		}
		done, err := check()
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case done || err != nil:
			return err
		}
	}
}

// cancelCommand is DELETE /v1/commands/{id}: 200 with the cancelled
// command if it was not yet on the wire, else 409 with its status.
func (s *Server) cancelCommand(c echo.Context) error {
	id, client, err := commandParams(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	rec, err := s.store.Cancel(ctx, client, id.Key(), s.ownerNode(client))
	if errors.Is(err, mailbox.ErrState) {
		if rec == nil {
			if rec, err = s.store.Get(ctx, client, id.Key()); err != nil {
				return s.storeError(err, "no such command")
			}
		}
		return newAPIError(protocol.NewError(protocol.CodeConflict,
			fmt.Sprintf("conflict: the command is %s and can no longer be cancelled", rec.Status),
			map[string]any{"status": string(rec.Status)})).withID(rec.ID.Raw())
	}
	if err != nil {
		return s.storeError(err, "no such command")
	}
	return c.JSON(http.StatusOK, viewFor(rec, claimsOf(c).Subject))
}

// ownerNode is the ring owner of identity, "" when the ring is empty.
func (s *Server) ownerNode(identity string) string {
	if m, ok := s.ring.Owner(identity); ok {
		return m.Node
	}
	return ""
}

// deviceView is GET /v1/devices/{device_id}.
type deviceView struct {
	Device string `json:"device"`
	// Online: the device has a live MQTT session, on Node.
	Online  bool   `json:"online"`
	Node    string `json:"node,omitempty"`
	MQTTURL string `json:"mqtt_url,omitempty"`
	// Owner is the push server the ring assigns the device to.
	Owner *memberView `json:"owner,omitempty"`
	// Pending is the number of messages waiting in the device's mailbox.
	Pending int64 `json:"pending"`
	// LastSeen is the last time the device connected, disconnected or
	// polled over HTTP (within the retention).
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Connection is how the device connects: "mqtt" (a live MQTT
	// session now), "http_poll" (its last sighting was an HTTP poll, at
	// LastPoll), "offline" (seen over MQTT, not connected now); absent
	// when never seen within the retention.
	Connection string    `json:"connection,omitempty"`
	LastPoll   time.Time `json:"last_poll,omitzero"`
	// Lanes are the device's ordered lanes that hold commands not yet
	// final, each with what it waits for.
	Lanes []laneView `json:"lanes,omitempty"`
}

// laneView is one ordered lane of a device: Commands not final, the
// head among them the only one that may be on the wire; Waiting wait
// behind it. The head's status and times say what the lane waits for
// (its dispatch, its PUBACK, its answer) and DeliverBy until when at the
// latest before its expiry releases the lane. The head's id and client
// are shown only to its own client and to operators.
type laneView struct {
	Name      string          `json:"name"`
	Commands  int             `json:"commands"`
	Waiting   int             `json:"waiting"`
	HeadID    json.RawMessage `json:"head_id,omitempty"`
	HeadOwner string          `json:"head_client,omitempty"`
	Status    protocol.Status `json:"head_status,omitempty"`
	Since     time.Time       `json:"head_since,omitzero"`
	DeliverBy time.Time       `json:"head_deliver_by,omitzero"`
}

// lanesView turns a device's lanes into their views for caller (an
// operator sees every head's id).
func lanesView(lanes []mailbox.Lane, caller string, operator bool) []laneView {
	out := make([]laneView, 0, len(lanes))
	for _, l := range lanes {
		v := laneView{Name: l.Name, Commands: l.Commands, Waiting: max(l.Commands-1, 0)}
		if h := l.Head; h != nil {
			v.Status, v.DeliverBy = h.Status, utc(h.DeliverBy)
			for _, t := range []time.Time{h.CreatedAt, h.QueuedAt, h.SentAt, h.SendingAt, h.DeliveredAt} {
				if t.After(v.Since) {
					v.Since = utc(t)
				}
			}
			if operator || h.Client == caller {
				v.HeadID, v.HeadOwner = h.ID.Raw(), h.Client
			}
		}
		out = append(out, v)
	}
	return out
}

type memberView struct {
	Node    string `json:"node"`
	MQTTURL string `json:"mqtt_url"`
}

// getDevice is GET /v1/devices/{device_id}.
func (s *Server) getDevice(c echo.Context) error {
	d, err := deviceParam(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	node, err := s.store.SessionNode(ctx, d)
	if err != nil && !errors.Is(err, mailbox.ErrNotFound) {
		return s.storeError(err, "")
	}
	n, err := s.store.Len(ctx, d)
	if err != nil && !errors.Is(err, mailbox.ErrNotFound) {
		return s.storeError(err, "")
	}
	seen, err := s.store.LastSeen(ctx, d)
	if err != nil {
		return s.storeError(err, "")
	}
	polled, err := s.store.LastPolled(ctx, d)
	if err != nil {
		return s.storeError(err, "")
	}
	lanes, err := s.store.Lanes(ctx, d)
	if err != nil {
		return s.storeError(err, "")
	}
	v := deviceView{Device: d, Online: node != "", Node: node, Pending: n, LastSeen: utc(seen), LastPoll: utc(polled)}
	switch {
	case node != "":
		v.Connection = "mqtt"
	case !polled.IsZero() && !polled.Before(seen):
		v.Connection = "http_poll"
	case !seen.IsZero():
		v.Connection = "offline"
	}
	if len(lanes) > 0 {
		cl := claimsOf(c)
		v.Lanes = lanesView(lanes, cl.Subject, cl.Role == auth.RoleOperator)
	}
	if node != "" {
		for _, m := range s.ring.Members() {
			if m.Node == node {
				v.MQTTURL = m.URL
			}
		}
	}
	if m, ok := s.ring.Owner(d); ok {
		v.Owner = &memberView{Node: m.Node, MQTTURL: m.URL}
	}
	return c.JSON(http.StatusOK, v)
}

// Bounds of ?limit= of the command list.
const (
	defaultListLimit = 50
	maxListLimit     = 100
)

// listView is GET /v1/devices/{device_id}/commands.
type listView struct {
	Commands   []commandView `json:"commands"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// listCommands is GET /v1/devices/{device_id}/commands?status=&limit=&cursor=.
func (s *Server) listCommands(c echo.Context) error {
	d, client, err := deviceClientParams(c)
	if err != nil {
		return err
	}
	var st protocol.Status
	if v := c.QueryParam("status"); v != "" {
		if st, err = protocol.ParseStatus(v); err != nil {
			return errBadRequest(fmt.Sprintf("status: unknown status %q", v))
		}
	}
	limit := defaultListLimit
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			return errBadRequest(fmt.Sprintf("limit: must be an integer from 1 to %d", maxListLimit))
		}
		limit = n
	}
	cmds, next, err := s.store.List(c.Request().Context(), client, d, st, limit, c.QueryParam("cursor"))
	if err != nil {
		return s.storeError(err, "")
	}
	out := listView{Commands: make([]commandView, 0, len(cmds)), NextCursor: next}
	caller := claimsOf(c).Subject
	for _, cmd := range cmds {
		out.Commands = append(out.Commands, viewFor(cmd, caller))
	}
	return c.JSON(http.StatusOK, out)
}

// cancelAll is DELETE /v1/devices/{device_id}/commands: cancel every
// command of the client to the device that is not yet on the wire.
func (s *Server) cancelAll(c echo.Context) error {
	d, client, err := deviceClientParams(c)
	if err != nil {
		return err
	}
	n, err := s.store.CancelAll(c.Request().Context(), client, d, s.ownerNode(client))
	if err != nil {
		return s.storeError(err, "")
	}
	return c.JSON(http.StatusOK, map[string]any{"device": d, "client": client, "cancelled": n})
}

// connect is GET /v1/connect/{identity}: the push server that owns the
// identity. Any token whose subject is the identity, or an operator's.
func (s *Server) connect(c echo.Context) error {
	identity := c.Param("identity")
	if !protocol.ValidIdentity(identity) {
		return errBadRequest("identity: " + strings.TrimPrefix(protocol.ErrIdentity.Error(), "protocol: "))
	}
	cl := claimsOf(c)
	if cl.Subject != identity && cl.Role != auth.RoleOperator {
		return errForbidden("a token may only look up its own identity")
	}
	m, ok := s.ring.Owner(identity)
	if !ok {
		return errUnavailable("no push server is running")
	}
	return c.JSON(http.StatusOK, memberView{Node: m.Node, MQTTURL: m.URL})
}

// healthz is GET /healthz: the process is alive.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is GET /readyz: 200 when the publisher is connected and not
// blocked, Redis answers PING and is durable (mailbox.CheckDurable; with
// GW_DURABILITY=relaxed not required, but durability says relaxed and
// why Redis is not durable), else 503 naming what is not ready.
func (s *Server) readyz(c echo.Context) error {
	checks := map[string]string{"rabbitmq": "ok", "redis": "ok"}
	ready := true
	if !s.pub.Ready() {
		checks["rabbitmq"] = "not connected or blocked"
		ready = false
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), time.Second)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		checks["redis"] = "ping failed: " + err.Error()
		ready = false
	}
	// Durability (DESIGN §7): refused unless Redis keeps what a 202
	// acknowledges, or the deployment says it is relaxed.
	switch {
	case s.cfg.Durability == config.DurabilityRelaxed:
		// Ready anyway; but say what a crash can take (DESIGN §7a,
		// "Relaxed durability says so").
		checks["durability"] = "relaxed (GW_DURABILITY=relaxed)"
		var nd *mailbox.NotDurableError
		if ready && errors.As(mailbox.CheckDurable(ctx, s.rdb, s.cfg.WaitReplicas), &nd) {
			checks["durability"] += ": Redis is not durable (" + nd.Why + "): what it acknowledged in the last second before a crash can be lost"
		}
	case !ready:
		checks["durability"] = "unknown"
	default:
		if err := mailbox.CheckDurable(ctx, s.rdb, s.cfg.WaitReplicas); err != nil {
			checks["durability"] = err.Error()
			ready = false
		} else {
			checks["durability"] = "ok"
		}
	}
	if !ready {
		c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfterUnavailable))
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "not ready", "checks": checks})
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}

//go:embed openapi.yaml
var openapiYAML []byte

// openapi is GET /openapi.yaml.
func (s *Server) openapi(c echo.Context) error {
	return c.Blob(http.StatusOK, "application/yaml", openapiYAML)
}
