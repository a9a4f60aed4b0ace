package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqttv3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, returning
// the files and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pushserver test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	certFile, keyFile, pool := selfSigned(t)
	n := e.startNode(func(c *Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	require.True(t, strings.HasPrefix(n.URL(), "mqtts://"), n.URL())

	const id = "dev-tls"
	o := mqttv3.NewClientOptions().AddBroker("ssl://" + n.Addr()).SetClientID(id).SetUsername(id).
		SetPassword(token(t, id, auth.RoleDevice, time.Hour)).SetProtocolVersion(4).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	c := mqttv3.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer c.Disconnect(0)
	col := newCollector()
	st := c.Subscribe(protocol.DeviceCommandsTopic(id), 1, func(_ mqttv3.Client, m mqttv3.Message) { col.add(string(m.Payload())) })
	require.True(t, st.WaitTimeout(10*time.Second))
	e.put(id, protocol.DeviceCommandsTopic(id), "over-tls", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)

	// Plain MQTT is not spoken on the TLS port.
	_, _, err := connectV3(t, n.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour))
	require.Error(t, err)
}

func TestMaxPacketSize(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.MaxPacketSize = 1024 })
	const id = "dev-big"
	c := dialRaw(t, n.Addr(), 5)
	ack := c.connect(id, token(t, id, auth.RoleDevice, time.Hour))
	require.Equal(t, byte(0), ack.ReasonCode)
	require.Equal(t, uint32(1024), ack.Properties.MaximumPacketSize)
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(id), PacketID: 1,
		Payload: make([]byte, 2048),
	}))
	for {
		pk, err := c.recv(5 * time.Second)
		if err != nil {
			break
		}
		require.NotEqual(t, packets.Puback, pk.FixedHeader.Type)
	}
	require.Zero(t, value(t, n.m.responses))
}
