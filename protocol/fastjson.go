package protocol

import (
	"encoding/json"
	"time"
)

// Fast paths of the decoders on the workers' hot path (DecodeEnvelope,
// ParseResponse, Envelope.DeviceRequest). encoding/json scans a document
// twice (once to validate it, once to decode it) and decodes through
// reflection; for the compact JSON the gateway writes itself that is most
// of a worker's own CPU per message.
//
// Each fast path accepts only a narrow, unambiguous shape of input (exact
// member names, strings without escapes, no whitespace where the gateway
// writes none) and gives up, returning ok false, on anything else; its
// caller then runs the encoding/json path as before. So every input that
// a fast path accepts decodes exactly as encoding/json decodes it (the
// fuzz targets check that on every input), and every other input,
// including every invalid one, takes the encoding/json path and gets the
// same result and the same error as before.

// fastScan reads compact JSON from b, strictly.
type fastScan struct {
	b []byte
	i int
}

func (s *fastScan) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// plainString reads a string literal of printable ASCII without escapes
// and returns its contents.
func (s *fastScan) plainString() (string, bool) {
	raw, ok := s.plainStringRaw()
	if !ok {
		return "", false
	}
	return string(raw[1 : len(raw)-1]), true
}

// plainStringRaw is plainString returning the literal, quotes included.
func (s *fastScan) plainStringRaw() ([]byte, bool) {
	start := s.i
	if !s.eat('"') {
		return nil, false
	}
	for s.i < len(s.b) {
		c := s.b[s.i]
		s.i++
		switch {
		case c == '"':
			return s.b[start:s.i], true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// intLiteral reads an integer literal (-?digits, no leading zero, at most
// 18 digits, so it fits an int64) and returns its bytes.
func (s *fastScan) intLiteral() ([]byte, bool) {
	start := s.i
	s.eat('-')
	d := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n := s.i - d
	if n == 0 || n > 18 || (n > 1 && s.b[d] == '0') {
		return nil, false
	}
	return s.b[start:s.i], true
}

// int64 reads an integer literal as intLiteral does.
func (s *fastScan) int64() (int64, bool) {
	lit, ok := s.intLiteral()
	if !ok {
		return 0, false
	}
	neg := lit[0] == '-'
	if neg {
		lit = lit[1:]
	}
	var n int64
	for _, c := range lit {
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// int reads an integer literal that fits an int.
func (s *fastScan) int() (int, bool) {
	n, ok := s.int64()
	if !ok || int64(int(n)) != n {
		return 0, false
	}
	return int(n), true
}

// object reads a valid JSON object, whitespace allowed inside, and
// returns its bytes.
func (s *fastScan) object() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return nil, false
	}
	start, depth := s.i, 0
	for s.i < len(s.b) {
		c := s.b[s.i]
		s.i++
		switch c {
		case '"':
			for {
				if s.i >= len(s.b) {
					return nil, false
				}
				c := s.b[s.i]
				s.i++
				if c == '\\' {
					s.i++
				} else if c == '"' {
					break
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				// The brackets balance; json.Valid checks the rest
				// (and that they match).
				raw := s.b[start:s.i]
				return raw, json.Valid(raw)
			}
		}
	}
	return nil, false
}

// Bits of the envelope's members, to refuse duplicates.
const (
	envV = 1 << iota
	envKind
	envClient
	envDevice
	envMsgID
	envPayload
	envAcceptedAt
	envDeliverBy
	envAnswerWithin
	envAttempt
	envTraceParent
)

// decodeEnvelopeFast decodes an envelope written by Envelope.Encode (or
// any envelope of the same shape: known members only, each once, in any
// order, no whitespace outside the payload, strings of printable ASCII
// without escapes, integers without fraction or exponent). It does not
// check the envelope's contents; DecodeEnvelope does. ok is false when
// b has another shape, or when a member's own decoder (ID, time.Time)
// fails: the caller then decodes b with encoding/json.
func decodeEnvelopeFast(b []byte) (e *Envelope, ok bool) {
	s := fastScan{b: b}
	if !s.eat('{') {
		return nil, false
	}
	e = &Envelope{}
	if s.eat('}') {
		return e, s.i == len(b)
	}
	seen := 0
	for {
		key, ok := s.plainStringRaw()
		if !ok || !s.eat(':') {
			return nil, false
		}
		var bit int
		switch string(key[1 : len(key)-1]) {
		case "v":
			bit = envV
			e.V, ok = s.int()
		case "kind":
			bit = envKind
			e.Kind, ok = s.plainString()
		case "client":
			bit = envClient
			e.Client, ok = s.plainString()
		case "device":
			bit = envDevice
			e.Device, ok = s.plainString()
		case "msg_id":
			bit = envMsgID
			var raw []byte
			if s.i < len(b) && b[s.i] == '"' {
				raw, ok = s.plainStringRaw()
			} else {
				raw, ok = s.intLiteral()
			}
			// What encoding/json would call: ID.UnmarshalJSON.
			ok = ok && e.MsgID.UnmarshalJSON(raw) == nil
		case "payload":
			bit = envPayload
			var raw []byte
			raw, ok = s.object()
			e.Payload = append(json.RawMessage(nil), raw...)
		case "accepted_at":
			bit = envAcceptedAt
			ok = s.time(&e.AcceptedAt)
		case "deliver_by":
			bit = envDeliverBy
			ok = s.time(&e.DeliverBy)
		case "answer_within_ms":
			bit = envAnswerWithin
			e.AnswerWithinMS, ok = s.int64()
		case "attempt":
			bit = envAttempt
			e.Attempt, ok = s.int()
		case "traceparent":
			bit = envTraceParent
			e.TraceParent, ok = s.plainString()
		default:
			return nil, false
		}
		if !ok || seen&bit != 0 {
			return nil, false
		}
		seen |= bit
		if s.eat('}') {
			return e, s.i == len(b)
		}
		if !s.eat(',') {
			return nil, false
		}
	}
}

// time reads a string into t with time.Time's own UnmarshalJSON, as
// encoding/json does.
func (s *fastScan) time(t *time.Time) bool {
	raw, ok := s.plainStringRaw()
	return ok && t.UnmarshalJSON(raw) == nil
}

// skipValue passes one value of a document known to be valid JSON and
// returns its bytes.
func (s *fastScan) skipValue() []byte {
	start := s.i
	depth := 0
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch c {
		case '"':
			s.i++
			for s.i < len(s.b) {
				c := s.b[s.i]
				s.i++
				if c == '\\' {
					s.i++
				} else if c == '"' {
					break
				}
			}
			if depth == 0 {
				return s.b[start:s.i]
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return s.b[start:s.i]
			}
			depth--
			if depth == 0 {
				s.i++
				return s.b[start:s.i]
			}
		case ',', ' ', '\t', '\r', '\n':
			if depth == 0 {
				return s.b[start:s.i]
			}
		}
		s.i++
	}
	return s.b[start:s.i]
}

func (s *fastScan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// members calls f with the name and the raw value of every member of the
// object b, which must be valid JSON. It gives up, returning false, at a
// name that is not plain ASCII without escapes (f would need it
// unescaped or case-folded), or when f returns false.
func members(b []byte, f func(name string, raw []byte) bool) bool {
	s := fastScan{b: b}
	s.space()
	if !s.eat('{') {
		return false
	}
	for {
		s.space()
		if s.eat('}') {
			return true
		}
		key, ok := s.plainStringRaw()
		if !ok {
			return false
		}
		s.space()
		s.eat(':')
		s.space()
		if !f(string(key[1:len(key)-1]), s.skipValue()) {
			return false
		}
		s.space()
		s.eat(',')
	}
}

// compactNoSpace returns a copy of b when it holds no whitespace at all
// (so json.Compact would change nothing), else ok false.
func compactNoSpace(b []byte) (json.RawMessage, bool) {
	for _, c := range b {
		if c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			return nil, false
		}
	}
	return append(json.RawMessage(nil), b...), true
}

// parseResponseFast is ParseResponse for a valid JSON object b whose
// member names are plain (the map ParseResponse decodes into matches
// names exactly, the last of duplicates winning, as here), whose
// "jsonrpc" is written "2.0" without escapes, that carries a result (an
// error response takes the encoding/json path) and whose id and result
// hold no whitespace. ok is false for anything else.
func parseResponseFast(b []byte) (r *Response, ok bool) {
	var ver, id, res, rerr []byte
	if !members(b, func(name string, raw []byte) bool {
		switch name {
		case "jsonrpc":
			ver = raw
		case "id":
			id = raw
		case "result":
			res = raw
		case "error":
			rerr = raw
		}
		return true
	}) {
		return nil, false
	}
	if string(ver) != `"`+Version+`"` || res == nil || rerr != nil || len(id) == 0 ||
		(id[0] != '"' && id[0] != '-' && (id[0] < '0' || id[0] > '9')) {
		return nil, false
	}
	r = &Response{JSONRPC: Version}
	if r.ID, ok = compactNoSpace(id); !ok {
		return nil, false
	}
	if r.Result, ok = compactNoSpace(res); !ok {
		return nil, false
	}
	return r, true
}

// htmlSafe reports whether b needs no change by json.Marshal's HTML
// escaping nor by compacting: no whitespace, no <, > or &, and no byte
// that may start U+2028 or U+2029.
func htmlSafe(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n', '<', '>', '&', 0xE2:
			return false
		}
	}
	return true
}

// plainASCII reports whether s is printable ASCII that json.Marshal
// writes as it is between quotes: no ", \, <, > or &.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// deviceRequestFast is DeviceCommand for a valid JSON object payload whose
// member names are plain ASCII and never case-fold to "method" or
// "params" unless they are exactly that (encoding/json matches struct
// fields without regard to case), each of those at most once, with a
// "method" that is a plain string and a "params" that json.Marshal would
// write unchanged. ok is false for anything else.
func deviceRequestFast(payload []byte, id string) (method string, out []byte, ok bool) {
	if !plainASCII(id) || !json.Valid(payload) {
		return "", nil, false
	}
	var rawMethod, params []byte
	if !members(payload, func(name string, raw []byte) bool {
		switch {
		case name == "method":
			if rawMethod != nil {
				return false
			}
			rawMethod = raw
		case name == "params":
			if params != nil {
				return false
			}
			params = raw
		case len(name) == len("method") && asciiLower(name) == "method",
			len(name) == len("params") && asciiLower(name) == "params":
			return false
		default:
			for i := 0; i < len(name); i++ {
				if name[i] >= 0x80 {
					return false // might fold into a field name
				}
			}
		}
		return true
	}) {
		return "", nil, false
	}
	var m string
	if rawMethod != nil {
		if len(rawMethod) < 2 || rawMethod[0] != '"' || !plainASCII(string(rawMethod[1:len(rawMethod)-1])) {
			return "", nil, false
		}
		m = string(rawMethod[1 : len(rawMethod)-1])
	}
	if params != nil && !htmlSafe(params) {
		return "", nil, false
	}
	out = make([]byte, 0, 48+len(m)+len(params)+len(id))
	out = append(out, `{"jsonrpc":"`+Version+`","method":"`...)
	out = append(out, m...)
	out = append(out, '"')
	if len(params) > 0 {
		out = append(out, `,"params":`...)
		out = append(out, params...)
	}
	out = append(out, `,"id":"`...)
	out = append(out, id...)
	out = append(out, `"}`...)
	return m, out, true
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
