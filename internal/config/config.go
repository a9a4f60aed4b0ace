// Package config binds a service's configuration to command-line flags
// and to GW_* environment variables of the same names (DESIGN §9): the
// flag --amqp-url is the variable GW_AMQP_URL. A flag given on the command
// line wins over the variable, which wins over the documented default.
package config

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/gateway/internal/buildinfo"
)

// Defaults of the shared settings (DESIGN §9).
const (
	DefaultAMQPURL        = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultAMQPMgmtURL    = "http://guest:guest@127.0.0.1:15672"
	DefaultRedisURL       = "redis://127.0.0.1:6379/0"
	DefaultNamespace      = "gw"
	DefaultHTTPAddr       = "127.0.0.1:8080"
	DefaultMQTTAddr       = "127.0.0.1:1884"
	DefaultMetricsAddr    = "127.0.0.1:0"
	DefaultRetention      = 24 * time.Hour
	DefaultRate           = 1000
	DefaultBurst          = 2000
	DefaultBodyLimit      = 64 << 10
	DefaultConfirmTimeout = 5 * time.Second
	DefaultMailboxCap     = 10000
)

// EnvName returns the environment variable of a flag: "amqp-url" →
// "GW_AMQP_URL".
func EnvName(flagName string) string {
	return "GW_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Binder defines flags on a FlagSet whose values start from getenv.
// Errors in variables (an unparsable duration, say) are collected and
// returned by Parse, so a bad GW_* value stops the service with a clear
// message instead of being ignored. A flag's listed default (--help, and
// flag errors) is always the documented one, never a variable's value:
// variables carry secrets (GW_AUTH_SECRET, passwords in URLs) that must
// not be printed.
type Binder struct {
	FS      *flag.FlagSet
	Getenv  func(string) string
	errs    []error
	version bool
}

// ErrVersion is returned by Parse after --version printed the build
// (buildinfo) to the FlagSet's output. It wraps flag.ErrHelp, so a
// command that stops quietly after --help stops quietly after --version.
var ErrVersion = fmt.Errorf("config: version printed: %w", flag.ErrHelp)

// NewBinder returns a Binder for a command named name, with the flag
// --version.
func NewBinder(name string, getenv func(string) string) *Binder {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	b := &Binder{FS: fs, Getenv: getenv}
	fs.BoolVar(&b.version, "version", false, "print the module version, VCS commit and Go version, and exit")
	return b
}

func (b *Binder) env(name string) (string, bool) {
	if b.Getenv == nil {
		return "", false
	}
	v := b.Getenv(EnvName(name))
	return v, v != ""
}

func (b *Binder) usage(name, usage string) string {
	return usage + " (env " + EnvName(name) + ")"
}

// String binds a string setting.
func (b *Binder) String(p *string, name, def, usage string) {
	b.FS.StringVar(p, name, def, b.usage(name, usage))
	if v, ok := b.env(name); ok {
		*p = v
	}
}

// Duration binds a duration setting; the variable may be a Go duration
// ("30s") or whole seconds ("30").
func (b *Binder) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	b.FS.DurationVar(p, name, def, b.usage(name, usage))
	if v, ok := b.env(name); ok {
		d, err := ParseDuration(v)
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("%s: %w", EnvName(name), err))
		} else {
			*p = d
		}
	}
}

// Int binds an integer setting.
func (b *Binder) Int(p *int, name string, def int, usage string) {
	b.FS.IntVar(p, name, def, b.usage(name, usage))
	if v, ok := b.env(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("%s: %q is not an integer", EnvName(name), v))
		} else {
			*p = n
		}
	}
}

// Float binds a floating-point setting.
func (b *Binder) Float(p *float64, name string, def float64, usage string) {
	b.FS.Float64Var(p, name, def, b.usage(name, usage))
	if v, ok := b.env(name); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("%s: %q is not a number", EnvName(name), v))
		} else {
			*p = n
		}
	}
}

// Bytes binds a size setting written like "64KiB", "1MiB" or "65536".
func (b *Binder) Bytes(p *int64, name string, def int64, usage string) {
	*p = def
	if v, ok := b.env(name); ok {
		n, err := ParseBytes(v)
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("%s: %w", EnvName(name), err))
		} else {
			*p = n
		}
	}
	b.FS.Func(name, b.usage(name, usage)+fmt.Sprintf(" (default %d)", def), func(s string) error {
		n, err := ParseBytes(s)
		if err != nil {
			return err
		}
		*p = n
		return nil
	})
}

// Parse parses args and returns the first error of a flag or a variable.
// With --version it prints the build and returns ErrVersion (whatever
// the variables say: a bad GW_* value does not hide the version).
func (b *Binder) Parse(args []string) error {
	if err := b.FS.Parse(args); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}
	if b.version {
		fmt.Fprintln(b.FS.Output(), buildinfo.Read().String(b.FS.Name()))
		return ErrVersion
	}
	if len(b.errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", b.errs[0])
	}
	return nil
}

// ParseDuration accepts a Go duration ("1m30s") or whole seconds ("90").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(1<<62)/int64(time.Second) {
			return 0, fmt.Errorf("duration %q out of range", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a duration (30s) nor whole seconds", s)
	}
	return d, nil
}

// ParseBytes accepts a byte count with an optional unit: B, KB/KiB,
// MB/MiB, GB/GiB (both spellings mean powers of 1024).
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil || i == 0 {
		return 0, fmt.Errorf("%q is not a size like 64KiB", s)
	}
	mult := int64(1)
	switch strings.ToLower(strings.TrimSpace(s[i:])) {
	case "", "b":
	case "k", "kb", "kib":
		mult = 1 << 10
	case "m", "mb", "mib":
		mult = 1 << 20
	case "g", "gb", "gib":
		mult = 1 << 30
	default:
		return 0, fmt.Errorf("%q has an unknown unit", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
