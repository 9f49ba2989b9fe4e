package pgsecrets

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Credentials are what a secret yields for one login. Printing them never
// shows the password.
type Credentials struct {
	Username string
	Password Secret
	// Host, Port and DBName are used only where the DSN leaves them out.
	Host   string
	Port   uint16
	DBName string
	// VersionID and Stage identify the secret version the credentials came
	// from; they appear in logs and errors.
	VersionID string
	Stage     string
	// CreatedAt is when the version was created, if the store says; it
	// tells which of two versions is newer.
	CreatedAt time.Time
}

// same reports whether two credentials would log in the same way.
func (c *Credentials) same(o *Credentials) bool {
	return c != nil && o != nil && c.Username == o.Username && c.Password.Equal(o.Password) &&
		c.Host == o.Host && c.Port == o.Port && c.DBName == o.DBName
}

// Provider fetches credentials from a secret store. pgsecrets calls it from
// its cache with a context that carries a deadline: once at a time per
// secret and stage, except that a call that has not answered after a
// moment (about four times the usual duration, at most 800 ms) gets a
// second one beside it, and at most two are ever in flight per secret.
// Fetch must therefore be safe for concurrent use and honour ctx.
//
// Fetch returns the credentials at the given version stage. Errors should
// be *SecretError values wrapping ErrSecretNotFound, ErrAccessDenied,
// ErrMalformedSecret or ErrStoreUnavailable; any other error is treated as
// ErrStoreUnavailable.
type Provider interface {
	Fetch(ctx context.Context, stage string) (*Credentials, error)
}

// maxSecretSize is Secrets Manager's limit on a SecretString.
const maxSecretSize = 65536

// ParseSecret decodes a secret in the JSON format AWS uses for RDS
// secrets: "username" and "password" (strings, required, names changeable
// with usernameKey and passwordKey), "host", "dbname" (strings) and "port"
// (number or string), all optional; other fields are ignored. Errors wrap
// ErrMalformedSecret, name the field, and never contain a value.
func ParseSecret(secretID, data, usernameKey, passwordKey string) (*Credentials, error) {
	bad := func(field, detail string) error {
		return &SecretError{Kind: ErrMalformedSecret, SecretID: secretID, Field: field, Detail: detail,
			Hint: fmt.Sprintf("the secret must be a JSON object with string fields %q and %q (the RDS secret format)", usernameKey, passwordKey)}
	}
	if len(data) > maxSecretSize {
		return nil, bad("", fmt.Sprintf("SecretString is %d bytes, over the store's limit of %d", len(data), maxSecretSize))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(data), &m); err != nil || m == nil {
		// json's error messages can quote the input; report only that it
		// is not a JSON object.
		return nil, bad("", "SecretString is not a JSON object")
	}
	str := func(key string, required bool) (string, error) {
		raw, ok := m[key]
		if !ok || string(raw) == "null" {
			if required {
				return "", bad(key, "missing")
			}
			return "", nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", bad(key, "must be a string")
		}
		if required && s == "" {
			return "", bad(key, "empty")
		}
		return s, nil
	}
	c := &Credentials{}
	var err error
	if c.Username, err = str(usernameKey, true); err != nil {
		return nil, err
	}
	pw, err := str(passwordKey, true)
	if err != nil {
		return nil, err
	}
	c.Password = NewSecret(pw)
	if c.Host, err = str("host", false); err != nil {
		return nil, err
	}
	if c.DBName, err = str("dbname", false); err != nil {
		return nil, err
	}
	if raw, ok := m["port"]; ok && string(raw) != "null" {
		var n json.Number
		var s string
		switch {
		case json.Unmarshal(raw, &n) == nil:
			s = n.String()
		case json.Unmarshal(raw, &s) == nil:
		default:
			return nil, bad("port", "must be a number or a string")
		}
		if s != "" {
			p, err := strconv.ParseFloat(s, 64)
			if err != nil || p != math.Trunc(p) || p < 1 || p > 65535 {
				return nil, bad("port", "must be a whole number between 1 and 65535")
			}
			c.Port = uint16(p)
		}
	}
	return c, nil
}
