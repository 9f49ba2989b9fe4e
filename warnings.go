package pgsecrets

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/lib/pq"
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
}

// warnAtConnect checks what needs the secret's content: the host it may
// supply, its username. Each check runs until its warning fired once.
func (c *Connector) warnAtConnect(creds *Credentials) {
	if !c.warned.weakSSL.Load() && weakSSLMode(c.base.SSLMode) {
		hosts := []string{c.base.Host}
		for _, m := range c.base.Multi {
			hosts = append(hosts, m.Host)
		}
		if !c.hostSet && creds.Host != "" {
			hosts = []string{creds.Host}
		}
		for _, h := range hosts {
			if !localHost(h) {
				if c.warned.weakSSL.CompareAndSwap(false, true) {
					c.log.Warn(EventWeakSSLMode, "secret_id", c.cfg.SecretID, "sslmode", string(c.base.SSLMode))
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
		if (c.hostSet && creds.Host != "") || (c.portSet && creds.Port != 0) || (c.dbSet && creds.DBName != "") {
			if c.warned.overridden.CompareAndSwap(false, true) {
				c.log.Debug(EventSecretFieldOverridden, "secret_id", c.cfg.SecretID)
			}
		}
	}
}

func weakSSLMode(m pq.SSLMode) bool {
	switch strings.ToLower(string(m)) {
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
