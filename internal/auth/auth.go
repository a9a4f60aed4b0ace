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

// Verifier checks tokens with one secret.
type Verifier struct {
	secret []byte
	parser *jwt.Parser
}

// NewVerifier returns a verifier for secret; ErrNoSecret when it is empty.
func NewVerifier(secret []byte) (*Verifier, error) {
	if len(secret) == 0 {
		return nil, ErrNoSecret
	}
	return &Verifier{
		secret: secret,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(0)),
	}, nil
}

// Verify parses token and checks its algorithm (HS256 only), signature,
// expiry, subject (a valid identity), role and globs.
func (v *Verifier) Verify(token string) (*Claims, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, ErrMissing
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
	return &c, nil
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
