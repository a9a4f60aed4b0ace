package mailbox

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Redis 7 function library. EVALSHA runs a script's whole prelude (the
// library pieces it uses: about 40 closures and tables) on every call,
// which costs about as much as the work of a simple transition. So on
// Redis 7 and later every script, plain and batched, is also registered
// once as a function of one library, whose pieces are defined once when
// the library loads, and called with FCALL.
//
// The library's name and its functions' names carry a hash of its code,
// so processes of different gateway versions sharing one Redis each find
// their own. A Store loads the library (FUNCTION LOAD REPLACE) the first
// time it needs it and again whenever Redis answers that a function is
// missing (a restart without persistence, a FUNCTION FLUSH). Redis older
// than 7 has no FCALL: the Store then uses EVALSHA, with the same
// scripts and the same results.

// libState is how a Store runs its scripts.
const (
	libUnknown   int32 = iota // not tried yet
	libFunctions              // FCALL works
	libEval                   // no functions on this server: EVALSHA
)

// library is the function library built from every script.
type library struct {
	name string
	code string
	fn   map[*luaScript][2]string // plain and batched function names
}

var (
	libOnce sync.Once
	lib     *library
)

// theLibrary returns the library, built on first use (after every
// script variable is initialised).
func theLibrary() *library {
	libOnce.Do(func() { lib = buildLibrary(allScripts) })
	return lib
}

// libraryHeader replaces luaHeader in the library: the common arguments
// are the library's locals, set by begin at the start of every call.
const libraryHeader = `
local P, NOW, RET, CAP, HORIZON
local function begin(ARGV)
  P = ARGV[1]
  NOW = tonumber(ARGV[2])
  RET = tonumber(ARGV[3])
  CAP = tonumber(ARGV[4])
  HORIZON = tonumber(ARGV[5])
end
`

func buildLibrary(scripts []*luaScript) *library {
	var body strings.Builder
	body.WriteString(libraryHeader)
	for _, p := range luaPieces {
		body.WriteString(p.code)
	}
	// Function names are only known once the code is hashed: write a
	// placeholder, hash, then substitute.
	const ph = "@LIB@"
	for i, sc := range scripts {
		fmt.Fprintf(&body, "\nredis.register_function('%s_%d', function(KEYS, ARGV)\nbegin(ARGV)\n%s\nend)\n", ph, i, sc.body)
		fmt.Fprintf(&body, "\nredis.register_function('%s_%db', function(KEYS, ARGV)\nbegin(ARGV)\n%s%s%s\nend)\n", ph, i, batchWrapperHead, sc.body, batchWrapperTail)
	}
	sum := sha1.Sum([]byte(body.String()))
	name := "gw_mailbox_" + hex.EncodeToString(sum[:6])
	l := &library{
		name: name,
		code: "#!lua name=" + name + "\n" + strings.ReplaceAll(body.String(), ph, name),
		fn:   make(map[*luaScript][2]string, len(scripts)),
	}
	for i, sc := range scripts {
		l.fn[sc] = [2]string{fmt.Sprintf("%s_%d", name, i), fmt.Sprintf("%s_%db", name, i)}
	}
	return l
}

// scriptRunner runs scripts by FCALL when the server has functions, by
// EVALSHA otherwise.
type scriptRunner struct {
	rdb    redis.UniversalClient
	state  atomic.Int32
	loadMu sync.Mutex
	loads  atomic.Int64 // libraries loaded so far
}

// call runs sc (its batched form when batched) with keys and argv.
func (r *scriptRunner) call(ctx context.Context, sc *luaScript, batched bool, keys []string, argv []any) (any, error) {
	if r.state.Load() != libEval {
		l := theLibrary()
		name := l.fn[sc][0]
		if batched {
			name = l.fn[sc][1]
		}
		loads := r.loads.Load()
		v, err := r.rdb.FCall(ctx, name, keys, argv...).Result()
		if err == nil || errors.Is(err, redis.Nil) {
			r.state.CompareAndSwap(libUnknown, libFunctions)
			return v, err
		}
		if !isRedisError(err) {
			return v, err
		}
		msg := strings.ToLower(err.Error())
		switch {
		case strings.Contains(msg, "function not found"):
			if lerr := r.load(ctx, l, loads); lerr != nil {
				return nil, lerr
			}
			if r.state.Load() != libEval {
				return r.rdb.FCall(ctx, name, keys, argv...).Result()
			}
		case strings.Contains(msg, "unknown command"):
			r.state.Store(libEval)
		default:
			return v, err
		}
	}
	s := sc.one
	if batched {
		s = sc.batch
	}
	return s.Run(ctx, r.rdb, keys, argv...).Result()
}

// load loads the library, unless another call did since the caller saw
// loads libraries loaded (so that the calls that all found it missing
// load it once).
func (r *scriptRunner) load(ctx context.Context, l *library, loads int64) error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	if r.loads.Load() != loads {
		return nil
	}
	if err := r.rdb.FunctionLoadReplace(ctx, l.code).Err(); err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "unknown command") {
			r.state.Store(libEval)
			return nil
		}
		return fmt.Errorf("cannot load the mailbox function library %s: %w", l.name, err)
	}
	r.state.Store(libFunctions)
	r.loads.Add(1)
	return nil
}

// isRedisError reports whether err is an error reply of the server (as
// opposed to a network error).
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}
