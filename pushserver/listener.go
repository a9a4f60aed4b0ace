package main

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// Backoff bounds of the accept loop after an error.
const (
	acceptMinBackoff = 5 * time.Millisecond
	acceptMaxBackoff = time.Second
)

// listener is a mochi listeners.Listener over a TCP socket that is already
// bound (so the bound address is known before the node joins the ring).
// Unlike mochi's own TCP listener, whose Serve returns for good on the
// first Accept error, it retries transient errors (EMFILE when the file
// limit is reached, ECONNABORTED, …) with a short backoff, and it keeps
// accepting until it is closed. It sets a deadline for the CONNECT packet
// (mochi sets none before the CONNECT), wraps connections in TLS when
// configured, and tracks every open connection so that kill can drop them
// all at once.
type listener struct {
	id             string
	ln             net.Listener
	tlsConfig      *tls.Config // nil: plain TCP
	proto          string      // what Protocol returns, when set (ws, wss)
	connectTimeout time.Duration
	log            *slog.Logger
	serve          serveFn               // runs a connection (the node's serveConn, which its hooks rely on); nil: mochi's establish
	endedFn        func(net.Conn, error) // l.ended, made once

	closed atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

var _ listeners.Listener = (*listener)(nil)

// serveFn runs one connection, accepted by listener lid; it may return
// before the connection ends, and calls ended once it has.
type serveFn func(lid string, c net.Conn, ended func(net.Conn, error))

func newListener(id string, ln net.Listener, tlsConfig *tls.Config, connectTimeout time.Duration, log *slog.Logger, serve serveFn) *listener {
	l := &listener{
		id:             id,
		ln:             ln,
		tlsConfig:      tlsConfig,
		connectTimeout: connectTimeout,
		log:            log,
		serve:          serve,
		conns:          make(map[net.Conn]struct{}),
	}
	l.endedFn = l.ended
	return l
}

// ID returns the listener's ID.
func (l *listener) ID() string { return l.id }

// Address returns the bound address.
func (l *listener) Address() string { return l.ln.Addr().String() }

// Protocol returns "tcp" or "tls", or the protocol set (ws, wss).
func (l *listener) Protocol() string {
	if l.proto != "" {
		return l.proto
	}
	if l.tlsConfig != nil {
		return "tls"
	}
	return "tcp"
}

// Init does nothing: the socket is bound already.
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve accepts connections until the listener is closed and runs each
// in a goroutine of its own: with the listener's serve function (the
// node's serveConn, which hands established connections to goroutines of
// their own, see conn.go), or else with mochi's establish.
func (l *listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.accept()
		if err != nil {
			return
		}
		l.track(conn)
		if l.serve != nil {
			go l.serve(l.id, conn, l.endedFn)
			continue
		}
		go func() {
			l.ended(conn, establish(l.id, conn))
		}()
	}
}

// ended forgets a connection that has ended.
func (l *listener) ended(conn net.Conn, err error) {
	l.untrack(conn)
	if err != nil {
		l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "err", err)
	}
}

// accept returns the next connection, retrying transient errors; it
// returns an error only once the listener is closed.
func (l *listener) accept() (net.Conn, error) {
	delay := acceptMinBackoff
	failing := false
	for {
		conn, err := l.ln.Accept()
		if err == nil {
			if failing {
				l.log.Info("mqtt listener accepting again")
			}
			_ = conn.SetDeadline(time.Now().Add(l.connectTimeout))
			if l.tlsConfig != nil {
				conn = tls.Server(conn, l.tlsConfig)
			}
			return conn, nil
		}
		if l.closed.Load() || errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		if !failing {
			l.log.Warn("mqtt listener cannot accept; retrying", "err", err)
			failing = true
		}
		time.Sleep(delay)
		delay = min(2*delay, acceptMaxBackoff)
	}
}

func (l *listener) track(c net.Conn) {
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// stopAccepting closes the socket: no new connections, the open ones go
// on.
func (l *listener) stopAccepting() {
	l.closed.Store(true)
	_ = l.ln.Close()
}

// Close stops accepting, lets mochi disconnect its clients
// (closeClients), then closes whatever connection is still open (those
// that had not finished their CONNECT).
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	closeClients(l.id)
	l.dropAll()
}

// dropAll closes every open connection at once, without any MQTT
// goodbye.
func (l *listener) dropAll() {
	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
