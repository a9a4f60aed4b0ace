package mailbox

import (
	"context"
	"crypto/sha1"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// The steps are Lua files in lua/, one per step, plus lua/lib.lua with
// the helpers they share. They are loaded as one Redis 7 function library
// (FUNCTION LOAD), whose name carries a hash of its code so that
// processes of different gateway versions sharing one Redis each find
// their own, and called with FCALL: one execution form, Redis ≥ 7.0.
//
// Every step declares all its keys in KEYS, all of one partition, so it
// runs unchanged on Redis Cluster (DESIGN §7). Each step's file names its
// keys and arguments at its top. The common arguments (the test clock, 0
// in production, retention, mailbox cap, answer grace) come first and are read by
// lib.lua's begin; the step sees only its own, as A.
//
// The function <lib>_batch runs one step for several items in one call
// (group commit, batch.go): ARGV is the common arguments, the step's
// name, then for each item its key count, its argument count and its
// arguments; KEYS are the items' keys in order. Each item runs in a
// protected call and gets {1, reply, due} or {0, error, due}, where due
// is the item's next-due report ('' when none; due.go).

//go:embed lua/*.lua
var luaFiles embed.FS

// Step names: the files of lua/ without .lua.
const (
	stepClaim        = "claim"
	stepReserve      = "reserve"
	stepMarkQueued   = "mark_queued"
	stepRelease      = "release"
	stepDispatch     = "dispatch"
	stepComplete     = "complete"
	stepCancel       = "cancel"
	stepDead         = "dead"
	stepReplay       = "replay"
	stepFire         = "fire"
	stepStamp        = "stamp"
	stepAck          = "ack"
	stepUnsend       = "unsend"
	stepPut          = "put"
	stepPrune        = "prune"
	stepRelay        = "relay"
	stepReopen       = "reopen"
	stepSessionSet   = "session_set"
	stepFence        = "fence"
	stepOneWay       = "oneway"
	stepSessionClear = "session_clear"
	stepRefuse       = "refuse"
	stepOrphan       = "orphan"
	// Group commands (group.go).
	stepGroupClaim    = "group_claim"
	stepGroupStop     = "group_stop"
	stepGroupProgress = "group_progress"
	stepLaneFree      = "lanefree"
)

// library is the function library built from lua/.
type library struct {
	name  string
	code  string
	steps []string
}

var (
	libOnce sync.Once
	lib     *library
)

func theLibrary() *library {
	libOnce.Do(func() { lib = buildLibrary() })
	return lib
}

func buildLibrary() *library {
	libSrc, err := luaFiles.ReadFile("lua/lib.lua")
	if err != nil {
		panic(err) // embedded: cannot happen
	}
	var final strings.Builder
	for _, st := range protocol.Statuses {
		if st.Final() {
			final.WriteString("['" + string(st) + "']=true, ")
		}
	}
	var b strings.Builder
	src := strings.Replace(string(libSrc), "--@FINAL@--", final.String(), 1)
	src = strings.Replace(src, "--@OUTBOXAGE@--", strconv.FormatInt(OutboxAge.Milliseconds(), 10), 1)
	src = strings.Replace(src, "--@HORIZON@--", strconv.FormatInt(ReportHorizon.Milliseconds(), 10), 1)
	b.WriteString(src)
	b.WriteString("\nlocal S = {}\n")
	names, _ := fs.Glob(luaFiles, "lua/*.lua")
	sort.Strings(names)
	var steps []string
	for _, n := range names {
		step := strings.TrimSuffix(strings.TrimPrefix(n, "lua/"), ".lua")
		if step == "lib" {
			continue
		}
		src, _ := luaFiles.ReadFile(n)
		fmt.Fprintf(&b, "\nS['%s'] = function(KEYS, A)\n%s\nend\n", step, src)
		steps = append(steps, step)
	}
	b.WriteString(`
local function batch(KEYS, ARGV)
  local f = S[ARGV[5]]
  begin({ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
  local out, pos, kpos = {}, 6, 1
  while pos <= #ARGV do
    local nk, na = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
    local k, a = {}, {}
    for j = 1, nk do k[j] = KEYS[kpos + j - 1] end
    for j = 1, na do a[j] = ARGV[pos + 1 + j] end
    kpos = kpos + nk
    pos = pos + 2 + na
    EARLIEST, DUEAT = nil, nil
    local ok, v = pcall(f, k, a)
    local due = DUEAT and ms(DUEAT) or ''
    if ok then
      if v == nil then v = false end
      out[#out + 1] = {1, v, due}
    elseif type(v) == 'table' and v.err then
      out[#out + 1] = {0, v.err, due}
    else
      out[#out + 1] = {0, tostring(v), due}
    end
  end
  return out
end
`)
	const ph = "@LIB@"
	for _, step := range steps {
		fmt.Fprintf(&b, "redis.register_function('%s_%s', function(KEYS, ARGV) local A = begin(ARGV); return report(S['%s'](KEYS, A)) end)\n", ph, step, step)
	}
	b.WriteString("redis.register_function('" + ph + "_batch', batch)\n")
	sum := sha1.Sum([]byte(b.String()))
	name := "gw_mailbox_" + hex.EncodeToString(sum[:6])
	return &library{
		name:  name,
		code:  "#!lua name=" + name + "\n" + strings.ReplaceAll(b.String(), ph, name),
		steps: steps,
	}
}

// fn is the function name of a step.
func (l *library) fn(step string) string { return l.name + "_" + step }

// Errors of the partition layer.
var (
	// ErrUnavailable wraps every failure to reach Redis or to complete a
	// step there (network, failover, cluster redirection, LOADING, a
	// barrier that fewer replicas acknowledged): retry later.
	ErrUnavailable = errors.New("mailbox: Redis unavailable")
	// ErrNotDurable: the barrier's WAIT counted fewer replicas than
	// GW_REDIS_WAIT_REPLICAS; the step happened on the primary but is not
	// durable yet. It wraps ErrUnavailable.
	ErrNotDurable = fmt.Errorf("%w: fewer replicas acknowledged the step than required", ErrUnavailable)
)

// call runs one step (or a batch, when step is "batch") on the Redis node
// of partition p, followed by the durability barrier when
// Options.WaitReplicas is set. args start with the common arguments.
func (s *Store) call(ctx context.Context, p int, step string, keys []string, args []any) (any, error) {
	l := theLibrary()
	v, err := s.fcall(ctx, p, l.fn(step), keys, args)
	if err != nil && isRedisError(err) && strings.Contains(strings.ToLower(err.Error()), "function not found") {
		if lerr := s.loadLibrary(ctx, p); lerr != nil {
			return nil, lerr
		}
		v, err = s.fcall(ctx, p, l.fn(step), keys, args)
	}
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, s.classify(err)
	}
	v, due := unwrapDue(v)
	if due > 0 {
		s.noteDue(ctx, p, due)
	}
	return v, nil
}

// fcall runs FCALL (and the barrier) on the connection of p's primary.
func (s *Store) fcall(ctx context.Context, p int, fn string, keys []string, args []any) (any, error) {
	if s.opts.WaitReplicas <= 0 {
		return s.rdb.FCall(ctx, fn, keys, args...).Result()
	}
	node, err := s.nodeOf(ctx, p)
	if err != nil {
		return nil, err
	}
	// One pipeline on one connection: the step, a write to the
	// partition's barrier key, then WAIT, which therefore covers the step
	// (a no-op step included).
	var call *redis.Cmd
	var wait *redis.IntCmd
	_, err = node.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		call = pipe.FCall(ctx, fn, keys, args...)
		pipe.Incr(ctx, s.keys.Part(p).Barrier())
		wait = redis.NewIntCmd(ctx, "wait", s.opts.WaitReplicas, s.opts.WaitTimeout.Milliseconds())
		_ = pipe.Process(ctx, wait)
		return nil
	})
	if cerr := call.Err(); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	if n := wait.Val(); n < int64(s.opts.WaitReplicas) {
		return nil, fmt.Errorf("%w (%d of %d)", ErrNotDurable, n, s.opts.WaitReplicas)
	}
	return call.Val(), nil
}

// nodeOf returns a client of the primary that serves partition p: the
// Store's client on one server or Sentinel, the node's client on Cluster
// (so that a pipeline runs on one connection).
func (s *Store) nodeOf(ctx context.Context, p int) (*redis.Client, error) {
	switch c := s.rdb.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		n, err := c.MasterForKey(ctx, s.keys.Part(p).Barrier())
		if err != nil {
			return nil, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("mailbox: a durability barrier needs a *redis.Client or *redis.ClusterClient, not %T", s.rdb)
}

// loadLibrary loads the function library on the primary of p (on
// Cluster, every primary: a new one after a failover or a reshard may
// not have it yet).
func (s *Store) loadLibrary(ctx context.Context, p int) error {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	l := theLibrary()
	var err error
	if c, ok := s.rdb.(*redis.ClusterClient); ok {
		err = c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return n.FunctionLoadReplace(ctx, l.code).Err()
		})
	} else {
		err = s.rdb.FunctionLoadReplace(ctx, l.code).Err()
	}
	if err != nil {
		return fmt.Errorf("cannot load the mailbox function library %s (Redis ≥ 7.0 is required): %w", l.name, s.classify(err))
	}
	s.loads.Add(1)
	return nil
}

// classify wraps errors that mean "Redis cannot take the step now" in
// ErrUnavailable: network errors, and the replies of a failover or a
// cluster change (TRYAGAIN, ASK, MOVED, CLUSTERDOWN, LOADING, READONLY,
// MASTERDOWN, MISCONF, BUSY, OOM, max clients). Those are transient and
// never read as "missing" (DESIGN §7a).
// NotSent reports whether err means a command never reached Redis (the
// connection could not be made), so that it certainly changed nothing;
// any other error of a write leaves its outcome unknown.
func NotSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (s *Store) classify(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if !isRedisError(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	msg := err.Error()
	for _, p := range []string{"TRYAGAIN", "ASK ", "MOVED ", "CLUSTERDOWN", "LOADING", "READONLY", "MASTERDOWN", "MISCONF", "BUSY", "OOM", "NOREPLICAS", "ERR max number of clients"} {
		if strings.HasPrefix(msg, p) {
			if p == "MOVED " || p == "ASK " || p == "CLUSTERDOWN" {
				if c, ok := s.rdb.(*redis.ClusterClient); ok {
					c.ReloadState(context.Background())
				}
			}
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return err
}

// isRedisError reports whether err is an error reply of the server (as
// opposed to a network error).
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}
