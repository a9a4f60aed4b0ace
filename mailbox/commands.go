package mailbox

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Reserve claims (c.Client, c.ID) for c.Device and this body in the
// client's partition, then creates the record as pending with a lease in
// the device's partition, or reports what is there (DESIGN §7: intake
// claims the id first, then reserves the record; a crash between leaves a
// claim that a retry completes).
//
// c needs Client, Device, ID, Method, Params, Fingerprint, Timeout and
// ExpiresIn. The partition's clock sets CreatedAt (accepted-at) and
// DeliverBy = CreatedAt + ExpiresIn; the returned command is the stored
// record: for Reserved and Retake it carries the LeaseToken, CreatedAt and
// DeliverBy the caller puts in the envelope. Exists returns the existing
// record without a token (or, for a command whose record is gone and
// whose claim is final, a command built from the claim). A claim or a
// record with another device or fingerprint gives ErrConflict.
//
// A pending record expires ExpiresIn + Timeout + Lease + 2 × grace +
// Retention after its last reservation, so an abandoned reservation does
// not stay forever while a command whose message waits in RabbitMQ until
// its deliver-by is still there for Dispatch. Reserve also arms the
// deliver-by timer, at DeliverBy but not before the lease ends.
func (s *Store) Reserve(ctx context.Context, c *Command) (ReserveOutcome, *Command, error) {
	if c == nil || c.Client == "" || c.Device == "" || c.ID.IsZero() {
		return 0, nil, errors.New("mailbox: Reserve needs a client, a device and an id")
	}
	key := c.ID.Key()
	watch := time.Duration(c.Retries+1)*(max(c.Delay, 0)+c.ExpiresIn+c.Timeout) + time.Duration(c.Retries)*c.Backoff.Max +
		s.opts.Lease + 2*s.opts.AnswerGrace
	lifetime := (watch + s.opts.Retention).Milliseconds()
	cp := s.PartitionOf(c.Client)
	pk := s.keys.Part(cp)
	v, err := s.run(ctx, cp, stepClaim, []string{pk.Claim(c.Client, key), pk.Timers()},
		c.Device, c.Fingerprint, lifetime, string(c.ID.Raw()), watch.Milliseconds(), watchMember(c.Client, c.Device, key), c.Group)
	if err != nil {
		return 0, nil, fmt.Errorf("cannot claim command %s: %w", key, err)
	}
	head, val := reply(v)
	switch head {
	case "conflict":
		return Exists, nil, fmt.Errorf("%w: command %s", ErrConflict, key)
	case "same":
		if val == "final" {
			// Final and relayed: the claim answers, whatever became of
			// the record.
			if rec, err := s.Get(ctx, c.Client, key); err == nil {
				return Exists, rec, nil
			}
		}
	case "new":
	default:
		return 0, nil, fmt.Errorf("cannot claim command %s: unexpected reply %q", key, head)
	}
	p, keys := s.cmdKeys(c.Device, c.Client, key)
	v, err = s.run(ctx, p, stepReserve, keys,
		c.Client, c.Device, string(c.ID.Raw()), key, c.Method, string(c.Params),
		c.Fingerprint, c.Timeout.Milliseconds(), c.ExpiresIn.Milliseconds(),
		newToken(), s.opts.Lease.Milliseconds(), max(c.Delay, 0).Milliseconds(), c.Retries, laneArg(c), c.Group,
		c.Backoff.Initial.Milliseconds(), strconv.FormatFloat(c.Backoff.Multiplier, 'f', -1, 64), c.Backoff.Max.Milliseconds(),
		retryOnArg(c.Retries, c.RetryOn))
	if err != nil {
		// The claim is made: the command is not accepted, but not surely
		// refused either (the step may have run, or a retry completes it).
		return 0, nil, fmt.Errorf("cannot reserve command %s: %w: %w", key, ErrClaimed, err)
	}
	head, val = reply(v)
	rec, err := recordReply(val)
	if err != nil {
		return 0, nil, err
	}
	if rec == nil {
		return 0, nil, fmt.Errorf("cannot reserve command %s: empty reply", key)
	}
	switch head {
	case "corrupt":
		return 0, nil, fmt.Errorf("cannot reserve command %s: corrupt record", key)
	case "reserved":
		return Reserved, rec, nil
	case "retake":
		return Retake, rec, nil
	case "exists":
		rec.LeaseToken = ""
		return Exists, rec, nil
	case "conflict":
		rec.LeaseToken = ""
		return Exists, rec, fmt.Errorf("%w: command %s", ErrConflict, key)
	}
	return 0, nil, fmt.Errorf("cannot reserve command %s: unexpected reply %q", key, head)
}

// retryOnArg is the retry_on a record stores: "" for the default
// (timeout) and without retries.
func retryOnArg(retries int, on string) string {
	if retries == 0 || on == protocol.DefaultRetryOn {
		return ""
	}
	return on
}

// laneArg is the lane argument of the reserve step: the lane, and
// "|{mode}" after it for a lane mode other than the default.
func laneArg(c *Command) string {
	if c.Lane == "" || c.LaneMode == "" {
		return c.Lane
	}
	return c.Lane + "|" + c.LaneMode
}

// MarkQueued records that the command's publish was confirmed: pending →
// queued (stamps QueuedAt, removes the lease and the pending expiry,
// lists the command in ClientCommands). A record already queued or beyond
// is left alone (nil error). ErrNotFound when there is no record.
//
// Any pending record is marked queued, whoever holds the lease now: a
// confirmed publish makes the command durable in RabbitMQ.
func (s *Store) MarkQueued(ctx context.Context, device, client, idKey string) error {
	p, keys := s.cmdKeys(device, client, idKey)
	v, err := s.run(ctx, p, stepMarkQueued, keys, s.horizonMs())
	if err != nil {
		return fmt.Errorf("cannot mark command %s queued: %w", idKey, err)
	}
	switch v {
	case "notfound":
		return fmt.Errorf("%w: %s", ErrNotFound, idKey)
	case "corrupt":
		return fmt.Errorf("cannot mark command %s queued: corrupt record", idKey)
	}
	return nil
}

// Release ends a pending reservation held with leaseToken whose publish
// definitely failed (nack, returned, or never sent): the record becomes a
// void tombstone (DESIGN §7a: never deleted), which a retry with the same
// body reserves afresh; the claim stays, so another body is 409. When the
// lease had been retaken from an earlier holder, whose publish may still
// be confirmed, only the lease ends. After a confirm timeout, prefer to
// let the lease run out rather than Release.
func (s *Store) Release(ctx context.Context, device, client, idKey, leaseToken string) error {
	if leaseToken == "" {
		return nil
	}
	p, keys := s.cmdKeys(device, client, idKey)
	v, err := s.run(ctx, p, stepRelease, keys, leaseToken)
	if err != nil {
		return fmt.Errorf("cannot release command %s: %w", idKey, err)
	}
	if a, _ := v.([]any); len(a) == 2 {
		next, _ := a[1].(string)
		s.advanceLane(ctx, p, next)
	}
	return nil
}

// claimCommand is what the final claim of a command whose record is gone
// still tells: a command the gateway lost (-32006), or one an orphan
// answer ended (orphan.go), or one whose record expired first.
func claimCommand(client, idKey string, cl map[string]string) *Command {
	id, err := protocol.ParseID(json.RawMessage(cl["id"]))
	if err != nil {
		id, _ = protocol.ParseID(json.RawMessage(strconv.Quote(idKey)))
	}
	return &Command{Client: client, Device: cl["device"], ID: id, Status: protocol.Status(cl["status"]),
		Response: json.RawMessage(cl["resp"]), CreatedAt: msTime(cl["claimed"]), FinishedAt: msTime(cl["finished"])}
}

// claimOf reads the claim of (client, idKey): nil when there is none.
func (s *Store) claimOf(ctx context.Context, client, idKey string) (map[string]string, error) {
	m, err := s.rdb.HGetAll(ctx, s.part(client).Claim(client, idKey)).Result()
	if err != nil {
		return nil, s.classify(err)
	}
	if len(m) == 0 || m["device"] == "" {
		return nil, nil
	}
	return m, nil
}

// Get returns the command (client, idKey), or ErrNotFound. It finds the
// device through the client's claim, reads the record in the device's
// partition, and reports the final status and response the claim holds
// (the client's ledger, DESIGN §7a) when the claim is final. A pending
// record is returned as pending even when its lease ran out (LeaseUntil
// tells); LeaseToken is never returned. A void record (a released
// reservation) is not found.
func (s *Store) Get(ctx context.Context, client, idKey string) (*Command, error) {
	cl, err := s.claimOf(ctx, client, idKey)
	if err != nil {
		return nil, fmt.Errorf("cannot get command %s: %w", idKey, err)
	}
	if cl == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	m, err := s.rdb.HGetAll(ctx, s.part(cl["device"]).Command(client, idKey)).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot get command %s: %w", idKey, s.classify(err))
	}
	if len(m) == 0 && cl["state"] == "final" && cl["status"] != "" {
		return claimCommand(client, idKey, cl), nil
	}
	if len(m) == 0 || m[fStatus] == string(protocol.StatusVoid) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	c, err := decodeRecord(m)
	if err != nil {
		return nil, err
	}
	c.LeaseToken = ""
	if cl["state"] == "final" && cl["status"] != "" && cl["gen"] == strconv.Itoa(c.Replays) {
		c.Status = protocol.Status(cl["status"])
		c.Response = json.RawMessage(cl["resp"])
		c.ResultDropped = cl["dropped"] == "1"
		if t := msTime(cl["finished"]); !t.IsZero() {
			c.FinishedAt = t
		}
	}
	return c, nil
}

// Cancel cancels a command that is not on the wire yet: queued, or sent
// while its mailbox entry has not been taken by a push server (SendingAt
// zero). It removes the device-mailbox entry, cancels the timers, relays
// the client's -32004 result (waking clientOwner unless the client's live
// session is elsewhere), and returns the updated command. For any other
// status it returns the command and an error wrapping ErrState (the
// apiserver answers 409). ErrNotFound when there is no record.
func (s *Store) Cancel(ctx context.Context, client, idKey string, clientOwner string) (*Command, error) {
	const reason = "cancelled by the client"
	cl, err := s.claimOf(ctx, client, idKey)
	if err != nil {
		return nil, fmt.Errorf("cannot cancel command %s: %w", idKey, err)
	}
	if cl == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	p, keys := s.cmdKeys(cl["device"], client, idKey)
	v, err := s.run(ctx, p, stepCancel, keys, gatewayError(protocol.StatusCancelled, reason), reason)
	if err != nil {
		return nil, fmt.Errorf("cannot cancel command %s: %w", idKey, err)
	}
	a, _ := v.([]any)
	head, val := reply(v)
	switch head {
	case "notfound":
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	case "corrupt":
		return nil, fmt.Errorf("cannot cancel command %s: corrupt record", idKey)
	}
	rec, err := recordReply(val)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	rec.LeaseToken = ""
	if head != "cancelled" {
		return rec, fmt.Errorf("%w: command %s is %s", ErrState, idKey, rec.Status)
	}
	if len(a) > 3 {
		rec.ResultDropped = s.relayNow(ctx, parseOutbox(p, a[3]), clientOwner)
	}
	return rec, nil
}

// listScanMax bounds the records List examines in one call; a page may
// then hold fewer than limit commands while the next cursor is not "".
const listScanMax = 1000

// List returns the client's commands to device, newest first (by
// CreatedAt), optionally only those in status (""), at most limit (1 to
// 100, clamped) per page. cursor is "" for the first page, then the
// returned next cursor; next is "" at the end. A page may hold fewer than
// limit commands while next is not "" (a filter skipped many). Records
// that expired are skipped and pruned from the index.
func (s *Store) List(ctx context.Context, client, device string, status protocol.Status, limit int, cursor string) ([]*Command, string, error) {
	limit = min(max(limit, 1), 100)
	var cur zcursor
	if cursor != "" {
		var ok bool
		if cur, ok = decodeCursor(cursor); !ok {
			return nil, "", fmt.Errorf("%w: %q", ErrBadCursor, cursor)
		}
	}
	pk := s.part(device)
	ik := pk.ClientCommands(client, device)
	var out []*Command
	scanned := 0
	chunk := limit
	if status != "" {
		chunk = 100
	}
	for len(out) < limit {
		if scanned >= listScanMax {
			return out, cur.encode(), nil
		}
		zs, end, err := s.zpage(ctx, ik, cur, chunk)
		if err != nil {
			return nil, "", fmt.Errorf("cannot list commands: %w", err)
		}
		if len(zs) == 0 {
			return out, "", nil
		}
		cmds := make([]*redis.MapStringStringCmd, len(zs))
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, z := range zs {
				cmds[i] = p.HGetAll(ctx, pk.Command(client, z.Member.(string)))
			}
			return nil
		})
		if err != nil {
			return nil, "", fmt.Errorf("cannot list commands: %w", err)
		}
		var gone []any
		for i, z := range zs {
			cur = zcursor{score: int64(z.Score), member: z.Member.(string), set: true}
			scanned++
			m := cmds[i].Val()
			if len(m) == 0 {
				gone = append(gone, z.Member)
				continue
			}
			if m[fStatus] == string(protocol.StatusVoid) {
				continue
			}
			c, err := decodeRecord(m)
			if err != nil {
				s.log.Warn("skipping corrupt record", "client_id", client, "msg_id", z.Member, "err", err)
				continue
			}
			c.LeaseToken = ""
			if status != "" && c.Status != status {
				continue
			}
			out = append(out, c)
			if len(out) == limit {
				if end && i == len(zs)-1 {
					cur = zcursor{}
				}
				break
			}
		}
		if len(gone) > 0 {
			if err := s.rdb.ZRem(ctx, ik, gone...).Err(); err != nil {
				s.log.Warn("cannot prune command index", "client_id", client, "device_id", device, "err", err)
			}
		}
		if end && len(out) < limit {
			return out, "", nil
		}
	}
	return out, cur.encode(), nil
}

// zcursor is a position in a sorted set read newest first: the last
// member seen and its score.
type zcursor struct {
	score  int64
	member string
	set    bool
}

func (c zcursor) encode() string {
	if !c.set {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.score, 10) + ":" + c.member))
}

func decodeCursor(s string) (zcursor, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return zcursor{}, false
	}
	sc, m, ok := strings.Cut(string(b), ":")
	n, err := strconv.ParseInt(sc, 10, 64)
	if !ok || err != nil || m == "" {
		return zcursor{}, false
	}
	return zcursor{score: n, member: m, set: true}, true
}

// zpage returns up to n members of key after cur, newest first (score
// descending, then member descending as ZREVRANGEBYSCORE orders ties);
// end reports that nothing follows them.
func (s *Store) zpage(ctx context.Context, key string, cur zcursor, n int) ([]redis.Z, bool, error) {
	maxScore := "+inf"
	if cur.set {
		maxScore = strconv.FormatInt(cur.score, 10)
	}
	want := n
	for {
		zs, err := s.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{
			Max: maxScore, Min: "-inf", Count: int64(want),
		}).Result()
		if err != nil {
			return nil, false, err
		}
		out := zs[:0:0]
		for _, z := range zs {
			m, _ := z.Member.(string)
			if cur.set && int64(z.Score) == cur.score && m >= cur.member {
				continue // seen on an earlier page
			}
			out = append(out, z)
		}
		end := len(zs) < want
		if len(out) >= n || end {
			if len(out) > n {
				out, end = out[:n], false
			}
			return out, end, nil
		}
		want *= 2 // ties already seen took places in the page: read further
	}
}

// cancelAllPage is how many listing members CancelAll reads at a time.
const cancelAllPage = 200

// CancelAll cancels every cancellable command (see Cancel) of client to
// device and returns how many it cancelled. It looks only at the listing
// members created within Options.MaxLifetime + Lease (no older command can
// still be queued or sent, except a dead command an operator replayed:
// cancel that one by id), a page at a time; each page's cancels run as one
// batch of the cancel step, which re-checks every record.
func (s *Store) CancelAll(ctx context.Context, client, device, clientOwner string) (int, error) {
	const reason = "cancelled by the client"
	body := gatewayError(protocol.StatusCancelled, reason)
	ik := s.part(device).ClientCommands(client, device)
	oldest := s.now().Add(-s.opts.MaxLifetime - s.opts.Lease).UnixMilli()
	n := 0
	var cur zcursor
	for {
		zs, end, err := s.zpage(ctx, ik, cur, cancelAllPage)
		if err != nil {
			return n, fmt.Errorf("cannot cancel commands: %w", s.classify(err))
		}
		var items []*batchCall
		for _, z := range zs {
			if int64(z.Score) < oldest {
				end = true
				break
			}
			m, _ := z.Member.(string)
			p, keys := s.cmdKeys(device, client, m)
			items = append(items, &batchCall{p: p, keys: keys, args: []any{body, reason}})
			cur = zcursor{score: int64(z.Score), member: m, set: true}
		}
		if len(items) > 0 {
			p := s.PartitionOf(device)
			res, err := s.runBatch(ctx, p, stepCancel, items)
			if err != nil {
				return n, fmt.Errorf("cannot cancel commands: %w", err)
			}
			for _, r := range res {
				if r.err != nil {
					continue
				}
				a, _ := r.v.([]any)
				if head, _ := reply(r.v); head == "cancelled" && len(a) > 3 {
					n++
					s.relayNow(ctx, parseOutbox(p, a[3]), clientOwner)
				}
			}
		}
		if end || len(zs) == 0 {
			return n, nil
		}
	}
}

// ms converts a time to unix ms, 0 for the zero time.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
