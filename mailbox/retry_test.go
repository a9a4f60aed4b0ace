package mailbox_test

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestRetries: a command with retries that gets no answer within its
// timeout is sent again (the same request, a new mailbox entry, a fresh
// expires_in window) as often as allowed, then ends timeout; an answer
// to any try ends it.
func TestRetries(t *testing.T) {
	t.Parallel()
	retried := func(e *env, retries int, rawID string) {
		c := cmd(t, "c1", "d1", rawID, ``)
		c.Retries = retries
		c.Fingerprint = protocol.Fingerprint("d1", c.Method, nil, c.Timeout, c.ExpiresIn, "retries=2")
		e.sent(c)
	}
	// deliver fetches and acks the device's one entry: delivered.
	deliver := func(e *env) {
		t.Helper()
		es, err := e.s.Fetch(e.ctx, "d1", "", 10)
		if err != nil || len(es) != 1 {
			t.Fatalf("Fetch = %d entries, %v; want 1", len(es), err)
		}
		must(t, e.s.Ack(e.ctx, "d1", es[0]))
	}
	t.Run("every try times out", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		retried(e, 2, `"r"`)
		for try := 1; try <= 2; try++ {
			deliver(e)
			e.clock.Add(31 * time.Second) // past timeout + grace
			_, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil)
			if err != nil || outcomes["retried"] != 1 {
				t.Fatalf("try %d: outcomes %v, %v; want one retried", try, outcomes, err)
			}
			got := e.get("c1", "r")
			if got.Status != protocol.StatusSent || got.Tries != try || !got.DeliveredAt.IsZero() {
				t.Fatalf("after retry %d: %s tries %d delivered %v; want sent, %d, not delivered", try, got.Status, got.Tries, got.DeliveredAt, try)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != 1 {
				t.Fatalf("after retry %d: %d mailbox entries, want 1 (the new one)", try, n)
			}
		}
		deliver(e)
		e.clock.Add(31 * time.Second)
		e.fire()
		if got := e.get("c1", "r"); got.Status != protocol.StatusTimeout || got.Tries != 2 {
			t.Errorf("after the last try: %s tries %d, want timeout, 2", got.Status, got.Tries)
		}
		if rs := e.results("c1"); len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != protocol.CodeTimeout {
			t.Errorf("client results = %+v, want one -32001", rs)
		}
	})
	t.Run("the second try is answered", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		retried(e, 2, `"a"`)
		deliver(e)
		e.clock.Add(31 * time.Second)
		e.fire()
		deliver(e)
		resp := protocol.NewResult(json.RawMessage(`"c1:a"`), json.RawMessage(`"ok"`))
		if out, err := e.s.Complete(e.ctx, "c1", "a", "d1", resp, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
			t.Fatalf("Complete = %v, %v; want succeeded", out, err)
		}
		if got := e.get("c1", "a"); got.Status != protocol.StatusSucceeded || got.Tries != 1 {
			t.Errorf("%s tries %d, want succeeded, 1", got.Status, got.Tries)
		}
		if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
			t.Errorf("%d mailbox entries, want 0", n)
		}
	})
}

// policy returns command rawID of c1 to d1 with a retry policy.
func policy(t *testing.T, rawID string, retries int, on string) *mailbox.Command {
	t.Helper()
	c := cmd(t, "c1", "d1", rawID, ``)
	c.Retries, c.RetryOn = retries, on
	c.Fingerprint = protocol.Fingerprint("d1", c.Method, nil, c.Timeout, c.ExpiresIn, "retries="+strconv.Itoa(retries), "retry_on="+on)
	return c
}

// attemptOnWire fetches the device's one entry and returns the id the device
// sees in it.
func (e *env) attemptOnWire() (mailbox.Entry, string) {
	e.t.Helper()
	es, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(es) != 1 {
		e.t.Fatalf("Fetch(d1) = %d entries, %v; want 1", len(es), err)
	}
	var req struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(es[0].Payload, &req); err != nil {
		e.t.Fatalf("device request %s: %v", es[0].Payload, err)
	}
	return es[0], req.ID
}

// rawResults returns the payloads in c1's mailbox.
func (e *env) rawResults() []string {
	e.t.Helper()
	es, err := e.s.Fetch(e.ctx, "c1", "", 100)
	if err != nil {
		e.t.Fatalf("Fetch(c1): %v", err)
	}
	out := make([]string, len(es))
	for i, en := range es {
		out[i] = string(en.Payload)
	}
	return out
}

// answerAttempt completes the command with the device's answer under id: a
// result when code is 0, else an error with that code.
func (e *env) answerAttempt(key, id string, code int) mailbox.Outcome {
	e.t.Helper()
	raw, _ := json.Marshal(id)
	resp := protocol.NewResult(raw, json.RawMessage(`{"ok":true}`))
	if code != 0 {
		resp = protocol.NewErrorResponse(raw, &protocol.Error{Code: code, Message: "boom"})
	}
	out, err := e.s.Complete(e.ctx, "c1", key, "d1", resp, 0, "")
	if err != nil {
		e.t.Fatalf("Complete(%s) = %v", id, err)
	}
	return out
}

// TestRetryOn: each outcome a retry policy names (retry_on) starts the
// next attempt, with the device-facing id "{client}:{id}#{n}", instead of
// ending the command, until the attempts run out; the client gets one
// result, for the last attempt, with "attempts"; outcomes not named end
// the command at once.
func TestRetryOn(t *testing.T) {
	t.Parallel()
	t.Run("device_error twice, then a result", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"a"`, 2, "device_error"))
		for n, want := range []string{"c1:a", "c1:a#2"} {
			if _, id := e.attemptOnWire(); id != want {
				t.Fatalf("attempt %d: the device sees id %q, want %q", n+1, id, want)
			}
			if out := e.answerAttempt("a", want, -32000); out != mailbox.OutcomeRetried {
				t.Fatalf("attempt %d: error answer = %v, want retried", n+1, out)
			}
			got := e.get("c1", "a")
			if got.Status != protocol.StatusSent || got.Attempt() != n+2 || got.RetriedOn != "device_error" {
				t.Fatalf("after attempt %d: %s attempt %d retried on %q; want sent, %d, device_error", n+1, got.Status, got.Attempt(), got.RetriedOn, n+2)
			}
			if want := e.clock.Now().Add(time.Hour); !got.DeliverBy.Equal(want) {
				t.Errorf("after attempt %d: deliver-by %v, want %v (a fresh expires_in window)", n+1, got.DeliverBy, want)
			}
			e.clock.Add(time.Second)
			if rs := e.rawResults(); len(rs) != 0 {
				t.Fatalf("after attempt %d the client has results %v, want none", n+1, rs)
			}
		}
		if _, id := e.attemptOnWire(); id != "c1:a#3" {
			t.Fatalf("attempt 3: the device sees id %q, want c1:a#3", id)
		}
		if out := e.answerAttempt("a", "c1:a#3", 0); out != mailbox.OutcomeSucceeded {
			t.Fatalf("result = %v, want succeeded", out)
		}
		want := `{"jsonrpc":"2.0","result":{"ok":true},"id":"a","attempts":3}`
		if rs := e.rawResults(); len(rs) != 1 || rs[0] != want {
			t.Errorf("client results = %v, want one %s", rs, want)
		}
		if got := e.get("c1", "a"); got.Status != protocol.StatusSucceeded || got.Attempt() != 3 {
			t.Errorf("record: %s attempt %d, want succeeded 3", got.Status, got.Attempt())
		}
	})
	t.Run("device_error until the attempts run out", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"b"`, 1, "timeout,device_error"))
		e.attemptOnWire()
		e.answerAttempt("b", "c1:b", -32000)
		e.attemptOnWire()
		if out := e.answerAttempt("b", "c1:b#2", -32099); out != mailbox.OutcomeFailed {
			t.Fatalf("last error = %v, want failed", out)
		}
		want := `{"jsonrpc":"2.0","error":{"code":-32099,"message":"boom"},"id":"b","attempts":2}`
		if rs := e.rawResults(); len(rs) != 1 || rs[0] != want {
			t.Errorf("client results = %v, want one %s", rs, want)
		}
	})
	t.Run("device_error not named", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"c"`, 2, "timeout"))
		e.attemptOnWire()
		if out := e.answerAttempt("c", "c1:c", -32000); out != mailbox.OutcomeFailed {
			t.Fatalf("error answer = %v, want failed (retry_on timeout only)", out)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"r"`, 1, "rejected"))
		en, _ := e.attemptOnWire()
		if out, err := e.s.Refuse(e.ctx, "d1", en, 0x87); err != nil || out != mailbox.OutcomeRetried {
			t.Fatalf("first Refuse = %v, %v; want retried", out, err)
		}
		en, id := e.attemptOnWire()
		if id != "c1:r#2" {
			t.Fatalf("attempt 2: the device sees id %q, want c1:r#2", id)
		}
		if out, err := e.s.Refuse(e.ctx, "d1", en, 0x87); err != nil || out != mailbox.OutcomeRejected {
			t.Fatalf("second Refuse = %v, %v; want rejected", out, err)
		}
		rs := e.rawResults()
		if len(rs) != 1 || !strings.Contains(rs[0], `"data":{"attempts":2,"mqtt_reason_code":135,"source":"gateway","status":"rejected"}`) ||
			!strings.HasSuffix(rs[0], `"id":"r","attempts":2}`) {
			t.Errorf("client results = %v, want one -32005 with attempts 2 in data and beside id", rs)
		}
	})
	t.Run("expired in its queue", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		c := policy(t, `"x"`, 1, "expired")
		rec := e.queued(c)
		e.clock.Add(time.Hour + time.Second) // past deliver-by: its AMQP message never came
		if _, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil); err != nil || outcomes[string(mailbox.OutcomeRetryWaits)] != 1 {
			t.Fatalf("outcomes %v, %v; want one retry_waits", outcomes, err)
		}
		got := e.get("c1", "x")
		if got.Status != protocol.StatusQueued || got.Attempt() != 2 || !got.DeliverBy.Equal(e.clock.Now().Add(time.Hour)) {
			t.Fatalf("after the expiry: %s attempt %d deliver-by %v; want queued, 2, %v", got.Status, got.Attempt(), got.DeliverBy, e.clock.Now().Add(time.Hour))
		}
		// The message comes now: attempt 2 goes on the wire.
		if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "", ""); err != nil || out != mailbox.OutcomeSent {
			t.Fatalf("Dispatch = %v, %v; want sent", out, err)
		}
		if _, id := e.attemptOnWire(); id != "c1:x#2" {
			t.Errorf("the device sees id %q, want c1:x#2", id)
		}
		e.clock.Add(time.Hour + time.Second) // it expires again (the device took it, no PUBACK: the answer timer)
		e.fire()
		e.clock.Add(time.Hour)
		e.fire()
		got = e.get("c1", "x")
		if !got.Status.Final() {
			t.Fatalf("after the last attempt: %s, want final", got.Status)
		}
		if rs := e.rawResults(); len(rs) != 1 || !strings.Contains(rs[0], `"attempts":2,`) {
			t.Errorf("client results = %v, want one with attempts 2", rs)
		}
	})
	t.Run("expired in the device's mailbox", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"y"`, 1, "expired"))
		e.clock.Add(time.Hour + time.Second) // never fetched: not on the wire
		if _, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil); err != nil || outcomes[string(mailbox.OutcomeRetried)] != 1 {
			t.Fatalf("outcomes %v, %v; want one retried", outcomes, err)
		}
		if _, id := e.attemptOnWire(); id != "c1:y#2" {
			t.Errorf("the device sees id %q, want c1:y#2", id)
		}
	})
	t.Run("backoff", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		c := policy(t, `"k"`, 1, "device_error")
		c.Backoff = mailbox.Backoff{Initial: 10 * time.Second, Multiplier: 2, Max: time.Minute}
		e.sent(c)
		e.attemptOnWire()
		if out := e.answerAttempt("k", "c1:k", -32000); out != mailbox.OutcomeRetryScheduled {
			t.Fatalf("error answer = %v, want retry_scheduled", out)
		}
		if got := e.get("c1", "k"); got.Status != protocol.StatusScheduled {
			t.Fatalf("during the backoff: %s, want scheduled", got.Status)
		}
		// An answer during the backoff is kept as late and changes nothing.
		if out := e.answerAttempt("k", "c1:k", 0); out != mailbox.OutcomeLate {
			t.Errorf("answer during the backoff = %v, want late", out)
		}
		e.clock.Add(10 * time.Second)
		e.fire()
		if _, id := e.attemptOnWire(); id != "c1:k#2" {
			t.Errorf("after the backoff the device sees id %q, want c1:k#2", id)
		}
	})
	t.Run("answers to other attempts", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		e.sent(policy(t, `"o"`, 3, "device_error"))
		e.attemptOnWire()
		e.answerAttempt("o", "c1:o", -32000)
		e.attemptOnWire()
		e.answerAttempt("o", "c1:o#2", -32000)
		e.attemptOnWire() // attempt 3 on the wire
		for _, tt := range []struct {
			id   string
			code int
			want mailbox.Outcome
		}{
			{"c1:o#2", -32000, mailbox.OutcomeLate}, // an earlier attempt's error: that attempt ended already
			{"c1:o#4", 0, mailbox.OutcomeLate},      // an attempt not made yet
			{"c1:o#2", 0, mailbox.OutcomeSucceeded}, // an earlier attempt's result: the device did the work
		} {
			if out := e.answerAttempt("o", tt.id, tt.code); out != tt.want {
				t.Errorf("answer %s code %d = %v, want %v", tt.id, tt.code, out, tt.want)
			}
		}
		if got := e.get("c1", "o"); got.Status != protocol.StatusSucceeded || got.Attempt() != 3 {
			t.Errorf("record: %s attempt %d, want succeeded 3", got.Status, got.Attempt())
		}
		if rs := e.rawResults(); len(rs) != 1 || !strings.HasSuffix(rs[0], `"attempts":3}`) {
			t.Errorf("client results = %v, want one with attempts 3", rs)
		}
	})
}

// TestRetryKeepsLane: a retried command of an ordered lane keeps its
// place: the lane's next command waits until the last attempt ends it,
// whatever ended the earlier ones.
func TestRetryKeepsLane(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	first := policy(t, `"l1"`, 1, "device_error")
	first.Lane = "valve"
	e.queued(first)
	e.queued(inLane(t, "c1", "d1", `"l2"`, "valve"))
	e.dispatch("c1", "l1", mailbox.OutcomeSent)
	e.dispatch("c1", "l2", mailbox.OutcomeLaneWait)
	if out := e.answerAttempt("l1", "c1:l1", -32000); out != mailbox.OutcomeRetried {
		t.Fatalf("error answer = %v, want retried", out)
	}
	if got := e.onWire("d1"); !slices.Equal(got, []string{"l1"}) {
		t.Fatalf("after the first attempt the mailbox holds %v, want [l1] (its second attempt; l2 waits)", got)
	}
	if out := e.answerAttempt("l1", "c1:l1#2", 0); out != mailbox.OutcomeSucceeded {
		t.Fatalf("result = %v, want succeeded", out)
	}
	e.fire() // the lane timer of l2, due at once
	if got := e.onWire("d1"); !slices.Equal(got, []string{"l2"}) {
		t.Errorf("after l1 ended the mailbox holds %v, want [l2]", got)
	}
}

// TestRetryExpiredWhereItWaits: an attempt that expires before it went on
// the wire starts the next one from where the command waited: a message
// that comes after the deliver-by puts the next attempt straight into the
// mailbox; a command waiting for its lane keeps waiting, with a fresh
// window, and goes with the next attempt's id when its turn comes.
func TestRetryExpiredWhereItWaits(t *testing.T) {
	t.Parallel()
	t.Run("the message comes late", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		rec := e.queued(policy(t, `"m"`, 1, "expired"))
		e.clock.Add(time.Hour + time.Second)
		// The message comes before the deliver-by timer fires.
		if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "", ""); err != nil || out != mailbox.OutcomeRetried {
			t.Fatalf("Dispatch = %v, %v; want retried", out, err)
		}
		if _, id := e.attemptOnWire(); id != "c1:m#2" {
			t.Errorf("the device sees id %q, want c1:m#2", id)
		}
		if got := e.get("c1", "m"); got.Status != protocol.StatusSent || !got.DeliverBy.Equal(e.clock.Now().Add(time.Hour)) {
			t.Errorf("record: %s deliver-by %v, want sent by %v", got.Status, got.DeliverBy, e.clock.Now().Add(time.Hour))
		}
	})
	t.Run("waiting for its lane", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		head := inLane(t, "c1", "d1", `"h"`, "valve")
		head.ExpiresIn = 3 * time.Hour
		head.Fingerprint = protocol.Fingerprint("d1", head.Method, nil, head.Timeout, head.ExpiresIn, "lane=valve")
		e.queued(head)
		w := policy(t, `"w"`, 1, "expired")
		w.Lane = "valve"
		e.queued(w)
		e.dispatch("c1", "h", mailbox.OutcomeSent)
		e.dispatch("c1", "w", mailbox.OutcomeLaneWait)
		e.clock.Add(time.Hour + time.Second) // w's deliver-by passes while h holds the lane
		if _, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil); err != nil || outcomes[string(mailbox.OutcomeRetryWaits)] != 1 {
			t.Fatalf("outcomes %v, %v; want one retry_waits", outcomes, err)
		}
		got := e.get("c1", "w")
		if got.Status != protocol.StatusQueued || !got.LaneWait || got.Attempt() != 2 {
			t.Fatalf("w: %s lane_wait %v attempt %d; want queued, waiting for its lane, 2", got.Status, got.LaneWait, got.Attempt())
		}
		if out := e.answerAttempt("h", "c1:h", 0); out != mailbox.OutcomeSucceeded {
			t.Fatalf("h's answer = %v, want succeeded", out)
		}
		e.fire() // w's lane timer
		es, err := e.s.Fetch(e.ctx, "d1", "", 10)
		if err != nil || len(es) != 1 || !strings.Contains(string(es[0].Payload), `"id":"c1:w#2"`) {
			t.Errorf("the mailbox holds %d entries (%v), want w's attempt 2", len(es), err)
		}
	})
}
