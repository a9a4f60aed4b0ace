package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// MQTT over WebSocket (Config.WSAddr, GW_MQTT_WS_ADDR).
//
// A WebSocket connection is MQTT's byte stream in binary messages: the
// HTTP server below upgrades requests on /mqtt and /, and the connection
// is handed, as a net.Conn (wsConn), to a listener like the TCP one
// (listener.go), which runs it with the node's serveConn. So a WebSocket
// client goes through exactly what a TCP client goes through: the
// CONNECT deadline, the token, the ACL, the ownership check and its
// redirect, the delivery, the shedding.
//
//	rule                 value
//	paths                /mqtt and /; anything else 404
//	subprotocol          "mqtt", echoed when the client offers it (a
//	                     client that offers none is served as well)
//	frames               binary; a text message ends the connection.
//	                     A message may hold any part of the stream: one
//	                     packet, several, or a piece of one. Each packet
//	                     the server writes is one message
//	Origin               not checked: the MQTT token in CONNECT is the
//	                     only credential (no cookie, no ambient
//	                     authority), so a page of another origin can do
//	                     no more than any other client holding a token
//	TLS                  wss:// when the push server has GW_TLS_CERT and
//	                     GW_TLS_KEY (the same certificate)
//	request header       at most 8 KiB, read within ConnectTimeout,
//	                     which also bounds the CONNECT after the upgrade
//
// The server reference of a redirect (CONNACK 0x9C, DISCONNECT 0x9C) is
// the owner's advertise URL (mqtt://host:port), as for TCP: a WebSocket
// client connects to the same host on the WebSocket port of the
// deployment (every push server listens on the same one), see the
// README.

// wsPaths are the paths on which MQTT over WebSocket is served.
var wsPaths = map[string]bool{"/mqtt": true, "/": true}

// wsMaxHeaderBytes bounds the upgrade request's header.
const wsMaxHeaderBytes = 8 << 10

// wsWriteBuffers is shared by every WebSocket connection: a connection
// holds a write buffer only while it writes.
var wsWriteBuffers sync.Pool

// wsListener is a net.Listener of MQTT-over-WebSocket connections: an
// HTTP server on the socket upgrades requests, and Accept returns them.
type wsListener struct {
	ln       net.Listener
	srv      *http.Server
	upgrader websocket.Upgrader
	conns    chan net.Conn
	done     chan struct{}
	once     sync.Once
	log      *slog.Logger
}

var _ net.Listener = (*wsListener)(nil)

// newWSListener serves WebSocket upgrades on ln (TLS when tlsConfig is
// set); the connections are returned by Accept.
func newWSListener(ln net.Listener, tlsConfig *tls.Config, connectTimeout time.Duration, log *slog.Logger) *wsListener {
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	l := &wsListener{
		ln:    ln,
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
		log:   log,
		upgrader: websocket.Upgrader{
			HandshakeTimeout: connectTimeout,
			// Small: a connection's read buffer is held for its life
			// (connReader reads the stream through its own).
			ReadBufferSize:  512,
			WriteBufferPool: &wsWriteBuffers,
			Subprotocols:    []string{"mqtt"},
			CheckOrigin:     func(*http.Request) bool { return true }, // see above
			Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
				http.Error(w, reason.Error(), status)
			},
		},
	}
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.upgrade),
		ReadHeaderTimeout: connectTimeout,
		ReadTimeout:       connectTimeout,
		MaxHeaderBytes:    wsMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		err := l.srv.Serve(ln)
		if !errors.Is(err, http.ErrServerClosed) {
			log.Error("mqtt websocket server stopped", "err", err)
		}
	}()
	return l
}

// upgrade turns an HTTP request into a WebSocket connection and hands it
// to Accept.
func (l *wsListener) upgrade(w http.ResponseWriter, r *http.Request) {
	if !wsPaths[r.URL.Path] {
		http.NotFound(w, r)
		return
	}
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		l.log.Debug("mqtt websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return // the upgrader has answered
	}
	c := &wsConn{ws: ws}
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// Accept returns the next upgraded connection; net.ErrClosed once the
// listener is closed.
func (l *wsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the HTTP server (the socket, and the requests not upgraded
// yet); the upgraded connections go on.
func (l *wsListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		_ = l.srv.Close()
	})
	return nil
}

// Addr returns the bound address.
func (l *wsListener) Addr() net.Addr { return l.ln.Addr() }

// wsConn is a WebSocket connection as the net.Conn of an MQTT byte
// stream: Read returns the payloads of binary messages one after the
// other, Write sends each buffer as one binary message.
//
// Reads happen on one goroutine at a time (conn.go); writes may come
// from several (the reading worker, the session's runner, the
// completer) and are serialized here. The write
// deadline is kept here and applied to each write (gorilla's own is not
// safe against a concurrent write), and set on the socket at once too,
// so that it also ends a write that is blocked already.
type wsConn struct {
	ws *websocket.Conn
	r  io.Reader // the message being read; nil between messages

	wmu           sync.Mutex
	writeDeadline atomic.Int64 // UnixNano; 0: none
}

var _ net.Conn = (*wsConn)(nil)

// errWSText ends a connection that sends a text message.
var errWSText = errors.New("pushserver: websocket text message (MQTT needs binary)")

// Read reads the stream carried by the binary messages.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errWSText
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var dl time.Time
	if ns := c.writeDeadline.Load(); ns != 0 {
		dl = time.Unix(0, ns)
	}
	_ = c.ws.SetWriteDeadline(dl)
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, fmt.Errorf("cannot write websocket message: %w", err)
	}
	return len(p), nil
}

// Close closes the socket (without a WebSocket close frame: the MQTT
// DISCONNECT, if any, has been sent).
func (c *wsConn) Close() error { return c.ws.Close() }

// LocalAddr returns the socket's local address.
func (c *wsConn) LocalAddr() net.Addr { return c.ws.LocalAddr() }

// RemoteAddr returns the client's address.
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// SetDeadline sets both deadlines.
func (c *wsConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline of the socket.
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline of the writes, the one under way
// included.
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	c.writeDeadline.Store(ns)
	return c.ws.NetConn().SetWriteDeadline(t)
}
