package pgsecrets

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Cloud IAM database authentication in general: the password is a token
// the application obtains for itself (RDS IAM here; Entra ID and Google in
// modules of their own) for the DSN's user and server. What every token
// provider shares lives here: the DSN needs no secret_id, the login must
// reach exactly one TCP server, and the token travels only over TLS.

// RegisterTokenProvider makes a provider of cloud IAM tokens available as
// secret_provider=name. It is RegisterProvider for providers that mint the
// password from the DSN itself: the DSN needs no secret_id (logs, errors
// and the cache name what it reaches "name:user@host:port"), and the
// factory reads the login with Config.TokenTarget. The provider's
// Credentials set LoginUntil, not Expires: a token is checked only at
// login. It panics as RegisterProvider does.
func RegisterTokenProvider(name string, factory ProviderFactory, keys ...string) {
	register(name, providerInfo{factory: factory, keys: slices.Clone(keys), secretID: tokenSecretID})
}

// tokenSecretID names what a token DSN without secret_id reaches:
// provider:user@host:port.
func tokenSecretID(cfg *Config) string {
	t := cfg.tokenTarget()
	host := t.Host
	if host == "" {
		host = strings.Join(cfg.server(os.Getenv).hosts, ",")
	}
	return fmt.Sprintf("%s:%s@%s:%s", cfg.Provider, t.User, host, t.Port)
}

// TokenTarget is the login a token is minted for.
type TokenTarget struct {
	// User is the DSN's user (or PGUSER): the database role the token
	// logs in as.
	User string
	// Host is the DSN's one host (or PGHOST), a name or an address.
	Host string
	// Port is the DSN's port (or PGPORT), "5432" if neither sets it.
	Port string
}

// Endpoint is host:port, the way an RDS token names its server.
func (t TokenTarget) Endpoint() string { return t.Host + ":" + t.Port }

// TokenTarget returns the login a token provider mints tokens for, or a
// *DSNError naming the key at fault: a token needs the database user, one
// TCP host (not a list, not a Unix socket) and an sslmode that never sends
// it in clear (require, verify-ca or verify-full): every cloud accepts
// IAM tokens only over TLS, and a token is a password for its lifetime.
func (c *Config) TokenTarget() (TokenTarget, error) {
	t := c.tokenTarget()
	srv := c.server(os.Getenv)
	p := c.Provider
	switch {
	case t.User == "":
		return t, &DSNError{Key: "user", Msg: fmt.Sprintf("secret_provider=%s needs the database user in the DSN (user=…): the token is minted for it", p)}
	case len(srv.hosts) != 1 || t.Host == "":
		return t, &DSNError{Key: "host", Msg: fmt.Sprintf("secret_provider=%s needs exactly one host in the DSN: the token is minted for the server dialled", p)}
	case filepath.IsAbs(t.Host) || strings.HasPrefix(t.Host, "@"):
		return t, &DSNError{Key: "host", Msg: fmt.Sprintf("secret_provider=%s needs a TCP host, not a Unix socket: IAM tokens travel over TLS", p)}
	case weakSSLMode(srv.sslmode):
		return t, &DSNError{Key: "sslmode", Msg: fmt.Sprintf("sslmode=%s may send the token without TLS, and the database accepts IAM tokens only over TLS: use verify-full (with the server's CA as sslrootcert) or require", srv.sslmode)}
	}
	return t, nil
}

// tokenTarget reads the login without judging it.
func (c *Config) tokenTarget() TokenTarget {
	srv := c.server(os.Getenv)
	t := TokenTarget{Port: srv.port}
	t.User, _ = c.param("user")
	if t.User == "" {
		t.User = os.Getenv("PGUSER")
	}
	if len(srv.hosts) == 1 {
		t.Host = srv.hosts[0]
	}
	if t.Port == "" {
		t.Port = "5432"
	}
	return t
}
