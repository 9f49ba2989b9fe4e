package pgsecrets

import (
	"fmt"
	"io"
	"log/slog"
)

// redacted is what every printing path of a Secret shows.
const redacted = "[REDACTED]"

// Secret holds a password. Every way Go has of printing or encoding a value
// (fmt verbs, %#v, JSON, slog) shows [REDACTED]; only Reveal returns the
// value. pgsecrets calls it where the value must leave the Secret: to hand
// it to the engine that logs in (lib/pq in engine.go, pgx in pgxsecrets),
// and to compare two values (Equal; the env provider's check for a changed
// variable).
//
// The zero Secret is empty.
type Secret struct {
	// A pointer to an unexported struct keeps %#v and reflection-based
	// printers (which ignore String and GoString on nested fields) from
	// reaching the bytes: they print the pointer, not the string.
	p *secretValue
}

type secretValue struct{ s string }

// NewSecret wraps s.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{p: &secretValue{s: s}}
}

// Reveal returns the wrapped value. Call it only to hand the value to the
// component that needs it, never to log or format it.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return s.p.s
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.p == nil || s.p.s == "" }

// Equal reports whether two secrets hold the same value.
func (s Secret) Equal(o Secret) bool { return s.Reveal() == o.Reveal() }

// String returns [REDACTED].
func (s Secret) String() string { return redacted }

// GoString returns [REDACTED], so %#v does not print the value either.
func (s Secret) GoString() string { return redacted }

// Format prints [REDACTED] for every verb; %q quotes it.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		_, _ = io.WriteString(f, `"`+redacted+`"`)
		return
	}
	_, _ = io.WriteString(f, redacted)
}

// MarshalJSON encodes the secret as the string "[REDACTED]".
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText encodes the secret as [REDACTED] (used by encoders such as
// encoding/xml and slog's text handler).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue makes slog print [REDACTED].
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

func (v *secretValue) String() string   { return redacted }
func (v *secretValue) GoString() string { return redacted }
func (v *secretValue) Format(f fmt.State, verb rune) {
	Secret{}.Format(f, verb)
}
