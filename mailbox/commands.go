package mailbox

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Reserve atomically creates the record of (c.Client, c.ID) as pending
// with a lease, or reports what is there.
//
// c needs Client, Device, ID, Method, Params, Fingerprint, Timeout and
// ExpiresIn; CreatedAt defaults to now, and DeliverBy is CreatedAt +
// ExpiresIn. The returned command is the stored record: for Reserved and
// Retake it carries the LeaseToken, CreatedAt and DeliverBy the caller
// puts in the envelope (AcceptedAt, DeliverBy). Exists returns the
// existing record without a token. A record with the same (client, id) but
// a different fingerprint gives ErrConflict, with the existing record.
//
// A pending record expires ExpiresIn + Timeout + Lease + Retention after
// its last reservation, so an abandoned reservation does not stay forever
// while a command whose message waits in RabbitMQ until its deliver-by
// (and whose MarkQueued was lost) is still there for Dispatch; MarkQueued
// (or a Dispatch) removes that expiry. Reserve also arms the command's
// deliver-by timer, at DeliverBy but not before the lease ends (see
// FireTimers), and a Retake moves it to the new DeliverBy.
func (s *Store) Reserve(ctx context.Context, c *Command) (ReserveOutcome, *Command, error) {
	if c == nil || c.Client == "" || c.Device == "" || c.ID.IsZero() {
		return 0, nil, errors.New("mailbox: Reserve needs a client, a device and an id")
	}
	created := c.CreatedAt
	if created.IsZero() {
		created = s.now()
	}
	v, err := s.run(ctx, reserveScript, s.keys.Command(c.Client, c.ID.Key()),
		c.Client, c.Device, string(c.ID.Raw()), c.ID.Key(), c.Method, string(c.Params),
		c.Fingerprint, c.Timeout.Milliseconds(), c.ExpiresIn.Milliseconds(),
		created.UnixMilli(), newToken(), s.opts.Lease.Milliseconds())
	if err != nil {
		return 0, nil, fmt.Errorf("cannot reserve command %s: %w", c.ID.Key(), err)
	}
	head, val := reply(v)
	rec, err := recordReply(val)
	if err != nil {
		return 0, nil, err
	}
	if rec == nil {
		return 0, nil, fmt.Errorf("cannot reserve command %s: empty reply", c.ID.Key())
	}
	switch head {
	case "corrupt":
		return 0, nil, fmt.Errorf("cannot reserve command %s: corrupt record", c.ID.Key())
	case "reserved":
		return Reserved, rec, nil
	case "retake":
		return Retake, rec, nil
	case "exists":
		rec.LeaseToken = ""
		return Exists, rec, nil
	case "conflict":
		rec.LeaseToken = ""
		return Exists, rec, fmt.Errorf("%w: command %s", ErrConflict, c.ID.Key())
	}
	return 0, nil, fmt.Errorf("cannot reserve command %s: unexpected reply %q", c.ID.Key(), head)
}

// MarkQueued records that the command's publish was confirmed: pending →
// queued (stamps QueuedAt, removes the lease and the pending expiry,
// indexes the command in ClientCommands). A record already queued or
// beyond is left alone (nil error). ErrNotFound when there is no record.
//
// Any pending record is marked queued, whoever holds the lease now: a
// confirmed publish makes the command durable in RabbitMQ, so refusing it
// because another request retook the lease meanwhile could only lose a
// command. leaseToken is accepted for symmetry with Release and for logs.
func (s *Store) MarkQueued(ctx context.Context, client, idKey, leaseToken string) error {
	v, err := s.run(ctx, markQueuedScript, s.keys.Command(client, idKey))
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

// Release deletes a pending reservation held with leaseToken: the publish
// definitely failed (nack, returned, or never sent). Otherwise it does
// nothing. When the lease had been retaken from an earlier holder, whose
// publish may still be confirmed, the record is kept and only the lease
// ends (a retry retakes it). After a confirm timeout, prefer to let the
// lease run out rather than Release.
func (s *Store) Release(ctx context.Context, client, idKey, leaseToken string) error {
	if leaseToken == "" {
		return nil
	}
	if _, err := s.run(ctx, releaseScript, s.keys.Command(client, idKey), leaseToken); err != nil {
		return fmt.Errorf("cannot release command %s: %w", idKey, err)
	}
	return nil
}

// Get returns the command (client, idKey), or ErrNotFound. A pending
// record is returned as pending even when its lease ran out (LeaseUntil
// tells); LeaseToken is never returned.
func (s *Store) Get(ctx context.Context, client, idKey string) (*Command, error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.Command(client, idKey)).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot get command %s: %w", idKey, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	c, err := decodeRecord(m)
	if err != nil {
		return nil, err
	}
	c.LeaseToken = ""
	return c, nil
}

// Cancel cancels a command that is not on the wire yet: queued, or sent
// while its mailbox entry has not been taken by a push server (SendingAt
// zero). It removes the device-mailbox entry, cancels the timers, appends
// the client's -32004 result (signalling clientOwner unless the client's
// live session is elsewhere), sets the retention expiry, and returns the
// updated command. For any other status it returns the command and an
// error wrapping ErrState (the apiserver answers 409). ErrNotFound when
// there is no record.
func (s *Store) Cancel(ctx context.Context, client, idKey string, clientOwner string) (*Command, error) {
	const reason = "cancelled by the client"
	v, err := s.run(ctx, cancelScript, s.keys.Command(client, idKey),
		gatewayError(protocol.StatusCancelled, reason), reason, clientOwner)
	if err != nil {
		return nil, fmt.Errorf("cannot cancel command %s: %w", idKey, err)
	}
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
			return nil, "", fmt.Errorf("mailbox: bad cursor %q", cursor)
		}
	}
	ik := s.keys.ClientCommands(client, device)
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
				cmds[i] = p.HGetAll(ctx, s.keys.Command(client, z.Member.(string)))
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
		if len(out) > 0 || end {
			if len(out) > n {
				out, end = out[:n], false
			}
			return out, end, nil
		}
		want *= 2 // a page of ties already seen: read further
	}
}

// cancelAllPage is how many index members CancelAll hands to one script.
const cancelAllPage = 200

// CancelAll cancels every cancellable command (see Cancel) of client to
// device and returns how many it cancelled. It looks only at the index
// members created within Options.MaxLifetime + Lease (no older command
// can still be queued or sent, except a dead command an operator
// replayed: cancel that one by id), a page at a time, each page in one
// script.
func (s *Store) CancelAll(ctx context.Context, client, device, clientOwner string) (int, error) {
	const reason = "cancelled by the client"
	body := gatewayError(protocol.StatusCancelled, reason)
	ik := s.keys.ClientCommands(client, device)
	oldest := s.now().Add(-s.opts.MaxLifetime - s.opts.Lease).UnixMilli()
	n := 0
	var cur zcursor
	for {
		zs, end, err := s.zpage(ctx, ik, cur, cancelAllPage)
		if err != nil {
			return n, fmt.Errorf("cannot cancel commands: %w", err)
		}
		args := make([]any, 0, 4+len(zs))
		args = append(args, body, reason, clientOwner, client)
		for _, z := range zs {
			if int64(z.Score) < oldest {
				end = true
				break
			}
			m, _ := z.Member.(string)
			args = append(args, m)
			cur = zcursor{score: int64(z.Score), member: m, set: true}
		}
		if len(args) > 4 {
			v, err := s.run(ctx, cancelManyScript, ik, args...)
			if err != nil {
				return n, fmt.Errorf("cannot cancel commands: %w", err)
			}
			k, _ := v.(int64)
			n += int(k)
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
