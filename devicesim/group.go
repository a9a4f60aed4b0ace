package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// Group commands (issue 14): POST /v1/commands with a device list or a
// named group, and GET /v1/group-commands/{id} for the counts.

// GroupOptions are the query options of a group command.
type GroupOptions struct {
	Timeout, ExpiresIn time.Duration
	// Rate is children per second (0: all at once); AbortAfter a count or
	// a percentage ("5%"), "" for none.
	Rate       float64
	AbortAfter string
	// Retry is every child's retry policy.
	Retry RetryOptions
}

func (o GroupOptions) query() string {
	q := url.Values{}
	if o.Timeout > 0 {
		q.Set("timeout", o.Timeout.String())
	}
	if o.ExpiresIn > 0 {
		q.Set("expires_in", o.ExpiresIn.String())
	}
	if o.Rate > 0 {
		q.Set("rate", strconv.FormatFloat(o.Rate, 'f', -1, 64))
	}
	if o.AbortAfter != "" {
		q.Set("abort_after", o.AbortAfter)
	}
	o.Retry.set(q)
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// SendGroup posts a group command: req (one JSON-RPC request) to devices,
// or to the named group when group is set.
func (a *API) SendGroup(ctx context.Context, token string, req json.RawMessage, devices []string, group string, o GroupOptions) (Accepted, int, error) {
	body := map[string]any{"request": req}
	if group != "" {
		body["group"] = group
	} else {
		body["devices"] = devices
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return Accepted{}, 0, err
	}
	var acc Accepted
	status, err := a.Do(ctx, http.MethodPost, "/v1/commands"+o.query(), token, raw, &acc)
	return acc, status, err
}

// GroupStatus is GET /v1/group-commands/{id}.
type GroupStatus struct {
	ID         json.RawMessage `json:"id"`
	Status     string          `json:"status"`
	Done       bool            `json:"done"`
	Total      int             `json:"total"`
	Released   int             `json:"released"`
	Final      int             `json:"final"`
	InFlight   int             `json:"in_flight"`
	Failures   int             `json:"failures"`
	Counts     map[string]int  `json:"counts"`
	AbortAt    int             `json:"abort_at"`
	StopReason string          `json:"stop_reason"`
}

// Group reads a group command's progress, long-polling up to wait.
func (a *API) Group(ctx context.Context, token, id string, wait time.Duration) (GroupStatus, error) {
	var g GroupStatus
	path := "/v1/group-commands/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	_, err := a.Do(ctx, http.MethodGet, path, token, nil, &g)
	return g, err
}

// line is the group's progress in one line.
func (g GroupStatus) line() string {
	keys := make([]string, 0, len(g.Counts))
	for k := range g.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, g.Counts[k])
	}
	s := fmt.Sprintf("group %s: %s, released %d/%d, final %d, in flight %d", idText(g.ID), g.Status, g.Released, g.Total, g.Final, g.InFlight)
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	if g.StopReason != "" {
		s += "; " + g.StopReason
	}
	return s
}

// sendGroup posts a group command as client, prints its progress until
// every child is final (or wait passes) and counts the results the client
// receives over MQTT. Exit status: 0 when every child succeeded, 2 when
// some device answered with an error, 3 on a timeout, 4 when the gateway
// refused or ended any child.
func sendGroup(ctx context.Context, g *globals, client, token, id string, req json.RawMessage, devices []string, group string, o GroupOptions, wait time.Duration) error {
	api := NewAPI(g.API)
	prefix := id + ":"
	var mu sync.Mutex
	results := map[string]*protocol.Response{} // by child id
	sess := NewClientSession(client, token, api, func(r Result) {
		if got, err := protocol.ParseID(r.Resp.ID); err == nil && strings.HasPrefix(got.Key(), prefix) {
			mu.Lock()
			results[got.Key()] = r.Resp
			mu.Unlock()
		}
	})
	stop, err := connectClient(ctx, sess, client)
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	acc, status, err := api.SendGroup(ctx, token, req, devices, group, o)
	if err != nil {
		fmt.Fprintln(g.stdout, err)
		return exitGatewayError
	}
	fmt.Fprintf(g.stderr, "%d %s: %s\n", status, acc.Status, acc.StatusURL)
	deadline := time.Now().Add(wait)
	var st GroupStatus
	for {
		st, err = api.Group(ctx, token, id, min(time.Second, max(time.Until(deadline), time.Millisecond)))
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stderr, st.line())
		if st.Done || time.Now().After(deadline) {
			break
		}
	}
	// The results of the last children may still be on their way.
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(results)
		mu.Unlock()
		if n >= st.Total {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	got := len(results)
	mu.Unlock()
	out, _ := json.MarshalIndent(st, "", "  ")
	fmt.Fprintf(g.stdout, "%s\n", out)
	fmt.Fprintf(g.stderr, "%d of %d results received over MQTT; %s from 202 to done\n", got, st.Total, time.Since(start).Round(time.Millisecond))
	switch {
	case !st.Done:
		return exitTimeout
	case st.Counts["succeeded"] == st.Total:
		return nil
	case st.Counts["failed"] > 0 && st.Counts["failed"]+st.Counts["succeeded"] == st.Total:
		return exitDeviceError
	case st.Counts["timeout"] > 0:
		return exitTimeout
	}
	return exitGatewayError
}

// GroupLoadOptions configure a group run of devicesim load: one group
// command to devices {Prefix}0 … {Prefix}{Devices-1}.
type GroupLoadOptions struct {
	Devices    int
	Prefix     string
	Client     string
	Method     string
	Rate       float64
	AbortAfter string
	Timeout    time.Duration
	ExpiresIn  time.Duration
	Wait       time.Duration // longest wait for every child's result
	Progress   bool          // a progress line to stderr each second
}

// GroupLoadReport is the outcome of a group run. Its JSON keys are an
// interface the benchmark relies on.
type GroupLoadReport struct {
	Devices int    `json:"devices"`
	Status  string `json:"status"`
	// AcceptMS is the POST's round trip (the 202).
	AcceptMS float64 `json:"accept_ms"`
	// DoneS is the time from the 202 to the last child's result over
	// MQTT; ChildrenPerS is Devices / DoneS.
	DoneS        float64        `json:"done_s"`
	ChildrenPerS float64        `json:"children_per_s"`
	Received     int            `json:"received"`
	Duplicated   int            `json:"duplicated"`
	Lost         int            `json:"lost"`
	Counts       map[string]int `json:"counts"`
}

// RunGroupLoad sends one group command to the fleet, follows its progress
// and waits for every child's result over MQTT.
func RunGroupLoad(ctx context.Context, g *globals, o GroupLoadOptions) (*GroupLoadReport, error) {
	if o.Devices < 1 || o.Devices > protocol.MaxGroupDevices {
		return nil, fmt.Errorf("--group-devices must be from 1 to %d", protocol.MaxGroupDevices)
	}
	secret, err := g.secret()
	if err != nil {
		return nil, err
	}
	token, err := auth.Mint(secret, o.Client, auth.RoleClient, []string{o.Prefix + "*"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	api := NewAPI(g.API)
	id := "group-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	prefix := id + ":"
	var (
		mu    sync.Mutex
		seen  = map[string]int{}
		last  time.Time
		count int
	)
	sess := NewClientSession(o.Client, token, api, func(r Result) {
		got, err := protocol.ParseID(r.Resp.ID)
		if err != nil || !strings.HasPrefix(got.Key(), prefix) {
			return
		}
		mu.Lock()
		seen[got.Key()]++
		if seen[got.Key()] == 1 {
			count++
			last = r.At
		}
		mu.Unlock()
	})
	stop, err := connectClient(ctx, sess, o.Client)
	if err != nil {
		return nil, err
	}
	defer stop()
	devices := make([]string, o.Devices)
	for i := range devices {
		devices[i] = o.Prefix + strconv.Itoa(i)
	}
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": o.Method, "params": map[string]any{"group": true}, "id": id})
	start := time.Now()
	_, status, err := api.SendGroup(ctx, token, req, devices, "", GroupOptions{Timeout: o.Timeout, ExpiresIn: o.ExpiresIn, Rate: o.Rate, AbortAfter: o.AbortAfter})
	if err != nil {
		return nil, fmt.Errorf("cannot send the group command: %w", err)
	}
	accepted := time.Now()
	if status != http.StatusAccepted {
		return nil, fmt.Errorf("the group command was answered %d, want 202", status)
	}
	rep := &GroupLoadReport{Devices: o.Devices, AcceptMS: float64(accepted.Sub(start).Microseconds()) / 1000}
	deadline := accepted.Add(o.Wait)
	var st GroupStatus
	for {
		st, err = api.Group(ctx, token, id, min(time.Second, max(time.Until(deadline), time.Millisecond)))
		if err != nil {
			return nil, err
		}
		mu.Lock()
		n := count
		mu.Unlock()
		if o.Progress {
			fmt.Fprintf(g.stderr, "%s; %d results over MQTT\n", st.line(), n)
		}
		if (st.Done && n >= st.Total) || time.Now().After(deadline) {
			break
		}
		if st.Done {
			time.Sleep(20 * time.Millisecond) // the last results are on their way
		}
	}
	mu.Lock()
	defer mu.Unlock()
	rep.Status, rep.Counts, rep.Received = st.Status, st.Counts, count
	for _, c := range seen {
		rep.Duplicated += c - 1
	}
	rep.Lost = o.Devices - count
	if !last.IsZero() {
		rep.DoneS = last.Sub(accepted).Seconds()
		if rep.DoneS > 0 {
			rep.ChildrenPerS = float64(count) / rep.DoneS
		}
	}
	return rep, nil
}

// writeGroupReport prints a group run's report as a table.
func (r *GroupLoadReport) writeTable(w io.Writer) {
	keys := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "group command to %d devices: %s\n", r.Devices, r.Status)
	fmt.Fprintf(w, "  202 after        %.1f ms\n", r.AcceptMS)
	fmt.Fprintf(w, "  last result      %.2f s after the 202 (%.0f children/s)\n", r.DoneS, r.ChildrenPerS)
	fmt.Fprintf(w, "  results          %d received, %d duplicated, %d lost\n", r.Received, r.Duplicated, r.Lost)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-16s %d\n", k, r.Counts[k])
	}
}
