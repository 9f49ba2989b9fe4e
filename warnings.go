package pgsecrets

import (
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

// warnAtOpen checks what the DSN alone tells.
func (c *Connector) warnAtOpen() {
	if !c.cfg.Password.IsZero() {
		c.log.Warn(EventDSNPassword, "secret_id", c.cfg.SecretID)
	}
	if os.Getenv("PQGO_DEBUG") == "1" {
		c.log.Warn(EventLibPQDebug, "secret_id", c.cfg.SecretID)
	}
	if c.cfg.TTL > c.cfg.MaxStale {
		c.log.Warn(EventTTLOverMaxStale, "secret_id", c.cfg.SecretID, "ttl", c.cfg.TTL, "max_stale", c.cfg.MaxStale)
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
	c.log.Warn(EventUnprotectedStore, "secret_id", c.cfg.SecretID, "store", ep.Store, "host", u.Host, "reason", reason)
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
					c.log.Warn(EventWeakSSLMode, "secret_id", c.cfg.SecretID, "sslmode", c.srv.sslmode)
				}
				break
			}
		}
	}
	if !c.warned.userMismatch.Load() {
		if u, ok := c.cfg.param("user"); ok && u != creds.Username && c.warned.userMismatch.CompareAndSwap(false, true) {
			c.log.Warn(EventUserMismatch, "secret_id", c.cfg.SecretID)
		}
	}
	if !c.warned.overridden.Load() {
		if (c.srv.hostSet && creds.Host != "") || (c.srv.portSet && creds.Port != 0) || (c.srv.dbSet && creds.DBName != "") {
			if c.warned.overridden.CompareAndSwap(false, true) {
				c.log.Debug(EventSecretFieldOverridden, "secret_id", c.cfg.SecretID)
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
