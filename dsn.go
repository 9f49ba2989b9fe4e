package pgsecrets

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// DSN keys that pgsecrets reads and removes before the engine sees the DSN.
const (
	keySecretID     = "secret_id"
	keyRegion       = "secret_region"
	keyEndpoint     = "secret_endpoint"
	keyVersionStage = "secret_version_stage"
	keyTTL          = "secret_ttl"
	keyMaxStale     = "secret_max_stale"
	keyRetryWindow  = "secret_retry_window"
	keyUsernameKey  = "secret_username_key"
	keyPasswordKey  = "secret_password_key"
	keyProvider     = "secret_provider"
	keyExpiryMargin = "secret_expiry_margin"
	keyDriver       = "secret_driver"
)

var secretKeys = []string{
	keySecretID, keyProvider, keyRegion, keyEndpoint, keyVersionStage, keyTTL,
	keyMaxStale, keyRetryWindow, keyUsernameKey, keyPasswordKey, keyExpiryMargin, keyDriver,
}

// Defaults for the secret_* keys.
const (
	// DefaultTTL is how long a fetched credential is used before it is
	// fetched again. Rotation does not depend on it (an authentication
	// failure triggers a refresh at once), so it mainly bounds the store's
	// request rate and how soon a deliberately changed secret reaches new
	// connections that still work with the old one.
	DefaultTTL = 10 * time.Minute
	// DefaultMaxStale is how long past its TTL a cached credential is still
	// used while the store is unavailable.
	DefaultMaxStale = 30 * time.Minute
	// DefaultRetryWindow bounds how long Connect keeps fetching the secret
	// again after the database rejected it, waiting for the store to catch
	// up with a password changed in the database first.
	DefaultRetryWindow = 30 * time.Second
	// DefaultVersionStage is the stage fetched for new connections.
	DefaultVersionStage = "AWSCURRENT"
)

// Config is a parsed pgsecrets DSN: the secret_* settings, and the rest of
// the DSN as the engine (lib/pq or pgx) will receive it. Printing a Config
// (String, any fmt verb, slog, JSON) never shows the DSN's password,
// sslpassword or an inline private key; FormatDSN, which builds DSNs,
// carries the last two.
type Config struct {
	// SecretID names the secret in its store (secret_id): a Secrets
	// Manager name or ARN, a Vault path, a file path.
	SecretID string
	// Provider is the secret store (secret_provider, default awssm).
	Provider string
	// Driver is the engine that logs in (secret_driver, default pq; pgx
	// with github.com/pgsecrets/pgsecrets/pgxsecrets imported).
	Driver string
	// ExpiryMargin is how long before expiring credentials end they stop
	// being given to new connections and their connections are closed
	// (secret_expiry_margin); zero means a tenth of the credential's life,
	// between 250ms and 1m.
	ExpiryMargin time.Duration
	// Region is the AWS region (secret_region); empty means the ARN's
	// region, else the SDK's (AWS_REGION, profile).
	Region string
	// Endpoint overrides the Secrets Manager endpoint URL (secret_endpoint).
	Endpoint string
	// VersionStage is the stage used for new connections
	// (secret_version_stage, default AWSCURRENT).
	VersionStage string
	// TTL is how long a fetched credential is used (secret_ttl).
	TTL time.Duration
	// MaxStale is how long past TTL a credential may still be used while
	// the store is unavailable (secret_max_stale).
	MaxStale time.Duration
	// RetryWindow bounds the recovery after an authentication failure
	// (secret_retry_window).
	RetryWindow time.Duration
	// UsernameKey and PasswordKey name the JSON fields of the secret
	// (secret_username_key, secret_password_key).
	UsernameKey string
	PasswordKey string

	// Params are the DSN's other keys, in order, as the engine will see
	// them, without password.
	Params []Param
	// Password is a password= left in the DSN. The secret's password is
	// always used instead.
	Password Secret

	providerParams []Param         // the provider's own secret_* keys
	set            map[string]bool // secret_* keys given explicitly
}

// ProviderParam returns the value of one of the provider's own DSN keys
// (see RegisterProvider), and whether the DSN set it.
func (c *Config) ProviderParam(key string) (string, bool) {
	for _, p := range c.providerParams {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// Param is one key=value pair of the DSN passed through to the engine.
type Param struct {
	Key   string
	Value string
}

// ParseDSN parses a pgsecrets DSN in either form lib/pq accepts
// (postgres:// URL or key=value with libpq quoting). Errors are *DSNError
// and match ErrInvalidDSN.
func ParseDSN(dsn string) (*Config, error) {
	var (
		pairs []Param
		err   error
	)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		pairs, err = parseURL(dsn)
	} else {
		pairs, err = parseKeyValue(dsn)
	}
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		VersionStage: DefaultVersionStage,
		TTL:          DefaultTTL,
		MaxStale:     DefaultMaxStale,
		RetryWindow:  DefaultRetryWindow,
		UsernameKey:  "username",
		PasswordKey:  "password",
		Provider:     DefaultProvider,
		Driver:       engine.Default,
		set:          map[string]bool{},
	}
	var extra []Param // secret_* keys that are not the core's
	for _, p := range pairs {
		if p.Key == "password" {
			cfg.Password = NewSecret(p.Value)
			continue
		}
		if !strings.HasPrefix(p.Key, "secret_") {
			cfg.setParam(p.Key, p.Value)
			continue
		}
		if !slices.Contains(secretKeys, p.Key) {
			extra = append(extra, p)
			continue
		}
		if err := cfg.setSecretKey(p.Key, p.Value); err != nil {
			return nil, err
		}
	}
	if k, ok := cfg.param("sslkey"); ok && strings.Contains(k, "-----BEGIN") && !cfg.sslInline() {
		// lib/pq would take the key for a file name and print it in the
		// error that it cannot open it.
		return nil, &DSNError{Key: "sslkey", Msg: "holds a PEM key, but sslinline is not true: set sslinline=true, or give the key file's path"}
	}
	info, ok := lookupProvider(cfg.Provider)
	if !ok {
		return nil, unknownProviderError(cfg.Provider)
	}
	for _, p := range extra {
		if !slices.Contains(info.keys, p.Key) {
			if other := providerOfKey(p.Key); other != "" {
				return nil, &DSNError{Key: p.Key, Msg: fmt.Sprintf("is a setting of secret_provider=%s, but this DSN uses %s", other, cfg.Provider)}
			}
			valid := append(slices.Clone(secretKeys), info.keys...)
			return nil, &DSNError{Key: p.Key, Msg: "unknown secret key; valid keys for secret_provider=" + cfg.Provider + " are " + strings.Join(valid, ", ")}
		}
		replaced := false
		for i := range cfg.providerParams {
			if cfg.providerParams[i].Key == p.Key {
				cfg.providerParams[i].Value, replaced = p.Value, true
			}
		}
		if !replaced {
			cfg.providerParams = append(cfg.providerParams, p)
		}
	}
	if cfg.SecretID == "" && info.secretID != nil {
		cfg.SecretID = info.secretID(cfg)
	}
	if cfg.SecretID == "" {
		return nil, &DSNError{Key: keySecretID, Msg: "is required: name the secret that holds the database credentials (a name or a full ARN); valid secret keys are " + strings.Join(secretKeys, ", ")}
	}
	if cfg.Region == "" && cfg.Provider == DefaultProvider {
		cfg.Region = arnRegion(cfg.SecretID)
	}
	return cfg, nil
}

func (c *Config) setSecretKey(k, v string) error {
	dur := func() (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, &DSNError{Key: k, Msg: fmt.Sprintf("%q is not a Go duration (e.g. 5m, 30s)", v)}
		}
		if d < 0 {
			return 0, &DSNError{Key: k, Msg: "must not be negative"}
		}
		return d, nil
	}
	nonEmpty := func() error {
		if v == "" {
			return &DSNError{Key: k, Msg: "must not be empty"}
		}
		return nil
	}
	var err error
	switch k {
	case keySecretID:
		c.SecretID = v
	case keyProvider:
		err = nonEmpty()
		c.Provider = v
	case keyDriver:
		err = nonEmpty()
		c.Driver = v
	case keyExpiryMargin:
		c.ExpiryMargin, err = dur()
	case keyRegion:
		c.Region = v
	case keyEndpoint:
		if v != "" {
			u, perr := url.Parse(v)
			if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return &DSNError{Key: k, Msg: "must be an absolute http or https URL, e.g. https://secretsmanager.us-east-1.amazonaws.com"}
			}
		}
		c.Endpoint = v
	case keyVersionStage:
		err = nonEmpty()
		c.VersionStage = v
	case keyTTL:
		c.TTL, err = dur()
		if err == nil && c.TTL == 0 {
			err = &DSNError{Key: k, Msg: "must be positive"}
		}
	case keyMaxStale:
		c.MaxStale, err = dur()
	case keyRetryWindow:
		c.RetryWindow, err = dur()
	case keyUsernameKey:
		err = nonEmpty()
		c.UsernameKey = v
	case keyPasswordKey:
		err = nonEmpty()
		c.PasswordKey = v
	default:
		return &DSNError{Key: k, Msg: "unknown secret key; valid keys are " + strings.Join(secretKeys, ", ")}
	}
	c.set[k] = true
	return err
}

// param returns the value of a pass-through key.
func (c *Config) param(k string) (string, bool) {
	for _, p := range c.Params {
		if p.Key == k {
			return p.Value, true
		}
	}
	return "", false
}

// setParam sets a pass-through key; a repeated key replaces the earlier
// value, as in lib/pq.
func (c *Config) setParam(k, v string) {
	for i := range c.Params {
		if c.Params[i].Key == k {
			c.Params[i].Value = v
			return
		}
	}
	c.Params = append(c.Params, Param{Key: k, Value: v})
}

// FormatDSN formats the configuration back into a key=value DSN that
// parses to an equivalent Config: the DSN to build a connector from. It
// therefore carries every value as it is, secrets of their own included
// (sslpassword, and sslkey holding a private key inline): do not print or
// log it; String redacts those. A DSN password is written as
// password=[REDACTED] by both; the secret's password is used anyway.
func (c *Config) FormatDSN() string { return c.format(false) }

// String returns the DSN for printing: FormatDSN with the values that are
// secrets of their own (see secretParam) shown as [REDACTED]. It parses,
// but to the same Config only when there was nothing to redact. It and
// the other printing methods take a Config value, so that a Config (as
// Connector.Config returns) prints through them too, not only a *Config.
func (c Config) String() string { return c.format(true) }

// GoString makes %#v print the redacted DSN rather than the fields, whose
// Params hold the values String redacts.
func (c Config) GoString() string { return "pgsecrets.Config(" + strconv.Quote(c.String()) + ")" }

// Format prints String for every verb (%q quoted, %#v as GoString): fmt's
// default would print the fields.
func (c Config) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, c.GoString())
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(c.String()))
	default:
		_, _ = io.WriteString(f, c.String())
	}
}

// LogValue makes slog print String.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON encodes the exported fields as encoding/json would, with the
// values String redacts redacted.
func (c Config) MarshalJSON() ([]byte, error) {
	type fields Config // without the methods, so that Marshal does not come back here
	f := fields(c)
	f.Params = make([]Param, len(c.Params))
	for i, p := range c.Params {
		if c.secretParam(p) {
			p.Value = redacted
		}
		f.Params[i] = p
	}
	return json.Marshal(f)
}

// secretParam reports whether a pass-through value is a secret in its own
// right: sslpassword (the passphrase of an encrypted client key: pgx reads
// it, lib/pq v1.12.3 does not know it) and sslkey when it holds the key
// itself rather than its path (lib/pq's sslinline, or PEM text whatever
// sslinline says: lib/pq then takes it for a path, and names it in the
// error when it cannot open it).
func (c *Config) secretParam(p Param) bool {
	if p.Value == "" {
		return false
	}
	switch p.Key {
	case "sslpassword":
		return true
	case "sslkey":
		return c.sslInline() || strings.Contains(p.Value, "-----BEGIN")
	}
	return false
}

// sslInline reports whether lib/pq reads sslcert and sslkey as PEM text:
// sslinline is set to anything but one of lib/pq's spellings of false (an
// invalid value, which lib/pq rejects, counts as true here).
func (c *Config) sslInline() bool {
	v, ok := c.param("sslinline")
	if !ok {
		return false
	}
	switch v {
	case "0", "f", "F", "false", "FALSE", "False", "no", "off":
		return false
	}
	return true
}

func (c *Config) format(redact bool) string {
	var parts []string
	for _, p := range c.Params {
		v := p.Value
		if redact && c.secretParam(p) {
			v = redacted
		}
		parts = append(parts, p.Key+"="+quoteValue(v))
	}
	if !c.Password.IsZero() {
		parts = append(parts, "password="+redacted)
	}
	add := func(k, v string, isDefault bool) {
		if !isDefault || c.set[k] {
			parts = append(parts, k+"="+quoteValue(v))
		}
	}
	add(keySecretID, c.SecretID, false)
	add(keyProvider, c.Provider, c.Provider == DefaultProvider)
	add(keyDriver, c.Driver, c.Driver == engine.Default)
	add(keyRegion, c.Region, c.Region == "" || c.Region == arnRegion(c.SecretID))
	endpoint := c.Endpoint
	if redact {
		endpoint = withoutUserinfo(endpoint)
	}
	add(keyEndpoint, endpoint, c.Endpoint == "")
	add(keyVersionStage, c.VersionStage, c.VersionStage == DefaultVersionStage)
	add(keyTTL, shortDuration(c.TTL), c.TTL == DefaultTTL)
	add(keyMaxStale, shortDuration(c.MaxStale), c.MaxStale == DefaultMaxStale)
	add(keyRetryWindow, shortDuration(c.RetryWindow), c.RetryWindow == DefaultRetryWindow)
	add(keyUsernameKey, c.UsernameKey, c.UsernameKey == "username")
	add(keyPasswordKey, c.PasswordKey, c.PasswordKey == "password")
	add(keyExpiryMargin, shortDuration(c.ExpiryMargin), c.ExpiryMargin == 0)
	for _, p := range c.providerParams {
		parts = append(parts, p.Key+"="+quoteValue(p.Value))
	}
	return strings.Join(parts, " ")
}

// shortDuration formats d as time.Duration does, without trailing zero
// units: 1h rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// pqDSN is the engine DSN (what an engine is built from), in libpq's key=value form
// that lib/pq and pgx both parse: the pass-through keys, never a password,
// and sslmode=require unless the DSN chose otherwise.
func (c *Config) pqDSN(env func(string) string) string {
	var parts []string
	for _, p := range c.Params {
		parts = append(parts, p.Key+"="+quoteValue(p.Value))
	}
	if srv := c.server(env); srv.sslDefault {
		parts = append(parts, "sslmode="+srv.sslmode)
	}
	return strings.Join(parts, " ")
}

// server is where the DSN (with the PG* environment) points, as far as
// the core needs to know: which of host, port and dbname it sets (the
// secret's fill in the others), the hosts, and the sslmode of the engine
// DSN. It is read once, when a connector is made; the engine parses the
// engine DSN (pqDSN) itself.
type server struct {
	where
	hosts        []string // "" when the DSN names none: the engine's default
	port, dbname string
	sslmode      string
	// sslDefault: neither the DSN nor PGSSLMODE sets sslmode, so the engine
	// DSN carries ours (require). lib/pq plans to move its default to
	// "prefer"; encryption stays the default here. sslrootcert=system makes
	// lib/pq choose verify-full by itself.
	sslDefault bool
}

func (c *Config) server(env func(string) string) server {
	get := func(key, envName string) string {
		if v, ok := c.param(key); ok {
			return v
		}
		return env(envName)
	}
	s := server{
		where: where{hostSet: c.has("host", "PGHOST", env) || c.has("hostaddr", "PGHOSTADDR", env),
			portSet: c.has("port", "PGPORT", env), dbSet: c.has("dbname", "PGDATABASE", env)},
		hosts:   strings.Split(get("host", "PGHOST"), ","),
		port:    get("port", "PGPORT"),
		dbname:  get("dbname", "PGDATABASE"),
		sslmode: get("sslmode", "PGSSLMODE"),
	}
	if s.sslmode == "" {
		if v, _ := c.param("sslrootcert"); v == "system" || env("PGSSLROOTCERT") == "system" {
			s.sslmode = "verify-full"
		} else {
			s.sslmode, s.sslDefault = "require", true
		}
	}
	return s
}

// SSLMode is the sslmode the engine connects with: the DSN's, else
// PGSSLMODE's, else pgsecrets' default, require (verify-full when
// sslrootcert or PGSSLROOTCERT is "system", as lib/pq then chooses).
func (c *Config) SSLMode() string { return c.server(os.Getenv).sslmode }

// key names the database for the breaker and the recovery (see target).
// hostName is the server's host for events: the DSN's host or hosts, ""
// when the engine's default (or the secret's) applies.
func (s server) hostName() string { return strings.Join(s.hosts, ",") }

func (s server) key() string { return strings.Join(s.hosts, ",") + "|" + s.port + "|" + s.dbname }

// has reports whether the user set a connection setting, in the DSN or
// through its PG* environment variable.
func (c *Config) has(key, envName string, env func(string) string) bool {
	if _, ok := c.param(key); ok {
		return true
	}
	return envName != "" && env(envName) != ""
}

// quoteValue quotes a DSN value (see engine.Quote).
func quoteValue(v string) string { return engine.Quote(v) }

// parseKeyValue reads a libpq conninfo string: key=value pairs separated
// by whitespace, values optionally single-quoted, backslash escaping the
// next character. It follows lib/pq's parser so that both accept the same
// strings, and keeps bytes that are not valid UTF-8 as they are.
func parseKeyValue(dsn string) ([]Param, error) {
	i := 0
	// peek returns the rune at i and its width; invalid bytes have width 1.
	peek := func() (rune, int) { return utf8.DecodeRuneInString(dsn[i:]) }
	skipSpace := func() {
		for i < len(dsn) {
			r, w := peek()
			if !unicode.IsSpace(r) {
				return
			}
			i += w
		}
	}
	var out []Param
	for {
		skipSpace()
		if i >= len(dsn) {
			return out, nil
		}
		start := i
		for i < len(dsn) {
			r, w := peek()
			if unicode.IsSpace(r) || r == '=' {
				break
			}
			i += w
		}
		key := dsn[start:i]
		skipSpace()
		if i >= len(dsn) || dsn[i] != '=' {
			// The key is not echoed: in a malformed DSN it may be a password.
			return nil, &DSNError{Msg: fmt.Sprintf("missing \"=\" after the key at byte %d", start+1)}
		}
		i++ // '='
		skipSpace()
		var val strings.Builder
		switch {
		case i >= len(dsn):
		case dsn[i] == '\'':
			i++
			for {
				if i >= len(dsn) {
					return nil, &DSNError{Key: key, Msg: "unterminated quoted value"}
				}
				_, w := peek()
				c := dsn[i]
				if c == '\'' {
					i++
					break
				}
				if c == '\\' {
					i++
					if i >= len(dsn) {
						return nil, &DSNError{Key: key, Msg: "unterminated quoted value"}
					}
					_, w = peek()
				}
				val.WriteString(dsn[i : i+w])
				i += w
			}
		default:
			for i < len(dsn) {
				r, w := peek()
				if unicode.IsSpace(r) {
					break
				}
				if r == '\\' {
					i++
					if i >= len(dsn) {
						return nil, &DSNError{Key: key, Msg: "missing character after backslash"}
					}
					_, w = peek()
				}
				val.WriteString(dsn[i : i+w])
				i += w
			}
		}
		out = append(out, Param{Key: key, Value: val.String()})
	}
}

// parseURL turns a postgres:// URL into key/value pairs the way lib/pq
// does: user info, host and port, the path as dbname, query parameters
// (first value of each) as keys. Empty values are left out.
func parseURL(dsn string) ([]Param, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		// url.Error quotes the whole URL, password included: report only
		// the kind of problem.
		msg := "cannot parse URL"
		if ue, ok := err.(*url.Error); ok {
			msg += ": " + redactURLError(ue.Err.Error())
		}
		return nil, &DSNError{Msg: msg}
	}
	var out []Param
	add := func(k, v string) {
		if v != "" {
			out = append(out, Param{Key: k, Value: v})
		}
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		add("user", u.User.Username())
		add("password", pw)
	}
	// A host list (postgres://h1:5432,h2:5433/db) becomes libpq's host
	// and port lists, entry by entry. lib/pq wants every entry of a port
	// list, so a host without a port gets PostgreSQL's default when
	// another has one.
	var hosts, ports []string
	anyPort := false
	for _, h := range strings.Split(u.Host, ",") {
		if host, port, err := net.SplitHostPort(h); err == nil && port != "" {
			hosts, ports, anyPort = append(hosts, host), append(ports, port), true
		} else {
			if err == nil {
				h = host
			}
			hosts, ports = append(hosts, strings.Trim(h, "[]")), append(ports, "5432")
		}
	}
	add("host", strings.Join(hosts, ","))
	if anyPort {
		add("port", strings.Join(ports, ","))
	}
	if len(u.Path) > 1 {
		add("dbname", u.Path[1:])
	}
	q := u.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.ContainsFunc(k, func(r rune) bool { return unicode.IsSpace(r) || r == '=' }) {
			return nil, &DSNError{Msg: "a URL parameter name contains white space or \"=\""}
		}
		add(k, q.Get(k))
	}
	return out, nil
}

// withoutUserinfo is an endpoint URL for printing: a user or password
// written into it is replaced, the rest kept.
func withoutUserinfo(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		if strings.Contains(endpoint, "@") {
			return redacted
		}
		return endpoint
	}
	if u.User == nil {
		return endpoint
	}
	u.User = url.User(redacted)
	return u.String()
}

// redactURLError keeps url's error messages from echoing the input.
func redactURLError(s string) string {
	if i := strings.IndexByte(s, '"'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}

// arnRegion returns the region field of a Secrets Manager ARN, or "".
func arnRegion(id string) string {
	parts := strings.SplitN(id, ":", 6)
	if len(parts) < 6 || parts[0] != "arn" || parts[2] != "secretsmanager" {
		return ""
	}
	return parts[3]
}
