package protocol

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestStatusFinal(t *testing.T) {
	final := map[Status]bool{
		StatusSucceeded: true, StatusFailed: true, StatusTimeout: true, StatusExpired: true,
		StatusCancelled: true, StatusRejected: true, StatusDead: true, StatusLost: true,
	}
	for _, s := range Statuses {
		if got := s.Final(); got != final[s] {
			t.Errorf("Status(%q).Final() = %v, want %v", s, got, final[s])
		}
	}
	for _, s := range []Status{"", "unknown", "QUEUED", "Succeeded"} {
		if s.Final() || s.Valid() {
			t.Errorf("Status(%q).Final(), Valid() = %v, %v, want false, false", s, s.Final(), s.Valid())
		}
	}
}

func TestStatusNames(t *testing.T) {
	want := []Status{"pending", "queued", "scheduled", "sent", "delivered", "succeeded", "failed",
		"timeout", "expired", "cancelled", "rejected", "dead", "lost", "void"}
	if !reflect.DeepEqual(Statuses, want) {
		t.Errorf("Statuses = %q, want %q", Statuses, want)
	}
	for _, s := range Statuses {
		got, err := ParseStatus(string(s))
		if err != nil || got != s || !s.Valid() {
			t.Errorf("ParseStatus(%q) = %q, %v, want %q", s, got, err, s)
		}
	}
	for _, s := range []string{"", "Queued", "QUEUED", "done", " sent"} {
		if got, err := ParseStatus(s); err == nil || got != "" {
			t.Errorf("ParseStatus(%q) = %q, %v, want an error", s, got, err)
		}
	}
}

// TestCanTransition checks CanTransition against the table of DESIGN §4,
// written out here on its own: every (from, to, by) in it is allowed and
// every other triple is refused.
func TestCanTransition(t *testing.T) {
	type key struct {
		from, to Status
		by       Owner
	}
	allowed := map[key]bool{
		{StatusPending, StatusQueued, OwnerAPI}: true,

		{StatusQueued, StatusSent, OwnerWorker}:      true,
		{StatusQueued, StatusScheduled, OwnerWorker}: true, // not_before in the future

		{StatusScheduled, StatusSent, OwnerWorker}:     true,
		{StatusScheduled, StatusCancelled, OwnerAPI}:   true,
		{StatusScheduled, StatusExpired, OwnerWorker}:  true,
		{StatusScheduled, StatusRejected, OwnerWorker}: true,
		{StatusScheduled, StatusLost, OwnerWorker}:     true,
		{StatusQueued, StatusCancelled, OwnerAPI}:      true,
		{StatusQueued, StatusExpired, OwnerWorker}:     true,
		{StatusQueued, StatusRejected, OwnerWorker}:    true,
		{StatusQueued, StatusDead, OwnerWorker}:        true,

		{StatusPending, StatusVoid, OwnerAPI}: true, // definite publish failure (§7a)
		{StatusVoid, StatusPending, OwnerAPI}: true, // a retry reserves afresh

		{StatusSent, StatusDelivered, OwnerPush}: true,
		{StatusSent, StatusSucceeded, OwnerPush}: true, // answer before the PUBACK was seen
		{StatusSent, StatusFailed, OwnerPush}:    true,
		{StatusSent, StatusRejected, OwnerPush}:  true, // the device refused it (PUBACK ≥ 0x80)
		{StatusSent, StatusCancelled, OwnerAPI}:  true, // not yet on the wire
		{StatusSent, StatusExpired, OwnerWorker}: true,
		{StatusSent, StatusTimeout, OwnerWorker}: true, // deliver-by fired while on the wire
		{StatusSent, StatusDead, OwnerWorker}:    true,

		{StatusDelivered, StatusSucceeded, OwnerPush}:   true, // the edge completes answers (§5)
		{StatusDelivered, StatusSent, OwnerWorker}:      true, // a retry
		{StatusSent, StatusScheduled, OwnerWorker}:      true, // a retry's backoff
		{StatusDelivered, StatusScheduled, OwnerWorker}: true,
		{StatusDelivered, StatusFailed, OwnerPush}:      true,
		{StatusDelivered, StatusTimeout, OwnerWorker}:   true,
		{StatusDelivered, StatusDead, OwnerWorker}:      true,

		// A retry policy's next attempt after a device's error or refusal.
		{StatusDelivered, StatusSent, OwnerPush}:      true,
		{StatusSent, StatusScheduled, OwnerPush}:      true,
		{StatusDelivered, StatusScheduled, OwnerPush}: true,

		{StatusDead, StatusQueued, OwnerAPI}: true, // operator replay of a dead letter
		// The client's retry (POST /v1/commands/{id}/retry).
		{StatusFailed, StatusQueued, OwnerAPI}:   true,
		{StatusTimeout, StatusQueued, OwnerAPI}:  true,
		{StatusExpired, StatusQueued, OwnerAPI}:  true,
		{StatusRejected, StatusQueued, OwnerAPI}: true,

		// The claim's watchdog: the record is gone beyond rebuild.
		{StatusPending, StatusLost, OwnerWorker}:   true,
		{StatusQueued, StatusLost, OwnerWorker}:    true,
		{StatusSent, StatusLost, OwnerWorker}:      true,
		{StatusDelivered, StatusLost, OwnerWorker}: true,
	}
	if len(Transitions) != len(allowed) {
		t.Errorf("len(Transitions) = %d, want %d", len(Transitions), len(allowed))
	}
	owners := []Owner{OwnerAPI, OwnerWorker, OwnerPush, "", "devicesim"}
	statuses := append(append([]Status(nil), Statuses...), "", "unknown")
	for _, from := range statuses {
		for _, to := range statuses {
			for _, by := range owners {
				want := allowed[key{from, to, by}]
				if got := CanTransition(from, to, by); got != want {
					t.Errorf("CanTransition(%q, %q, %q) = %v, want %v", from, to, by, got, want)
				}
			}
		}
	}
	// Each status has one owner who sets it (DESIGN §4 "set by"), except
	// rejected: the worker (the mailbox is full) or the push server (the
	// device refused it); and the next attempt of a retry policy (sent or
	// scheduled), which the push server takes after a device's error or
	// refusal.
	setBy := map[Status][]Owner{
		StatusPending: {OwnerAPI}, StatusQueued: {OwnerAPI}, StatusScheduled: {OwnerWorker, OwnerPush}, StatusSent: {OwnerWorker, OwnerPush}, StatusDelivered: {OwnerPush},
		StatusSucceeded: {OwnerPush}, StatusFailed: {OwnerPush}, StatusTimeout: {OwnerWorker},
		StatusExpired: {OwnerWorker}, StatusCancelled: {OwnerAPI}, StatusRejected: {OwnerWorker, OwnerPush},
		StatusDead: {OwnerWorker}, StatusVoid: {OwnerAPI}, StatusLost: {OwnerWorker},
	}
	for _, tr := range Transitions {
		if !slices.Contains(setBy[tr.To], tr.By) {
			t.Errorf("Transition %v→%v by %q, want by one of %q", tr.From, tr.To, tr.By, setBy[tr.To])
		}
	}
}

func TestFinalStatusesHaveNoWayOut(t *testing.T) {
	// The exceptions: an operator replays a dead letter, and a client
	// retries a command that failed, timed out, expired or was rejected;
	// both go back to queued, by the apiserver. Succeeded, cancelled and
	// lost are final for good.
	wayOut := func(tr Transition) bool {
		return tr.To == StatusQueued && tr.By == OwnerAPI && slices.Contains(
			[]Status{StatusDead, StatusFailed, StatusTimeout, StatusExpired, StatusRejected}, tr.From)
	}
	for _, tr := range Transitions {
		if tr.From.Final() && !wayOut(tr) {
			t.Errorf("Transition %v→%v by %q leaves final status %q", tr.From, tr.To, tr.By, tr.From)
		}
		if !tr.From.Valid() || !tr.To.Valid() || tr.From == tr.To {
			t.Errorf("Transition %v→%v by %q, want two different known statuses", tr.From, tr.To, tr.By)
		}
	}
	// Every status is reachable (pending only from a void tombstone).
	for _, s := range Statuses {
		if len(Sources(s)) == 0 {
			t.Errorf("Sources(%q) = none, want at least one", s)
		}
	}
	// Every non-final status leads somewhere.
	for _, s := range Statuses {
		if s.Final() {
			continue
		}
		out := false
		for _, tr := range Transitions {
			out = out || tr.From == s
		}
		if !out {
			t.Errorf("non-final status %q has no outgoing transition", s)
		}
	}
}

func TestSources(t *testing.T) {
	tests := []struct {
		to   Status
		want []Status
	}{
		{StatusQueued, []Status{StatusPending, StatusDead, StatusFailed, StatusTimeout, StatusExpired, StatusRejected}},
		{StatusSent, []Status{StatusQueued, StatusScheduled, StatusDelivered}},
		{StatusScheduled, []Status{StatusQueued, StatusSent, StatusDelivered}},
		{StatusDelivered, []Status{StatusSent}},
		{StatusSucceeded, []Status{StatusSent, StatusDelivered}},
		{StatusFailed, []Status{StatusSent, StatusDelivered}},
		{StatusTimeout, []Status{StatusSent, StatusDelivered}},
		{StatusExpired, []Status{StatusScheduled, StatusQueued, StatusSent}},
		{StatusCancelled, []Status{StatusScheduled, StatusQueued, StatusSent}},
		{StatusRejected, []Status{StatusScheduled, StatusQueued, StatusSent}},
		{StatusDead, []Status{StatusQueued, StatusSent, StatusDelivered}},
		{StatusPending, []Status{StatusVoid}},
		{StatusVoid, []Status{StatusPending}},
		{"unknown", nil},
	}
	for _, tt := range tests {
		if got := Sources(tt.to); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Sources(%q) = %q, want %q", tt.to, got, tt.want)
		}
	}
}

func TestStatusThingsBoard(t *testing.T) {
	tests := []struct {
		s    Status
		want string
	}{
		{StatusPending, "QUEUED"},
		{StatusQueued, "QUEUED"},
		{StatusScheduled, "QUEUED"},
		{StatusSent, "SENT"},
		{StatusDelivered, "DELIVERED"},
		{StatusSucceeded, "SUCCESSFUL"},
		{StatusFailed, "FAILED"},
		{StatusTimeout, "TIMEOUT"},
		{StatusExpired, "EXPIRED"},
		{StatusCancelled, "FAILED"},
		{StatusRejected, "FAILED"},
		{StatusDead, "FAILED"},
		{StatusLost, "FAILED"},
		{StatusVoid, ""}, // internal: never shown to a client
		{"", ""},
		{"unknown", ""},
	}
	for _, tt := range tests {
		if got := tt.s.ThingsBoard(); got != tt.want {
			t.Errorf("Status(%q).ThingsBoard() = %q, want %q", tt.s, got, tt.want)
		}
	}
	for _, s := range Statuses {
		if s.ThingsBoard() == "" && s != StatusVoid {
			t.Errorf("Status(%q).ThingsBoard() = \"\", want a ThingsBoard state", s)
		}
	}
}

func TestStatusResultCode(t *testing.T) {
	tests := []struct {
		s    Status
		want int
	}{
		{StatusPending, 0},
		{StatusQueued, 0},
		{StatusSent, 0},
		{StatusDelivered, 0},
		{StatusSucceeded, 0},
		{StatusFailed, 0},
		{StatusTimeout, -32001},
		{StatusExpired, -32002},
		{StatusDead, -32003},
		{StatusCancelled, -32004},
		{StatusRejected, -32005},
		{"unknown", 0},
	}
	for _, tt := range tests {
		if got := tt.s.ResultCode(); got != tt.want {
			t.Errorf("Status(%q).ResultCode() = %d, want %d", tt.s, got, tt.want)
		}
		if tt.want != 0 && !tt.s.Final() {
			t.Errorf("Status(%q).Final() = false, want true for a status with a result code", tt.s)
		}
	}
}

// TestTransitionsMatchDoc checks the table of legal transitions in
// doc.go against Transitions: the same (from, to, by) triples, no more,
// no fewer.
func TestTransitionsMatchDoc(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(src), "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "The legal transitions ([Transitions]") })
	if start < 0 {
		t.Fatal("doc.go has no table of legal transitions")
	}
	paren := regexp.MustCompile(`\([^)]*\)`)
	split := func(s string) []Status {
		var out []Status
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, Status(f))
			}
		}
		return out
	}
	doc := map[Transition]bool{}
	for _, l := range lines[start+2:] {
		l = strings.TrimSpace(strings.TrimPrefix(l, "//"))
		if l == "" {
			break
		}
		if strings.HasPrefix(l, "from ") {
			continue
		}
		l = paren.ReplaceAllString(l, "")
		var from, to []Status
		var by string
		if a, b, ok := strings.Cut(l, "→"); ok {
			f := strings.Fields(b)
			from, to, by = split(a), split(f[0]), f[len(f)-1]
		} else {
			cols := regexp.MustCompile(`\s{2,}`).Split(l, -1)
			if len(cols) != 3 {
				t.Fatalf("doc.go transition line %q: want 3 columns", l)
			}
			from, to, by = split(cols[0]), split(cols[1]), cols[2]
		}
		for _, f := range from {
			for _, s := range to {
				doc[Transition{f, s, Owner(by)}] = true
			}
		}
	}
	for _, tr := range Transitions {
		if !doc[tr] {
			t.Errorf("Transition %v→%v by %q is not in doc.go's table", tr.From, tr.To, tr.By)
		}
		delete(doc, tr)
	}
	for tr := range doc {
		t.Errorf("doc.go's table has %v→%v by %q, which Transitions lacks", tr.From, tr.To, tr.By)
	}
}
