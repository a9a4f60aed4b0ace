package main

import (
	"encoding/json"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/gateway/protocol"
)

// Result is one result a client received.
type Result struct {
	Device string
	Resp   *protocol.Response
	At     time.Time
}

// NewClientSession returns a session that subscribes to all of client's
// results and hands each to deliver (in paho's goroutine: keep it quick).
func NewClientSession(client, token string, api *API, deliver func(Result)) *Session {
	s := &Session{Identity: client, Token: token, API: api, Filter: protocol.ClientResultsFilter(client)}
	s.Handler = func(_ mqtt.Client, m mqtt.Message) {
		now := time.Now()
		t, err := protocol.ParseTopic(m.Topic())
		if err != nil || t.Kind != protocol.TopicClientResults {
			return
		}
		resp, err := protocol.ParseResponse(m.Payload())
		if err != nil {
			// Keep what was received visible to the ledger as unexpected.
			resp = &protocol.Response{ID: json.RawMessage("null")}
		}
		deliver(Result{Device: t.Device, Resp: resp, At: now})
	}
	return s
}
