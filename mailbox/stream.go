package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/iotgw/gateway/protocol"
)

// fetchScanMax bounds the stale entries one Fetch may skip (and delete)
// beyond count; skipped entries are gone, so the next Fetch goes further.
const fetchScanMax = 1000

// Fetch returns up to count entries of identity's mailbox after stream
// ID after ("" or "0" = from the start), in order. It deletes the entries
// it skips: expired ones, and command entries whose command is final,
// gone, or no longer carried by that entry. For each command entry it
// returns whose command is sent, it stamps SendingAt (the first time: the
// command is now on the wire, Cancel answers 409 and a deliver-by timer
// waits one timeout instead of expiring it) and increments Attempts, in
// the same script, before the caller publishes.
//
// Callers must therefore fetch only what they publish now: count no more
// than the free slots of the in-flight window. An entry fetched but not
// published (no matching subscription, too large for the client, the
// connection gone, the process stopping) must be handed to Unsend, or the
// command stays "on the wire" (conservative: it cannot be cancelled, and
// it times out instead of expiring). It scans at most count+1000 entries,
// so fewer than count entries do not mean the mailbox has nothing more:
// FetchPage tells.
func (s *Store) Fetch(ctx context.Context, identity, after string, count int) ([]Entry, error) {
	entries, _, err := s.FetchPage(ctx, identity, after, count)
	return entries, err
}

// FetchPage is Fetch that also reports whether the mailbox may hold more
// after the entries returned although fewer than count came back: the
// scan ran out of its budget skipping (and deleting) stale entries, so
// the caller should fetch again from the last entry it got. When more is
// false and fewer than count came back, the mailbox had nothing more.
func (s *Store) FetchPage(ctx context.Context, identity, after string, count int) (entries []Entry, more bool, err error) {
	if count <= 0 {
		return nil, false, nil
	}
	v, err := s.run(ctx, fetchScript, s.keys.Mailbox(identity), after, count, count+fetchScanMax)
	if err != nil {
		return nil, false, fmt.Errorf("cannot fetch mailbox of %s: %w", identity, err)
	}
	reply, _ := v.([]any)
	if len(reply) != 2 {
		return nil, false, fmt.Errorf("cannot fetch mailbox of %s: malformed reply", identity)
	}
	rows, _ := reply[0].([]any)
	flag, _ := reply[1].(int64)
	out := make([]Entry, 0, len(rows))
	for _, row := range rows {
		f, _ := row.([]any)
		if len(f) < 6 {
			return nil, false, fmt.Errorf("cannot fetch mailbox of %s: malformed reply", identity)
		}
		str := func(i int) string { s, _ := f[i].(string); return s }
		x, _ := strconv.ParseInt(str(3), 10, 64)
		out = append(out, Entry{
			ID:      str(0),
			Topic:   str(1),
			Payload: []byte(str(2)),
			Expires: time.UnixMilli(x),
			Client:  str(4),
			MsgKey:  str(5),
		})
	}
	return out, flag == 1, nil
}

// Ack removes one entry of identity's mailbox after its PUBACK. For a
// command entry whose command is still sent (and carried by this entry)
// it is the delivered transition: stamps DeliveredAt, cancels the
// deliver-by timer and arms the answer-within timer at now+Timeout. For a
// command already final (or any other entry) it only deletes the entry.
// Acking an entry that is gone is a no-op. Only e.ID is used: the command
// an entry carries is read from the stored entry, not from e.
func (s *Store) Ack(ctx context.Context, identity string, e Entry) error {
	if _, err := s.run(ctx, ackScript, s.keys.Mailbox(identity), identity, e.ID); err != nil {
		return fmt.Errorf("cannot ack entry %s of %s: %w", e.ID, identity, err)
	}
	return nil
}

// ackManyMax bounds the entries one AckMany script handles.
const ackManyMax = 500

// AckMany acks several entries of identity's mailbox, as Ack does for
// each, in one round trip (one script per 500 entries). Use it when
// several PUBACKs arrived together.
func (s *Store) AckMany(ctx context.Context, identity string, entries []Entry) error {
	for len(entries) > 0 {
		n := min(len(entries), ackManyMax)
		args := make([]any, 0, 1+n)
		args = append(args, identity)
		for _, e := range entries[:n] {
			args = append(args, e.ID)
		}
		if _, err := s.run(ctx, ackScript, s.keys.Mailbox(identity), args...); err != nil {
			return fmt.Errorf("cannot ack %d entries of %s: %w", n, identity, err)
		}
		entries = entries[n:]
	}
	return nil
}

// Unsend undoes Fetch's stamp for an entry that was fetched but not
// published: the command's Attempts goes down by one and, when no other
// fetch is counted, SendingAt is cleared, so the command can be cancelled
// and expire again. It does nothing when the entry is gone, is no command
// entry, or its command is no longer sent by this entry (delivered, final,
// another entry). As with Ack, the command is read from the stored entry.
func (s *Store) Unsend(ctx context.Context, identity string, e Entry) error {
	if _, err := s.run(ctx, unsendScript, s.keys.Mailbox(identity), identity, e.ID); err != nil {
		return fmt.Errorf("cannot unsend entry %s of %s: %w", e.ID, identity, err)
	}
	return nil
}

// Len returns the number of entries in identity's mailbox, expired ones
// included until something deletes them.
func (s *Store) Len(ctx context.Context, identity string) (int64, error) {
	n, err := s.rdb.XLen(ctx, s.keys.Mailbox(identity)).Result()
	if err != nil {
		return 0, fmt.Errorf("cannot count mailbox of %s: %w", identity, err)
	}
	return n, nil
}

// Put appends a message to identity's mailbox and signals (the live
// session's node, else owner); it returns the entry ID. expires zero
// means now + Retention. ErrFull when the mailbox holds MailboxCap
// entries and its oldest entry is live: a full mailbox frees only the run
// of stale entries (expired, or of a command that ended) at its head.
func (s *Store) Put(ctx context.Context, identity, topic string, payload []byte, expires time.Time, owner string) (string, error) {
	if !protocol.ValidIdentity(identity) {
		return "", fmt.Errorf("mailbox: cannot put: %w", protocol.CheckIdentity(identity))
	}
	if expires.IsZero() {
		expires = s.now().Add(s.opts.Retention)
	}
	v, err := s.run(ctx, putScript, s.keys.Mailbox(identity), identity, topic, string(payload), expires.UnixMilli(), owner)
	if err != nil {
		return "", fmt.Errorf("cannot put into mailbox of %s: %w", identity, err)
	}
	head, id := reply(v)
	if head == "full" {
		return "", fmt.Errorf("%w: %s", ErrFull, identity)
	}
	sid, _ := id.(string)
	return sid, nil
}
