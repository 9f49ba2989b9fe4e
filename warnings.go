package pgsecrets

import (
	"context"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
)

// warnings logs each configuration warning once per connector.
type warnings struct {
	weakSSL, userMismatch, overridden atomic.Bool
}

// warn emits a configuration warning of the connector; attrs are its
// details, never a value of the secret's.
func (c *Connector) warn(msg string, attrs ...slog.Attr) {
	c.cl.obs.emit(context.Background(), Event{Kind: KindWarning, SecretID: c.cfg.SecretID, Warning: msg, Attrs: attrs})
}

// warnAtOpen checks what the DSN alone tells.
func (c *Connector) warnAtOpen() {
	if !c.cfg.Password.IsZero() {
		c.warn(EventDSNPassword)
	}
	if os.Getenv("PQGO_DEBUG") == "1" {
		c.warn(EventLibPQDebug)
	}
	if c.cfg.TTL > c.cfg.MaxStale {
		c.warn(EventTTLOverMaxStale, slog.Duration("ttl", c.cfg.TTL), slog.Duration("max_stale", c.cfg.MaxStale))
	}
	if ep, ok := c.entry.store.provider.(Endpointer); ok {
		c.warnEndpoint(ep.StoreEndpoint())
	}
}

// StoreEndpoint says where a provider's requests go, for the warning
// EventUnprotectedStore.
type StoreEndpoint struct {
	// Store names the store in the warning ("Vault").
	Store string
	// URL is the endpoint requests go to; "" for the store's default
	// endpoint, which is reached over verified TLS. Only its host and port
	// are ever logged.
	URL string
	// SkipVerify names the setting that turned certificate verification
	// off ("VAULT_SKIP_VERIFY"); "" while certificates are verified.
	SkipVerify string
}

// Endpointer is implemented by providers that reach their store over the
// network. Loopback endpoints are exempt from the warning: no network lies
// between, and a local agent (Vault Agent, a test server) is the usual
// case there. StoreEndpoint must not do I/O.
type Endpointer interface {
	StoreEndpoint() StoreEndpoint
}

// warnEndpoint is called once per connector, at construction: the warning
// must not wait for a request, which may never succeed.
func (c *Connector) warnEndpoint(ep StoreEndpoint) {
	if ep.URL == "" {
		return
	}
	u, err := url.Parse(ep.URL)
	if err != nil || u.Host == "" {
		// Nothing can be said about the host without echoing the
		// malformed value, which may carry credentials; the store's
		// client reports it.
		return
	}
	if loopbackHost(u.Hostname()) {
		return
	}
	reason := ""
	switch {
	case strings.EqualFold(u.Scheme, "http"):
		reason = "plain http: the answers (the database credentials) and the requests (the store token or signature) cross the network unencrypted, and the store is not authenticated; use an https:// endpoint"
	case ep.SkipVerify != "":
		reason = "TLS certificate verification is off (" + ep.SkipVerify + "): anyone on the network path can pose as the store; turn " + ep.SkipVerify + " off and trust the store's CA instead"
	default:
		return
	}
	c.warn(EventUnprotectedStore, slog.String("store", ep.Store), slog.String("host", u.Host), slog.String("reason", reason))
}

// loopbackHost reports whether a URL's host is literally a loopback name or
// address. Names are not resolved: only "localhost" counts.
func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// warnAtConnect checks what needs the secret's content: the host it may
// supply, its username. Each check runs until its warning fired once.
func (c *Connector) warnAtConnect(creds *Credentials) {
	if !c.warned.weakSSL.Load() && weakSSLMode(c.srv.sslmode) {
		hosts := c.srv.hosts
		if !c.srv.hostSet && creds.Host != "" {
			hosts = []string{creds.Host}
		}
		for _, h := range hosts {
			if !localHost(h) {
				if c.warned.weakSSL.CompareAndSwap(false, true) {
					c.warn(EventWeakSSLMode, slog.String("sslmode", c.srv.sslmode))
				}
				break
			}
		}
	}
	if !c.warned.userMismatch.Load() {
		if u, ok := c.cfg.param("user"); ok && u != creds.Username && c.warned.userMismatch.CompareAndSwap(false, true) {
			c.warn(EventUserMismatch)
		}
	}
	if !c.warned.overridden.Load() {
		if (c.srv.hostSet && creds.Host != "") || (c.srv.portSet && creds.Port != 0) || (c.srv.dbSet && creds.DBName != "") {
			if c.warned.overridden.CompareAndSwap(false, true) {
				c.warn(EventSecretFieldOverridden)
			}
		}
	}
}

func weakSSLMode(m string) bool {
	switch strings.ToLower(m) {
	case "disable", "allow", "prefer":
		return true
	}
	return false
}

// localHost reports whether host is a Unix socket directory or a loopback
// name or address.
func localHost(h string) bool {
	if h == "" || filepath.IsAbs(h) || strings.HasPrefix(h, "@") || strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(h, "[]"))
	return err == nil && a.IsLoopback()
}
