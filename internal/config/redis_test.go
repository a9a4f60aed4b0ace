package config

import (
	"context"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestParseRedisURL(t *testing.T) {
	tests := []struct {
		url  string
		kind RedisKind
		// want checks the fields that matter; zero fields are not checked
		// unless named in zero.
		want redis.UniversalOptions
		tls  bool
	}{
		{
			url:  "redis://127.0.0.1:6379/0",
			kind: RedisSingle,
			want: redis.UniversalOptions{Addrs: []string{"127.0.0.1:6379"}},
		},
		{
			url:  "redis://gw:s3cret@redis.example:6380/3?dial_timeout=3s&pool_size=7",
			kind: RedisSingle,
			want: redis.UniversalOptions{Addrs: []string{"redis.example:6380"}, Username: "gw", Password: "s3cret", DB: 3, DialTimeout: 3 * time.Second, PoolSize: 7},
		},
		{
			url:  "redis://:s3cret@redis.example",
			kind: RedisSingle,
			want: redis.UniversalOptions{Addrs: []string{"redis.example:6379"}, Password: "s3cret"},
		},
		{
			url:  "rediss://redis.example:6380/1",
			kind: RedisSingle,
			want: redis.UniversalOptions{Addrs: []string{"redis.example:6380"}, DB: 1},
			tls:  true,
		},
		{
			url:  "redis://127.0.0.1:7101?addr=127.0.0.1:7102&addr=127.0.0.1:7103",
			kind: RedisCluster,
			want: redis.UniversalOptions{Addrs: []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"}, IsClusterMode: true},
		},
		{
			url:  "redis://gw:s3cret@10.0.0.1:7000/?addr=10.0.0.2:7000&max_redirects=5&read_timeout=2s",
			kind: RedisCluster,
			want: redis.UniversalOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, Username: "gw", Password: "s3cret", MaxRedirects: 5, ReadTimeout: 2 * time.Second, IsClusterMode: true},
		},
		{
			url:  "redis://10.0.0.1:7000/0?addr=10.0.0.2:7000",
			kind: RedisCluster,
			want: redis.UniversalOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, IsClusterMode: true},
		},
		{
			url:  "redis://127.0.0.1:7211?master_name=gw&addr=127.0.0.1:7212&addr=127.0.0.1:7213",
			kind: RedisSentinel,
			want: redis.UniversalOptions{Addrs: []string{"127.0.0.1:7211", "127.0.0.1:7212", "127.0.0.1:7213"}, MasterName: "gw"},
		},
		{
			url:  "redis://sent:sentpw@s1:26379/2?master_name=mymaster&addr=s2:26379&username=gw&password=datapw&pool_size=9",
			kind: RedisSentinel,
			want: redis.UniversalOptions{Addrs: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster", DB: 2, SentinelUsername: "sent", SentinelPassword: "sentpw", Username: "gw", Password: "datapw", PoolSize: 9},
		},
		{
			url:  "redis://s1?master_name=gw",
			kind: RedisSentinel,
			want: redis.UniversalOptions{Addrs: []string{"s1:6379"}, MasterName: "gw"},
		},
	}
	for _, tt := range tests {
		opts, kind, err := ParseRedisURL(tt.url)
		if err != nil {
			t.Errorf("ParseRedisURL(%q) = %v", tt.url, err)
			continue
		}
		if kind != tt.kind {
			t.Errorf("ParseRedisURL(%q) kind = %v, want %v", tt.url, kind, tt.kind)
		}
		if (opts.TLSConfig != nil) != tt.tls {
			t.Errorf("ParseRedisURL(%q) TLS = %v, want %v", tt.url, opts.TLSConfig != nil, tt.tls)
		}
		got := *opts
		got.TLSConfig = nil
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseRedisURL(%q) =\n%+v\nwant\n%+v", tt.url, got, tt.want)
		}
	}
}

func TestParseRedisURLErrors(t *testing.T) {
	tests := []struct {
		url string
		// want are pieces the error must hold; it must hold none of the
		// strings in secret.
		want   []string
		secret []string
	}{
		{"", []string{"one server", "Cluster", "Sentinel"}, nil},
		{"unix:///run/redis.sock", []string{`scheme "unix"`, RedisSingleForm}, nil},
		{"http://u:hunter22@h:1", []string{`scheme "http"`, "u:xxxxx@h:1"}, []string{"hunter22"}},
		{"redis://u:hunter22@h:1/abc", []string{"URL of one Redis server", RedisSingleForm, "u:xxxxx@h:1/abc"}, []string{"hunter22"}},
		{"redis://h:1/notadb", []string{"URL of one Redis server", "database"}, nil},
		{"redis://h:1/0?bogus=1&password=hunter22", []string{"unexpected option", "password=xxxxx"}, []string{"hunter22"}},
		{"redis://u:hunter22@h:7101?addr=h2", []string{"Redis Cluster URL", RedisClusterForm, "addr"}, []string{"hunter22"}},
		{"redis://h:7101/3?addr=h2:7101", []string{"Redis Cluster URL", "database 0"}, nil},
		{"redis://h:7101?addr=h2:7101&read_only=true", []string{"Redis Cluster URL", "read_only", "primaries only"}, nil},
		{"redis://h:7101?addr=h2:7101&route_randomly=true", []string{"route_randomly"}, nil},
		{"redis://h:7101?addr=h2:7101&db=2", []string{"Redis Cluster URL", "db"}, nil},
		{"redis://s:sentinelpw@h:26379?master_name=&addr=h2:26379", []string{"Redis Sentinel URL", RedisSentinelForm, "master_name is empty"}, []string{"sentinelpw"}},
		{"redis://h:26379?master_name=gw&route_by_latency=true", []string{"Redis Sentinel URL", "route_by_latency"}, nil},
		{"redis://h:26379?master_name=gw&replica_only=true", []string{"replica_only"}, nil},
		{"redis://h:26379?master_name=gw&use_disconnected_replicas=true", []string{"use_disconnected_replicas"}, nil},
		{"redis://h:26379?master_name=gw&password=datapass1&pool_size=lots", []string{"Redis Sentinel URL", "pool_size"}, []string{"datapass1"}},
		{"redis://u:pa%zzword@h:1", []string{"not a URL", "withheld"}, []string{"pa%zzword", "%zz"}},
		{"redis://u:p@h:1/x", []string{"withheld"}, []string{"u:p@"}},
		{"redis://h:1\x7f", []string{"not a URL", "invalid control character"}, nil},
	}
	for _, tt := range tests {
		_, _, err := ParseRedisURL(tt.url)
		if err == nil {
			t.Errorf("ParseRedisURL(%q) = nil error, want one", tt.url)
			continue
		}
		msg := err.Error()
		for _, w := range tt.want {
			if !strings.Contains(msg, w) {
				t.Errorf("ParseRedisURL(%q) = %q, want it to contain %q", tt.url, msg, w)
			}
		}
		for _, s := range tt.secret {
			if strings.Contains(msg, s) {
				t.Errorf("ParseRedisURL(%q) = %q, which shows %q", tt.url, msg, s)
			}
		}
	}
}

func TestNewRedisKinds(t *testing.T) {
	tests := []struct {
		url     string
		cluster bool
	}{
		{"redis://127.0.0.1:6379/0", false},
		{"redis://127.0.0.1:7101?addr=127.0.0.1:7102", true},
		{"redis://127.0.0.1:7211?master_name=gw&addr=127.0.0.1:7212", false},
	}
	for _, tt := range tests {
		c := Common{RedisURL: tt.url}
		var seen *redis.UniversalOptions
		rdb, err := c.NewRedis(func(o *redis.UniversalOptions) {
			o.PoolSize = 3
			o.DialTimeout = time.Second
			seen = o
		})
		if err != nil {
			t.Fatalf("NewRedis(%q) = %v", tt.url, err)
		}
		if got := IsCluster(rdb); got != tt.cluster {
			t.Errorf("IsCluster(NewRedis(%q)) = %v, want %v", tt.url, got, tt.cluster)
		}
		if seen == nil || seen.MaintNotificationsConfig == nil || seen.MaintNotificationsConfig.Mode != "disabled" {
			t.Errorf("NewRedis(%q): maintenance notifications not disabled: %+v", tt.url, seen)
		}
		if !tt.cluster {
			if _, ok := rdb.(*redis.Client); !ok {
				t.Errorf("NewRedis(%q) = %T, want *redis.Client", tt.url, rdb)
			}
			p, err := PrimaryForKey(context.Background(), rdb, "{x}k")
			if err != nil || p != rdb {
				t.Errorf("PrimaryForKey(NewRedis(%q)) = %v, %v; want the client itself", tt.url, p, err)
			}
		}
		rdb.Close()
	}
}

func TestNewRedisTuneCannotChangeTheForm(t *testing.T) {
	tunes := map[string]func(*redis.UniversalOptions){
		"addrs":      func(o *redis.UniversalOptions) { o.Addrs = append(o.Addrs, "10.0.0.9:6379") },
		"master":     func(o *redis.UniversalOptions) { o.MasterName = "other" },
		"cluster":    func(o *redis.UniversalOptions) { o.IsClusterMode = true },
		"read only":  func(o *redis.UniversalOptions) { o.ReadOnly = true },
		"by latency": func(o *redis.UniversalOptions) { o.RouteByLatency = true },
	}
	for name, tune := range tunes {
		c := Common{RedisURL: "redis://127.0.0.1:6379/0"}
		if rdb, err := c.NewRedis(tune); err == nil {
			rdb.Close()
			t.Errorf("NewRedis with a tune that changes %s = nil error, want one", name)
		}
	}
	c := Common{RedisURL: "redis://u:hunter22@127.0.0.1:7101?addr=nope"}
	_, err := c.NewRedis(nil)
	if err == nil || !strings.Contains(err.Error(), "GW_REDIS_URL") || strings.Contains(err.Error(), "hunter22") {
		t.Errorf("NewRedis(bad URL) = %v, want an error naming GW_REDIS_URL without the password", err)
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redis://u:pw@h:1/0", "redis://u:xxxxx@h:1/0"},
		{"redis://h:1?master_name=gw&password=pw&addr=h2:1", "redis://h:1?master_name=gw&password=xxxxx&addr=h2:1"},
		{"redis://h:1?sentinel_password=pw", "redis://h:1?sentinel_password=xxxxx"},
		{"redis://u@h:1", "redis://u@h:1"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactURL(u); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzRedisURL checks that parsing never panics, that a parsed URL has the
// shape of its kind, and that an error never shows a password of the URL.
func FuzzRedisURL(f *testing.F) {
	for _, s := range []string{
		"redis://127.0.0.1:6379/0",
		"redis://u:hunter22@h:1/0?dial_timeout=1s",
		"rediss://h:6380",
		"redis://127.0.0.1:7101?addr=127.0.0.1:7102&addr=127.0.0.1:7103",
		"redis://s:sentpw@h:26379/1?master_name=gw&addr=h2:26379&password=datapw",
		"unix:///tmp/redis.sock",
		"redis://[::1]:6379?addr=[::1]:6380",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		opts, kind, err := ParseRedisURL(s)
		if err != nil {
			msg := err.Error()
			for _, pw := range secrets(s) {
				// A password of x's may meet the xxxxx that replaced another.
				if len(pw) >= 4 && !strings.Contains(pw, "xx") && strings.Contains(msg, pw) {
					t.Fatalf("ParseRedisURL(%q) = %q, which shows the password %q", s, msg, pw)
				}
			}
			return
		}
		switch kind {
		case RedisSingle:
			if len(opts.Addrs) != 1 || opts.MasterName != "" || opts.IsClusterMode {
				t.Fatalf("ParseRedisURL(%q) = one server with %+v", s, opts)
			}
		case RedisCluster:
			if len(opts.Addrs) < 2 || opts.MasterName != "" || !opts.IsClusterMode {
				t.Fatalf("ParseRedisURL(%q) = Cluster with %+v", s, opts)
			}
		case RedisSentinel:
			if len(opts.Addrs) < 1 || opts.MasterName == "" || opts.IsClusterMode {
				t.Fatalf("ParseRedisURL(%q) = Sentinel with %+v", s, opts)
			}
		default:
			t.Fatalf("ParseRedisURL(%q) kind = %v", s, kind)
		}
		if opts.ReadOnly || opts.RouteByLatency || opts.RouteRandomly {
			t.Fatalf("ParseRedisURL(%q) reads from replicas: %+v", s, opts)
		}
	})
}
