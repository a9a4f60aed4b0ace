// Package coalesce provides Writer, which coalesces the writes of
// concurrent callers into fewer writes to an underlying io.Writer.
package coalesce

import (
	"errors"
	"io"
	"sync"
)

// ErrClosed is returned by Write after Close (or Stop), unless
// Options.NeverFail is set.
var ErrClosed = errors.New("coalesce: Writer closed")

// Options says what differs between the uses of a Writer.
type Options struct {
	// Max is how many bytes may wait for the goroutine before Write
	// blocks until they are taken. Zero means 1 MiB.
	Max int

	// NeverFail makes Write never return an error of its own: after a
	// write error what it is given is dropped, and after Close it writes
	// straight to the underlying writer, once what was queued is written.
	// Otherwise the first write error is sticky: Write returns it from
	// then on (ErrClosed if Close came first).
	NeverFail bool

	// OnError, if not nil, is called by the goroutine with the write
	// error that stopped it, after later Writes see the error.
	OnError func(error)
}

// Writer hands what is written to it to one goroutine that writes, in
// order, whatever has accumulated: at once when it is idle, so a lone
// write is not delayed, and many writes per write under load. Write
// queues a copy of p; it blocks only while Options.Max bytes are
// already waiting. The goroutine stops at the first write error, and
// what was queued then is lost. Writer is safe for concurrent use.
type Writer struct {
	w    io.Writer
	opts Options

	mu     sync.Mutex
	ready  sync.Cond // buf has bytes, or err is set
	room   sync.Cond // buf was taken, or err is set
	buf    []byte
	spare  []byte
	err    error // the first write error, or ErrClosed
	closed bool
	done   chan struct{} // closed when the goroutine ends
}

// New returns a Writer that writes to w, and starts its goroutine.
func New(w io.Writer, opts Options) *Writer {
	if opts.Max <= 0 {
		opts.Max = 1 << 20
	}
	c := &Writer{w: w, opts: opts, done: make(chan struct{})}
	c.ready.L = &c.mu
	c.room.L = &c.mu
	go c.run()
	return c
}

// Write queues a copy of p for the goroutine (see Writer and Options).
func (c *Writer) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= c.opts.Max {
		c.room.Wait()
	}
	err, closed := c.err, c.closed
	if err == nil {
		if len(c.buf) == 0 {
			c.ready.Signal()
		}
		c.buf = append(c.buf, p...)
	}
	c.mu.Unlock()
	switch {
	case err == nil:
		return len(p), nil
	case !c.opts.NeverFail:
		return 0, err
	case closed:
		<-c.done // straight through, after what waited
		return c.w.Write(p)
	}
	return len(p), nil // dropped
}

func (c *Writer) run() {
	defer close(c.done)
	c.mu.Lock()
	for {
		for len(c.buf) == 0 && c.err == nil {
			c.ready.Wait()
		}
		if len(c.buf) == 0 { // closed, everything written
			c.mu.Unlock()
			return
		}
		out := c.buf
		c.buf = c.spare[:0]
		c.room.Broadcast()
		c.mu.Unlock()
		_, err := c.w.Write(out)
		c.mu.Lock()
		if cap(out) <= 4*c.opts.Max {
			c.spare = out
		}
		if err != nil {
			if c.err == nil {
				c.err = err
			}
			c.buf = nil
			c.room.Broadcast()
			c.mu.Unlock()
			if c.opts.OnError != nil {
				c.opts.OnError(err)
			}
			return
		}
	}
}

// Stop stops taking writes and returns a channel that is closed once
// what was queued is written (or a write failed) and the goroutine has
// ended. It may be called more than once.
func (c *Writer) Stop() <-chan struct{} {
	c.mu.Lock()
	c.closed = true
	if c.err == nil {
		c.err = ErrClosed
	}
	c.ready.Signal()
	c.room.Broadcast()
	c.mu.Unlock()
	return c.done
}

// Close stops taking writes and returns, with nil, once what was queued
// is written (or a write failed) and the goroutine has ended.
func (c *Writer) Close() error {
	<-c.Stop()
	return nil
}
