package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/protocol"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// namespacePrefix starts every test namespace.
const namespacePrefix = "gwt-"

// staleAfter is the age after which a test namespace is left over from a run
// that did not clean up (no test runs that long: make test stops at 9 minutes).
const staleAfter = time.Hour

// cleanupTimeout bounds the cleanup of one namespace and the stale sweep.
const cleanupTimeout = 30 * time.Second

// knownQueues and knownExchanges are the suffixes of the standard topology
// (DESIGN §6), deleted by name when the management API cannot list names:
// the partitioned command queues up to protocol.MaxQueues, the fence, and
// the names of earlier versions. "results" and "results.dead" (queues) and
// "results" (exchange) are such names: device answers no longer cross
// RabbitMQ and nothing declares them any more, but namespaces created by
// older versions may still hold them. Leaking queues is not harmless: every
// quorum queue holds file handles, and a RabbitMQ out of them stops
// accepting connections.
var (
	knownQueues    = knownQueueSuffixes()
	knownExchanges = []string{"commands", "results", "dead"}
)

func knownQueueSuffixes() []string {
	s := []string{"commands", "results", "commands.dead", "results.dead", "fence"}
	for q := 0; q < protocol.MaxQueues; q++ {
		s = append(s, "commands."+strconv.Itoa(q))
	}
	return s
}

var sweepOnce sync.Once

// Namespace returns a namespace of its own for t, of the form
// gwt-<unix seconds>-<8 lowercase hex digits>, and registers a cleanup that
// deletes, when t ends, the Redis keys matching "<ns>:*" or "{<ns>:*" (keys
// with a hash tag, DESIGN §7) and the RabbitMQ queues and exchanges whose
// names start with "<ns>.". The first call in a process also deletes what
// test namespaces older than an hour left behind.
//
// Cleanup problems are reported with t.Log, and do not fail t. With -short
// (integration tests skipped) nothing is cleaned or swept.
func Namespace(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testenv: cannot read random bytes: %v", err)
	}
	ns := fmt.Sprintf("%s%d-%s", namespacePrefix, time.Now().Unix(), hex.EncodeToString(b[:]))
	if testing.Short() {
		return ns
	}
	sweepOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := sweepStale(ctx, time.Now().Add(-staleAfter)); err != nil {
			t.Logf("testenv: cannot sweep stale test namespaces: %v", err)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := cleanNamespace(ctx, ns); err != nil {
			t.Logf("testenv: cannot clean namespace %s: %v", ns, err)
		}
	})
	return ns
}

// cleanNamespace deletes the Redis keys and the RabbitMQ queues and exchanges
// of ns.
func cleanNamespace(ctx context.Context, ns string) error {
	var errs []error
	for _, prefix := range []string{ns + ":", "{" + ns + ":"} {
		if err := cleanRedis(ctx, func(key string) bool { return strings.HasPrefix(key, prefix) }, prefix+"*"); err != nil {
			errs = append(errs, err)
		}
	}

	mine := func(name string) bool { return strings.HasPrefix(name, ns+".") }
	queues, exchanges, err := listAMQP(ctx)
	if err != nil {
		// Without the management API, delete what the standard topology
		// would have declared.
		queues, exchanges = nil, nil
		for _, s := range knownQueues {
			queues = append(queues, ns+"."+s)
		}
		for _, s := range knownExchanges {
			exchanges = append(exchanges, ns+"."+s)
		}
	}
	if err := deleteAMQP(filter(queues, mine), filter(exchanges, mine)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// sweepStale deletes the Redis keys, queues and exchanges of test namespaces
// created before cutoff.
func sweepStale(ctx context.Context, cutoff time.Time) error {
	var errs []error
	stale := func(name string, sep byte) bool {
		created, ok := namespaceTime(name, sep)
		return ok && created.Before(cutoff)
	}
	for _, pattern := range []string{namespacePrefix + "*", "{" + namespacePrefix + "*"} {
		isStale := func(key string) bool { return stale(strings.TrimPrefix(key, "{"), ':') }
		if err := cleanRedis(ctx, isStale, pattern); err != nil {
			errs = append(errs, err)
		}
	}
	queues, exchanges, err := listAMQP(ctx)
	if err != nil {
		errs = append(errs, err)
	} else {
		isStale := func(name string) bool { return stale(name, '.') }
		if err := deleteAMQP(filter(queues, isStale), filter(exchanges, isStale)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// namespaceTime parses the creation time of the test namespace that name
// starts with, followed by sep: "gwt-<unix seconds>-<8 hex digits><sep>...".
func namespaceTime(name string, sep byte) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, namespacePrefix)
	if !ok {
		return time.Time{}, false
	}
	secs, rest, ok := strings.Cut(rest, "-")
	if !ok || secs == "" || len(rest) < 9 || rest[8] != sep {
		return time.Time{}, false
	}
	for _, c := range []byte(rest[:8]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return time.Time{}, false
		}
	}
	n, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// cleanRedis unlinks the keys matching pattern for which del is true.
func cleanRedis(ctx context.Context, del func(key string) bool, pattern string) error {
	rdb, err := dialRedis(ctx, true)
	if err != nil {
		return fmt.Errorf("cannot connect to Redis: %w", err)
	}
	defer rdb.Close()
	var cursor uint64
	for {
		var keys []string
		keys, cursor, err = rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return fmt.Errorf("cannot scan Redis keys %q: %w", pattern, err)
		}
		keys = filter(keys, del)
		if len(keys) > 0 {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("cannot unlink Redis keys: %w", err)
			}
		}
		if cursor == 0 {
			return nil
		}
	}
}

// listAMQP lists the names of the queues and exchanges in the virtual host of
// AMQPURL through the management API.
func listAMQP(ctx context.Context) (queues, exchanges []string, err error) {
	uri, err := amqp.ParseURI(AMQPURL())
	if err != nil {
		return nil, nil, fmt.Errorf("cannot parse GW_AMQP_URL: %w", err)
	}
	vhost := url.PathEscape(uri.Vhost)
	queues, err = listMgmt(ctx, "/api/queues/"+vhost+"?disable_stats=true&columns=name")
	if err != nil {
		return nil, nil, err
	}
	exchanges, err = listMgmt(ctx, "/api/exchanges/"+vhost+"?columns=name")
	if err != nil {
		return nil, nil, err
	}
	return queues, exchanges, nil
}

// mgmtClient talks to the management API.
var mgmtClient = &http.Client{Timeout: 10 * time.Second}

// listMgmt returns the names from a management API listing at path.
func listMgmt(ctx context.Context, path string) ([]string, error) {
	base, err := url.Parse(AMQPMgmtURL())
	if err != nil {
		return nil, fmt.Errorf("cannot parse GW_AMQP_MGMT_URL: %w", err)
	}
	user := base.User
	base.User = nil
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base.String(), "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot make management API request: %w", err)
	}
	if user != nil {
		pass, _ := user.Password()
		req.SetBasicAuth(user.Username(), pass)
	}
	resp, err := mgmtClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the RabbitMQ management API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("RabbitMQ management API: GET %s: %s", req.URL.Path, resp.Status)
	}
	var items []struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		return nil, fmt.Errorf("cannot decode management API answer: %w", err)
	}
	names := make([]string, 0, len(items))
	for _, it := range items {
		names = append(names, it.Name)
	}
	return names, nil
}

// deleteAMQP deletes queues, then exchanges, over a connection to AMQPURL.
// Deleting a queue or an exchange that does not exist succeeds.
func deleteAMQP(queues, exchanges []string) error {
	if len(queues) == 0 && len(exchanges) == 0 {
		return nil
	}
	conn, err := dialAMQP()
	if err != nil {
		return fmt.Errorf("cannot connect to RabbitMQ: %w", err)
	}
	defer conn.Close()

	// An error closes the channel: open a new one for the next name.
	var ch *amqp.Channel
	do := func(what, name string, f func(*amqp.Channel) error) error {
		if ch == nil || ch.IsClosed() {
			if ch, err = conn.Channel(); err != nil {
				return fmt.Errorf("cannot open channel: %w", err)
			}
		}
		if err := f(ch); err != nil {
			return fmt.Errorf("cannot delete %s %q: %w", what, name, err)
		}
		return nil
	}
	var errs []error
	for _, q := range queues {
		errs = append(errs, do("queue", q, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(q, false, false, false)
			return err
		}))
	}
	for _, x := range exchanges {
		errs = append(errs, do("exchange", x, func(ch *amqp.Channel) error {
			return ch.ExchangeDelete(x, false, false)
		}))
	}
	return errors.Join(errs...)
}

// filter returns the names for which keep is true, sorted.
func filter(names []string, keep func(string) bool) []string {
	var out []string
	for _, n := range names {
		if keep(n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
