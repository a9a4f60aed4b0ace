package main

import (
	"fmt"
	"github.com/iotgw/gateway/internal/latency"
	"io"
	"text/tabwriter"
)

// WriteTable prints the report for people.
func (r *LoadReport) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nclients\t%d\tdevices\t%d\tmethod\t%s\n", r.Clients, r.Devices, r.Method)
	fmt.Fprintf(tw, "sent\t%d\tin\t%.1fs\ttarget rate\t%.0f/s\telapsed\t%.1fs\n", r.Sent, r.DurationS, r.TargetRate, r.ElapsedS)
	fmt.Fprintf(tw, "accepted\t%d\trejected\t%d\tindeterminate\t%d\n", r.Accepted, r.Rejected, r.Indeterminate)
	fmt.Fprintf(tw, "received\t%d\tduplicated\t%d\tlost\t%d\n", r.Received, r.Duplicated, r.Lost)
	fmt.Fprintf(tw, "unexpected\t%d\twrong\t%d\tthroughput\t%.0f/s\n", r.Unexpected, r.Wrong, r.Throughput)
	fmt.Fprintf(tw, "conflicting\t%d\trejected with result\t%d\n", r.Conflicting, r.RejectedWithResult)
	if r.Lane != "" || r.OneWay {
		fmt.Fprintf(tw, "lane\t%q\tout of order\t%d\tone-way\t%v\n", r.Lane, r.OutOfOrder, r.OneWay)
	}
	o := r.Outcomes
	fmt.Fprintf(tw, "succeeded\t%d\tdevice error\t%d\ttimeout\t%d\texpired\t%d\tother\t%d\n", o.Succeeded, o.DeviceError, o.Timeout, o.Expired, o.OtherGW)
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nlatency (ms)\tp50\tp90\tp99\tp99.9\tmax\t")
	for _, row := range []struct {
		name string
		p    latency.Percentiles
	}{{"202 accepted", r.AcceptLatency}, {"round trip", r.RoundTrip}} {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.p.P50, row.p.P90, row.p.P99, row.p.P999, row.p.Max)
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintln(w, "sample error:", e)
	}
}
