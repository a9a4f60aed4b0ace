package main

import (
	"io"

	"github.com/iotgw/gateway/internal/coalesce"
)

// logWriterMax is how many bytes of log lines may wait for the writer
// before a logging call blocks until they are written.
const logWriterMax = 1 << 20

// logWriter hands log lines to one goroutine that writes them in order,
// as many as have accumulated per write: under load the request log
// costs one write system call per batch of lines rather than one per
// request, and no request waits for the log's file or pipe. A line is
// written as soon as the goroutine gets to it, so the log lags by about
// one write, not by a timer.
//
// Write queues a copy of p. It blocks only while logWriterMax bytes are
// already waiting. After a write error the log is lost: Write still
// succeeds, so that logging never fails a request. Close writes the
// lines still waiting and returns once they are written. Lines logged
// after Close are written directly.
type logWriter struct {
	*coalesce.Writer
}

func newLogWriter(w io.Writer) *logWriter {
	return &logWriter{coalesce.New(w, coalesce.Options{Max: logWriterMax, NeverFail: true})}
}
