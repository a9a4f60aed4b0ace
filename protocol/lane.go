package protocol

import (
	"errors"
	"fmt"
)

// MaxLaneLen is the longest lane name.
const MaxLaneLen = 64

// LaneModePUBACK (POST …/commands?lane=L&lane_mode=puback) lets a lane's
// next command go on the wire once this one is delivered (the device's
// PUBACK, or the ack of its HTTP poll) rather than once it is final.
const LaneModePUBACK = "puback"

// ErrLane is returned for a lane name that breaks the rules of ParseLane.
var ErrLane = errors.New("protocol: a lane is 1 to 64 characters of [A-Za-z0-9._-] starting with a letter or digit")

// ParseLane checks the name of an ordered lane (POST …/commands?lane=):
// 1 to MaxLaneLen characters of [A-Za-z0-9._-] starting with a letter or
// digit, like an identity. Commands in one lane of one device go on the
// wire one at a time in acceptance order. The name is kept in Redis set
// members separated by '|', which it can never contain.
func ParseLane(s string) (string, error) {
	if len(s) > MaxLaneLen || !ValidIdentity(s) {
		return "", fmt.Errorf("%w: got %q", ErrLane, truncate(s, 32))
	}
	return s, nil
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
