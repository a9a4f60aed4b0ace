package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// pahoClient connects a paho MQTT 3.1.1 client with a clean session and
// no automatic reconnect, and subscribes filter at QoS 1 when it is set
// (handler gets the messages; paho sends the PUBACK after it returns).
func pahoClient(broker, id, user, pass, filter string, handler mqtt.MessageHandler) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + broker).
		SetClientID(id).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetKeepAlive(60 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetOrderMatters(true)
	if user != "" {
		opts.SetUsername(user).SetPassword(pass)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect %s to %s timed out", id, broker)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", id, broker, err)
	}
	if filter == "" {
		return c, nil
	}
	if err := pahoSubscribe(c, filter, handler); err != nil {
		c.Disconnect(0)
		return nil, err
	}
	return c, nil
}

// pahoSubscribe subscribes filter at QoS 1 and checks the SUBACK.
func pahoSubscribe(c mqtt.Client, filter string, handler mqtt.MessageHandler) error {
	sub := c.Subscribe(filter, 1, handler)
	if !sub.WaitTimeout(15 * time.Second) {
		return fmt.Errorf("subscribe %s: no SUBACK within 15s", filter)
	}
	if err := sub.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if st, ok := sub.(*mqtt.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("subscribe %s refused with 0x%02x", filter, code)
			}
		}
	}
	return nil
}

// connectAll connects n clients, k at a time; mk makes client i. On an
// error it closes (with closeAll) those already connected.
func connectAll[C any](ctx context.Context, n, k int, mk func(i int) (C, error), closeAll func([]C)) ([]C, error) {
	clients := make([]C, n)
	err := parallel(ctx, k, n, func(i int) error {
		c, err := mk(i)
		clients[i] = c
		return err
	})
	if err != nil {
		closeAll(clients)
		return nil, err
	}
	return clients, nil
}

// disconnectAll disconnects every client, in parallel.
func disconnectAll(clients []mqtt.Client) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range clients {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.Disconnect(50)
		}()
	}
	wg.Wait()
}

// rawSession is a minimal MQTT 3.1.1 session for the idle-memory
// section: it connects, subscribes once and then only holds its socket,
// which keeps the bench's own memory and CPU out of the measurement.
type rawSession struct{ conn net.Conn }

// rawConnect opens a session: CONNECT (clean session, the given keep
// alive), CONNACK accepted, then, when filter is set, SUBSCRIBE at QoS 1
// and a SUBACK that grants it.
func rawConnect(addr, clientID, user, pass, filter string, keepAlive time.Duration) (*rawSession, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*rawSession, error) { conn.Close(); return nil, err }
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write(connectPacket(clientID, user, pass, keepAlive)); err != nil {
		return fail(err)
	}
	r := bufio.NewReader(conn)
	typ, body, err := readPacket(r)
	if err != nil {
		return fail(fmt.Errorf("no CONNACK: %w", err))
	}
	if typ != 0x20 || len(body) != 2 {
		return fail(fmt.Errorf("expected CONNACK, got packet type 0x%02x", typ))
	}
	if body[1] != 0 {
		return fail(fmt.Errorf("CONNACK refused with return code 0x%02x", body[1]))
	}
	if filter != "" {
		if _, err := conn.Write(subscribePacket(1, filter)); err != nil {
			return fail(err)
		}
		for {
			typ, body, err = readPacket(r)
			if err != nil {
				return fail(fmt.Errorf("no SUBACK: %w", err))
			}
			if typ == 0x90 {
				break
			}
		}
		if len(body) < 3 || body[2] >= 0x80 {
			return fail(fmt.Errorf("SUBACK refused %s", filter))
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return &rawSession{conn: conn}, nil
}

// Close sends DISCONNECT and closes the socket.
func (s *rawSession) Close() {
	_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.conn.Write([]byte{0xE0, 0x00})
	_ = s.conn.Close()
}

func connectPacket(clientID, user, pass string, keepAlive time.Duration) []byte {
	var vh []byte
	vh = appendString(vh, "MQTT")
	flags := byte(0x02) // clean session
	if user != "" {
		flags |= 0x80
	}
	if pass != "" {
		flags |= 0x40
	}
	vh = append(vh, 4, flags)
	vh = binary.BigEndian.AppendUint16(vh, uint16(keepAlive/time.Second))
	vh = appendString(vh, clientID)
	if user != "" {
		vh = appendString(vh, user)
	}
	if pass != "" {
		vh = appendString(vh, pass)
	}
	return packet(0x10, vh)
}

func subscribePacket(id uint16, filter string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = appendString(b, filter)
	b = append(b, 1)
	return packet(0x82, b)
}

func packet(header byte, body []byte) []byte {
	out := []byte{header}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// readHeader reads a packet's fixed header: its first byte (type and
// flags) and its remaining length.
func readHeader(r *bufio.Reader) (byte, int, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, 0, errors.New("malformed remaining length")
		}
		d, err := r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
	}
	return h, n, nil
}

// readPacket reads one packet: its type (the first byte without flags)
// and body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	h, n, err := readHeader(r)
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return h & 0xF0, body, nil
}

// leanClient is the bench's receiving MQTT 3.1.1 client of the push
// section, for the push server and Mosquitto alike. One goroutine reads
// the socket: it hands each PUBLISH's payload to the handler and answers
// each QoS 1 PUBLISH with a PUBACK, writing the PUBACKs of everything
// one read brought in one write. paho spends several goroutine hand-offs
// and allocations per message; on two shared CPUs that cost would come
// out of the broker under test.
type leanClient struct {
	conn    net.Conn
	wmu     sync.Mutex // writes: PUBACKs, SUBSCRIBE, DISCONNECT
	subacks chan byte  // return codes of SUBACKs
	done    chan struct{}
}

// leanConnect connects (clean session, no keep-alive: the runs are
// short) and starts reading. handle gets each message's payload; it must
// not keep the slice.
func leanConnect(addr, id, user, pass string, handle func(payload []byte)) (*leanClient, error) {
	rs, err := rawConnect(addr, id, user, pass, "", 0)
	if err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", id, addr, err)
	}
	c := &leanClient{conn: rs.conn, subacks: make(chan byte, 1), done: make(chan struct{})}
	go c.read(handle)
	return c, nil
}

// Subscribe subscribes filter at QoS 1 and waits for a SUBACK granting it.
func (c *leanClient) Subscribe(filter string) error {
	c.wmu.Lock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write(subscribePacket(1, filter))
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	select {
	case code := <-c.subacks:
		if code >= 0x80 {
			return fmt.Errorf("subscribe %s refused with 0x%02x", filter, code)
		}
		return nil
	case <-c.done:
		return fmt.Errorf("subscribe %s: connection closed", filter)
	case <-time.After(15 * time.Second):
		return fmt.Errorf("subscribe %s: no SUBACK within 15s", filter)
	}
}

func (c *leanClient) read(handle func([]byte)) {
	defer close(c.done)
	r := bufio.NewReaderSize(c.conn, 8192)
	var body, acks []byte
	for {
		h, n, err := readHeader(r)
		if err != nil {
			return
		}
		if cap(body) < n {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		switch h & 0xF0 {
		case 0x30: // PUBLISH
			if len(body) < 2 {
				return
			}
			p := 2 + int(binary.BigEndian.Uint16(body))
			if h&0x06 != 0 { // QoS 1 (2 is never granted here)
				if len(body) < p+2 {
					return
				}
				acks = append(acks, 0x40, 2, body[p], body[p+1])
				p += 2
			}
			if p > len(body) {
				return
			}
			handle(body[p:])
		case 0x90: // SUBACK
			if len(body) >= 3 {
				select {
				case c.subacks <- body[2]:
				default:
				}
			}
		}
		if len(acks) > 0 && r.Buffered() == 0 {
			c.wmu.Lock()
			_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, err := c.conn.Write(acks)
			c.wmu.Unlock()
			if err != nil {
				return
			}
			acks = acks[:0]
		}
	}
}

// Close sends DISCONNECT, closes the socket and waits for the reader.
func (c *leanClient) Close() {
	c.wmu.Lock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.conn.Write([]byte{0xE0, 0x00})
	c.wmu.Unlock()
	_ = c.conn.Close()
	<-c.done
}

// closeAll closes the clients that are not nil.
func closeAll(cs []*leanClient) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(c.Close)
		}
	}
	wg.Wait()
}
