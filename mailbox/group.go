package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Group commands (issue 14). A group command sends one request to many
// devices: one child per device, each a normal command of the same
// client with the id protocol.ChildID(group id, device).
//
// The group's record is a hash in the client's partition
// (protocol.PartKeys.Group), beside the claims of its children. That is
// where the children's outcomes arrive anyway: every final result is
// relayed from the device's partition's outbox into the client's
// partition (outbox.go), and the relay step of a child (its record, its
// claim and its outbox entry carry the group's key) counts it in the
// group's record in that same step. So no new cross-partition hop is
// needed, every step touches one partition, and a relay repeated after a
// crash counts nothing twice (the claim remembers its final).
//
// Fields of the group's record:
//
//	fp, id, client          the body's fingerprint, the group's id (raw JSON), its client
//	method, params          the request of every child
//	tmo, exp                each child's timeout and expires_in (ms)
//	total, devs             the number of devices and their IDs, newline-separated, in order
//	target                  the named group it was sent to ("" for a list)
//	rate                    children released per second (0: all at once)
//	abort_after, abort_at   the option as given and the failure count that stops the group (0: never)
//	retries, rb_i, rb_m, rb_x   every child's retries and retry backoff (as in a command's record)
//	ron                     every child's retry_on (as in a command's record)
//	state                   pending until the publish of its envelope is confirmed, then queued
//	created                 accepted at (ms)
//	released                children created so far (a cursor over devs)
//	done, failures          children final, and final as anything but succeeded or cancelled
//	n:{status}              children final in each status (n:skipped: its id was taken)
//	stopped, stop_reason, stopped_at   aborted or cancelled, why, when
//
// A worker creates the children (RunGroup) from the group's envelope, at
// the group's rate, checking before each batch whether the group was
// stopped. A stop (abort_after reached in a relay, or DELETE) arms the
// group's timer in its partition; the partition's owner then cancels
// every child not yet on the wire (CancelChildren), and RunGroup creates
// the children it had not released yet as cancelled, so every child has a
// result.

// groupAbortReason is what a group stopped by abort_after says.
const groupAbortReason = "abort_after reached"

// groupMember names the timer of group command key of client, in the
// client's partition.
func groupMember(client, key string) string { return "g|" + client + "|-|" + key }

// Group is a group command's record.
type Group struct {
	Client      string
	ID          protocol.ID
	Fingerprint string
	Method      string
	Params      json.RawMessage
	Timeout     time.Duration
	ExpiresIn   time.Duration
	// Target names the device group it was sent to ("" for a list).
	Target string
	// Rate is how many children are released per second (0: all at once).
	Rate float64
	// AbortAfter is the option as given ("" for none); AbortAt the
	// failures that stop the group (0: never).
	AbortAfter string
	AbortAt    int
	// Retries, RetryOn and Backoff are every child's (Command.Retries,
	// RetryOn, Backoff).
	Retries int
	RetryOn string
	Backoff Backoff
	// State is pending until its envelope is durable in RabbitMQ, then
	// queued.
	State     string
	CreatedAt time.Time
	// Total is the number of children; Released how many were created;
	// Done how many are final (Counts per status) and Failures how many
	// of those ended in neither succeeded nor cancelled.
	Total, Released, Done, Failures int
	Counts                          map[string]int
	// Stopped is "aborted" or "cancelled" once the group stopped (why:
	// StopReason, at StoppedAt).
	Stopped    string
	StopReason string
	StoppedAt  time.Time
}

// Final reports whether every child of g is final.
func (g *Group) Final() bool { return g.Done >= g.Total }

// groupKey returns the partition and key of group command key of client.
func (s *Store) groupKey(client, key string) (int, string) {
	p := s.PartitionOf(client)
	return p, s.keys.Part(p).Group(client, key)
}

// ClaimGroup creates the record of group command g (Client, ID,
// Fingerprint, Method, Params, Timeout, ExpiresIn, Target, Rate,
// AbortAfter, AbortAt) to devices, state pending, or finds the one there.
// It returns whether it created it and the stored record; another body
// under the same id gives ErrConflict.
func (s *Store) ClaimGroup(ctx context.Context, g *Group, devices []string) (bool, *Group, error) {
	if g == nil || g.Client == "" || g.ID.IsZero() || len(devices) == 0 {
		return false, nil, errors.New("mailbox: ClaimGroup needs a client, an id and devices")
	}
	key := g.ID.Key()
	rollout := time.Duration(0)
	if g.Rate > 0 {
		rollout = time.Duration(float64(len(devices)) / g.Rate * float64(time.Second))
	}
	lifetime := rollout + time.Duration(g.Retries+1)*(g.ExpiresIn+g.Timeout) + time.Duration(g.Retries)*g.Backoff.Max +
		s.opts.Lease + 2*s.opts.AnswerGrace + s.opts.Retention
	p, gk := s.groupKey(g.Client, key)
	v, err := s.run(ctx, p, stepGroupClaim, []string{gk, s.keys.Part(p).Groups()},
		g.Fingerprint, string(g.ID.Raw()), g.Client, g.Method, string(g.Params),
		g.Timeout.Milliseconds(), g.ExpiresIn.Milliseconds(), len(devices),
		strconv.FormatFloat(g.Rate, 'f', -1, 64), g.AbortAfter, g.AbortAt, g.Target,
		strings.Join(devices, "\n"), lifetime.Milliseconds(), g.Client+"|"+key, groupListHorizon.Milliseconds(),
		g.Retries, g.Backoff.Initial.Milliseconds(), strconv.FormatFloat(g.Backoff.Multiplier, 'f', -1, 64), g.Backoff.Max.Milliseconds(),
		retryOnArg(g.Retries, g.RetryOn))
	if err != nil {
		return false, nil, fmt.Errorf("cannot claim group command %s: %w", key, err)
	}
	head, _ := reply(v)
	if head == "conflict" {
		return false, nil, fmt.Errorf("%w: group command %s", ErrConflict, key)
	}
	rec, err := s.GetGroup(ctx, g.Client, key)
	if err != nil {
		return false, nil, err
	}
	return head == "new", rec, nil
}

// groupListHorizon is how long a group command stays in its partition's
// list at most (the longest lifetime of a group command: 10,000 children
// at the lowest useful rate fit in it, plus 7 days to deliver, a day to
// answer and the retention).
const groupListHorizon = 40 * 24 * time.Hour

// ListGroups returns the newest group commands of every client (at most
// limit, 1 to 100), newest first: one read of each partition's list, then
// the records. Members whose record expired are skipped.
func (s *Store) ListGroups(ctx context.Context, limit int) ([]*Group, error) {
	limit = min(max(limit, 1), 100)
	cmds := make([]*redis.ZSliceCmd, s.opts.Partitions)
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for p := range cmds {
			cmds[p] = pipe.ZRevRangeWithScores(ctx, s.keys.Part(p).Groups(), 0, int64(limit-1))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list group commands: %w", s.classify(err))
	}
	var all []redis.Z
	for _, c := range cmds {
		all = append(all, c.Val()...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Score > all[j].Score })
	out := make([]*Group, 0, limit)
	for _, z := range all {
		if len(out) == limit {
			break
		}
		m, _ := z.Member.(string)
		client, key, ok := strings.Cut(m, "|")
		if !ok {
			continue
		}
		g, err := s.GetGroup(ctx, client, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// MarkGroupQueued records that the group's envelope is durable in
// RabbitMQ (state queued).
func (s *Store) MarkGroupQueued(ctx context.Context, client, key string) error {
	_, gk := s.groupKey(client, key)
	if err := s.rdb.HSet(ctx, gk, "state", "queued").Err(); err != nil {
		return fmt.Errorf("cannot mark group command %s queued: %w", key, s.classify(err))
	}
	return nil
}

// GetGroup returns the record of group command key of client (without
// its device list), or ErrNotFound.
func (s *Store) GetGroup(ctx context.Context, client, key string) (*Group, error) {
	_, gk := s.groupKey(client, key)
	// Every field but the device list (up to 10,000 IDs), which only
	// GroupDevices reads.
	vs, err := s.rdb.HMGet(ctx, gk, groupFields...).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot get group command %s: %w", key, s.classify(err))
	}
	m := make(map[string]string, len(groupFields))
	for i, v := range vs {
		if str, ok := v.(string); ok {
			m[groupFields[i]] = str
		}
	}
	if len(m) == 0 || m["fp"] == "" {
		return nil, fmt.Errorf("%w: group command %s", ErrNotFound, key)
	}
	id, err := protocol.ParseID(json.RawMessage(m["id"]))
	if err != nil {
		return nil, fmt.Errorf("mailbox: corrupt group command %s: %w", key, err)
	}
	atoi := func(f string) int { n, _ := strconv.Atoi(m[f]); return n }
	g := &Group{
		Client: m["client"], ID: id, Fingerprint: m["fp"], Method: m["method"],
		Timeout: msDur(m["tmo"]), ExpiresIn: msDur(m["exp"]), Target: m["target"],
		AbortAfter: m["abort_after"], AbortAt: atoi("abort_at"), State: m["state"],
		CreatedAt: msTime(m["created"]), Total: atoi("total"), Released: atoi("released"),
		Done: atoi("done"), Failures: atoi("failures"), Counts: map[string]int{},
		Stopped: m["stopped"], StopReason: m["stop_reason"], StoppedAt: msTime(m["stopped_at"]),
	}
	g.Rate, _ = strconv.ParseFloat(m["rate"], 64)
	g.Retries = atoi("retries")
	if g.RetryOn = m["ron"]; g.RetryOn == "" && g.Retries > 0 {
		g.RetryOn = protocol.DefaultRetryOn
	}
	if m["rb_i"] != "" && m["rb_i"] != "0" {
		g.Backoff.Initial, g.Backoff.Max = msDur(m["rb_i"]), msDur(m["rb_x"])
		g.Backoff.Multiplier, _ = strconv.ParseFloat(m["rb_m"], 64)
	}
	if p := m["params"]; p != "" {
		g.Params = json.RawMessage(p)
	}
	for f, v := range m {
		if st, ok := strings.CutPrefix(f, "n:"); ok {
			if n, _ := strconv.Atoi(v); n > 0 {
				g.Counts[st] = n
			}
		}
	}
	return g, nil
}

// groupFields are the fields of a group's record GetGroup reads: all but
// the device list, with a count for each final status.
var groupFields = func() []string {
	f := []string{"fp", "id", "client", "method", "params", "tmo", "exp", "total", "rate", "abort_after",
		"abort_at", "target", "state", "created", "released", "done", "failures", "stopped", "stop_reason",
		"stopped_at", "n:skipped", "retries", "rb_i", "rb_m", "rb_x", "ron"}
	for _, st := range protocol.Statuses {
		if st.Final() {
			f = append(f, "n:"+string(st))
		}
	}
	return f
}()

// GroupDevices returns the devices of group command key of client, in
// order (child i goes to device i).
func (s *Store) GroupDevices(ctx context.Context, client, key string) ([]string, error) {
	_, gk := s.groupKey(client, key)
	v, err := s.rdb.HGet(ctx, gk, "devs").Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("%w: group command %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("cannot read the devices of group command %s: %w", key, s.classify(err))
	}
	if v == "" {
		return nil, nil
	}
	return strings.Split(v, "\n"), nil
}

// StopGroup stops group command key of client (how: "aborted" or
// "cancelled", with reason): no more children are released, and the
// partition's owner cancels the children not yet on the wire. It reports
// whether this call stopped it (false: it was stopped before).
func (s *Store) StopGroup(ctx context.Context, client, key, how, reason string) (bool, error) {
	p, gk := s.groupKey(client, key)
	v, err := s.run(ctx, p, stepGroupStop, []string{gk, s.keys.Part(p).Timers()}, how, reason, groupMember(client, key))
	if err != nil {
		return false, fmt.Errorf("cannot stop group command %s: %w", key, err)
	}
	switch v {
	case "notfound":
		return false, fmt.Errorf("%w: group command %s", ErrNotFound, key)
	case "stopped":
		return true, nil
	}
	return false, nil
}

// groupProgress moves the release cursor of the group to n; skip names a
// device whose child could not be created ("" for none).
func (s *Store) groupProgress(ctx context.Context, client, key string, n int, skip string) error {
	p, gk := s.groupKey(client, key)
	if _, err := s.run(ctx, p, stepGroupProgress, []string{gk}, n, skip); err != nil {
		return fmt.Errorf("cannot record the progress of group command %s: %w", key, err)
	}
	return nil
}

// childCancelBody is the '"error":…' member of the result of a child
// cancelled because its group stopped: -32004 with the group's reason in
// data.reason.
func childCancelBody(g *Group) string {
	reason := "group " + g.Stopped
	if g.StopReason != "" {
		reason += ": " + g.StopReason
	}
	e := protocol.NewError(protocol.CodeCancelled, string(protocol.StatusCancelled)+": "+reason,
		map[string]any{"status": string(protocol.StatusCancelled), "reason": reason, "group": g.ID.Key()})
	b, _ := json.Marshal(e)
	return `"error":` + string(b)
}

// cancelChild cancels the child of g to device if it is not on the wire
// yet (queued, scheduled, or sent and not taken by a push server), with
// the group's reason. It reports whether it cancelled it.
func (s *Store) cancelChild(ctx context.Context, g *Group, device, body string) (bool, error) {
	child, err := protocol.ChildID(g.ID, device)
	if err != nil {
		return false, err
	}
	p, keys := s.cmdKeys(device, g.Client, child.Key())
	v, err := s.run(ctx, p, stepCancel, keys, body, "group "+g.Stopped)
	if err != nil {
		return false, fmt.Errorf("cannot cancel child %s: %w", child.Key(), err)
	}
	a, _ := v.([]any)
	head, _ := reply(v)
	if head != "cancelled" {
		return false, nil
	}
	if len(a) > 3 {
		s.relayNow(ctx, parseOutbox(p, a[3]), "")
	}
	return true, nil
}

// groupParallelism bounds the children of one group created or
// cancelled at the same time.
const groupParallelism = 64

// each runs f for every device in parallel (at most groupParallelism at
// once) and returns the first error.
func each(ctx context.Context, devices []string, f func(ctx context.Context, i int, device string) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, groupParallelism)
	for i, d := range devices {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(ctx, i, d); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// CancelChildren cancels every child of the stopped group command key of
// client that is not on the wire yet, and returns how many it cancelled.
// Children not created yet are left to RunGroup, which creates them
// cancelled.
func (s *Store) CancelChildren(ctx context.Context, client, key string) (int, error) {
	g, err := s.GetGroup(ctx, client, key)
	if err != nil {
		return 0, err
	}
	if g.Stopped == "" {
		return 0, nil
	}
	devices, err := s.GroupDevices(ctx, client, key)
	if err != nil {
		return 0, err
	}
	body := childCancelBody(g)
	var mu sync.Mutex
	n := 0
	err = each(ctx, devices, func(ctx context.Context, _ int, d string) error {
		ok, err := s.cancelChild(ctx, g, d, body)
		if ok {
			mu.Lock()
			n++
			mu.Unlock()
		}
		return err
	})
	return n, err
}

// fireGroup runs the timer of a stopped group (member of partition p):
// it cancels the children not yet on the wire, then removes the timer.
func (s *Store) fireGroup(ctx context.Context, p int, member, client, key string) (string, error) {
	if _, err := s.CancelChildren(ctx, client, key); err != nil && !errors.Is(err, ErrNotFound) {
		return "", err
	}
	if err := s.rdb.ZRem(ctx, s.keys.Part(p).Timers(), member).Err(); err != nil {
		return "", fmt.Errorf("cannot remove the timer of group command %s: %w", key, s.classify(err))
	}
	return "group_stopped", nil
}

// GroupBatch is how many children RunGroup creates between two looks at
// whether the group was stopped (fewer at low rates).
const GroupBatch = 256

// RunGroup creates the children of group command key of client, from its
// release cursor on: each is claimed, reserved and dispatched into its
// device's mailbox like a single command (Reserve, then Dispatch), at
// the group's rate. Before each batch it looks whether the group was
// stopped; from then on it creates the remaining children as cancelled
// (so each still gets its result), and after a batch during which the
// group stopped it cancels that batch's children not yet on the wire.
//
// It is idempotent: run again after a crash (the worker's delivery came
// back) it resumes at the cursor, and a child that exists is left alone
// (or dispatched, if a crash left it pending). It returns when every
// child was created, or with the first error (ctx, Redis).
func (s *Store) RunGroup(ctx context.Context, client, key string, trace string) error {
	g, err := s.GetGroup(ctx, client, key)
	if err != nil {
		return err
	}
	devices, err := s.GroupDevices(ctx, client, key)
	if err != nil {
		return err
	}
	payloadOf := func(id protocol.ID) ([]byte, error) {
		return json.Marshal(&protocol.Request{JSONRPC: protocol.Version, Method: g.Method, Params: g.Params, ID: id})
	}
	start := time.Now()
	first := g.Released
	for i := first; i < len(devices); {
		n := GroupBatch
		if g.Rate > 0 {
			// Child j (counted from this run's first) is due at
			// start + j/rate.
			due := int(time.Since(start).Seconds()*g.Rate) + 1 - (i - first)
			if due <= 0 {
				wait := time.Until(start.Add(time.Duration(float64(i-first) / g.Rate * float64(time.Second))))
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(max(wait, time.Millisecond)):
				}
				continue
			}
			n = min(n, due)
		}
		batch := devices[i:min(i+n, len(devices))]
		cur, err := s.GetGroup(ctx, client, key)
		if err != nil {
			return err
		}
		stopped := cur.Stopped != ""
		body := ""
		if stopped {
			body = childCancelBody(cur)
		}
		err = each(ctx, batch, func(ctx context.Context, _ int, d string) error {
			return s.createChild(ctx, g, d, trace, stopped, body, payloadOf)
		})
		if err != nil {
			return err
		}
		i += len(batch)
		if err := s.groupProgress(ctx, client, key, i, ""); err != nil {
			return err
		}
		if !stopped {
			// A stop during the batch: its timer may have looked at these
			// children before they were dispatched.
			if cur, err = s.GetGroup(ctx, client, key); err != nil {
				return err
			}
			if cur.Stopped != "" {
				body := childCancelBody(cur)
				if err := each(ctx, batch, func(ctx context.Context, _ int, d string) error {
					_, err := s.cancelChild(ctx, cur, d, body)
					return err
				}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// createChild claims, reserves and dispatches the child of g to device,
// or, when the group is stopped, creates it cancelled (result body).
func (s *Store) createChild(ctx context.Context, g *Group, device, trace string, stopped bool, body string,
	payloadOf func(protocol.ID) ([]byte, error)) error {
	child, err := protocol.ChildID(g.ID, device)
	if err != nil {
		return err
	}
	cmd := &Command{
		Client: g.Client, Device: device, ID: child, Method: g.Method, Params: g.Params,
		Fingerprint: ChildFingerprint(g, device), Timeout: g.Timeout, ExpiresIn: g.ExpiresIn,
		Group: g.ID.Key(), Retries: g.Retries, RetryOn: g.RetryOn, Backoff: g.Backoff,
	}
	outcome, rec, err := s.Reserve(ctx, cmd)
	if errors.Is(err, ErrConflict) {
		s.log.Warn("a child's id is taken by another command of the client: skipped",
			"client_id", g.Client, "device_id", device, "msg_id", child.Key())
		return s.groupProgress(ctx, g.Client, g.ID.Key(), 0, device)
	}
	if err != nil {
		return err
	}
	if outcome == Exists && rec.Status != protocol.StatusPending {
		return nil // created before (a run after a crash)
	}
	if stopped {
		if err := s.MarkQueued(ctx, device, g.Client, child.Key()); err != nil {
			return err
		}
		_, err := s.cancelChild(ctx, g, device, body)
		return err
	}
	payload, err := payloadOf(child)
	if err != nil {
		return err
	}
	env := &protocol.Envelope{
		Kind: protocol.KindCommand, Client: g.Client, Device: device, MsgID: child, Payload: payload,
		AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy, AnswerWithinMS: g.Timeout.Milliseconds(),
		Attempt: 1, TraceParent: trace,
	}
	_, err = s.Dispatch(ctx, env, "", "")
	return err
}

// ChildFingerprint is the body's identity of the child of g to device:
// the child's own request and options, and the group's fingerprint.
func ChildFingerprint(g *Group, device string) string {
	return protocol.Fingerprint(device, g.Method, g.Params, g.Timeout, g.ExpiresIn, "group="+g.Fingerprint)
}

// DeviceGroup is a named list of devices (PUT /v1/groups/{name}) that a
// group command may target.
type DeviceGroup struct {
	Name      string
	Devices   []string
	UpdatedAt time.Time
}

// PutDeviceGroup sets the devices of the named group (a hash in the
// partition of its name, no expiry). It reports whether the group is new.
func (s *Store) PutDeviceGroup(ctx context.Context, name string, devices []string) (bool, error) {
	k := s.part(name).DeviceGroup(name)
	var created bool
	err := func() error {
		n, err := s.rdb.Exists(ctx, k).Result()
		if err != nil {
			return err
		}
		created = n == 0
		return s.rdb.HSet(ctx, k, "devs", strings.Join(devices, "\n"), "updated", ms(s.now())).Err()
	}()
	if err != nil {
		return false, fmt.Errorf("cannot set device group %s: %w", name, s.classify(err))
	}
	return created, nil
}

// GetDeviceGroup returns the named group, or ErrNotFound.
func (s *Store) GetDeviceGroup(ctx context.Context, name string) (*DeviceGroup, error) {
	m, err := s.rdb.HGetAll(ctx, s.part(name).DeviceGroup(name)).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot get device group %s: %w", name, s.classify(err))
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%w: device group %s", ErrNotFound, name)
	}
	g := &DeviceGroup{Name: name, UpdatedAt: msTime(m["updated"]), Devices: []string{}}
	if m["devs"] != "" {
		g.Devices = strings.Split(m["devs"], "\n")
	}
	return g, nil
}

// DeleteDeviceGroup removes the named group (group commands sent to it
// keep the devices they were sent to), or ErrNotFound.
func (s *Store) DeleteDeviceGroup(ctx context.Context, name string) error {
	n, err := s.rdb.Del(ctx, s.part(name).DeviceGroup(name)).Result()
	if err != nil {
		return fmt.Errorf("cannot delete device group %s: %w", name, s.classify(err))
	}
	if n == 0 {
		return fmt.Errorf("%w: device group %s", ErrNotFound, name)
	}
	return nil
}
