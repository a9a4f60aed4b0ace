package main

import (
	"context"
	"log/slog"
	"strconv"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/internal/telemetry"
)

// redact is the slog.Handler of mochi's logger: mochi logs whole packets
// in places (a packet it could not process, such as a second CONNECT
// with its password; a PUBLISH a hook refused, with its payload). It
// replaces every packet with its type and packet ID, every byte slice
// with its length, and clips every string (telemetry.Clip), so that no
// packet, password, token or payload reaches the log, and no value an
// outsider controls makes a log line long.
type redact struct{ slog.Handler }

func (h redact) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h redact) WithAttrs(as []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(as))
	for i, a := range as {
		safe[i] = redactAttr(a)
	}
	return redact{h.Handler.WithAttrs(safe)}
}

func (h redact) WithGroup(g string) slog.Handler { return redact{h.Handler.WithGroup(g)} }

// redactAttr returns a with a value that is safe to log.
func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, telemetry.Clip(v.String()))
	case slog.KindGroup:
		g := v.Group()
		safe := make([]any, len(g))
		for i, ga := range g {
			safe[i] = redactAttr(ga)
		}
		return slog.Group(a.Key, safe...)
	case slog.KindAny:
	default:
		return a
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, packetSummary(&x))
	case *packets.Packet:
		return slog.String(a.Key, packetSummary(x))
	case []byte:
		return slog.String(a.Key, strconv.Itoa(len(x))+" bytes")
	case error:
		return slog.String(a.Key, telemetry.Clip(x.Error()))
	case interface{ String() string }:
		return slog.String(a.Key, telemetry.Clip(x.String()))
	}
	return slog.String(a.Key, "(redacted)")
}

// packetSummary names a packet without its content: its type and packet
// ID.
func packetSummary(pk *packets.Packet) string {
	if pk == nil {
		return "nil"
	}
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = "type " + strconv.Itoa(int(pk.FixedHeader.Type))
	}
	if pk.PacketID != 0 {
		name += " id " + strconv.Itoa(int(pk.PacketID))
	}
	return name
}
