package protocol

import (
	"fmt"
	"strings"
)

// The outcomes of an attempt that a retry policy may retry (the query
// option retry_on of a command or a group command). Each names how the
// attempt would otherwise have ended.
const (
	// RetryTimeout: no answer within timeout of delivery (status timeout).
	RetryTimeout = "timeout"
	// RetryExpired: not delivered within expires_in of the attempt's
	// start (status expired).
	RetryExpired = "expired"
	// RetryDeviceError: the device answered with a JSON-RPC error (status
	// failed).
	RetryDeviceError = "device_error"
	// RetryRejected: the device refused it (an MQTT 5 PUBACK with a reason
	// code of 0x80 or more) or its mailbox was full (status rejected).
	RetryRejected = "rejected"
)

// RetryOutcomes are the outcomes retry_on may name, in the order of its
// canonical form.
var RetryOutcomes = []string{RetryTimeout, RetryExpired, RetryDeviceError, RetryRejected}

// DefaultRetryOn is the retry_on of a command with retries that names
// none.
const DefaultRetryOn = RetryTimeout

// ParseRetryOn reads retry_on: a comma-separated list of RetryOutcomes
// (spaces around a name are allowed), each at most once. It returns the
// canonical form: the names in the order of RetryOutcomes, joined by
// commas, so that the same set is the same body (Fingerprint).
func ParseRetryOn(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", fmt.Errorf("protocol: retry_on is empty: name one or more of %s", strings.Join(RetryOutcomes, ", "))
	}
	seen := make(map[string]bool, len(RetryOutcomes))
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		known := false
		for _, o := range RetryOutcomes {
			known = known || o == name
		}
		switch {
		case !known:
			return "", fmt.Errorf("protocol: retry_on: unknown outcome %q (one of %s)", clip(name, 40), strings.Join(RetryOutcomes, ", "))
		case seen[name]:
			return "", fmt.Errorf("protocol: retry_on: %q is named twice", name)
		}
		seen[name] = true
	}
	var out []string
	for _, o := range RetryOutcomes {
		if seen[o] {
			out = append(out, o)
		}
	}
	return strings.Join(out, ","), nil
}

// clip shortens s to at most n bytes for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
