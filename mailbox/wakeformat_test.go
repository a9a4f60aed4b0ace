package mailbox

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// A wake message is read back as the records written into it, in order;
// one plain wake-up alone is the bare identity (what every reader of the
// channel understood before records existed).
func TestWakeRecords(t *testing.T) {
	t.Parallel()
	x := time.UnixMilli(1796668580123)
	carried := func(id, prev, ident, topic, payload string) Wake {
		return Wake{Identity: ident, Carried: true, Prev: prev,
			Entry: Entry{ID: id, Topic: topic, Payload: []byte(payload), Expires: x, read: true}}
	}
	tests := []struct {
		name string
		ws   []Wake
		msg  string // the encoded message, when it is checked
	}{
		{"one plain", []Wake{{Identity: "dev-1"}}, "dev-1"},
		{"plain ones", []Wake{{Identity: "a"}, {Identity: "b.c_d-e"}}, "a\nb.c_d-e"},
		{"carried, empty mailbox", []Wake{carried("5-0", "", "cli-1", "clients/cli-1/results/d", "{}")},
			"cli-1 - 5-0 1796668580123 23 2\nclients/cli-1/results/d{}"},
		{"carried payload with separators", []Wake{carried("7-3", "7-2", "c", "t/x", "a b\nc\n\n d")}, ""},
		{"empty payload", []Wake{carried("7-3", "7-2", "c", "t", "")}, ""},
		{"mixed", []Wake{{Identity: "a"}, carried("9-1", "9-0", "b", "t/b", "line\n"), {Identity: "c"},
			carried("10-0", "9-1", "b", "t/b", "x y")}, ""},
	}
	for _, tt := range tests {
		var b []byte
		for i := range tt.ws {
			b = appendWake(b, &tt.ws[i])
		}
		if tt.msg != "" && string(b) != tt.msg {
			t.Errorf("%s: message %q, want %q", tt.name, b, tt.msg)
		}
		got, err := ParseWake(string(b))
		if err != nil || !reflect.DeepEqual(got, tt.ws) {
			t.Errorf("%s: ParseWake = %+v, %v; want %+v, nil", tt.name, got, err, tt.ws)
		}
	}
}

// Malformed messages give the records before the fault and an error.
func TestWakeMalformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  string
		ok   int // records returned
	}{
		{"two fields", "a\nb c", 1},
		{"payload longer than the message", "a\nc - 1-0 5 1 9\ntx", 1},
		{"no newline after the header", "c - 1-0 5 1 1", 0},
		{"bad length", "c - 1-0 5 x 1\ntp", 0},
		{"negative length", "c - 1-0 5 -1 1\ntp", 0},
		{"junk after a payload", "c - 1-0 5 1 1\ntpX", 1},
	}
	for _, tt := range tests {
		got, err := ParseWake(tt.msg)
		if err == nil || len(got) != tt.ok {
			t.Errorf("%s: ParseWake(%q) = %d records, %v; want %d and an error", tt.name, tt.msg, len(got), err, tt.ok)
		}
	}
}

// A carried entry may be sent without a read exactly when it comes after
// the cursor and nothing came between (Prev at or before the cursor).
func TestWakeNext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cursor, prev, id string
		want             bool
	}{
		{"", "", "5-0", true},           // nothing read, the mailbox was empty
		{"", "4-0", "5-0", false},       // nothing read, something before it
		{"4-0", "4-0", "5-0", true},     // the next one
		{"4-1", "4-0", "5-0", true},     // 4-1 was deleted since; nothing between
		{"3-9", "4-0", "5-0", false},    // 4-0 not read yet
		{"5-0", "4-0", "5-0", false},    // read already
		{"6-0", "4-0", "5-0", false},    // read already, beyond
		{"10-0", "9-0", "11-0", true},   // numeric, not string, order
		{"9-0", "10-0", "11-0", false},  // 10-0 not read yet
		{"9-10", "9-9", "9-11", true},   // sequence numbers
		{"9-10", "9-2", "10-0", true},   // an earlier tail
		{"", "", "", false},             // not an entry
		{"9-10", "9-10", "junk", false}, // malformed ID
	}
	for _, tt := range tests {
		w := Wake{Identity: "a", Carried: true, Prev: tt.prev, Entry: Entry{ID: tt.id}}
		if got := w.Next(tt.cursor); got != tt.want {
			t.Errorf("cursor %q, prev %q, id %q: Next = %v, want %v", tt.cursor, tt.prev, tt.id, got, tt.want)
		}
	}
	if (Wake{Identity: "a", Entry: Entry{ID: "5-0"}}).Next("") {
		t.Errorf("a plain wake-up: Next = true, want false")
	}
}

// FuzzParseWake: a wake message comes from Redis pub/sub, where any
// client of the Redis may publish, so ParseWake must never panic, and
// what it returns must encode back to a message that parses to the same
// records (the records before a fault included).
func FuzzParseWake(f *testing.F) {
	for _, seed := range []string{
		"dev-1",
		"a\nb.c_d-e",
		"cli-1 - 5-0 1796668580123 23 2\nclients/cli-1/results/d{}",
		"c 7-2 7-3 1 3 5\nt/xa b\nc",
		"c 7-2 7-3 1 9223372036854775807 1\nt",
		"c 7-2 7-3 1 -1 1\nt",
		"a b c",
		"\n\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		ws, _ := ParseWake(msg)
		var b []byte
		for i := range ws {
			if ws[i].Identity == "" || strings.ContainsAny(ws[i].Identity, " \n") {
				t.Fatalf("ParseWake(%q) returned identity %q, want a non-empty one without separators", msg, ws[i].Identity)
			}
			b = appendWake(b, &ws[i])
		}
		again, err := ParseWake(string(b))
		if err != nil || len(again) != len(ws) {
			t.Fatalf("ParseWake(%q) = %d records; their encoding %q parses to %d, %v", msg, len(ws), b, len(again), err)
		}
		for i := range ws {
			if !reflect.DeepEqual(normWake(again[i]), normWake(ws[i])) {
				t.Fatalf("record %d of %q: got %+v after a round trip, want %+v", i, msg, again[i], ws[i])
			}
		}
	})
}

// normWake makes records comparable: an empty payload is nil or empty,
// and Prev "-" reads as "".
func normWake(w Wake) Wake {
	if len(w.Entry.Payload) == 0 {
		w.Entry.Payload = nil
	}
	return w
}
