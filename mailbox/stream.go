package mailbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/iotgw/gateway/protocol"
	"github.com/redis/go-redis/v9"
)

// fetchScanMax bounds the stale entries one Fetch may skip (and delete)
// beyond count; skipped entries are gone, so the next Fetch goes further.
const fetchScanMax = 1000

// stampMargin: a read that holds no command entry and no entry expiring
// within stampMargin of this process's clock needs no stamp step. The
// step would keep every entry (it drops only expired ones, by the
// partition's clock, which no sane deployment puts a minute away), so it
// is not run; an entry nearer its expiry leaves the decision to the step.
// Saves a step per read of a client's results. With a durability barrier
// (Options.WaitReplicas) the step always runs: its barrier is what makes
// the entries read durable before they are revealed (DESIGN §7a).
const stampMargin = time.Minute

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
	return s.fetchPage(ctx, identity, after, count, 0)
}

// Poll is Fetch for a device that polls over HTTP instead of holding an
// MQTT session: it reads the mailbox from its start and returns up to
// count command entries, stamped as on the wire, leaving out those
// fetched less than visibility ago (by another poll, or over MQTT): an
// entry whose fetch is not followed within visibility by its PUBACK
// (Ack) or the device's answer is offered again, as a queue redelivers a
// message whose consumer went away.
func (s *Store) Poll(ctx context.Context, device string, count int, visibility time.Duration) ([]Entry, error) {
	entries, _, err := s.fetchPage(ctx, device, "", count, max(visibility, time.Millisecond))
	return entries, err
}

// fetchPage is FetchPage with a visibility (0: none; see Poll).
func (s *Store) fetchPage(ctx context.Context, identity, after string, count int, visibility time.Duration) (entries []Entry, more bool, err error) {
	if count <= 0 {
		return nil, false, nil
	}
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	mk := pk.Mailbox(identity)
	start := "-"
	if after != "" && after != "0" && after != "0-0" {
		start = "(" + after
	}
	budget := count + fetchScanMax
	out := make([]Entry, 0, count)
	// Read, then one step that declares the record of every command entry
	// read, re-checks it and stamps it (DESIGN §7a: keys a step can name).
	for len(out) < count && budget > 0 {
		n := min(count-len(out), budget)
		msgs, err := s.rdb.XRangeN(ctx, mk, start, "+", int64(n)).Result()
		if err != nil {
			return nil, false, fmt.Errorf("cannot fetch mailbox of %s: %w", identity, s.classify(err))
		}
		if len(msgs) == 0 {
			break
		}
		budget -= len(msgs)
		start = "(" + msgs[len(msgs)-1].ID
		keys := []string{mk}
		args := make([]any, 0, 1+3*len(msgs))
		args = append(args, visibility.Milliseconds())
		read := make(map[string]Entry, len(msgs))
		far := s.now().Add(stampMargin)
		stamp := s.opts.WaitReplicas > 0
		for _, m := range msgs {
			str := func(f string) string { v, _ := m.Values[f].(string); return v }
			x, _ := strconv.ParseInt(str("x"), 10, 64)
			e := Entry{ID: m.ID, Topic: str("t"), Payload: []byte(str("p")), Expires: time.UnixMilli(x),
				Client: str("c"), MsgKey: str("k"), TraceParent: str("tp"), read: true}
			read[m.ID] = e
			ri := 0
			if e.Client != "" {
				keys = append(keys, pk.Command(e.Client, e.MsgKey))
				ri = len(keys)
			}
			args = append(args, m.ID, ri, x)
			if ri > 0 || !e.Expires.After(far) {
				stamp = true
			}
		}
		if !stamp {
			for _, m := range msgs {
				out = append(out, read[m.ID])
			}
		} else {
			v, err := s.run(ctx, p, stepStamp, keys, args...)
			if err != nil {
				return nil, false, fmt.Errorf("cannot fetch mailbox of %s: %w", identity, err)
			}
			kept, _ := v.([]any)
			for _, k := range kept {
				id, _ := k.(string)
				if e, ok := read[id]; ok {
					out = append(out, e)
				}
			}
		}
		if len(msgs) < n {
			return out, false, nil
		}
	}
	return out, len(out) < count && budget <= 0, nil
}

// Ack removes one entry of identity's mailbox after its PUBACK. For a
// command entry whose command is still sent through this entry to
// identity, it is the delivered transition: stamps DeliveredAt, cancels
// the deliver-by timer and arms the answer timer at now + Timeout +
// grace. For a command already final (or any other entry) it only deletes
// the entry. Acking an entry that is gone is a no-op. The stored entry
// decides which command it carries: e.Client and e.MsgKey (as Fetch
// returned them) only save a read, and so does an entry as Fetch returned
// it that carries none (a result, a message), which is deleted unread (an
// entry ID is never reused in its mailbox).
func (s *Store) Ack(ctx context.Context, identity string, e Entry) error {
	return s.AckMany(ctx, identity, []Entry{e})
}

// ackManyMax bounds the entries one ack step handles.
const ackManyMax = 500

// AckMany acks several entries of identity's mailbox, as Ack does for
// each, in one round trip (one step per 500 entries) when the entries
// name their commands. Use it when several PUBACKs arrived together.
func (s *Store) AckMany(ctx context.Context, identity string, entries []Entry) error {
	for len(entries) > 0 {
		n := min(len(entries), ackManyMax)
		wrong, oneWay, freed, err := s.ack(ctx, identity, entries[:n])
		if err == nil && len(wrong) > 0 {
			// The step names every key it touches, so the records must be
			// known before it runs: read what the entries really carry.
			var more, moreFreed []Entry
			if wrong, err = s.readEntries(ctx, identity, wrong); err == nil {
				_, more, moreFreed, err = s.ack(ctx, identity, wrong)
				oneWay = append(oneWay, more...)
				freed = append(freed, moreFreed...)
			}
		}
		if err != nil {
			return fmt.Errorf("cannot ack %d entries of %s: %w", n, identity, err)
		}
		for _, e := range oneWay {
			if err := s.oneWay(ctx, identity, e); err != nil {
				// The answer timer armed by the ack ends it one grace later.
				s.log.Warn("cannot end a one-way command at its PUBACK; its timer will", "device_id", identity,
					"client_id", e.Client, "msg_id", e.MsgKey, "err", err)
			}
		}
		for _, e := range freed {
			s.laneFree(ctx, identity, e)
		}
		entries = entries[n:]
	}
	return nil
}

// laneFree lets the next command of the lane of entry e's command, just
// acked, go on the wire (lane_mode=puback). A failure is logged: the lane
// then moves on when the command is final, as in the default mode.
func (s *Store) laneFree(ctx context.Context, device string, e Entry) {
	p, keys := s.cmdKeys(device, e.Client, e.MsgKey)
	v, err := s.run(ctx, p, stepLaneFree, keys, device)
	if err != nil {
		s.log.Warn("cannot free a lane at a PUBACK; it moves on when the command is final", "device_id", device,
			"client_id", e.Client, "msg_id", e.MsgKey, "err", err)
		return
	}
	if a, _ := v.([]any); len(a) == 2 {
		next, _ := a[1].(string)
		s.advanceLane(ctx, p, next)
	}
}

// oneWay ends the one-way command of entry e, just acked: succeeded.
func (s *Store) oneWay(ctx context.Context, device string, e Entry) error {
	p, keys := s.cmdKeys(device, e.Client, e.MsgKey)
	v, err := s.run(ctx, p, stepOneWay, keys, device)
	if err != nil {
		return err
	}
	if a, _ := v.([]any); len(a) > 3 {
		s.relayNow(ctx, parseOutbox(p, a[3]), "")
	}
	return nil
}

// reasonRefused is the reason recorded on a command its device refused.
const reasonRefused = "refused by the device"

// Refuse handles a PUBACK with which the device refused entry e of its
// mailbox (MQTT 5 reason code reasonCode, 0x80 or more): the device will
// never take it, so, where Ack would make the command delivered, Refuse
// ends it rejected (sent → rejected): the client gets -32005 with the
// reason code in data.mqtt_reason_code (protocol.RefusedError), relayed
// at once. For a command in any other state, and for any entry that
// carries no command (a result refused by a client), it only removes the
// entry, as Ack does. e must be the entry as Fetch returned it; one that
// carries another command than e names is acked instead. It returns
// OutcomeRejected when it ended the command, OutcomeRetried or
// OutcomeRetryScheduled when its retry policy (retry_on rejected) took
// the next attempt instead, else OutcomeNoop.
func (s *Store) Refuse(ctx context.Context, device string, e Entry, reasonCode byte) (Outcome, error) {
	if e.Client == "" {
		return OutcomeNoop, s.AckMany(ctx, device, []Entry{e})
	}
	b, err := json.Marshal(protocol.RefusedError(reasonCode))
	if err != nil {
		return "", fmt.Errorf("cannot refuse command %s: %w", e.MsgKey, err)
	}
	p, keys := s.cmdKeys(device, e.Client, e.MsgKey)
	v, err := s.run(ctx, p, stepRefuse, keys, device, e.ID, e.Client, e.MsgKey, `"error":`+string(b), reasonRefused,
		errExpired, reasonExpired, errRejected, reasonRejected)
	if err != nil {
		return "", fmt.Errorf("cannot refuse command %s: %w", e.MsgKey, err)
	}
	head, _ := reply(v)
	a, _ := v.([]any)
	switch head {
	case "rejected":
		if len(a) > 3 {
			s.relayNow(ctx, parseOutbox(p, a[3]), "")
		}
		return OutcomeRejected, nil
	case string(OutcomeRetried), string(OutcomeRetryScheduled):
		s.wakeRetried(ctx, device, head, a)
		return Outcome(head), nil
	case "mismatch":
		// The stored entry knows its command; Ack reads it.
		return OutcomeNoop, s.AckMany(ctx, device, []Entry{{ID: e.ID}})
	case "corrupt":
		s.log.Warn("refused entry of a corrupt record: left in the mailbox", "device_id", device,
			"client_id", e.Client, "msg_id", e.MsgKey)
	}
	return OutcomeNoop, nil
}

// ack runs one ack step and returns the entries it left because they
// carry another command than the one named, and those of one-way commands
// it marked delivered.
func (s *Store) ack(ctx context.Context, identity string, entries []Entry) (wrong, oneWay, laneFree []Entry, err error) {
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	keys := []string{pk.Mailbox(identity), pk.Mailboxes(), pk.Timers(), pk.StatusCounts(s.now().Unix() / 60)}
	args := make([]any, 0, 1+2*len(entries))
	args = append(args, identity)
	for _, e := range entries {
		// ri: the index of the record of the command the entry carries, 0
		// when the step must read the entry to know (an entry named by its
		// ID only), -1 for an entry Fetch read that carries none.
		ri := 0
		if e.Client != "" {
			keys = append(keys, pk.Command(e.Client, e.MsgKey))
			ri = len(keys)
		} else if e.read {
			ri = -1
		}
		args = append(args, e.ID, ri)
	}
	v, err := s.run(ctx, p, stepAck, keys, args...)
	if err != nil {
		return nil, nil, nil, err
	}
	out, _ := v.([]any)
	for i, o := range out {
		if i >= len(entries) {
			break
		}
		switch o {
		case "mismatch":
			wrong = append(wrong, entries[i])
		case "oneway":
			oneWay = append(oneWay, entries[i])
		case "lanefree":
			laneFree = append(laneFree, entries[i])
		}
	}
	return wrong, oneWay, laneFree, nil
}

// readEntries returns entries with the command each carries in
// identity's mailbox (entries that are gone are left out).
func (s *Store) readEntries(ctx context.Context, identity string, entries []Entry) ([]Entry, error) {
	mk := s.part(identity).Mailbox(identity)
	cmds := make([]*redis.XMessageSliceCmd, len(entries))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, e := range entries {
			cmds[i] = p.XRange(ctx, mk, e.ID, e.ID)
		}
		return nil
	})
	if err != nil {
		return nil, s.classify(err)
	}
	out := make([]Entry, 0, len(entries))
	for i, c := range cmds {
		if ms := c.Val(); len(ms) == 1 {
			e := entries[i]
			e.Client, _ = ms[0].Values["c"].(string)
			e.MsgKey, _ = ms[0].Values["k"].(string)
			e.TraceParent, _ = ms[0].Values["tp"].(string)
			out = append(out, e)
		}
	}
	return out, nil
}

// Unsend undoes Fetch's stamp for an entry that was fetched but not
// published: the command's Attempts goes down by one and, when no other
// fetch is counted, SendingAt is cleared, so the command can be cancelled
// and expire again. It does nothing when the entry is gone, is no command
// entry, or its command is no longer sent by this entry.
func (s *Store) Unsend(ctx context.Context, identity string, e Entry) error {
	if e.Client == "" {
		es, err := s.readEntries(ctx, identity, []Entry{e})
		if err != nil {
			return fmt.Errorf("cannot unsend entry %s of %s: %w", e.ID, identity, err)
		}
		if len(es) == 0 || es[0].Client == "" {
			return nil // gone, or no command entry
		}
		e = es[0]
	}
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	if _, err := s.run(ctx, p, stepUnsend, []string{pk.Mailbox(identity), pk.Command(e.Client, e.MsgKey)}, identity, e.ID); err != nil {
		return fmt.Errorf("cannot unsend entry %s of %s: %w", e.ID, identity, err)
	}
	return nil
}

// Tails returns the ID of the last entry of each identity's mailbox (""
// when it is empty), in one pipelined round trip: a node's sweep reads
// only the mailboxes that hold something after what their session has
// read.
func (s *Store) Tails(ctx context.Context, identities []string) ([]string, error) {
	cmds := make([]*redis.XMessageSliceCmd, len(identities))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range identities {
			cmds[i] = p.XRevRangeN(ctx, s.part(id).Mailbox(id), "+", "-", 1)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the tails of %d mailboxes: %w", len(identities), s.classify(err))
	}
	out := make([]string, len(identities))
	for i, c := range cmds {
		if ms := c.Val(); len(ms) > 0 {
			out[i] = ms[0].ID
		}
	}
	return out, nil
}

// Len returns the number of entries in identity's mailbox, expired ones
// included until something deletes them.
func (s *Store) Len(ctx context.Context, identity string) (int64, error) {
	n, err := s.rdb.XLen(ctx, s.part(identity).Mailbox(identity)).Result()
	if err != nil {
		return 0, fmt.Errorf("cannot count mailbox of %s: %w", identity, err)
	}
	return n, nil
}

// Put appends a message to identity's mailbox and signals (the live
// session's node, and owner); it returns the entry ID. The wake-up
// carries the entry (wake.go), so that a session that has read the
// mailbox up to the entry before it sends it without reading. expires zero
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
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	v, err := s.run(ctx, p, stepPut, []string{pk.Mailbox(identity), pk.Mailboxes(), pk.Session(identity)},
		identity, topic, string(payload), expires.UnixMilli())
	if err != nil {
		return "", fmt.Errorf("cannot put into mailbox of %s: %w", identity, err)
	}
	a, _ := v.([]any)
	head, id := reply(v)
	if head == "full" {
		return "", fmt.Errorf("%w: %s", ErrFull, identity)
	}
	sid, _ := id.(string)
	sess, prev := "", ""
	if len(a) > 2 {
		sess, _ = a[2].(string)
	}
	w := Wake{Identity: identity}
	if len(a) > 3 && len(topic)+len(payload) <= maxCarried {
		prev, _ = a[3].(string)
		w = Wake{Identity: identity, Carried: true, Prev: prev,
			Entry: Entry{ID: sid, Topic: topic, Payload: payload, Expires: time.UnixMilli(expires.UnixMilli())}}
	}
	if owner == "" && s.opts.OwnerOf != nil {
		owner = s.opts.OwnerOf(identity)
	}
	if err := s.wakeWith(ctx, w, sess, owner); err != nil {
		s.log.Warn("cannot wake the push server; its sweep will find the entry", "identity", identity, "err", err)
	}
	return sid, nil
}
