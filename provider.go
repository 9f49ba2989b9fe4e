package pgsecrets

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/registry"
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

	// Expires is when a lease ends (a Vault lease: the database role is
	// dropped then): no connection made with the credentials may outlive
	// it. Zero for credentials that are not a lease. Leases are renewed
	// while in use (Leaser), replaced ahead of time, never handed to a new
	// connection within the expiry margin of their end, and every
	// connection made with them is closed before that margin (lease.go).
	Expires time.Time
	// LoginUntil is when a token stops being accepted for new logins (a
	// cloud IAM token): connections made with it live on, since PostgreSQL
	// checks it only at login. Zero for credentials that are not a token.
	// A token is fetched again in the background at 60–70% of its life and
	// never handed to a new connection within the expiry margin of its
	// end, even while the store is failing. A provider sets Expires or
	// LoginUntil, not both.
	LoginUntil time.Time
	// LeaseID identifies the lease the credentials belong to, for a
	// provider that implements Leaser; empty otherwise.
	LeaseID string
	// Renewable says whether Leaser.Renew can extend the lease.
	Renewable bool
	// RotatesAt, if set, is when the store will replace the credentials
	// by itself (a Vault static role's next rotation): they are fetched
	// again just after it. Connections made before stay open, since
	// PostgreSQL checks a password only at login.
	RotatesAt time.Time
}

// expiring reports whether the credentials have an end.
func (c *Credentials) expiring() bool { return c != nil && !c.Expires.IsZero() }

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

// Leaser is implemented by providers whose credentials are leases (Vault's
// dynamic database credentials). pgsecrets renews a lease while
// connections made with it are open and revokes it once a newer one serves
// new connections and the last of its connections has closed, or when the
// connector closes.
type Leaser interface {
	// Renew asks for the lease to be extended by increment and returns its
	// new end. A store that caps the lease (a maximum TTL) returns the
	// capped end; pgsecrets then stops renewing it and replaces it ahead
	// of time.
	Renew(ctx context.Context, c *Credentials, increment time.Duration) (time.Time, error)
	// Revoke ends the lease now (Vault drops the database role).
	Revoke(ctx context.Context, c *Credentials) error
}

// TTLDefaulter is implemented by providers whose store calls for another
// secret_ttl than DefaultTTL (the file provider: a check is one stat). It
// applies when the DSN does not set secret_ttl; a factory never edits the
// Config it is given.
type TTLDefaulter interface {
	DefaultTTL() time.Duration
}

// Staged is implemented by providers whose store keeps a rotation's new
// credentials under a stage of their own before the database accepts them
// (AWS Secrets Manager's AWSPENDING, which AWS's rotation writes before it
// changes the database). Recovery after a rejected login then tries that
// stage too, once the configured one has nothing better. Other providers
// (Vault, files, the environment) are only fetched again.
type Staged interface {
	// PendingStage names that stage.
	PendingStage() string
}

// CacheKeyer is implemented by providers whose connectors may share a
// credential cache: connectors in one process whose providers return the
// same key (and name the same secret) share one cache entry, one store call
// per refresh, and the same leases. A provider without it gets a cache of
// its own per connector.
type CacheKeyer interface {
	CacheKey() string
}

// Fact is one thing a provider or the cache knows about the credentials in
// use, for `pgsecrets check`: never a password, a token or a secret id.
type Fact struct {
	Name, Value string
}

// Describer is implemented by providers that can say where their
// credentials come from and how long they last (a token's TTL, a file's
// modification time). Describe must not fetch credentials.
type Describer interface {
	Describe(ctx context.Context) ([]Fact, error)
}

// ProviderFactory builds the Provider for a parsed DSN. It must not call
// the store (NewConnector does no I/O) and should reject bad settings with
// a *DSNError. If the returned Provider implements io.Closer, it is closed
// when its connector's cache is dropped, or at once if an existing cache
// is shared instead.
type ProviderFactory func(ctx context.Context, cfg *Config) (Provider, error)

type observersKey struct{}

// factoryWarner returns how a provider built by a ProviderFactory reports
// its configuration warnings (the file provider's): as KindWarning events
// of the connector it was built for. ctx is the factory's.
func factoryWarner(ctx context.Context, secretID string) func(msg string, attrs ...slog.Attr) {
	o, _ := ctx.Value(observersKey{}).(*observers)
	if o == nil {
		o = &observers{log: slog.Default()}
	}
	return func(msg string, attrs ...slog.Attr) {
		o.emit(context.Background(), Event{Kind: KindWarning, SecretID: secretID, Warning: msg, Attrs: attrs})
	}
}

// DefaultProvider is the provider used when the DSN has no secret_provider.
const DefaultProvider = "awssm"

type providerInfo struct {
	factory ProviderFactory
	keys    []string
	// secretID names what a DSN without secret_id reaches, for a provider
	// that needs no secret (a token signed from the DSN); nil for the
	// others.
	secretID func(*Config) string
}

var providers = registry.New[providerInfo]("provider", keyProvider, map[string]string{
	"vault":   "github.com/pgsecrets/pgsecrets/vault",
	"entra":   "github.com/pgsecrets/pgsecrets/entra",
	"gcp-iam": "github.com/pgsecrets/pgsecrets/gcpiam",
})

// RegisterProvider makes a provider available as secret_provider=name.
// keys are the DSN keys the provider reads beyond the core's (each must
// start with "secret_"); ParseDSN accepts them only with this provider, and
// the factory reads them with Config.ProviderParam. It is meant to be
// called from an init function, and panics if name is empty or taken, or a
// key is malformed, as sql.Register does.
func RegisterProvider(name string, factory ProviderFactory, keys ...string) {
	register(name, providerInfo{factory: factory, keys: slices.Clone(keys)})
}

// register adds a provider after checking its name, factory and keys.
func register(name string, info providerInfo) {
	if name == "" || info.factory == nil {
		panic("pgsecrets: RegisterProvider needs a name and a factory")
	}
	for _, k := range info.keys {
		if !strings.HasPrefix(k, "secret_") || slices.Contains(secretKeys, k) {
			panic(fmt.Sprintf("pgsecrets: provider %q: key %q must start with secret_ and not be a core key", name, k))
		}
	}
	providers.Add(name, info)
}

// providerNames returns the names of the registered providers, sorted.
func providerNames() []string { return providers.Names() }

func lookupProvider(name string) (providerInfo, bool) { return providers.Lookup(name) }

// providerOfKey returns the registered provider that reads key, if any.
func providerOfKey(key string) string {
	return providers.Find(func(p providerInfo) bool { return slices.Contains(p.keys, key) })
}

// unknownProviderError is the DSN error for a secret_provider nobody
// registered.
func unknownProviderError(name string) error { return unknownName(providers, name) }

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
