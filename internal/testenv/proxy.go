package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// StallProxy is a TCP proxy on loopback in front of a server, for fault
// tests: while stalled, it keeps forwarding what clients send but holds
// back everything the server answers (a server that took the request
// and then went silent, such as a broker whose confirms never come).
type StallProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

// NewStallProxy starts a proxy to target; t's cleanup stops it and
// closes its connections.
func NewStallProxy(t testing.TB, target string) *StallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: cannot listen for the proxy: %v", err)
	}
	p := &StallProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's address, host:port.
func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

// Stall holds back (true) or resumes (false) what the server sends.
// Bytes held back while stalled are delivered on resume.
func (p *StallProxy) Stall(on bool) { p.stalled.Store(on) }

func (p *StallProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); p.pipe(s, c, false) }()
		go func() { defer p.wg.Done(); p.pipe(c, s, true) }()
	}
}

// pipe copies from src to dst; fromServer copies wait while stalled.
func (p *StallProxy) pipe(dst, src net.Conn, fromServer bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for fromServer && p.stalled.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or closed: close both sides
		}
	}
}

func (p *StallProxy) close() {
	p.stalled.Store(false)
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
