package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Version is the value of every "jsonrpc" member.
const Version = "2.0"

// MaxBatch is the largest batch accepted in one body.
const MaxBatch = 100

// Request is a validated JSON-RPC 2.0 request with an ID.
type Request struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	ID      ID              `json:"id"`
}

// Response is a JSON-RPC 2.0 response: exactly one of Result and Error is
// set. ID is kept as raw JSON because it is the id of whoever sent the
// request (a client's ID, or the device-facing "{client}:{id}" string).
type Response struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
	ID      json.RawMessage `json:"id"`
}

// Entry is one element of a parsed body: a valid request, or the error
// that element gets. In a batch, ID holds the element's id when it could
// be read (so the error can name it), even when Err is set.
type Entry struct {
	Req *Request
	Err *Error
	ID  json.RawMessage
}

// ParseBody parses an HTTP body holding one JSON-RPC request or a batch.
//
// A body that is not JSON gives a -32700 error; a body that is JSON but
// neither an object nor a non-empty array of at most MaxBatch elements
// gives -32600. Otherwise each element is validated on its own: entries
// holds one Entry per element, in order, and batch tells whether the body
// was an array. The same id twice in one batch makes the later elements
// invalid. A single object gives one entry and a nil err even when that
// entry is invalid: callers check entries[0].Err.
func ParseBody(body []byte) (entries []Entry, batch bool, err *Error) {
	body = trimJSONSpace(body)
	if !json.Valid(body) {
		return nil, false, ErrParse("body is not valid JSON")
	}
	switch body[0] {
	case '{':
		e := parseEntry(body)
		return []Entry{e}, false, nil
	case '[':
	default:
		return nil, false, ErrInvalidRequest("body must be a JSON-RPC request object or a batch array")
	}
	var elems []json.RawMessage
	if uerr := json.Unmarshal(body, &elems); uerr != nil {
		return nil, true, ErrParse(uerr.Error())
	}
	if len(elems) == 0 {
		return nil, true, ErrInvalidRequest("empty batch")
	}
	if len(elems) > MaxBatch {
		return nil, true, ErrInvalidRequest(fmt.Sprintf("batch of %d requests, at most %d allowed", len(elems), MaxBatch))
	}
	entries = make([]Entry, len(elems))
	seen := make(map[string]bool, len(elems))
	for i, el := range elems {
		e := parseEntry(el)
		// e.ID is set only when the element's id is valid, even when the
		// element is not: an invalid element still claims its id, so that
		// no two entries of the answer carry the same id.
		if id, perr := ParseID(e.ID); perr == nil {
			k := id.Key()
			if seen[k] && e.Req != nil {
				e = Entry{Err: ErrInvalidRequest(fmt.Sprintf("id %s appears more than once in the batch", id.raw)), ID: e.ID}
			}
			seen[k] = true
		}
		entries[i] = e
	}
	return entries, true, nil
}

// ParseRequest parses one JSON-RPC request object.
func ParseRequest(b []byte) (*Request, *Error) {
	b = trimJSONSpace(b)
	if !json.Valid(b) {
		return nil, ErrParse("not valid JSON")
	}
	e := parseEntry(b)
	return e.Req, e.Err
}

func parseEntry(el json.RawMessage) Entry {
	el = trimJSONSpace(el)
	if len(el) == 0 || el[0] != '{' {
		return Entry{Err: ErrInvalidRequest("request must be a JSON object")}
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(el, &m); err != nil {
		return Entry{Err: ErrInvalidRequest("request must be a JSON object")}
	}
	rawID, hasID := m["id"]
	var idEcho json.RawMessage // the id to name in an error, when it is valid
	if hasID {
		if id, err := ParseID(rawID); err == nil {
			idEcho = id.raw
		}
	}
	fail := func(detail string) Entry {
		return Entry{Err: ErrInvalidRequest(detail), ID: idEcho}
	}
	var ver string
	if v, ok := m["jsonrpc"]; !ok || json.Unmarshal(v, &ver) != nil || ver != Version {
		return fail(`"jsonrpc" must be exactly "2.0"`)
	}
	rawMethod, ok := m["method"]
	if !ok {
		return fail(`"method" is missing`)
	}
	var method string
	if len(trimJSONSpace(rawMethod)) == 0 || trimJSONSpace(rawMethod)[0] != '"' || json.Unmarshal(rawMethod, &method) != nil {
		return fail(`"method" must be a string`)
	}
	if method == "" {
		return fail(`"method" must not be empty`)
	}
	if strings.HasPrefix(method, "rpc.") {
		return fail(`"method" names starting with "rpc." are reserved`)
	}
	var params json.RawMessage
	if p, ok := m["params"]; ok {
		p = compact(p)
		if len(p) == 0 || (p[0] != '{' && p[0] != '[') {
			return fail(`"params" must be an object or an array`)
		}
		params = p
	}
	if !hasID {
		return fail(`"id" is missing: notifications are not accepted, every command is tracked`)
	}
	id, err := ParseID(rawID)
	if err != nil {
		return fail(`"id": ` + strings.TrimPrefix(err.Error(), "protocol: "))
	}
	return Entry{Req: &Request{JSONRPC: Version, Method: method, Params: params, ID: id}, ID: id.raw}
}

// trimJSONSpace removes the whitespace JSON allows around a value: space,
// tab, CR and LF. (bytes.TrimSpace would also remove \v, \f and Unicode
// spaces, which would let a body that is not JSON through.)
func trimJSONSpace(b []byte) []byte { return bytes.Trim(b, " \t\r\n") }

func compact(b []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return append(json.RawMessage(nil), trimJSONSpace(b)...)
	}
	return buf.Bytes()
}

// ParseResponse parses and validates a JSON-RPC 2.0 response: jsonrpc
// "2.0", an id that is a string or a number, and exactly one of result
// and error (an error with an integer code and a string message).
func ParseResponse(b []byte) (*Response, error) {
	b = trimJSONSpace(b)
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return nil, fmt.Errorf("protocol: response must be a JSON object")
	}
	if r, ok := parseResponseFast(b); ok {
		return r, nil
	}
	return parseResponseStd(b)
}

// parseResponseStd is ParseResponse through encoding/json, for a valid
// JSON object b.
func parseResponseStd(b []byte) (*Response, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("protocol: response must be a JSON object")
	}
	var ver string
	if v, ok := m["jsonrpc"]; !ok || json.Unmarshal(v, &ver) != nil || ver != Version {
		return nil, fmt.Errorf(`protocol: response "jsonrpc" must be "2.0"`)
	}
	rawID, ok := m["id"]
	if !ok {
		return nil, fmt.Errorf(`protocol: response "id" is missing`)
	}
	rawID = compact(rawID)
	if len(rawID) == 0 || (rawID[0] != '"' && rawID[0] != '-' && (rawID[0] < '0' || rawID[0] > '9')) {
		return nil, fmt.Errorf(`protocol: response "id" must be a string or a number`)
	}
	res, hasRes := m["result"]
	rawErr, hasErr := m["error"]
	if hasRes == hasErr {
		return nil, fmt.Errorf(`protocol: response must have exactly one of "result" and "error"`)
	}
	r := &Response{JSONRPC: Version, ID: rawID}
	if hasRes {
		r.Result = compact(res)
		return r, nil
	}
	var e struct {
		Code    json.RawMessage `json:"code"`
		Message *string         `json:"message"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(rawErr, &e); err != nil || len(e.Code) == 0 || string(e.Code) == "null" || e.Message == nil {
		return nil, fmt.Errorf(`protocol: response "error" must be an object with an integer "code" and a string "message"`)
	}
	// A JSON number only: encoding/json would also read a quoted "-32000"
	// into a json.Number.
	code, err := strconv.ParseInt(string(e.Code), 10, 64)
	if err != nil || code != int64(int(code)) {
		return nil, fmt.Errorf(`protocol: response "error.code" must be an integer`)
	}
	r.Error = &Error{Code: int(code), Message: *e.Message}
	if len(e.Data) > 0 {
		r.Error.Data = compact(e.Data)
	}
	return r, nil
}

// NewResult returns a success response with the given id.
func NewResult(id, result json.RawMessage) *Response {
	return &Response{JSONRPC: Version, Result: result, ID: id}
}

// NewErrorResponse returns an error response with the given id (null when
// id is empty).
func NewErrorResponse(id json.RawMessage, e *Error) *Response {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	return &Response{JSONRPC: Version, Error: e, ID: id}
}

// CanonicalJSON returns v with insignificant whitespace removed and object
// members sorted by name, so that two encodings of the same value compare
// equal. Numbers keep their literal form. An empty input gives nil.
func CanonicalJSON(v json.RawMessage) (json.RawMessage, error) {
	if len(trimJSONSpace(v)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("protocol: cannot canonicalize JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("protocol: cannot canonicalize JSON: data after the value")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(x); err != nil {
		return nil, fmt.Errorf("protocol: cannot canonicalize JSON: %w", err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
