package auth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("test-secret")

func TestVerify(t *testing.T) {
	good, err := Mint(secret, "app-1", RoleClient, []string{"dev-*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := Mint(secret, "app-1", RoleClient, nil, -time.Minute)
	wrong, _ := Mint([]byte("other"), "app-1", RoleClient, nil, time.Hour)
	noneTok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"app-1","role":"client","exp":9999999999}`)) + "."
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"sub": "app-1", "role": "client", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "app-1", "role": "client"}).SignedString(secret)
	badRole, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "app-1", "role": "root", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	badSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "a/b", "role": "client", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	// An RS256 header over an HMAC signature: algorithm confusion must fail.
	parts := strings.Split(good, ".")
	rs256 := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2]

	v, err := NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"good", good, nil},
		{"missing", "", ErrMissing},
		{"garbage", "not-a-token", ErrMalformed},
		{"expired", expired, ErrExpired},
		{"wrong secret", wrong, ErrSignature},
		{"alg none", noneTok, ErrSignature},
		{"alg HS512", hs512, ErrSignature},
		{"alg RS256", rs256, ErrSignature},
		{"no exp", noExp, ErrClaims},
		{"bad role", badRole, ErrClaims},
		{"bad sub", badSub, ErrClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want nil", err)
				}
				if c.Identity() != "app-1" || c.Role != RoleClient {
					t.Fatalf("claims = %+v, want app-1/client", c)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestMayCommand(t *testing.T) {
	tests := []struct {
		role   Role
		globs  []string
		device string
		want   bool
	}{
		{RoleClient, []string{"dev-*"}, "dev-1", true},
		{RoleClient, []string{"dev-*"}, "pump-1", false},
		{RoleClient, []string{"pump-?", "dev-1"}, "pump-7", true},
		{RoleClient, nil, "dev-1", false},
		{RoleDevice, []string{"*"}, "dev-1", false},
		{RoleOperator, nil, "anything", true},
	}
	for _, tt := range tests {
		c := &Claims{Role: tt.role, Devices: tt.globs}
		if got := c.MayCommand(tt.device); got != tt.want {
			t.Errorf("%s %v MayCommand(%q) = %v, want %v", tt.role, tt.globs, tt.device, got, tt.want)
		}
	}
}

func TestMintRefuses(t *testing.T) {
	if _, err := Mint(nil, "a", RoleClient, nil, time.Hour); !errors.Is(err, ErrNoSecret) {
		t.Errorf("Mint without secret = %v, want ErrNoSecret", err)
	}
	if _, err := Mint(secret, "a:b", RoleClient, nil, time.Hour); err == nil {
		t.Errorf("Mint with bad identity = nil, want error")
	}
	if _, err := Mint(secret, "a", "root", nil, time.Hour); !errors.Is(err, ErrClaims) {
		t.Errorf("Mint with bad role = %v, want ErrClaims", err)
	}
	if _, err := Mint(secret, "a", RoleClient, []string{"["}, time.Hour); !errors.Is(err, ErrClaims) {
		t.Errorf("Mint with bad glob = %v, want ErrClaims", err)
	}
}

func TestBearerToken(t *testing.T) {
	for in, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "": ""} {
		if got := BearerToken(in); got != want {
			t.Errorf("BearerToken(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzVerify(f *testing.F) {
	good, _ := Mint(secret, "app-1", RoleClient, []string{"dev-*"}, time.Hour)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	v, _ := NewVerifier(secret)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if err == nil && (c == nil || !c.Role.Valid() || c.Identity() == "") {
			t.Fatalf("Verify(%q) accepted invalid claims %+v", tok, c)
		}
	})
}

// A verified token is remembered until it expires, and only tokens that
// passed every check are: a cached token whose exp has passed is refused
// like any expired token.
func TestVerifyCache(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	v, err := newVerifier(secret, 4, clock)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := Mint(secret, "app-1", RoleClient, []string{"dev-*"}, time.Minute)
	c1, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := v.Verify(" " + tok)
	if err != nil || c2.Identity() != "app-1" || c2.Role != RoleClient || len(c2.Devices) != 1 {
		t.Fatalf("cached Verify = %+v, %v", c2, err)
	}
	if c1 == c2 {
		t.Fatal("Verify returned the same *Claims twice: callers must get their own copy")
	}
	c2.Subject = "mallory"
	if c3, _ := v.Verify(tok); c3.Subject != "app-1" {
		t.Fatalf("a caller's change reached the cache: %q", c3.Subject)
	}

	// A token signed with another secret never matches a cached one.
	wrong, _ := Mint([]byte("other"), "app-1", RoleClient, nil, time.Minute)
	if _, err := v.Verify(wrong); !errors.Is(err, ErrSignature) {
		t.Fatalf("wrong secret = %v", err)
	}
	// Tampering with one character of a cached token is caught.
	sig := strings.LastIndexByte(tok, '.') + 1
	flip := byte('A')
	if tok[sig] == 'A' {
		flip = 'B'
	}
	tampered := tok[:sig] + string(flip) + tok[sig+1:]
	if _, err := v.Verify(tampered); err == nil {
		t.Fatal("a tampered token was accepted")
	}

	// exp is checked on every hit (jwt's rule: valid while now < exp).
	now = now.Add(time.Minute + time.Second)
	if _, err := v.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("cached token after exp = %v, want ErrExpired", err)
	}

	// The cache stays bounded: at most 4 tokens remembered.
	now = time.Now()
	for i := range 20 {
		tk, _ := Mint(secret, "app-"+string(rune('a'+i)), RoleClient, nil, time.Hour)
		if _, err := v.Verify(tk); err != nil {
			t.Fatal(err)
		}
		if n := len(v.cache.cur) + len(v.cache.old); n > 4 {
			t.Fatalf("cache holds %d tokens, want at most 4", n)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	tok, _ := Mint(secret, "app-1", RoleClient, []string{"dev-*"}, time.Hour)
	for _, size := range []int{0, DefaultCacheSize} {
		v, _ := newVerifier(secret, size, time.Now)
		b.Run(map[int]string{0: "uncached", DefaultCacheSize: "cached"}[size], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestCheckSecret(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, secret string
		want         string // a part of the error, "" for none
	}{
		{"empty", "", "0 bytes long"},
		{"one byte", "a", "1 bytes long"},
		{"31 bytes", strings.Repeat("x", 31), "31 bytes long"},
		{"32 bytes", strings.Repeat("x", 32), ""},
		{"k8s placeholder", "CHANGE-ME-to-a-long-random-string", "placeholder"},
		{"compose placeholder", "change-me-to-a-long-random-string", "placeholder"},
		{"random hex", "5f0c2a9d4b7e81f36a0d9c2b7e4f1a8c5d3b6e9f0a2c4d7e8b1f3a5c7d9e0b2f", ""},
	}
	for _, tt := range tests {
		err := CheckSecret(tt.secret)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: CheckSecret = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: CheckSecret = %v, want an error about %q", tt.name, err, tt.want)
		case err != nil && len(tt.secret) > 3 && strings.Contains(err.Error(), tt.secret):
			t.Errorf("%s: CheckSecret's error %q shows the secret", tt.name, err)
		}
	}
}
