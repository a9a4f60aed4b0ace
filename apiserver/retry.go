package main

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// retryPolicy is a command's retry policy as its query gives it, for one
// command and for every child of a group command alike (issue 14's
// retry: {max_attempts, backoff, on}; docs/DEVIATIONS.md maps the names).
type retryPolicy struct {
	// retries: the command is tried at most retries + 1 times (retries,
	// or max_attempts = retries + 1).
	retries int
	// on: the outcomes an attempt may end with and be retried
	// (retry_on, protocol.ParseRetryOn's form; "" when not given:
	// timeout).
	on string
	// backoff: the wait before each retry (retry_backoff, as given in
	// backoffAs).
	backoff   mailbox.Backoff
	backoffAs string
}

// retryParams reads retries or max_attempts, retry_on and retry_backoff.
// A one-way command awaits no answer, so it takes none of them.
func retryParams(q url.Values, oneWay bool) (retryPolicy, error) {
	var p retryPolicy
	var err error
	if q.Has("retries") && q.Has("max_attempts") {
		return p, errBadRequest("max_attempts: give retries or max_attempts (= retries + 1), not both")
	}
	if v := q.Get("retries"); v != "" {
		if p.retries, err = strconv.Atoi(v); err != nil || p.retries < 0 || p.retries > MaxRetries {
			return p, errBadRequest(fmt.Sprintf("retries: must be an integer from 0 to %d", MaxRetries))
		}
	}
	if v := q.Get("max_attempts"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxRetries+1 {
			return p, errBadRequest(fmt.Sprintf("max_attempts: must be an integer from 1 to %d", MaxRetries+1))
		}
		p.retries = n - 1
	}
	if oneWay {
		for _, name := range []string{"retries", "max_attempts", "retry_on"} {
			if q.Get(name) != "" && (name == "retry_on" || p.retries > 0) {
				return p, errBadRequest(name + ": a one-way command awaits no answer, so it is never retried")
			}
		}
	}
	if q.Has("retry_on") {
		if p.retries == 0 {
			return p, errBadRequest("retry_on: needs retries of at least 1 (or max_attempts of at least 2)")
		}
		if p.on, err = protocol.ParseRetryOn(q.Get("retry_on")); err != nil {
			return p, errBadRequest(strings.TrimPrefix(err.Error(), "protocol: "))
		}
	}
	p.backoffAs = q.Get("retry_backoff")
	if p.backoff, err = backoffParam(p.backoffAs, p.retries); err != nil {
		return p, err
	}
	return p, nil
}

// onIdentity is retry_on's part of the body's identity (after the parts
// of the older options, retries and retry_backoff): nothing for the
// default (timeout), so that a body that does not name it, or names only
// timeout, keeps the identity it had before retry_on existed.
func (p retryPolicy) onIdentity() []string {
	if p.on == "" || p.on == protocol.DefaultRetryOn {
		return nil
	}
	return []string{"retry_on=" + p.on}
}
