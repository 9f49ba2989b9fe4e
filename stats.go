package pgsecrets

import (
	"encoding/json"
	"time"
)

// Stats are a connector's counters, for dashboards and alerts. Counters
// count since the connector was created; StoreCalls counts only the calls
// this connector triggered, while the cache itself is shared by every
// connector of the process that names the same secret.
type Stats struct {
	// StoreCalls is the number of requests to the secret store.
	StoreCalls int64
	// StoreThrottled is the number of store calls the store refused for
	// its request quota (ErrThrottled). The SDK does not retry them:
	// pgsecrets' own backoff spaces the next call.
	StoreThrottled int64
	// CacheHits is the number of connections that got credentials from
	// the cache without waiting for the store.
	CacheHits int64
	// StoreWaits is the number of connections that waited for a store
	// call: a cold cache, or a credential past its TTL on an idle
	// connector. Under steady use it stays at 1: refreshes run in the
	// background before the TTL ends.
	StoreWaits int64
	// StaleServes is the number of connections that used a credential
	// past its TTL because the store was unavailable.
	StaleServes int64
	// AuthFailures is the number of logins the database rejected
	// (SQLSTATE 28P01 or 28000) before recovery.
	AuthFailures int64
	// AuthRecovered is the number of Connect calls that succeeded after an
	// authentication failure.
	AuthRecovered int64
	// PendingUses is the number of connections made with the AWSPENDING
	// version while the current stage lagged behind a rotation.
	PendingUses int64
	// BreakerState is "closed", "half-open" or "open"; BreakerOpens counts
	// how often it opened and BreakerRejects the Connect calls it failed
	// fast.
	BreakerState   string
	BreakerOpens   int64
	BreakerRejects int64
	// LastRefresh is when the configured stage was last fetched; zero
	// before the first fetch.
	LastRefresh time.Time
	// VersionID and Stage identify the secret version new connections use
	// (Stage is AWSPENDING while a validated pending version is in use).
	VersionID string
	Stage     string

	// Expiring credentials (leases). The leases belong to the cache entry,
	// which every connector on the same secret and store shares:
	// LeasesHeld is the number it holds now (the current one, and older
	// ones still serving open connections); LeaseRenewals and
	// LeaseRenewFailures count its renewals, and LeaseRevocations the
	// leases it revoked before their end (superseded, unused, at the last
	// Close), each while this connector was open. ConnsRetired counts this
	// connector's connections closed because their lease was about to
	// end. Expires is when the credentials new connections use end (zero
	// if they do not expire).
	LeasesHeld         int
	LeaseRenewals      int64
	LeaseRenewFailures int64
	LeaseRevocations   int64
	ConnsRetired       int64
	Expires            time.Time
}

// Stats returns the connector's counters. It is safe to call concurrently
// with everything else. A closed connector's Stats no longer change.
func (c *Connector) Stats() Stats {
	if s := c.final.Load(); s != nil {
		return *s
	}
	return c.snapshot()
}

func (c *Connector) snapshot() Stats {
	s := Stats{
		StoreCalls:     c.stats.storeCalls.Load(),
		StoreThrottled: c.stats.storeThrottled.Load(),
		CacheHits:      c.stats.cacheHits.Load(),
		StoreWaits:     c.stats.storeWaits.Load(),
		StaleServes:    c.stats.staleServes.Load(),
		AuthFailures:   c.stats.authFailures.Load(),
		AuthRecovered:  c.stats.recovered.Load(),
		PendingUses:    c.stats.pendingUses.Load(),
		BreakerRejects: c.stats.breakerRejects.Load(),
		BreakerOpens:   c.target.opens.Load(),
		BreakerState:   c.target.state(),

		LeaseRenewals:      c.stats.leaseRenewals.Load(),
		LeaseRenewFailures: c.stats.leaseRenewFailures.Load(),
		LeaseRevocations:   c.stats.leaseRevocations.Load(),
		ConnsRetired:       c.stats.connsRetired.Load(),
	}
	e := c.entry
	v := e.cache.view()
	s.LastRefresh = v.fetchedAt
	cr := v.active
	if cr != nil {
		s.VersionID, s.Stage = cr.VersionID, cr.Stage
	}
	b := e.leases
	s.LeasesHeld = b.held()
	if cr.expiring() {
		s.Expires = b.expires(cr)
	}
	return s
}

// String returns the stats as JSON (expvar.Var).
func (s Stats) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}
