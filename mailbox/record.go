package mailbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/iotgw/gateway/protocol"
)

// A command record is a hash at protocol.PartKeys.Command(client, idKey),
// in the device's partition, with
// these fields (times are unix ms, durations ms; absent = not yet):
//
//	client, device   identities
//	id               the client's ID as raw JSON (protocol.ID.Raw)
//	key              the ID's key (protocol.ID.Key)
//	method, params   the request (params raw JSON, may be empty)
//	fp               fingerprint (protocol.Fingerprint)
//	status           protocol.Status
//	tmo, exp         timeout and expires_in
//	created, queued, sending, sent, delivered, finished, deliver_by
//	attempts         PUBLISHes to the device
//	entry            stream entry ID in the device's mailbox while it is there ("" after)
//	resp             the client's final JSON-RPC response
//	late             a device answer after the command was final
//	reason           why it ended as it did (gateway statuses)
//	dropped          "1" when the client's mailbox was full at the final transition
//	lease, lease_until, retakes   pending reservations ("" once queued)
//	replays          times an operator replayed it from the dead letters
//	lane, lseq       its ordered lane and its place there (zero-padded, in acceptance order)
//	lw               "1" while it waits for its lane (queued, its device request in req)
//	grp              the key of its group command, for a child of one
//	lm               "puback": its lane moves on at its delivery, not at its end
//	rb_i, rb_m, rb_x the backoff of its retries: initial wait (ms), multiplier, longest wait (ms)
//	retries, tries   its retry policy's retries, and those done (its attempt is tries + 1)
//	ron              the outcomes its retries take (protocol.ParseRetryOn's form; absent: timeout)
//	rw               the outcome that ended its previous attempt (a retry's why)
//	rerr             the device's error answer that ended its previous attempt (device_error)
//	req              its device request (attempt 1's id), kept for retries, a lane or a schedule
//	tp               W3C traceparent of the latest span that moved it: the worker's
//	                 dispatch, then the push server's completion of the answer
//
// A field set to "" means the same as an absent one (scripts blank
// fields in the same HSET instead of a second HDEL).
const (
	fClient     = "client"
	fDevice     = "device"
	fID         = "id"
	fKey        = "key"
	fMethod     = "method"
	fParams     = "params"
	fFP         = "fp"
	fStatus     = "status"
	fTimeout    = "tmo"
	fExpires    = "exp"
	fCreated    = "created"
	fQueued     = "queued"
	fSending    = "sending"
	fSent       = "sent"
	fDelivered  = "delivered"
	fFinished   = "finished"
	fDeliverBy  = "deliver_by"
	fAttempts   = "attempts"
	fResp       = "resp"
	fLate       = "late"
	fReason     = "reason"
	fDropped    = "dropped"
	fLease      = "lease"
	fLeaseUntil = "lease_until"
	fNotBefore  = "nb"
)

// decodeRecord turns the fields of a record hash into a Command.
func decodeRecord(m map[string]string) (*Command, error) {
	id, err := protocol.ParseID(json.RawMessage(m[fID]))
	if err != nil {
		return nil, fmt.Errorf("mailbox: corrupt record %s:%s: id: %w", m[fClient], m[fKey], err)
	}
	c := &Command{
		Client:      m[fClient],
		Device:      m[fDevice],
		ID:          id,
		Method:      m[fMethod],
		Fingerprint: m[fFP],
		Status:      protocol.Status(m[fStatus]),
		Timeout:     msDur(m[fTimeout]),
		ExpiresIn:   msDur(m[fExpires]),
		CreatedAt:   msTime(m[fCreated]),
		QueuedAt:    msTime(m[fQueued]),
		SendingAt:   msTime(m[fSending]),
		SentAt:      msTime(m[fSent]),
		DeliveredAt: msTime(m[fDelivered]),
		FinishedAt:  msTime(m[fFinished]),
		DeliverBy:   msTime(m[fDeliverBy]),
		NotBefore:   msTime(m[fNotBefore]),
		Reason:      m[fReason],
		LeaseToken:  m[fLease],
		LeaseUntil:  msTime(m[fLeaseUntil]),
	}
	c.Attempts, _ = strconv.Atoi(m[fAttempts])
	c.ResultDropped = m[fDropped] == "1"
	c.Replays, _ = strconv.Atoi(m["replays"])
	c.Retries, _ = strconv.Atoi(m["retries"])
	c.Tries, _ = strconv.Atoi(m["tries"])
	c.RetryOn = m["ron"]
	if c.RetryOn == "" && c.Retries > 0 {
		c.RetryOn = protocol.DefaultRetryOn
	}
	c.RetriedOn = m["rw"]
	c.Lane = m["lane"]
	c.LaneWait = m["lw"] == "1"
	c.Group = m["grp"]
	c.LaneMode = m["lm"]
	if v := m["rb_i"]; v != "" {
		c.Backoff.Initial = msDur(v)
		c.Backoff.Multiplier, _ = strconv.ParseFloat(m["rb_m"], 64)
		c.Backoff.Max = msDur(m["rb_x"])
	}
	if v := m[fParams]; v != "" {
		c.Params = json.RawMessage(v)
	}
	if v := m[fResp]; v != "" {
		c.Response = json.RawMessage(v)
	}
	if v := m[fLate]; v != "" {
		c.Late = json.RawMessage(v)
	}
	return c, nil
}

func msTime(s string) time.Time {
	if s == "" {
		return time.Time{} // not yet: no error to allocate
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

func msDur(s string) time.Duration {
	if s == "" {
		return 0
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.Duration(n) * time.Millisecond
}

// pairs turns a flat [k1 v1 k2 v2 …] reply into a map.
func pairs(v any) map[string]string {
	a, _ := v.([]any)
	m := make(map[string]string, len(a)/2)
	for i := 0; i+1 < len(a); i += 2 {
		k, _ := a[i].(string)
		val, _ := a[i+1].(string)
		m[k] = val
	}
	return m
}

// recordReply decodes a record returned by a script, nil when empty.
func recordReply(v any) (*Command, error) {
	m := pairs(v)
	if len(m) == 0 {
		return nil, nil
	}
	return decodeRecord(m)
}

// reply splits a script's {outcome, value} reply.
func reply(v any) (string, any) {
	a, _ := v.([]any)
	if len(a) == 0 {
		return "", nil
	}
	head := fmt.Sprint(a[0])
	if len(a) < 2 {
		return head, nil
	}
	return head, a[1]
}

// gatewayError returns the '"error":{…}' member of the client's result
// for a final status decided by the gateway.
func gatewayError(st protocol.Status, reason string) string {
	b, err := json.Marshal(protocol.ResultError(st, reason))
	if err != nil { // cannot happen: the error holds only strings
		b = []byte(`{"code":` + strconv.Itoa(st.ResultCode()) + `,"message":"` + string(st) + `"}`)
	}
	return `"error":` + string(b)
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
