package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqttv3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// overWS makes a connectV3 client connect to url (ws://… or wss://…)
// instead of TCP.
func overWS(url string) func(*mqttv3.ClientOptions) {
	return func(o *mqttv3.ClientOptions) {
		o.Servers = nil
		o.AddBroker(url)
	}
}

// TestWebSocket: a device and a client connected over WebSocket get a
// command and its result end to end, as over TCP; a node that does not
// own an identity refuses it over WebSocket too (MQTT 5: with the owner
// as server reference); the subprotocol is echoed; other paths are not
// served.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ws := func(c *Config) { c.WSAddr = "127.0.0.1:0" }
	a, b := e.startNode(ws), e.startNode(ws)
	members := e.converged(a, b)
	device := identitiesOwnedBy(members, a.NodeID(), "dev-ws", 1)[0]
	client := identitiesOwnedBy(members, a.NodeID(), "cli-ws", 1)[0]

	// The owner serves both over WebSocket, on /mqtt and on /.
	d, code, err := connectV3(t, "", device, device, token(t, device, auth.RoleDevice, time.Hour),
		overWS("ws://"+a.WSAddr()+"/mqtt"))
	require.NoError(t, err, "device over ws: code %d", code)
	c, code, err := connectV3(t, "", client, client, token(t, client, auth.RoleClient, time.Hour),
		overWS("ws://"+a.WSAddr()+"/"))
	require.NoError(t, err, "client over ws: code %d", code)
	results := newCollector()
	require.Equal(t, byte(1), c.subscribe(t, protocol.ClientResultsFilter(client), 1, results))
	commands := newCollector()
	require.Equal(t, byte(1), d.subscribe(t, protocol.DeviceCommandsTopic(device), 1, commands))

	cmd := e.sendCommand(client, device, "7", a.NodeID())
	commands.waitDistinct(t, 1, 10*time.Second)
	var req struct {
		Method string `json:"method"`
		ID     string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(commands.list()[0]), &req))
	require.Equal(t, client+":7", req.ID)
	tok := d.Publish(protocol.DeviceResponsesTopic(device), 1, false,
		fmt.Sprintf(`{"jsonrpc":"2.0","result":{"rebooted":true},"id":%q}`, req.ID))
	require.True(t, tok.WaitTimeout(10*time.Second), "no PUBACK over ws")
	require.NoError(t, tok.Error())
	require.Equal(t, protocol.StatusSucceeded, e.commandStatus(client, cmd.ID.Key()).Status)
	results.waitDistinct(t, 1, 10*time.Second)
	require.Contains(t, results.list()[0], `"rebooted":true`)

	// The node that does not own the device refuses it: 3.1.1 …
	_, code, err = connectV3(t, "", device, device, token(t, device, auth.RoleDevice, time.Hour),
		overWS("ws://"+b.WSAddr()+"/mqtt"))
	require.Error(t, err)
	require.Equal(t, byte(0x03), code)
	// … and MQTT 5, with the owner as server reference; the subprotocol
	// is echoed.
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+b.WSAddr()+"/mqtt", http.Header{"Sec-WebSocket-Protocol": {"mqtt"}})
	require.NoError(t, err)
	require.Equal(t, "mqtt", resp.Header.Get("Sec-WebSocket-Protocol"))
	p := paho.NewClient(paho.ClientConfig{ClientID: device, Conn: &wsConn{ws: conn}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := p.Connect(ctx, &paho.Connect{
		ClientID: device, CleanStart: true, KeepAlive: 30,
		UsernameFlag: true, Username: device,
		PasswordFlag: true, Password: []byte(token(t, device, auth.RoleDevice, time.Hour)),
	})
	require.Error(t, err)
	require.NotNil(t, ca)
	require.Equal(t, byte(0x9C), ca.ReasonCode)
	require.Equal(t, a.URL(), ca.Properties.ServerReference)
	_ = conn.Close()

	// Only /mqtt and / are served; a plain GET is not upgraded; the
	// request header is bounded.
	for path, want := range map[string]int{"/other": http.StatusNotFound, "/mqtt": http.StatusBadRequest} {
		r, err := http.Get("http://" + a.WSAddr() + path)
		require.NoError(t, err)
		_ = r.Body.Close()
		require.Equal(t, want, r.StatusCode, "GET %s", path)
	}
	_, resp, err = websocket.DefaultDialer.Dial("ws://"+a.WSAddr()+"/mqtt",
		http.Header{"X-Padding": {strings.Repeat("x", 2*wsMaxHeaderBytes)}})
	require.Error(t, err)
	require.NotNil(t, resp)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)

	// MQTT travels in binary messages: a text message ends the
	// connection, even one that holds a well-formed CONNECT.
	conn, _, err = websocket.DefaultDialer.Dial("ws://"+a.WSAddr()+"/mqtt", nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, mustEncode(t, packetFrom(t, "connect", 4), 4)))
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, _, err = conn.ReadMessage()
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the connection stayed open: %v", err)
}

// TestWebSocketTLS: with the push server's certificate, WebSocket is
// served as wss:// only.
func TestWebSocketTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	certFile, keyFile, pool := testenv.SelfSignedCert(t)
	n := e.startNode(func(c *Config) {
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.WSAddr = "127.0.0.1:0"
	})
	const id = "dev-wss"
	tlsConf := func(pool *x509.CertPool) func(*mqttv3.ClientOptions) {
		return func(o *mqttv3.ClientOptions) {
			o.SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		}
	}
	c, code, err := connectV3(t, "", id, id, token(t, id, auth.RoleDevice, time.Hour),
		overWS("wss://"+n.WSAddr()+"/mqtt"), tlsConf(pool))
	require.NoError(t, err, "code %d", code)
	col := newCollector()
	c.subscribe(t, protocol.DeviceCommandsTopic(id), 1, col)
	e.put(id, protocol.DeviceCommandsTopic(id), "over-wss", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)

	// Plain WebSocket is not spoken on the TLS port.
	_, _, err = websocket.DefaultDialer.Dial("ws://"+n.WSAddr()+"/mqtt", nil)
	require.Error(t, err)
	require.False(t, strings.HasPrefix(n.URL(), "mqtt://"))
}
