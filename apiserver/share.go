package main

import (
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"

	"github.com/iotgw/gateway/protocol"
)

// No single client takes the gateway from others (DESIGN §8.5). Beyond the
// server-wide bound of requests in flight (admit, before the token is
// read), each client may hold only a share of it once its token is known,
// and long-polls, which hold no place in flight while they wait, are
// bounded per client and in total.

// clientShareDivisor sets a client's share of the in-flight bound:
// MaxInFlight / clientShareDivisor, at least minClientShare. With the
// default 512, a client holds at most 64 requests at once: one client
// sending slow bodies leaves seven eighths of the places to the others.
const (
	clientShareDivisor = 8
	minClientShare     = 4
)

// Long-polls (GET /v1/commands/{id}?wait=) waiting at once: per client,
// and in the whole server.
const (
	maxPollsPerClient = 64
	maxPolls          = 4096
)

// counts bounds how many of something each key holds at once.
type counts struct {
	mu    sync.Mutex
	n     map[string]int
	total int
}

func newCounts() *counts { return &counts{n: make(map[string]int)} }

// take counts one more for key unless key already holds perKey or all keys
// together hold total (0: no bound on the total); it reports whether it
// counted.
func (c *counts) take(key string, perKey, total int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= perKey || total > 0 && c.total >= total {
		return false
	}
	c.n[key]++
	c.total++
	return true
}

// give gives one back for key.
func (c *counts) give(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch n := c.n[key]; {
	case n == 0:
		return
	case n == 1:
		delete(c.n, key)
	default:
		c.n[key]--
	}
	c.total--
}

// ctxShare is set (to the client) while the request holds a place of its
// client's share.
const ctxShare = "client_share"

// clientShare is the share of MaxInFlight one client may hold.
func (s *Server) clientShare() int {
	return max(minClientShare, s.cfg.MaxInFlight/clientShareDivisor)
}

// takeShare takes a place of the client's share for a request that holds
// a place in flight (admit); 429 (-32015) when the client holds its share
// already. The place goes back with leaveInFlight.
func (s *Server) takeShare(c echo.Context, client string) error {
	if held, _ := c.Get(ctxInFlight).(bool); !held {
		return nil
	}
	if !s.shares.take(client, s.clientShare(), 0) {
		return tooMany("too many requests in flight for this client (" + strconv.Itoa(s.clientShare()) + ")")
	}
	c.Set(ctxShare, client)
	return nil
}

// giveShare gives the request's place of its client's share back, if it
// holds one.
func (s *Server) giveShare(c echo.Context) {
	if client, _ := c.Get(ctxShare).(string); client != "" {
		c.Set(ctxShare, "")
		s.shares.give(client)
	}
}

// takePoll counts a long-poll that is about to wait; 429 when the client,
// or the server, has as many waiting as allowed. The caller gives it back
// with s.polls.give(client).
func (s *Server) takePoll(client string) error {
	if !s.polls.take(client, maxPollsPerClient, maxPolls) {
		return tooMany("too many long-polls waiting; poll without wait, or retry later")
	}
	return nil
}

// tooMany is the 429 (-32015) of a client over its share.
func tooMany(detail string) *apiError {
	e := newAPIError(protocol.NewError(protocol.CodeRateLimited, "rate limited: "+detail+"; retry after 1s",
		map[string]any{"retry_after": 1, "reason": "client_share"}))
	e.retryAfter = 1
	return e
}
