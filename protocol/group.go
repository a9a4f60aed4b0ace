package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Group commands (issue 14): one JSON-RPC request sent to many devices.
// The group command has its own id (the request's id, in a space of its
// own: a group and a single command may share an id); each device gets
// a child command, a normal command of the same client, whose id is
// ChildID(group id, device).

// MaxGroupDevices is the largest target of one group command, and the
// largest named group.
const MaxGroupDevices = 10000

// KindGroup is the kind of the envelope of a group command on a command
// queue (GroupEnvelope): a worker that takes it creates the children.
const KindGroup = "group"

// ChildID is the id of the child of group command gid to device:
// "{gid}:{device}" (a JSON string, also for an integer gid). It must be a
// valid message ID, so len(gid) + len(device) is at most 127.
func ChildID(gid ID, device string) (ID, error) {
	id, err := ParseID(json.RawMessage(strconv.Quote(gid.Key() + ":" + device)))
	if err != nil {
		return ID{}, fmt.Errorf("child id of device %q: %w", device, err)
	}
	return id, nil
}

// GroupEnvelope is the body of a group command's AMQP message: what the
// worker needs to create every child.
type GroupEnvelope struct {
	V      int    `json:"v"`
	Kind   string `json:"kind"`
	Client string `json:"client"`
	// MsgID is the group command's id.
	MsgID ID `json:"msg_id"`
	// Method and Params are the request every child carries.
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	// TimeoutMS and ExpiresMS are each child's timeout and expires_in.
	TimeoutMS int64 `json:"timeout_ms"`
	ExpiresMS int64 `json:"expires_ms"`
	// Fingerprint is the group body's identity, which each child's
	// fingerprint includes.
	Fingerprint string `json:"fp"`
	TraceParent string `json:"traceparent,omitempty"`
}

// Encode returns the JSON of e, stamping the version and kind.
func (e *GroupEnvelope) Encode() ([]byte, error) {
	e.V, e.Kind = EnvelopeVersion, KindGroup
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("protocol: cannot encode group envelope: %w", err)
	}
	return b, nil
}

// DecodeGroupEnvelope parses and checks a group envelope.
func DecodeGroupEnvelope(b []byte) (*GroupEnvelope, error) {
	e := &GroupEnvelope{}
	if err := json.Unmarshal(b, e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEnvelope, err)
	}
	switch {
	case e.V < 1 || e.V > EnvelopeVersion:
		return nil, fmt.Errorf("%w: unsupported version %d", ErrEnvelope, e.V)
	case e.Kind != KindGroup:
		return nil, fmt.Errorf("%w: kind %q is not %q", ErrEnvelope, e.Kind, KindGroup)
	case !ValidIdentity(e.Client):
		return nil, fmt.Errorf("%w: client %q", ErrEnvelope, e.Client)
	case e.MsgID.IsZero():
		return nil, fmt.Errorf("%w: msg_id missing", ErrEnvelope)
	case e.Method == "":
		return nil, fmt.Errorf("%w: method missing", ErrEnvelope)
	}
	return e, nil
}

// EnvelopeKind returns the kind field of an envelope body ("" when it
// does not decode).
func EnvelopeKind(b []byte) string {
	var v struct {
		Kind string `json:"kind"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	return v.Kind
}
