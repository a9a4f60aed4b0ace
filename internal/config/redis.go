package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"reflect"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/iotgw/gateway/internal/telemetry"
)

// RedisKind is the kind of Redis deployment a Redis URL names (DESIGN §7).
type RedisKind int

// The three kinds of deployment. Which one a URL names is read from its
// query: a master_name parameter means Sentinel; otherwise an addr
// parameter means Cluster; otherwise it is one server.
const (
	// RedisSingle is one server (perhaps with replicas it does not know of),
	// in the form RedisSingleForm.
	RedisSingle RedisKind = iota + 1
	// RedisSentinel is a primary and its replicas watched by Sentinel, in
	// the form RedisSentinelForm.
	RedisSentinel
	// RedisCluster is a Redis Cluster, in the form RedisClusterForm.
	RedisCluster
)

// The one documented URL form of each kind. Query parameters of go-redis
// that tune the client (dial_timeout, pool_size, max_retries, …) may be
// added to each; rediss:// instead of redis:// means TLS.
const (
	// RedisSingleForm is parsed by go-redis's ParseURL. The database
	// defaults to 0.
	RedisSingleForm = "redis://[user:password@]host:port/db"
	// RedisClusterForm is parsed by go-redis's ParseClusterURL: the host of
	// the URL and every addr= are seed nodes (at least two in all, since an
	// addr= is what marks the form; list every node you know, so that any
	// live one finds the others). No database: a cluster has only 0.
	RedisClusterForm = "redis://[user:password@]host:port?addr=host:port[&addr=host:port…]"
	// RedisSentinelForm is parsed by go-redis's ParseFailoverURL: the host
	// of the URL and every addr= are sentinels, master_name is the name they
	// monitor. The user and password in front of the host are the
	// sentinels'; those of the data nodes are the username= and password=
	// parameters.
	RedisSentinelForm = "redis://[sentinel-user:sentinel-password@]host:port[/db]?master_name=name[&addr=host:port…][&username=user][&password=password]"
)

// String returns "one server", "Sentinel" or "Cluster".
func (k RedisKind) String() string {
	switch k {
	case RedisSingle:
		return "one server"
	case RedisSentinel:
		return "Sentinel"
	case RedisCluster:
		return "Cluster"
	}
	return fmt.Sprintf("RedisKind(%d)", int(k))
}

// Form returns the documented URL form of k.
func (k RedisKind) Form() string {
	switch k {
	case RedisSingle:
		return RedisSingleForm
	case RedisSentinel:
		return RedisSentinelForm
	case RedisCluster:
		return RedisClusterForm
	}
	return ""
}

// urlName names the URLs of kind k, for errors.
func (k RedisKind) urlName() string {
	if k == RedisSingle {
		return "URL of one Redis server"
	}
	return "Redis " + k.String() + " URL"
}

// allForms lists the three forms, for errors that cannot tell which was meant.
const allForms = "one server " + RedisSingleForm + ", Cluster " + RedisClusterForm + ", Sentinel " + RedisSentinelForm

// NewRedis returns a client for RedisURL, which may be in any of the three
// forms: a *redis.Client for one server, a *redis.Client that follows the
// sentinels for Sentinel, a *redis.ClusterClient for Cluster (see
// IsCluster and PrimaryForKey). It does not connect: the first command
// does.
//
// tune, when not nil, is called with the parsed options before the client
// is made, to size the pool and set timeouts and retries. It must not
// change what the URL chose: the addresses, MasterName, IsClusterMode, and
// reads from replicas (ReadOnly, RouteByLatency, RouteRandomly), which the
// gateway never uses since it reads its own writes; NewRedis refuses the
// options if it did. Maintenance notifications are turned off whatever
// tune does (a server that does not offer them only produces warnings).
//
// A Cluster client reloads its slot map as soon as a node fails with a
// connection error or CLUSTERDOWN (go-redis alone waits up to a minute when
// a primary dies; see reloadOnNodeError), so a failover costs a few
// seconds of errors, not a minute.
//
// Every call the client sends (a command, or a pipeline to one server)
// counts in gw_redis_calls_total (telemetry.RedisCallsHook).
//
// An error names the form the URL was read as and never contains its
// passwords.
func (c *Common) NewRedis(tune func(*redis.UniversalOptions)) (redis.UniversalClient, error) {
	opts, kind, err := ParseRedisURL(c.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("cannot use redis-url (GW_REDIS_URL): %w", err)
	}
	if tune != nil {
		addrs := append([]string(nil), opts.Addrs...)
		master, clusterMode := opts.MasterName, opts.IsClusterMode
		tune(opts)
		if !slicesEqual(opts.Addrs, addrs) || opts.MasterName != master || opts.IsClusterMode != clusterMode {
			return nil, fmt.Errorf("config: the tune function of NewRedis changed the addresses, MasterName or IsClusterMode of a Redis %s URL; they come from GW_REDIS_URL only", kind)
		}
		if err := checkPrimaryOnly(opts); err != nil {
			return nil, fmt.Errorf("config: the tune function of NewRedis: %w", err)
		}
	}
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	rdb := redis.NewUniversalClient(opts)
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		// Counted per node: a pipeline over three nodes is three calls.
		c.OnNewNode(func(node *redis.Client) { node.AddHook(reloadOnNodeError{c}); node.AddHook(telemetry.RedisCallsHook{}) })
	case *redis.Client:
		c.AddHook(telemetry.RedisCallsHook{})
	}
	return rdb, nil
}

// reloadOnNodeError asks a ClusterClient to reload its slot map when one
// of its nodes fails with a connection error or CLUSTERDOWN. go-redis
// v9.23.0 reloads it only after MOVED, ASK or READONLY, or every 60 s
// (ClusterStateReloadInterval): when a primary dies, nobody answers MOVED,
// and the client would keep dialing the dead node for up to a minute
// after its replica has taken over. Reloads are coalesced by go-redis
// (one at a time, 200 ms apart).
type reloadOnNodeError struct{ cluster *redis.ClusterClient }

func (h reloadOnNodeError) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnNodeError) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if nodeTrouble(err) {
			h.cluster.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadOnNodeError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		trouble := nodeTrouble(err)
		for _, cmd := range cmds {
			trouble = trouble || nodeTrouble(cmd.Err())
		}
		if trouble {
			h.cluster.ReloadState(ctx)
		}
		return err
	}
}

// nodeTrouble tells the errors after which the slot map may be stale: the
// node cannot be reached, or the cluster says it is down. A reply error
// (redis.Nil included) or the caller's own cancellation is not one.
func nodeTrouble(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, redis.Nil) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return strings.HasPrefix(err.Error(), "CLUSTERDOWN")
	}
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, context.DeadlineExceeded)
}

// IsCluster reports whether rdb is a Redis Cluster client (and so routes
// each key to the primary of its slot, and needs SSUBSCRIBE and SPUBLISH
// for pub/sub that scales with the shards).
func IsCluster(rdb redis.UniversalClient) bool {
	_, ok := rdb.(*redis.ClusterClient)
	return ok
}

// PrimaryForKey returns the client of the primary that serves key: on a
// Cluster, the client of the node that owns the key's slot (by go-redis's
// last view of the cluster, which a failover makes stale until the next
// MOVED or error); for one server or Sentinel, rdb itself, which always
// talks to the primary. Commands pipelined on the returned client run on
// one connection to that primary, in order: that is where a `WAIT` that
// must follow a write goes (DESIGN §7a, durability barrier).
func PrimaryForKey(ctx context.Context, rdb redis.UniversalClient, key string) (*redis.Client, error) {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		node, err := c.MasterForKey(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("cannot find the primary of key %q: %w", key, err)
		}
		return node, nil
	case *redis.Client:
		return c, nil
	}
	return nil, fmt.Errorf("config: PrimaryForKey: a %T is not a client NewRedis returns", rdb)
}

// ParseRedisURL reads s in the form of its kind (RedisSingleForm,
// RedisClusterForm or RedisSentinelForm) and returns the options for
// redis.NewUniversalClient, with IsClusterMode set for Cluster and
// MasterName for Sentinel, and the kind. Options that would read from
// replicas are refused, and so are unix:// URLs.
//
// The error names the form s was read as, and contains neither the
// password of s nor its password= parameters.
func ParseRedisURL(s string) (*redis.UniversalOptions, RedisKind, error) {
	opts, kind, err := parseRedisURL(s)
	if err != nil {
		return nil, kind, errors.New(scrub(err.Error(), s))
	}
	return opts, kind, nil
}

func parseRedisURL(s string) (*redis.UniversalOptions, RedisKind, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, 0, notAURL(s, err, "; want one of the forms: "+allForms)
	}
	shown := redactURL(u)
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, 0, fmt.Errorf("config: the Redis URL %q has the scheme %q; want redis:// (or rediss:// for TLS) in one of the forms: %s", shown, u.Scheme, allForms)
	}
	kind := kindOf(u.Query())
	bad := func(format string, args ...any) error {
		return fmt.Errorf("config: the Redis URL %q is not a valid %s (form %s): %s",
			shown, kind.urlName(), kind.Form(), fmt.Sprintf(format, args...))
	}

	opts := &redis.UniversalOptions{}
	switch kind {
	case RedisSingle:
		o, err := redis.ParseURL(s)
		if err != nil {
			return nil, kind, bad("%v", unwrapURLError(err))
		}
		if err := copyOptions(opts, o, "Addr", "Network"); err != nil {
			return nil, kind, bad("%v", err)
		}
		opts.Addrs = []string{o.Addr}
	case RedisCluster:
		switch strings.Trim(u.Path, "/") {
		case "", "0":
		default:
			return nil, kind, bad("a cluster has only database 0, and the URL names %q", u.Path)
		}
		o, err := redis.ParseClusterURL(s)
		if err != nil {
			return nil, kind, bad("%v", unwrapURLError(err))
		}
		if err := copyOptions(opts, o); err != nil {
			return nil, kind, bad("%v", err)
		}
		opts.IsClusterMode = true
	case RedisSentinel:
		o, err := redis.ParseFailoverURL(s)
		if err != nil {
			return nil, kind, bad("%v", unwrapURLError(err))
		}
		if o.MasterName == "" {
			return nil, kind, bad("master_name is empty")
		}
		if o.ReplicaOnly {
			return nil, kind, bad("replica_only: the gateway reads its own writes, from the primary only")
		}
		if err := copyOptions(opts, o, "SentinelAddrs", "ReplicaOnly"); err != nil {
			return nil, kind, bad("%v", err)
		}
		opts.Addrs = o.SentinelAddrs
	}
	if err := checkPrimaryOnly(opts); err != nil {
		return nil, kind, bad("%v", err)
	}
	return opts, kind, nil
}

// kindOf tells the kind of deployment from the query of its URL.
func kindOf(q url.Values) RedisKind {
	switch {
	case q.Has("master_name"):
		return RedisSentinel
	case q.Has("addr"):
		return RedisCluster
	}
	return RedisSingle
}

// notAURL is the error for s, which url.Parse refused with err. The details
// of url.Parse quote pieces of the URL (url.Error all of it): they are kept
// only when s holds no password.
func notAURL(s string, err error, hint string) error {
	detail := unwrapURLError(err).Error()
	if len(secrets(s)) > 0 {
		detail = "details withheld: the URL holds a password"
	}
	return fmt.Errorf("config: the Redis URL is not a URL (%s)%s", detail, hint)
}

// checkPrimaryOnly refuses options that send reads to replicas.
func checkPrimaryOnly(o *redis.UniversalOptions) error {
	var set []string
	if o.ReadOnly {
		set = append(set, "read_only")
	}
	if o.RouteByLatency {
		set = append(set, "route_by_latency")
	}
	if o.RouteRandomly {
		set = append(set, "route_randomly")
	}
	if len(set) > 0 {
		return fmt.Errorf("%s would read from replicas; the gateway reads its own writes, from primaries only", strings.Join(set, ", "))
	}
	return nil
}

// urlParams names the URL parameters of option fields that have no place
// in redis.UniversalOptions, for errors.
var urlParams = map[string]string{
	"UseDisconnectedReplicas": "use_disconnected_replicas",
}

// copyOptions copies every exported field of *src (a go-redis options
// struct) into the field of the same name and type of dst, except the
// fields named in skip, which the caller maps. A field that is set in src
// and has no counterpart in dst is an error: a URL parameter the universal
// client cannot honour must not be dropped silently.
func copyOptions(dst *redis.UniversalOptions, src any, skip ...string) error {
	sv := reflect.ValueOf(src).Elem()
	dv := reflect.ValueOf(dst).Elem()
	st := sv.Type()
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		if !f.IsExported() || containsString(skip, f.Name) {
			continue
		}
		v := sv.Field(i)
		if d := dv.FieldByName(f.Name); d.IsValid() && d.Type() == f.Type && d.CanSet() {
			d.Set(v)
			continue
		}
		if !v.IsZero() {
			name := f.Name
			if p, ok := urlParams[name]; ok {
				name = p
			}
			return fmt.Errorf("%s is not supported", name)
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// unwrapURLError drops the *url.Error around err, which repeats the whole
// URL, password included.
func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// redactURL returns u with its password and the values of its
// password-like parameters replaced by "xxxxx".
func redactURL(u *url.URL) string {
	r := *u
	if r.User != nil {
		if _, ok := r.User.Password(); ok {
			r.User = url.UserPassword(r.User.Username(), "xxxxx")
		}
	}
	if r.RawQuery != "" {
		parts := strings.Split(r.RawQuery, "&")
		for i, p := range parts {
			if k, _, ok := strings.Cut(p, "="); ok && isSecretParam(k) {
				parts[i] = k + "=xxxxx"
			}
		}
		r.RawQuery = strings.Join(parts, "&")
	}
	r.Fragment, r.RawFragment = "", ""
	return r.String()
}

func isSecretParam(k string) bool {
	if uk, err := url.QueryUnescape(k); err == nil {
		k = uk
	}
	return strings.Contains(strings.ToLower(k), "password")
}

// secrets returns the strings of s that may be passwords: the password of
// its user info and the values of its password-like parameters, raw and
// unescaped. It does not need s to parse as a URL.
func secrets(s string) []string {
	var out []string
	add := func(v string) {
		if v == "" {
			return
		}
		out = append(out, v)
		if uv, err := url.PathUnescape(v); err == nil && uv != v && uv != "" {
			out = append(out, uv)
		}
		if uv, err := url.QueryUnescape(v); err == nil && uv != v && uv != "" {
			out = append(out, uv)
		}
	}
	rest := s
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	// The user info ends at the last @ before the path or the query; with
	// a stray / or ? in a password the end is uncertain, so try both.
	for _, auth := range []string{rest, cutAny(rest, "/?#")} {
		if i := strings.LastIndex(auth, "@"); i >= 0 {
			if _, pw, ok := strings.Cut(auth[:i], ":"); ok {
				add(pw)
			}
		}
	}
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			add(pw)
		}
	}
	if _, query, ok := strings.Cut(s, "?"); ok {
		for _, kv := range strings.FieldsFunc(query, func(r rune) bool { return r == '&' || r == ';' || r == '#' }) {
			if k, v, ok := strings.Cut(kv, "="); ok && isSecretParam(k) {
				add(v)
			}
		}
	}
	return out
}

func cutAny(s, chars string) string {
	if i := strings.IndexAny(s, chars); i >= 0 {
		return s[:i]
	}
	return s
}

// scrub removes from msg every password that s (the URL msg is about)
// holds. A password too short to replace without mangling the message
// replaces the whole message.
func scrub(msg, s string) string {
	for _, pw := range secrets(s) {
		if !strings.Contains(msg, pw) {
			continue
		}
		if len(pw) < 4 {
			return "config: the Redis URL is not valid (details withheld: they would show a password)"
		}
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
	}
	return msg
}
