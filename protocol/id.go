package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits of message IDs and identities (DESIGN §3, §5).
const (
	MaxIDLen       = 128
	MaxIDDigits    = 15
	MaxIdentityLen = 128
)

// ID is a validated JSON-RPC message ID: a string of 1 to 128 characters
// from [A-Za-z0-9._:-] starting with a letter or digit, or an integer of
// at most 15 digits. 1 and "1" are the same ID: Key gives both the key "1".
// The zero ID is absent.
type ID struct {
	raw json.RawMessage // as the client wrote it (compacted)
	key string
}

// Errors of the ID and identity rules.
var (
	ErrIDMissing   = errors.New("protocol: id is missing")
	ErrIDNull      = errors.New("protocol: id is null")
	ErrIDType      = errors.New("protocol: id must be a string or an integer")
	ErrIDFraction  = errors.New("protocol: id must be an integer, not a fraction or exponent")
	ErrIDTooLong   = errors.New("protocol: id is longer than 128 characters")
	ErrIDDigits    = errors.New("protocol: integer id has more than 15 digits")
	ErrIDChars     = errors.New("protocol: id may only contain A-Z a-z 0-9 . _ : - and must start with a letter or digit")
	ErrIdentity    = errors.New("protocol: identity must be 1 to 128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit")
	ErrDeviceMsgID = errors.New("protocol: device message id must be \"{client}:{id}\"")
)

// ParseID validates raw (a JSON value) as a message ID.
func ParseID(raw json.RawMessage) (ID, error) {
	raw = trimJSONSpace(raw)
	if len(raw) == 0 {
		return ID{}, ErrIDMissing
	}
	switch c := raw[0]; {
	case c == '"':
		s, ok := plainIDString(raw)
		if !ok {
			if err := json.Unmarshal(raw, &s); err != nil {
				return ID{}, ErrIDType
			}
		}
		if err := checkIDString(s); err != nil {
			return ID{}, err
		}
		return ID{raw: append(json.RawMessage(nil), raw...), key: s}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		return parseIntID(raw)
	case string(raw) == "null":
		return ID{}, ErrIDNull
	}
	return ID{}, ErrIDType
}

// plainIDString returns the contents of a string literal made only of
// the characters an ID may hold (no escapes): what json.Unmarshal would
// give, without its cost. ok is false for any other literal.
func plainIDString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	in := raw[1 : len(raw)-1]
	for _, c := range in {
		if !isAlnum(c) && c != '.' && c != '_' && c != ':' && c != '-' {
			return "", false
		}
	}
	return string(in), true
}

func parseIntID(raw []byte) (ID, error) {
	s := string(raw)
	digits := strings.TrimPrefix(s, "-")
	if digits == "" {
		return ID{}, ErrIDType
	}
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c == '.' || c == 'e' || c == 'E' || c == '+' {
			return ID{}, ErrIDFraction
		}
		if c < '0' || c > '9' {
			return ID{}, ErrIDType
		}
	}
	if len(digits) > 1 && digits[0] == '0' {
		return ID{}, ErrIDType // not valid JSON
	}
	if len(digits) > MaxIDDigits {
		return ID{}, ErrIDDigits
	}
	key := s
	if digits == "0" {
		key = "0" // -0 and 0 are one number
	}
	return ID{raw: json.RawMessage(key), key: key}, nil
}

// ParseIDKey validates s as the key of an ID (as in a URL path) and
// returns the ID it names: an integer key gives the integer ID, since "1"
// and 1 name the same command. A key of more than 15 digits can only be
// a string ID (an integer ID has at most 15), so it gives the string ID:
// the Key of every valid ID parses back to an ID with the same Key.
func ParseIDKey(s string) (ID, error) {
	if isIntKey(s) && (s[0] == '-' || len(s) <= MaxIDDigits) {
		return parseIntID([]byte(s))
	}
	if err := checkIDString(s); err != nil {
		return ID{}, err
	}
	raw, _ := json.Marshal(s)
	return ID{raw: raw, key: s}, nil
}

func checkIDString(s string) error {
	if s == "" {
		return ErrIDChars
	}
	if len(s) > MaxIDLen {
		return ErrIDTooLong
	}
	if !isAlnum(s[0]) {
		return ErrIDChars
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != ':' && c != '-' {
			return ErrIDChars
		}
	}
	return nil
}

// Key is the canonical form of the ID: the string itself, or the decimal
// integer. Command records are keyed by it.
func (id ID) Key() string { return id.key }

// IsZero reports whether the ID is absent.
func (id ID) IsZero() bool { return id.key == "" }

// Raw is the ID as the client wrote it, as JSON.
func (id ID) Raw() json.RawMessage { return id.raw }

// String returns the key.
func (id ID) String() string { return id.key }

// MarshalJSON writes the ID as the client wrote it.
func (id ID) MarshalJSON() ([]byte, error) {
	if id.IsZero() {
		return []byte("null"), nil
	}
	return id.raw, nil
}

// UnmarshalJSON parses and validates an ID.
func (id *ID) UnmarshalJSON(b []byte) error {
	v, err := ParseID(b)
	if err != nil {
		return err
	}
	*id = v
	return nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// ValidIdentity reports whether s is a valid MQTT identity (a client or a
// device): 1 to 128 characters of [A-Za-z0-9._-] starting with a letter
// or digit. A colon can never occur, which makes DeviceMsgID unambiguous.
func ValidIdentity(s string) bool {
	if s == "" || len(s) > MaxIdentityLen || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// CheckIdentity returns ErrIdentity wrapped with s when s is not valid.
func CheckIdentity(s string) error {
	if !ValidIdentity(s) {
		return fmt.Errorf("%w: %q", ErrIdentity, s)
	}
	return nil
}

// DeviceMsgID is the id a device sees: "{client}:{id key}". Ids of
// different clients never collide at a device.
func DeviceMsgID(client string, id ID) string { return client + ":" + id.Key() }

// MaxAttempt is the highest attempt number a device-facing id carries
// (a command is tried at most 1 + the apiserver's MaxRetries times).
const MaxAttempt = 99

// DeviceAttemptID is the id a device sees for attempt n of a command
// under a retry policy: DeviceMsgID for the first attempt (n ≤ 1), and
// "{client}:{id key}#{n}" for each later one, so that a device can tell a
// retry from a redelivery ("#" occurs in no identity and no ID).
func DeviceAttemptID(client string, id ID, n int) string {
	if n <= 1 {
		return DeviceMsgID(client, id)
	}
	return DeviceMsgID(client, id) + "#" + strconv.Itoa(n)
}

// SplitAttempt splits a device-facing id into the id of the command's
// first attempt and the attempt number after "#" (2 to MaxAttempt,
// decimal, no leading zero); attempt is 0 when s carries no suffix. ok is
// false for a suffix that is not such a number.
func SplitAttempt(s string) (base string, attempt int, ok bool) {
	i := strings.IndexByte(s, '#')
	if i < 0 {
		return s, 0, true
	}
	n := s[i+1:]
	if n == "" || len(n) > 2 || n[0] == '0' {
		return "", 0, false
	}
	for j := 0; j < len(n); j++ {
		if n[j] < '0' || n[j] > '9' {
			return "", 0, false
		}
	}
	a, _ := strconv.Atoi(n)
	if a < 2 {
		return "", 0, false
	}
	return s[:i], a, true
}

// AnswerAttempt returns the attempt number a device's answer names with
// the suffix "#{n}" of its id (DeviceAttemptID), 0 when it names none (or
// its id is not a device-facing id at all: AnswerTarget tells).
func AnswerAttempt(r *Response) int {
	var s string
	if json.Unmarshal(r.ID, &s) != nil {
		return 0
	}
	_, n, _ := SplitAttempt(s)
	return n
}

// ResultAttempts returns the member "attempts" of a client's result (the
// attempts of a command with a retry policy), 0 when it has none.
func ResultAttempts(payload []byte) int {
	var r struct {
		Attempts int `json:"attempts"`
	}
	if json.Unmarshal(payload, &r) != nil {
		return 0
	}
	return r.Attempts
}

// AnswerTarget returns the client and the client's own ID that a device's
// answer is for, from its id: the string "{client}:{id}" the command
// carried (DeviceMsgID), or "{client}:{id}#{n}" for attempt n of a retry
// (DeviceAttemptID). Its error never quotes more than a few bytes of the
// id.
func AnswerTarget(r *Response) (client string, id ID, err error) {
	var s string
	if err := json.Unmarshal(r.ID, &s); err != nil {
		raw := string(r.ID)
		if len(raw) > 40 {
			raw = raw[:40] + "…"
		}
		return "", ID{}, fmt.Errorf("protocol: id %s is not the string \"{client}:{id}\" the command carried", raw)
	}
	return ParseDeviceMsgID(s)
}

// ParseDeviceMsgID splits a device-facing id into the client and the
// client's own ID. The client part ends at the first colon (an identity
// has none); the rest must be a valid ID key, optionally followed by the
// attempt suffix "#{n}" of DeviceAttemptID (dropped: see
// ParseDeviceAttempt). An all-digit rest is the integer ID.
func ParseDeviceMsgID(s string) (client string, id ID, err error) {
	client, id, _, err = ParseDeviceAttempt(s)
	return client, id, err
}

// ParseDeviceAttempt is ParseDeviceMsgID that also returns the attempt
// number of the suffix "#{n}" (DeviceAttemptID), 0 when there is none.
func ParseDeviceAttempt(s string) (client string, id ID, attempt int, err error) {
	s, attempt, ok := SplitAttempt(s)
	if !ok {
		return "", ID{}, 0, fmt.Errorf("%w: the attempt after \"#\" must be a number from 2 to %d", ErrDeviceMsgID, MaxAttempt)
	}
	client, id, err = parseDeviceMsgID(s)
	if err != nil {
		return "", ID{}, 0, err
	}
	return client, id, attempt, nil
}

func parseDeviceMsgID(s string) (client string, id ID, err error) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return "", ID{}, ErrDeviceMsgID
	}
	client, rest := s[:i], s[i+1:]
	if !ValidIdentity(client) {
		return "", ID{}, ErrDeviceMsgID
	}
	if id, err = ParseIDKey(rest); err != nil {
		return "", ID{}, fmt.Errorf("%w: %w", ErrDeviceMsgID, err)
	}
	return client, id, nil
}

func isIntKey(s string) bool {
	d := strings.TrimPrefix(s, "-")
	if d == "" || (len(d) > 1 && d[0] == '0') {
		return false
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return false
		}
	}
	return true
}
