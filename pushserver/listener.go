package main

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Backoff bounds of the accept loop after an error.
const (
	acceptMinBackoff = 5 * time.Millisecond
	acceptMaxBackoff = time.Second
)

// listener accepts MQTT connections on a socket that is already bound
// (so the bound address is known before the node joins the ring). It
// retries transient Accept errors (EMFILE when the file limit is reached,
// ECONNABORTED, …) with a short backoff, and keeps accepting until it is
// closed. It sets a deadline for the CONNECT packet, wraps connections in
// TLS when configured, and tracks every open connection so that kill and
// shutdown can drop them all at once.
type listener struct {
	id             string
	ln             net.Listener
	tlsConfig      *tls.Config // nil: plain TCP
	connectTimeout time.Duration
	log            *slog.Logger
	serveConn      serveFn               // runs a connection (the node's serveConn)
	endedFn        func(net.Conn, error) // l.ended, made once

	closed atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

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
		serveConn:      serve,
		conns:          make(map[net.Conn]struct{}),
	}
	l.endedFn = l.ended
	return l
}

// serve accepts connections until the listener is closed and runs each
// with the node's serveConn, which hands established connections to
// goroutines of their own (see conn.go).
func (l *listener) serve() {
	for {
		conn, err := l.accept()
		if err != nil {
			return
		}
		l.track(conn)
		go l.serveConn(l.id, conn, l.endedFn)
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
