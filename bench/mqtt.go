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
	"sync/atomic"
	"time"
)

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

// varIntLen is the length of n as an MQTT variable byte integer.
func varIntLen(n int) int {
	k := 1
	for ; n >= 128; n /= 128 {
		k++
	}
	return k
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
	// The PUBLISH packets received: how many, how many at QoS 1 (each
	// PUBACKed), and their bytes (fixed header, topic, packet id and
	// payload): what tells that two brokers sent the same packets.
	pubs, qos1, bytes atomic.Int64
}

// leanStats are the PUBLISH counters of a set of lean clients.
type leanStats struct{ pubs, qos1, bytes int64 }

// statsOf sums the counters of cs.
func statsOf(cs []*leanClient) leanStats {
	var st leanStats
	for _, c := range cs {
		st.pubs += c.pubs.Load()
		st.qos1 += c.qos1.Load()
		st.bytes += c.bytes.Load()
	}
	return st
}

func (a leanStats) minus(b leanStats) leanStats {
	return leanStats{a.pubs - b.pubs, a.qos1 - b.qos1, a.bytes - b.bytes}
}

// String describes the packets: "50,000 PUBLISH packets, all at QoS 1,
// 142.0 bytes each".
func (a leanStats) String() string {
	if a.pubs == 0 {
		return "no PUBLISH packets"
	}
	qos := "all at QoS 1"
	if a.qos1 != a.pubs {
		qos = fmt.Sprintf("%s of them at QoS 1", thousands(float64(a.qos1)))
	}
	return fmt.Sprintf("%s PUBLISH packets, %s, %.1f bytes each", thousands(float64(a.pubs)), qos, float64(a.bytes)/float64(a.pubs))
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

// Subscribe subscribes filter at QoS 1 and waits for a SUBACK granting
// QoS 1.
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
		if code != 1 {
			return fmt.Errorf("subscribe %s at QoS 1: SUBACK return code 0x%02x", filter, code)
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
			c.pubs.Add(1)
			c.bytes.Add(int64(1 + varIntLen(n) + n))
			p := 2 + int(binary.BigEndian.Uint16(body))
			if h&0x06 != 0 { // QoS 1 (2 is never granted here)
				if len(body) < p+2 {
					return
				}
				c.qos1.Add(1)
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

// leanPublish publishes n messages at QoS 1 on one MQTT 3.1.1 connection
// to addr as client id, without paho: msg(k) gives the topic and payload
// of the k-th; at most window (≤ 65,535) wait for their PUBACK, and the
// PUBLISHes are written in batches. It returns once every PUBACK came,
// or with the error that stopped it (the connection failed, ctx ended,
// deadline passed).
func leanPublish(ctx context.Context, addr, id string, n, window int, msg func(k int) (string, []byte), deadline time.Time) error {
	rs, err := rawConnect(addr, id, "", "", "", 0)
	if err != nil {
		return fmt.Errorf("connect %s to %s: %w", id, addr, err)
	}
	defer rs.Close()
	conn := rs.conn
	_ = conn.SetDeadline(deadline)
	window = min(max(window, 1), 65535)
	slots := make(chan struct{}, window)
	readErr := make(chan error, 1)
	go func() {
		r := bufio.NewReaderSize(conn, 8192)
		for acked := 0; acked < n; {
			typ, _, err := readPacket(r)
			if err != nil {
				readErr <- fmt.Errorf("%s: %d of %d PUBACKs: %w", id, acked, n, err)
				return
			}
			if typ == 0x40 {
				acked++
				<-slots
			}
		}
		readErr <- nil
	}()
	w := bufio.NewWriterSize(conn, 64<<10)
	for k := range n {
		select {
		case slots <- struct{}{}:
		default:
			if err := w.Flush(); err != nil {
				return err
			}
			select {
			case slots <- struct{}{}:
			case err := <-readErr:
				return fmt.Errorf("%s: the reader stopped after %d publishes: %v", id, k, err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		topic, payload := msg(k)
		if _, err := w.Write(publishPacket(topic, uint16(k%65535+1), payload)); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	select {
	case err := <-readErr:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publishPacket is a QoS 1 PUBLISH of payload to topic with packet id.
func publishPacket(topic string, id uint16, payload []byte) []byte {
	b := appendString(make([]byte, 0, 4+len(topic)+len(payload)), topic)
	b = binary.BigEndian.AppendUint16(b, id)
	return packet(0x32, append(b, payload...))
}
