// Package auth mints and verifies the gateway's tokens (DESIGN §9): JWTs
// signed with HS256 and GW_AUTH_SECRET, carrying the identity (sub), its
// role and, for clients, the glob patterns of the devices it may command.
// Any other algorithm is refused, "none" included. The same token serves
// HTTP (Authorization: Bearer) and MQTT (password).
package auth

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotgw/gateway/protocol"
)

// Role is what a token's identity may do.
type Role string

// The roles.
const (
	RoleClient   Role = "client"
	RoleDevice   Role = "device"
	RoleOperator Role = "operator"
)

// MinSecretLen is the shortest secret a service accepts: 32 bytes, the
// size of HS256's hash. A shorter one can be guessed offline from any
// token (an HMAC key is only as strong as it is long).
const MinSecretLen = 32

// CheckSecret refuses a secret shorter than MinSecretLen, and the
// placeholders of the deployment files ("change-me…"), without printing
// it.
func CheckSecret(secret string) error {
	if n := len(secret); n < MinSecretLen {
		return fmt.Errorf("GW_AUTH_SECRET is %d bytes long, want at least %d (for example: openssl rand -hex 32)", n, MinSecretLen)
	}
	if strings.Contains(strings.ToLower(secret), "change-me") {
		return errors.New("GW_AUTH_SECRET is still the deployment files' placeholder: set a random one (for example: openssl rand -hex 32)")
	}
	return nil
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r == RoleClient || r == RoleDevice || r == RoleOperator }

// Errors of Verify; each wraps the library's reason.
var (
	ErrMissing   = errors.New("auth: no token")
	ErrMalformed = errors.New("auth: malformed token")
	ErrSignature = errors.New("auth: bad signature or algorithm")
	ErrExpired   = errors.New("auth: token expired")
	ErrClaims    = errors.New("auth: invalid claims")
	ErrNoSecret  = errors.New("auth: GW_AUTH_SECRET is not set")
)

// Claims are the gateway's token claims.
type Claims struct {
	Role    Role     `json:"role"`
	Devices []string `json:"devices,omitempty"`
	jwt.RegisteredClaims
}

// Identity returns the token's subject.
func (c *Claims) Identity() string { return c.Subject }

// Expires returns the expiry of the token.
func (c *Claims) Expires() time.Time {
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// MayCommand reports whether the token may send commands to device: an
// operator may command any device, a client those its globs match.
func (c *Claims) MayCommand(device string) bool {
	switch c.Role {
	case RoleOperator:
		return true
	case RoleClient:
		for _, g := range c.Devices {
			if ok, err := path.Match(g, device); err == nil && ok {
				return true
			}
		}
	}
	return false
}

// Mint signs a token for identity with role, device globs (clients only)
// and a lifetime.
func Mint(secret []byte, identity string, role Role, devices []string, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", ErrNoSecret
	}
	if err := protocol.CheckIdentity(identity); err != nil {
		return "", fmt.Errorf("cannot mint token: %w", err)
	}
	if !role.Valid() {
		return "", fmt.Errorf("cannot mint token: %w: role %q", ErrClaims, role)
	}
	for _, g := range devices {
		if _, err := path.Match(g, ""); err != nil {
			return "", fmt.Errorf("cannot mint token: %w: bad glob %q", ErrClaims, g)
		}
	}
	now := time.Now()
	c := Claims{Role: role, Devices: devices, RegisteredClaims: jwt.RegisteredClaims{
		Subject:   identity,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("cannot mint token: %w", err)
	}
	return s, nil
}

// DefaultCacheSize is how many verified tokens a Verifier remembers.
const DefaultCacheSize = 10000

// Verifier checks tokens with one secret. It remembers tokens it has
// verified (see Verify), so it is meant to be shared.
type Verifier struct {
	secret []byte
	parser *jwt.Parser
	now    func() time.Time
	cache  tokenCache
}

// NewVerifier returns a verifier for secret that remembers up to
// DefaultCacheSize verified tokens; ErrNoSecret when secret is empty.
func NewVerifier(secret []byte) (*Verifier, error) {
	return newVerifier(secret, DefaultCacheSize, time.Now)
}

// NewVerifierSize is NewVerifier remembering up to cacheSize verified
// tokens; 0 remembers none (for a caller that verifies each token once,
// such as the push server at a CONNECT).
func NewVerifierSize(secret []byte, cacheSize int) (*Verifier, error) {
	return newVerifier(secret, cacheSize, time.Now)
}

func newVerifier(secret []byte, cacheSize int, now func() time.Time) (*Verifier, error) {
	if len(secret) == 0 {
		return nil, ErrNoSecret
	}
	return &Verifier{
		secret: secret,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(0), jwt.WithTimeFunc(now)),
		now:    now,
		cache:  tokenCache{max: cacheSize},
	}, nil
}

// Verify parses token and checks its algorithm (HS256 only), signature,
// expiry, subject (a valid identity), role and globs.
//
// A token that passed every check is remembered by its exact string
// until it expires (at most DefaultCacheSize tokens, the least recently
// used forgotten first): verifying it again checks only its expiry, which
// is the only check whose answer changes with time (a not-before time, once
// passed, stays passed). The claims returned are the caller's own copy.
func (v *Verifier) Verify(token string) (*Claims, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, ErrMissing
	}
	now := v.now()
	if c := v.cache.get(token, now); c != nil {
		cp := *c
		return &cp, nil
	}
	var c Claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.secret, nil })
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, fmt.Errorf("%w: %w", ErrExpired, err)
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	default:
		return nil, fmt.Errorf("%w: %w", ErrClaims, err)
	}
	if !protocol.ValidIdentity(c.Subject) {
		return nil, fmt.Errorf("%w: sub %q is not a valid identity", ErrClaims, c.Subject)
	}
	if !c.Role.Valid() {
		return nil, fmt.Errorf("%w: role %q", ErrClaims, c.Role)
	}
	for _, g := range c.Devices {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("%w: bad glob %q", ErrClaims, g)
		}
	}
	cached := c
	v.cache.put(token, &cached)
	return &c, nil
}

// tokenCache remembers verified tokens in two generations: hits in the
// older one move to the current one, and when the current one is full
// the older one is dropped. So it holds at most max tokens, and the ones
// dropped are those not used for the longest (approximately: a
// generation at a time).
type tokenCache struct {
	max int

	mu       sync.RWMutex
	cur, old map[string]*Claims
}

// get returns the claims of token if it was verified and has not
// expired at now.
func (tc *tokenCache) get(token string, now time.Time) *Claims {
	if tc.max <= 0 {
		return nil
	}
	tc.mu.RLock()
	c, inCur := tc.cur[token]
	if !inCur {
		c = tc.old[token]
	}
	tc.mu.RUnlock()
	if c == nil {
		return nil
	}
	if !now.Before(c.ExpiresAt.Time) {
		// Expired, by jwt's rule without leeway (valid while now < exp):
		// the full check answers ErrExpired.
		tc.mu.Lock()
		delete(tc.cur, token)
		delete(tc.old, token)
		tc.mu.Unlock()
		return nil
	}
	if !inCur {
		tc.put(token, c)
	}
	return c
}

// put remembers the claims of a verified token (ExpiresAt set).
func (tc *tokenCache) put(token string, c *Claims) {
	if tc.max <= 0 || c.ExpiresAt == nil {
		return
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	half := max(1, tc.max/2)
	if tc.cur == nil || len(tc.cur) >= half {
		tc.old, tc.cur = tc.cur, make(map[string]*Claims, half)
	}
	tc.cur[token] = c
	delete(tc.old, token)
}

// BearerToken returns the token of an Authorization header value, or ""
// when it is not "Bearer <token>".
func BearerToken(header string) string {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}
