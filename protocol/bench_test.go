package protocol

import (
	"testing"
)

// The worker's hot path: one command envelope and one result envelope as
// the apiserver and the push servers write them.
var (
	benchCommand = []byte(`{"v":1,"kind":"command","client":"wc-3","device":"wd-17","msg_id":"w1a2b3c-1234","payload":{"jsonrpc":"2.0","method":"echo","params":{"i":1234},"id":"w1a2b3c-1234"},"accepted_at":"2026-11-23T15:55:01.123Z","deliver_by":"2026-11-23T16:55:01.123Z","answer_within_ms":30000,"attempt":1}`)
	benchResult  = []byte(`{"v":1,"kind":"result","client":"wc-3","device":"wd-17","msg_id":"w1a2b3c-1234","payload":{"jsonrpc":"2.0","result":{"i":1234},"id":"wc-3:w1a2b3c-1234"},"accepted_at":"2026-11-23T15:55:02.456Z","attempt":1}`)
)

func BenchmarkDecodeEnvelope(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEnvelope(benchCommand); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDeviceRequest(b *testing.B) {
	e, err := DecodeEnvelope(benchCommand)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.DeviceRequest(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseResponse(b *testing.B) {
	e, err := DecodeEnvelope(benchResult)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseResponse(e.Payload); err != nil {
			b.Fatal(err)
		}
	}
}
