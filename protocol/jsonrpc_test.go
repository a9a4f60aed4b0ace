package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// want is the expected outcome of one Entry: a request (code 0) with its
// raw id, method and compacted params, or an error with its code, a part
// of its message and the id it names ("" for none, i.e. null).
type want struct {
	id     string
	method string
	params string
	code   int
	msg    string
}

func req(id, method, params string) want { return want{id: id, method: method, params: params} }
func bad(id, msg string) want            { return want{id: id, code: CodeInvalidRequest, msg: msg} }

func (w want) String() string {
	if w.code == 0 {
		return fmt.Sprintf("req id=%s method=%q params=%s", w.id, w.method, w.params)
	}
	return fmt.Sprintf("err %d %q id=%s", w.code, w.msg, w.id)
}

func describe(e Entry) string {
	switch {
	case e.Req != nil && e.Err != nil:
		return fmt.Sprintf("BOTH req=%+v err=%v", *e.Req, e.Err)
	case e.Req != nil:
		return fmt.Sprintf("req id=%s method=%q params=%s", e.Req.ID.Raw(), e.Req.Method, e.Req.Params)
	case e.Err != nil:
		return fmt.Sprintf("err %d %q id=%s", e.Err.Code, e.Err.Message, e.ID)
	}
	return "EMPTY entry"
}

func (w want) matches(e Entry) bool {
	if w.code == 0 {
		return e.Err == nil && e.Req != nil &&
			string(e.Req.ID.Raw()) == w.id && string(e.ID) == w.id &&
			e.Req.JSONRPC == Version && e.Req.Method == w.method && string(e.Req.Params) == w.params
	}
	return e.Req == nil && e.Err != nil &&
		e.Err.Code == w.code && strings.Contains(e.Err.Message, w.msg) &&
		e.Err.Source() == SourceGateway && string(e.ID) == w.id
}

// batchOf returns a batch of n valid requests with ids 1..n.
func batchOf(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = `{"jsonrpc":"2.0","method":"m","id":` + strconv.Itoa(i+1) + `}`
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func okEntries(n int) []want {
	w := make([]want, n)
	for i := range w {
		w[i] = req(strconv.Itoa(i+1), "m", "")
	}
	return w
}

// one wraps a member list into a request object.
func one(members string) string { return `{"jsonrpc":"2.0",` + members + `}` }

var (
	id128 = "a" + strings.Repeat("b", 127)
	id129 = "a" + strings.Repeat("b", 128)
)

func TestParseBody(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		batch   bool
		errCode int    // a body-level error
		errMsg  string // part of its message
		entries []want
	}{
		// Section 7 ("Examples") of the JSON-RPC 2.0 specification, in order,
		// with the outcome under our rules. We do not execute methods, so
		// the spec's responses to valid calls become accepted requests;
		// notifications are refused because every command is tracked.
		{name: "spec: positional parameters 1",
			body:    `{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}`,
			entries: []want{req("1", "subtract", "[42,23]")}},
		{name: "spec: positional parameters 2",
			body:    `{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}`,
			entries: []want{req("2", "subtract", "[23,42]")}},
		{name: "spec: named parameters 1",
			body:    `{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}`,
			entries: []want{req("3", "subtract", `{"subtrahend":23,"minuend":42}`)}},
		{name: "spec: named parameters 2",
			body:    `{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}`,
			entries: []want{req("4", "subtract", `{"minuend":42,"subtrahend":23}`)}},
		{name: "spec: notification with params",
			body:    `{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}`,
			entries: []want{bad("", `"id" is missing`)}},
		{name: "spec: notification without params",
			body:    `{"jsonrpc": "2.0", "method": "foobar"}`,
			entries: []want{bad("", `"id" is missing`)}},
		{name: "spec: non-existent method",
			body:    `{"jsonrpc": "2.0", "method": "foobar", "id": "1"}`,
			entries: []want{req(`"1"`, "foobar", "")}},
		{name: "spec: invalid JSON",
			body:    `{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]`,
			errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "spec: invalid Request object",
			body:    `{"jsonrpc": "2.0", "method": 1, "params": "bar"}`,
			entries: []want{bad("", `"method" must be a string`)}},
		{name: "spec: batch, invalid JSON",
			body: `[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]`,
			errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "spec: empty array",
			body: `[]`, errCode: CodeInvalidRequest, errMsg: "empty batch"},
		{name: "spec: invalid batch [1]",
			body: `[1]`, batch: true,
			entries: []want{bad("", "must be a JSON object")}},
		{name: "spec: invalid batch [1,2,3]",
			body: `[1,2,3]`, batch: true,
			entries: []want{bad("", "must be a JSON object"), bad("", "must be a JSON object"), bad("", "must be a JSON object")}},
		{name: "spec: rpc call batch",
			body: `[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"} 
    ]`,
			batch: true,
			entries: []want{
				req(`"1"`, "sum", "[1,2,4]"),
				bad("", `"id" is missing`),
				req(`"2"`, "subtract", "[42,23]"),
				bad("", `"jsonrpc" must be exactly "2.0"`),
				req(`"5"`, "foo.get", `{"name":"myself"}`),
				req(`"9"`, "get_data", ""),
			}},
		{name: "spec: batch of notifications only",
			body: `[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]`,
			batch:   true,
			entries: []want{bad("", `"id" is missing`), bad("", `"id" is missing`)}},

		// Not JSON: -32700.
		{name: "empty body", body: ``, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "only whitespace", body: " \n\t ", errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "truncated object", body: `{"jsonrpc":"2.0"`, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "trailing garbage", body: one(`"method":"m","id":1`) + `x`, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "two objects", body: one(`"method":"m","id":1`) + one(`"method":"m","id":2`), errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "trailing comma", body: `[` + one(`"method":"m","id":1`) + `,]`, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "single quotes", body: `{'jsonrpc':'2.0'}`, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "integer id with leading zero is not JSON", body: one(`"method":"m","id":01`), errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "bare word", body: `hello`, errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "vertical tab is not JSON whitespace", body: "\v[0]", errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "form feed is not JSON whitespace", body: one(`"method":"m","id":1`) + "\f", errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "no-break space is not JSON whitespace", body: "\u00a0" + one(`"method":"m","id":1`), errCode: CodeParseError, errMsg: "not valid JSON"},
		{name: "NEL is not JSON whitespace", body: one(`"method":"m","id":1`) + "\u0085", errCode: CodeParseError, errMsg: "not valid JSON"},

		// JSON, but neither an object nor an array: -32600.
		{name: "number", body: `1`, errCode: CodeInvalidRequest, errMsg: "request object or a batch array"},
		{name: "string", body: `"x"`, errCode: CodeInvalidRequest, errMsg: "request object or a batch array"},
		{name: "null", body: `null`, errCode: CodeInvalidRequest, errMsg: "request object or a batch array"},
		{name: "true", body: `true`, errCode: CodeInvalidRequest, errMsg: "request object or a batch array"},
		{name: "empty array with spaces", body: " [ ] ", errCode: CodeInvalidRequest, errMsg: "empty batch"},

		// Batch size.
		{name: "batch of 1", body: batchOf(1), batch: true, entries: okEntries(1)},
		{name: "batch of 100", body: batchOf(100), batch: true, entries: okEntries(100)},
		{name: "batch of 101", body: batchOf(101), errCode: CodeInvalidRequest, errMsg: "batch of 101 requests, at most 100"},

		// Elements of a batch that are not objects.
		{name: "batch of null", body: `[null]`, batch: true, entries: []want{bad("", "must be a JSON object")}},
		{name: "batch of arrays", body: `[[], [` + one(`"method":"m","id":1`) + `]]`, batch: true,
			entries: []want{bad("", "must be a JSON object"), bad("", "must be a JSON object")}},
		{name: "batch of strings", body: `["a", "{}"]`, batch: true,
			entries: []want{bad("", "must be a JSON object"), bad("", "must be a JSON object")}},

		// jsonrpc.
		{name: "jsonrpc missing", body: `{"method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "jsonrpc 1.0", body: `{"jsonrpc":"1.0","method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "jsonrpc number", body: `{"jsonrpc":2.0,"method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "jsonrpc null", body: `{"jsonrpc":null,"method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "jsonrpc with space", body: `{"jsonrpc":"2.0 ","method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "jsonrpc 2", body: `{"jsonrpc":"2","method":"m","id":1}`, entries: []want{bad("1", `"jsonrpc" must be exactly "2.0"`)}},

		// method.
		{name: "method missing", body: one(`"id":1`), entries: []want{bad("1", `"method" is missing`)}},
		{name: "method number", body: one(`"method":1,"id":1`), entries: []want{bad("1", `"method" must be a string`)}},
		{name: "method null", body: one(`"method":null,"id":1`), entries: []want{bad("1", `"method" must be a string`)}},
		{name: "method array", body: one(`"method":["m"],"id":1`), entries: []want{bad("1", `"method" must be a string`)}},
		{name: "method object", body: one(`"method":{},"id":1`), entries: []want{bad("1", `"method" must be a string`)}},
		{name: "method true", body: one(`"method":true,"id":1`), entries: []want{bad("1", `"method" must be a string`)}},
		{name: "method empty", body: one(`"method":"","id":1`), entries: []want{bad("1", `"method" must not be empty`)}},
		{name: "method rpc.", body: one(`"method":"rpc.discover","id":1`), entries: []want{bad("1", `starting with "rpc." are reserved`)}},
		{name: "method rpc. alone", body: one(`"method":"rpc.","id":1`), entries: []want{bad("1", `starting with "rpc." are reserved`)}},
		{name: "method rpc. escaped", body: one(`"method":"rpc\u002ex","id":1`), entries: []want{bad("1", `starting with "rpc." are reserved`)}},
		{name: "method rpc without dot", body: one(`"method":"rpc","id":1`), entries: []want{req("1", "rpc", "")}},
		{name: "method rpcx.", body: one(`"method":"rpcx.y","id":1`), entries: []want{req("1", "rpcx.y", "")}},
		{name: "method RPC. other case", body: one(`"method":"RPC.x","id":1`), entries: []want{req("1", "RPC.x", "")}},
		{name: "method unicode", body: one(`"method":"réglage","id":1`), entries: []want{req("1", "réglage", "")}},

		// params.
		{name: "params string", body: one(`"method":"m","params":"bar","id":1`), entries: []want{bad("1", `"params" must be an object or an array`)}},
		{name: "params number", body: one(`"method":"m","params":1,"id":1`), entries: []want{bad("1", `"params" must be an object or an array`)}},
		{name: "params null", body: one(`"method":"m","params":null,"id":1`), entries: []want{bad("1", `"params" must be an object or an array`)}},
		{name: "params true", body: one(`"method":"m","params":true,"id":1`), entries: []want{bad("1", `"params" must be an object or an array`)}},
		{name: "params empty array", body: one(`"method":"m","params":[],"id":1`), entries: []want{req("1", "m", "[]")}},
		{name: "params empty object", body: one(`"method":"m","params":{},"id":1`), entries: []want{req("1", "m", "{}")}},
		{name: "params compacted", body: one(`"method":"m","params": { "a" : [ 1 , 2 ] } ,"id":1`), entries: []want{req("1", "m", `{"a":[1,2]}`)}},
		{name: "params keep key order and literals", body: one(`"method":"m","params":{"b":1.0,"a":1e3},"id":1`), entries: []want{req("1", "m", `{"b":1.0,"a":1e3}`)}},

		// id: missing, wrong type.
		{name: "id missing", body: one(`"method":"m"`), entries: []want{bad("", `"id" is missing`)}},
		{name: "id null", body: one(`"method":"m","id":null`), entries: []want{bad("", `"id": id is null`)}},
		{name: "id fraction", body: one(`"method":"m","id":1.5`), entries: []want{bad("", `"id": id must be an integer, not a fraction`)}},
		{name: "id 1.0", body: one(`"method":"m","id":1.0`), entries: []want{bad("", `"id": id must be an integer, not a fraction`)}},
		{name: "id exponent", body: one(`"method":"m","id":1e3`), entries: []want{bad("", `"id": id must be an integer, not a fraction`)}},
		{name: "id negative exponent", body: one(`"method":"m","id":-1E-3`), entries: []want{bad("", `"id": id must be an integer, not a fraction`)}},
		{name: "id true", body: one(`"method":"m","id":true`), entries: []want{bad("", `"id": id must be a string or an integer`)}},
		{name: "id false", body: one(`"method":"m","id":false`), entries: []want{bad("", `"id": id must be a string or an integer`)}},
		{name: "id object", body: one(`"method":"m","id":{"a":1}`), entries: []want{bad("", `"id": id must be a string or an integer`)}},
		{name: "id empty object", body: one(`"method":"m","id":{}`), entries: []want{bad("", `"id": id must be a string or an integer`)}},
		{name: "id array", body: one(`"method":"m","id":[1]`), entries: []want{bad("", `"id": id must be a string or an integer`)}},

		// id: the rules for strings and integers.
		{name: "id integer 0", body: one(`"method":"m","id":0`), entries: []want{req("0", "m", "")}},
		{name: "id integer -0", body: one(`"method":"m","id":-0`), entries: []want{req("0", "m", "")}},
		{name: "id negative integer", body: one(`"method":"m","id":-42`), entries: []want{req("-42", "m", "")}},
		{name: "id 15 digits", body: one(`"method":"m","id":999999999999999`), entries: []want{req("999999999999999", "m", "")}},
		{name: "id -15 digits", body: one(`"method":"m","id":-999999999999999`), entries: []want{req("-999999999999999", "m", "")}},
		{name: "id 16 digits", body: one(`"method":"m","id":1000000000000000`), entries: []want{bad("", `"id": integer id has more than 15 digits`)}},
		{name: "id -16 digits", body: one(`"method":"m","id":-1000000000000000`), entries: []want{bad("", `"id": integer id has more than 15 digits`)}},
		{name: "id string of 16 digits", body: one(`"method":"m","id":"1000000000000000"`), entries: []want{req(`"1000000000000000"`, "m", "")}},
		{name: "id string 1 char", body: one(`"method":"m","id":"a"`), entries: []want{req(`"a"`, "m", "")}},
		{name: "id string 128 chars", body: one(`"method":"m","id":"` + id128 + `"`), entries: []want{req(`"`+id128+`"`, "m", "")}},
		{name: "id string 129 chars", body: one(`"method":"m","id":"` + id129 + `"`), entries: []want{bad("", `"id": id is longer than 128 characters`)}},
		{name: "id string all allowed chars", body: one(`"method":"m","id":"Az09._:-"`), entries: []want{req(`"Az09._:-"`, "m", "")}},
		{name: "id string leading zeros", body: one(`"method":"m","id":"007"`), entries: []want{req(`"007"`, "m", "")}},
		{name: "id string empty", body: one(`"method":"m","id":""`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string starts with dash", body: one(`"method":"m","id":"-1"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string starts with dot", body: one(`"method":"m","id":".a"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string starts with colon", body: one(`"method":"m","id":":a"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string with space", body: one(`"method":"m","id":"a b"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string with slash", body: one(`"method":"m","id":"a/b"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string with plus", body: one(`"method":"m","id":"a+b"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string unicode", body: one(`"method":"m","id":"é"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string escaped unicode", body: one(`"method":"m","id":"a\u00e9"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string NUL", body: one(`"method":"m","id":"a\u0000"`), entries: []want{bad("", `"id": id may only contain`)}},
		{name: "id string escaped ASCII", body: one(`"method":"m","id":"\u0041b"`), entries: []want{req(`"\u0041b"`, "m", "")}},

		// An invalid element names its id when the id itself is valid.
		{name: "error names a valid id", body: `{"jsonrpc":"1.0","method":"m","id":"abc"}`, entries: []want{bad(`"abc"`, `"jsonrpc"`)}},
		{name: "error names -0 as 0", body: one(`"method":1,"id":-0`), entries: []want{bad("0", `"method" must be a string`)}},
		{name: "error does not name an invalid id", body: one(`"method":1,"id":"a b"`), entries: []want{bad("", `"method" must be a string`)}},

		// The same id twice in one batch.
		{name: "duplicate id", body: `[` + one(`"method":"a","id":1`) + `,` + one(`"method":"b","id":1`) + `]`, batch: true,
			entries: []want{req("1", "a", ""), bad("1", "id 1 appears more than once")}},
		{name: "duplicate id 1 and \"1\"", body: `[` + one(`"method":"a","id":1`) + `,` + one(`"method":"b","id":"1"`) + `]`, batch: true,
			entries: []want{req("1", "a", ""), bad(`"1"`, `id "1" appears more than once`)}},
		{name: "duplicate id 0 and -0", body: `[` + one(`"method":"a","id":0`) + `,` + one(`"method":"b","id":-0`) + `]`, batch: true,
			entries: []want{req("0", "a", ""), bad("0", "appears more than once")}},
		{name: "duplicate id three times", body: `[` + one(`"method":"a","id":"x"`) + `,` + one(`"method":"b","id":"y"`) + `,` + one(`"method":"c","id":"x"`) + `,` + one(`"method":"d","id":"x"`) + `]`, batch: true,
			entries: []want{req(`"x"`, "a", ""), req(`"y"`, "b", ""), bad(`"x"`, "appears more than once"), bad(`"x"`, "appears more than once")}},
		{name: "duplicate id after an invalid element with that id", body: `[` + one(`"method":1,"id":7`) + `,` + one(`"method":"b","id":7`) + `]`, batch: true,
			entries: []want{bad("7", `"method" must be a string`), bad("7", "appears more than once")}},
		{name: "different ids are fine", body: `[` + one(`"method":"a","id":"01"`) + `,` + one(`"method":"b","id":1`) + `,` + one(`"method":"c","id":"A"`) + `,` + one(`"method":"d","id":"a"`) + `]`, batch: true,
			entries: []want{req(`"01"`, "a", ""), req("1", "b", ""), req(`"A"`, "c", ""), req(`"a"`, "d", "")}},
		{name: "same id in separate invalid elements without ids", body: `[` + one(`"method":"a"`) + `,` + one(`"method":"b"`) + `]`, batch: true,
			entries: []want{bad("", `"id" is missing`), bad("", `"id" is missing`)}},

		// Other shapes.
		{name: "whitespace around a request", body: " \r\n" + one(`"method":"m","id":1`) + "\n", entries: []want{req("1", "m", "")}},
		{name: "unknown members are ignored", body: one(`"method":"m","id":1,"extra":{"x":1}`), entries: []want{req("1", "m", "")}},
		{name: "empty object", body: `{}`, entries: []want{bad("", `"jsonrpc" must be exactly "2.0"`)}},
		{name: "nested batch", body: `[[` + one(`"method":"m","id":1`) + `]]`, batch: true, entries: []want{bad("", "must be a JSON object")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries, batch, err := ParseBody([]byte(tt.body))
			if tt.errCode != 0 {
				if err == nil || err.Code != tt.errCode || !strings.Contains(err.Message, tt.errMsg) || err.Source() != SourceGateway {
					t.Fatalf("ParseBody(%q) error = %v, want code %d with %q", tt.body, err, tt.errCode, tt.errMsg)
				}
				if entries != nil {
					t.Errorf("ParseBody(%q) entries = %d, want none with an error", tt.body, len(entries))
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseBody(%q) error = %v, want nil", tt.body, err)
			}
			if batch != tt.batch {
				t.Errorf("ParseBody(%q) batch = %v, want %v", tt.body, batch, tt.batch)
			}
			if len(entries) != len(tt.entries) {
				t.Fatalf("ParseBody(%q) = %d entries, want %d", tt.body, len(entries), len(tt.entries))
			}
			for i, w := range tt.entries {
				if !w.matches(entries[i]) {
					t.Errorf("ParseBody(%q)[%d] = %v, want %v", tt.body, i, describe(entries[i]), w)
				}
			}
		})
	}
}

// TestParseBodyIDKey checks that the ids of accepted requests carry their
// canonical key.
func TestParseBodyIDKey(t *testing.T) {
	tests := []struct{ body, key string }{
		{one(`"method":"m","id":1`), "1"},
		{one(`"method":"m","id":"1"`), "1"},
		{one(`"method":"m","id":-0`), "0"},
		{one(`"method":"m","id":"\u0041b"`), "Ab"},
		{one(`"method":"m","id": "x:y" `), "x:y"},
	}
	for _, tt := range tests {
		entries, _, err := ParseBody([]byte(tt.body))
		if err != nil || len(entries) != 1 || entries[0].Req == nil {
			t.Fatalf("ParseBody(%q) = %v, %v, want one request", tt.body, entries, err)
		}
		if got := entries[0].Req.ID.Key(); got != tt.key {
			t.Errorf("ParseBody(%q).ID.Key() = %q, want %q", tt.body, got, tt.key)
		}
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		body string
		want want
	}{
		{`{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}`, req("1", "subtract", "[42,23]")},
		{` {"jsonrpc":"2.0","method":"reboot","id":"r-1"} `, req(`"r-1"`, "reboot", "")},
		{`{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}`, bad("", `"id" is missing`)},
		{`[{"jsonrpc":"2.0","method":"m","id":1}]`, bad("", "must be a JSON object")},
		{`1`, bad("", "must be a JSON object")},
		{`{"jsonrpc":"2.0","method":"m","id":1`, want{code: CodeParseError, msg: "not valid JSON"}},
		{``, want{code: CodeParseError, msg: "not valid JSON"}},
	}
	for _, tt := range tests {
		r, err := ParseRequest([]byte(tt.body))
		e := Entry{Req: r, Err: err}
		if r != nil {
			e.ID = r.ID.Raw()
		}
		if !tt.want.matches(e) {
			t.Errorf("ParseRequest(%q) = %v, want %v", tt.body, describe(e), tt.want)
		}
	}
}

func TestRequestMarshal(t *testing.T) {
	body := `{ "id" : -0, "params" : { "b" : 1 , "a" : [ 1.0 ] }, "method" : "m", "jsonrpc" : "2.0" }`
	r, perr := ParseRequest([]byte(body))
	if perr != nil {
		t.Fatalf("ParseRequest(%q) error = %v", body, perr)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("json.Marshal(%v) error = %v", r, err)
	}
	const wantJSON = `{"jsonrpc":"2.0","method":"m","params":{"b":1,"a":[1.0]},"id":0}`
	if string(b) != wantJSON {
		t.Errorf("json.Marshal(ParseRequest(%q)) = %s, want %s", body, b, wantJSON)
	}
	var back Request
	if err := json.Unmarshal(b, &back); err != nil || back.ID.Key() != "0" {
		t.Errorf("json.Unmarshal(%q) = %v, %v, want id 0", b, back, err)
	}
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		in      string
		id      string // raw id of an accepted response
		result  string // compacted result, or "" for an error response
		code    int    // error.code of an error response
		message string
		data    string
		err     string // part of the error, "" when accepted
	}{
		// The responses of section 7 of the JSON-RPC 2.0 specification.
		{in: `{"jsonrpc": "2.0", "result": 19, "id": 1}`, id: "1", result: "19"},
		{in: `{"jsonrpc": "2.0", "result": -19, "id": 2}`, id: "2", result: "-19"},
		{in: `{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}`, id: `"1"`, code: -32601, message: "Method not found"},
		{in: `{"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}`, id: `"9"`, result: `["hello",5]`},
		{in: `{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}`, err: `"id" must be a string or a number`},

		// Device responses.
		{in: `{"jsonrpc":"2.0","result":{"ok":true},"id":"app-1:42"}`, id: `"app-1:42"`, result: `{"ok":true}`},
		{in: `{"jsonrpc":"2.0","result":null,"id":"c:1"}`, id: `"c:1"`, result: "null"},
		{in: ` {"jsonrpc":"2.0","result": { "a" : 1 } ,"id": "c:1" } `, id: `"c:1"`, result: `{"a":1}`},
		{in: `{"jsonrpc":"2.0","error":{"code":-32001,"message":"busy","data":{ "source" : "device" }},"id":"c:1"}`, id: `"c:1"`, code: -32001, message: "busy", data: `{"source":"device"}`},
		{in: `{"jsonrpc":"2.0","error":{"code":0,"message":""},"id":"c:1"}`, id: `"c:1"`, code: 0, message: ""},
		{in: `{"jsonrpc":"2.0","error":{"code":7,"message":"m","data":null},"id":1}`, id: "1", code: 7, message: "m", data: "null"},
		{in: `{"jsonrpc":"2.0","result":1,"id":-1.5}`, id: "-1.5", result: "1"},
		{in: `{"jsonrpc":"2.0","result":1,"id":1,"extra":true}`, id: "1", result: "1"},

		// Refused.
		{in: ``, err: "must be a JSON object"},
		{in: `[]`, err: "must be a JSON object"},
		{in: `[{"jsonrpc":"2.0","result":1,"id":1}]`, err: "must be a JSON object"},
		{in: `"x"`, err: "must be a JSON object"},
		{in: `{"jsonrpc":"2.0","result":1,"id":1`, err: "must be a JSON object"},
		{in: `{"jsonrpc":"2.0","result":1,"id":1} x`, err: "must be a JSON object"},
		{in: "\f{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":1}", err: "must be a JSON object"},
		{in: `{"result":1,"id":1}`, err: `"jsonrpc" must be "2.0"`},
		{in: `{"jsonrpc":"1.0","result":1,"id":1}`, err: `"jsonrpc" must be "2.0"`},
		{in: `{"jsonrpc":2,"result":1,"id":1}`, err: `"jsonrpc" must be "2.0"`},
		{in: `{"jsonrpc":"2.0","result":1}`, err: `"id" is missing`},
		{in: `{"jsonrpc":"2.0","result":1,"id":null}`, err: `"id" must be a string or a number`},
		{in: `{"jsonrpc":"2.0","result":1,"id":true}`, err: `"id" must be a string or a number`},
		{in: `{"jsonrpc":"2.0","result":1,"id":{}}`, err: `"id" must be a string or a number`},
		{in: `{"jsonrpc":"2.0","result":1,"id":[1]}`, err: `"id" must be a string or a number`},
		{in: `{"jsonrpc":"2.0","id":1}`, err: `exactly one of "result" and "error"`},
		{in: `{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"m"},"id":1}`, err: `exactly one of "result" and "error"`},
		{in: `{"jsonrpc":"2.0","result":1,"error":null,"id":1}`, err: `exactly one of "result" and "error"`},
		{in: `{"jsonrpc":"2.0","error":null,"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":"boom","id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":[],"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"message":"m"},"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"code":1},"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"code":null,"message":"m"},"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"code":1,"message":null},"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"code":1,"message":2},"id":1}`, err: `"error" must be an object`},
		{in: `{"jsonrpc":"2.0","error":{"code":"-32000","message":"m"},"id":1}`, err: `"error.code" must be an integer`},
		{in: `{"jsonrpc":"2.0","error":{"code":true,"message":"m"},"id":1}`, err: `"error.code" must be an integer`},
		{in: `{"jsonrpc":"2.0","error":{"code":{},"message":"m"},"id":1}`, err: `"error.code" must be an integer`},
		{in: `{"jsonrpc":"2.0","error":{"code":-0,"message":"m"},"id":1}`, id: "1", code: 0, message: "m"},
		{in: `{"jsonrpc":"2.0","error":{"code":1.5,"message":"m"},"id":1}`, err: `"error.code" must be an integer`},
		{in: `{"jsonrpc":"2.0","error":{"code":1e3,"message":"m"},"id":1}`, err: `"error.code" must be an integer`},
		{in: `{"jsonrpc":"2.0","error":{"code":99999999999999999999,"message":"m"},"id":1}`, err: `"error.code" must be an integer`},
	}
	for _, tt := range tests {
		r, err := ParseResponse([]byte(tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "protocol: ") {
				t.Errorf("ParseResponse(%q) = %v, %v, want error %q", tt.in, r, err, tt.err)
			}
			if r != nil {
				t.Errorf("ParseResponse(%q) = %+v with an error, want nil", tt.in, r)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseResponse(%q) error = %v, want nil", tt.in, err)
			continue
		}
		got := fmt.Sprintf("id=%s result=%s error=%v", r.ID, r.Result, r.Error)
		var wantErr *Error
		if tt.result == "" {
			wantErr = &Error{Code: tt.code, Message: tt.message}
			if tt.data != "" {
				wantErr.Data = json.RawMessage(tt.data)
			}
		}
		wantS := fmt.Sprintf("id=%s result=%s error=%v", tt.id, tt.result, wantErr)
		if got != wantS || r.JSONRPC != Version {
			t.Errorf("ParseResponse(%q) = %s, want %s", tt.in, got, wantS)
		}
		if wantErr != nil && string(r.Error.Data) != tt.data {
			t.Errorf("ParseResponse(%q).Error.Data = %s, want %s", tt.in, r.Error.Data, tt.data)
		}
	}
}

func TestNewResultAndErrorResponse(t *testing.T) {
	tests := []struct {
		r    *Response
		want string
	}{
		{NewResult(json.RawMessage(`"c:1"`), json.RawMessage(`{"ok":true}`)), `{"jsonrpc":"2.0","result":{"ok":true},"id":"c:1"}`},
		{NewResult(json.RawMessage(`7`), json.RawMessage(`null`)), `{"jsonrpc":"2.0","result":null,"id":7}`},
		{NewErrorResponse(json.RawMessage(`7`), &Error{Code: -32601, Message: "Method not found"}), `{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":7}`},
		{NewErrorResponse(nil, ErrParse("x")), `{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse error: x","data":{"source":"gateway"}},"id":null}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.r)
		if err != nil || string(b) != tt.want {
			t.Errorf("json.Marshal(%+v) = %s, %v, want %s", tt.r, b, err, tt.want)
		}
		if tt.r.Error == nil || tt.r.Error.Code != CodeParseError {
			if _, err := ParseResponse(b); err != nil {
				t.Errorf("ParseResponse(%q) error = %v, want nil", b, err)
			}
		}
	}
}

func TestCanonicalJSON(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{in: ``, want: ``},
		{in: " \n ", want: ``},
		{in: `{}`, want: `{}`},
		{in: `[]`, want: `[]`},
		{in: `null`, want: `null`},
		{in: `{"b":1,"a":2}`, want: `{"a":2,"b":1}`},
		{in: " {\n \"b\" : 1 ,\t\"a\" : [ 2 , 3 ] } ", want: `{"a":[2,3],"b":1}`},
		{in: `{"z":{"y":1,"x":[{"b":0,"a":0}]},"a":null}`, want: `{"a":null,"z":{"x":[{"a":0,"b":0}],"y":1}}`},
		{in: `[3,1,2]`, want: `[3,1,2]`},
		{in: `[1.0, 1, 1e3, 1E3, -0, 0.10, 12345678901234567890123]`, want: `[1.0,1,1e3,1E3,-0,0.10,12345678901234567890123]`},
		{in: `"\u0041\u00e9\/"`, want: `"Aé/"`},
		{in: `"<&>"`, want: `"<&>"`},
		{in: `{"a":1,"a":2}`, want: `{"a":2}`},
		{in: `{`, err: true},
		{in: `{"a":}`, err: true},
		{in: `{} {}`, err: true},
		{in: `[1] x`, err: true},
		{in: "\v1", err: true},
		{in: " \t1\r\n", want: `1`},
	}
	for _, tt := range tests {
		got, err := CanonicalJSON(json.RawMessage(tt.in))
		if (err != nil) != tt.err || string(got) != tt.want {
			t.Errorf("CanonicalJSON(%q) = %s, %v, want %s (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
	if got, _ := CanonicalJSON(nil); got != nil {
		t.Errorf("CanonicalJSON(nil) = %q, want nil", got)
	}
}
