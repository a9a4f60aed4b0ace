package mailbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// Totals returns the monitoring totals over every partition: non-empty
// mailboxes, their entries, armed timers, dead-lettered commands, the
// outboxes and the queued commands with the age of the oldest. It
// reads the partitions' set sizes in one pipeline, then walks the
// Mailboxes set of each partition that lists any (SSCAN + XLEN),
// forgetting mailboxes found empty or gone.
func (s *Store) Totals(ctx context.Context) (Totals, error) {
	var t Totals
	n := s.opts.Partitions
	sizes := make([]*redis.IntCmd, n)
	timers := make([]*redis.IntCmd, n)
	dead := make([]*redis.IntCmd, n)
	outbox := make([]outboxCmds, n)
	queued := make([]*redis.IntCmd, n)
	oldest := make([]*redis.ZSliceCmd, n)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i < n; i++ {
			pk := s.keys.Part(i)
			sizes[i] = p.SCard(ctx, pk.Mailboxes())
			timers[i] = p.ZCard(ctx, pk.Timers())
			dead[i] = p.ZCard(ctx, pk.Dead())
			outbox[i] = s.queueOutboxStats(ctx, p, i)
			queued[i] = p.ZCard(ctx, pk.Queued())
			oldest[i] = p.ZRangeWithScores(ctx, pk.Queued(), 0, 0)
		}
		return nil
	})
	if err != nil {
		return t, fmt.Errorf("cannot total the partitions: %w", s.classify(err))
	}
	now := s.now()
	for i := 0; i < n; i++ {
		if o := outbox[i].read(i, now); o.Entries > 0 {
			t.Outbox = append(t.Outbox, o)
		}
		if z := oldest[i].Val(); queued[i].Val() > 0 && len(z) > 0 {
			t.Queued = append(t.Queued, PartitionQueued{Partition: i, Commands: queued[i].Val(),
				Oldest: max(now.Sub(time.UnixMilli(int64(z[0].Score))), 0)})
		}
		t.Timers += timers[i].Val()
		t.Dead += dead[i].Val()
		if sizes[i].Val() == 0 {
			continue
		}
		if err := s.totalMailboxes(ctx, i, &t); err != nil {
			return t, err
		}
	}
	return t, nil
}

// totalMailboxes adds partition p's mailboxes and entries to t.
func (s *Store) totalMailboxes(ctx context.Context, p int, t *Totals) error {
	pk := s.keys.Part(p)
	var cursor uint64
	for {
		ids, next, err := s.rdb.SScan(ctx, pk.Mailboxes(), cursor, "", 500).Result()
		if err != nil {
			return fmt.Errorf("cannot total mailboxes: %w", s.classify(err))
		}
		lens := make([]*redis.IntCmd, len(ids))
		_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, id := range ids {
				lens[i] = pipe.XLen(ctx, pk.Mailbox(id))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cannot total mailboxes: %w", s.classify(err))
		}
		for i, id := range ids {
			n := lens[i].Val()
			if n == 0 {
				if _, err := s.run(ctx, p, stepPrune, []string{pk.Mailbox(id), pk.Mailboxes()}, id); err != nil {
					return fmt.Errorf("cannot total mailboxes: %w", err)
				}
				continue
			}
			t.Mailboxes++
			t.Entries += n
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// StatusCounts returns how many transitions into each status happened
// over the last minutes minutes (1 to 60, clamped), the current minute
// included. Statuses without transitions are absent. The scripts count
// into StatusCounts(unix minute) hashes that expire after about an hour;
// the same hashes also count the events "late" (answers after final),
// "result_dropped" (results a full client mailbox refused) and
// "lane_wait" (commands that waited behind their lane's head) and
// "retried" (next attempts of a retry policy, also by the outcome that
// ended the attempt: "retried_timeout", "retried_expired",
// "retried_device_error", "retried_rejected"), which EventCounts returns.
func (s *Store) StatusCounts(ctx context.Context, minutes int) (map[protocol.Status]int64, error) {
	all, err := s.counts(ctx, minutes)
	if err != nil {
		return nil, err
	}
	out := make(map[protocol.Status]int64)
	for k, n := range all {
		if st := protocol.Status(k); st.Valid() {
			out[st] = n
		}
	}
	return out, nil
}

// EventCounts returns the counts of the events that are not statuses
// ("late", "result_dropped", "lane_wait", "retried", "retried_{outcome}")
// over the last minutes minutes.
func (s *Store) EventCounts(ctx context.Context, minutes int) (map[string]int64, error) {
	all, err := s.counts(ctx, minutes)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64)
	for k, n := range all {
		if !protocol.Status(k).Valid() {
			out[k] = n
		}
	}
	return out, nil
}

func (s *Store) counts(ctx context.Context, minutes int) (map[string]int64, error) {
	minutes = min(max(minutes, 1), 60)
	cur := s.now().Unix() / 60
	cmds := make([]*redis.MapStringStringCmd, 0, minutes*s.opts.Partitions)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for part := 0; part < s.opts.Partitions; part++ {
			pk := s.keys.Part(part)
			for i := 0; i < minutes; i++ {
				cmds = append(cmds, p.HGetAll(ctx, pk.StatusCounts(cur-int64(i))))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read status counts: %w", err)
	}
	out := make(map[string]int64)
	for _, c := range cmds {
		for k, v := range c.Val() {
			n, _ := strconv.ParseInt(v, 10, 64)
			out[k] += n
		}
	}
	return out, nil
}

// CheckDurability returns a warning when Redis does not run with
// appendonly yes and appendfsync always (the mailbox is only as durable
// as Redis, DESIGN §7), or with a maxmemory-policy other than noeviction
// (an evicting Redis silently deletes command records, mailboxes and
// timers under memory pressure), "" when all hold. When CONFIG GET is
// refused (a managed Redis, an ACL) the warning says durability could not
// be checked.
func CheckDurability(ctx context.Context, rdb redis.UniversalClient) string {
	get := func(name string) (string, error) {
		m, err := rdb.ConfigGet(ctx, name).Result()
		if err != nil {
			return "", err
		}
		return m[name], nil
	}
	var bad []string
	for _, want := range []struct{ name, value string }{
		{"appendonly", "yes"},
		{"appendfsync", "always"},
		{"maxmemory-policy", "noeviction"},
	} {
		v, err := get(want.name)
		if err != nil {
			return "cannot check Redis durability (CONFIG GET refused: " + err.Error() + "); the gateway needs appendonly yes, appendfsync always and maxmemory-policy noeviction to lose nothing"
		}
		if !strings.EqualFold(v, want.value) {
			bad = append(bad, want.name+" is "+quote(v)+", want "+want.value)
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return "Redis is not durable: " + strings.Join(bad, "; ") + ": mailboxes and command records written in the last moments before a Redis crash, or evicted under memory pressure, can be lost"
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return strconv.Quote(s)
}

// ErrRedisNotDurable is what CheckDurable wraps when a primary keeps its
// writes neither on disk at once nor on enough replicas. (ErrNotDurable is
// one step's barrier falling short.)
var ErrRedisNotDurable = errors.New("mailbox: Redis is not durable")

// CheckDurable returns nil when every primary (each of a Cluster, the
// only one otherwise) keeps what the gateway acknowledges (DESIGN §7): it
// runs appendonly yes with appendfsync always, or waitReplicas (the
// durability barrier, GW_REDIS_WAIT_REPLICAS) is at least 1 and that many
// replicas are connected to it. Otherwise the error wraps
// ErrRedisNotDurable and says, for each primary that fails, what it runs
// and what it should; an error that does not wrap it means the check
// could not be made (Redis unreachable, CONFIG GET or INFO refused).
// This is what readiness checks unless GW_DURABILITY=relaxed.
func CheckDurable(ctx context.Context, rdb redis.UniversalClient, waitReplicas int) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		var bad []string
		err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			why, err := durableNode(ctx, n, waitReplicas)
			if err != nil {
				return fmt.Errorf("primary %s: %w", n.Options().Addr, err)
			}
			if why != "" {
				mu.Lock()
				bad = append(bad, "primary "+n.Options().Addr+": "+why)
				mu.Unlock()
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cannot check Redis durability: %w", err)
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return notDurable(strings.Join(bad, "; "), waitReplicas)
		}
		return nil
	}
	why, err := durableNode(ctx, rdb, waitReplicas)
	if err != nil {
		return fmt.Errorf("cannot check Redis durability: %w", err)
	}
	if why != "" {
		return notDurable(why, waitReplicas)
	}
	return nil
}

// NotDurableError is CheckDurable's error when a primary is not durable
// (it wraps ErrRedisNotDurable); Why says what the primaries run
// ("appendonly is "yes", appendfsync "everysec"").
type NotDurableError struct {
	Why          string
	WaitReplicas int
}

func (e *NotDurableError) Error() string {
	return fmt.Sprintf("%v: %s; want appendonly yes with appendfsync always, or GW_REDIS_WAIT_REPLICAS ≥ 1 (now %d) with that many replicas connected to every primary; GW_DURABILITY=relaxed runs anyway, and can lose what was acknowledged in the last second before a Redis crash",
		ErrRedisNotDurable, e.Why, e.WaitReplicas)
}

func (e *NotDurableError) Unwrap() error { return ErrRedisNotDurable }

func notDurable(why string, waitReplicas int) error {
	return &NotDurableError{Why: why, WaitReplicas: waitReplicas}
}

// durableNode checks one primary; why is "" when it is durable.
func durableNode(ctx context.Context, c redis.Cmdable, waitReplicas int) (why string, err error) {
	var replicas string
	if waitReplicas > 0 {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return "", fmt.Errorf("cannot read INFO replication: %w", err)
		}
		n := infoInt(info, "connected_slaves")
		if n >= waitReplicas {
			return "", nil
		}
		replicas = fmt.Sprintf(", %d replicas connected", n)
	}
	m, err := c.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return "", fmt.Errorf("CONFIG GET refused: %w", err)
	}
	if strings.EqualFold(m["appendonly"], "yes") && strings.EqualFold(m["appendfsync"], "always") {
		return "", nil
	}
	return "appendonly is " + quote(m["appendonly"]) + ", appendfsync " + quote(m["appendfsync"]) + replicas, nil
}

// infoInt reads an integer field of an INFO reply; -1 when absent.
func infoInt(info, field string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.Atoi(v)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// LogDurability logs at the start of a service what its readiness will
// say of Redis durability (DESIGN §7): with relaxed (GW_DURABILITY=relaxed)
// a WARN that the deployment is relaxed, with CheckDurable's reason when
// Redis is not durable; otherwise a WARN when CheckDurable fails, since
// readiness fails until it passes. It also warns when a primary may evict
// keys (maxmemory-policy other than noeviction), which loses records
// whatever the durability.
func LogDurability(ctx context.Context, log *slog.Logger, rdb redis.UniversalClient, waitReplicas int, relaxed bool) {
	err := CheckDurable(ctx, rdb, waitReplicas)
	switch {
	case relaxed && err != nil:
		log.Warn("durability is relaxed (GW_DURABILITY=relaxed): ready although Redis is not durable; commands and answers acknowledged just before a Redis crash can be lost or finish twice", "reason", err.Error())
	case relaxed:
		log.Warn("durability is relaxed (GW_DURABILITY=relaxed): readiness does not check Redis durability (Redis is durable now)")
	case errors.Is(err, ErrRedisNotDurable):
		log.Warn("not ready until Redis is durable (or GW_DURABILITY=relaxed)", "reason", err.Error())
	case err != nil:
		log.Warn("not ready until Redis durability can be checked (or GW_DURABILITY=relaxed)", "err", err.Error())
	}
	if w := evicting(ctx, rdb); w != "" {
		log.Warn(w)
	}
}

// evicting returns a warning when a primary runs a maxmemory-policy other
// than noeviction, "" otherwise (or when it cannot tell).
func evicting(ctx context.Context, rdb redis.UniversalClient) string {
	var mu sync.Mutex
	var bad []string
	check := func(ctx context.Context, c redis.Cmdable, name string) error {
		m, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
		if err == nil && !strings.EqualFold(m["maxmemory-policy"], "noeviction") {
			mu.Lock()
			bad = append(bad, name+" runs maxmemory-policy "+quote(m["maxmemory-policy"]))
			mu.Unlock()
		}
		return nil
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		_ = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return check(ctx, n, "primary "+n.Options().Addr)
		})
	} else {
		_ = check(ctx, rdb, "Redis")
	}
	if len(bad) == 0 {
		return ""
	}
	sort.Strings(bad)
	return strings.Join(bad, "; ") + ": an evicting Redis silently deletes command records, mailboxes and timers under memory pressure; want noeviction"
}
