package pgsecrets

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// pendingRecheck is how often, while a validated pending version is in
// use, the configured stage is read again (in the background, on use) to
// notice that the rotation finished.
const pendingRecheck = 5 * time.Second

// rotateGraceMin is the least delay after a store's announced rotation
// time (Credentials.RotatesAt) before the credentials are fetched again; the
// delay is jittered up to twice that.
const rotateGraceMin = 100 * time.Millisecond

// cache holds the credentials of one secret that new connections use.
type cache struct {
	mu          sync.Mutex // never held while calling another part
	cur         *Credentials
	fetchedAt   time.Time
	pending     *Credentials  // a validated pending version, used until the configured stage catches up
	gen         int64         // successful fetches, for callers that saw a miss
	rotateGrace time.Duration // how long after RotatesAt the next fetch is due
	ahead       float64       // at which fraction of a token's life the next one is fetched
}

// view is what the cache holds at one moment.
type view struct {
	active      *Credentials // what new connections use: pending if set, else cur
	fetchedAt   time.Time
	pending     bool
	gen         int64
	rotateGrace time.Duration
	ahead       float64
}

func (c *cache) view() view {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := view{active: c.cur, fetchedAt: c.fetchedAt, pending: c.pending != nil, gen: c.gen, rotateGrace: c.rotateGrace,
		ahead: c.ahead}
	if c.pending != nil {
		v.active = c.pending
	}
	return v
}

// active returns the credentials new connections use.
func (c *cache) active() *Credentials { return c.view().active }

// current returns the last version fetched at the configured stage.
func (c *cache) current() *Credentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// since returns, for a caller that saw generation gen, what a fetch stored
// since (nil if none did).
func (c *cache) since(gen int64) func() *Credentials {
	return func() *Credentials {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.gen != gen {
			return c.cur
		}
		return nil
	}
}

// record stores a version fetched at the configured stage and returns the
// one it replaces.
func (c *cache) record(creds *Credentials) (prev *Credentials) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev = c.cur
	c.cur, c.fetchedAt = creds, time.Now()
	c.gen++
	c.rotateGrace = rotateGraceMin + rand.N(rotateGraceMin)
	c.ahead = 0.6 + 0.1*rand.Float64() // a fleet does not mint its tokens at once
	if c.pending != nil && (creds.VersionID == c.pending.VersionID || creds.CreatedAt.After(c.pending.CreatedAt)) {
		// The stage caught up with the pending version, or moved past it:
		// the pending version is no longer needed. (A stage still behind
		// it, even if it changed, is older than what the database has.)
		c.pending = nil
	}
	return prev
}

// setPending makes a validated pending version the one new connections
// use until the configured stage catches up.
func (c *cache) setPending(creds *Credentials) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.cur.VersionID == creds.VersionID {
		return
	}
	c.pending = creds
}

// policy is one connector's view of freshness, and where it reports.
type policy struct {
	ttl      time.Duration
	maxStale time.Duration
	margin   time.Duration // secret_expiry_margin; 0 for the default
	obs      *observers
}

// refreshMargin is how long before the TTL ends a background refresh
// starts: a fifth of the TTL, at most a minute.
func refreshMargin(ttl time.Duration) time.Duration {
	return min(ttl/5, time.Minute)
}

// get returns credentials for a new connection: cached ones without I/O
// while fresh (refreshing in the background shortly before the TTL ends),
// stale ones while the store is unavailable or slow, else one shared fetch.
// With nothing usable cached and the store failing, it returns the store's
// last error at once; one caller per backoff interval probes the store.
func (e *entry) get(ctx context.Context, pol policy) (*Credentials, error) {
	now := time.Now()
	v := e.cache.view()
	cred := v.active
	var age time.Duration
	if cred.expiring() {
		// A lease is fresh until its end, less the margin; secret_ttl does
		// not apply, and nothing past that is ever served stale.
		ok, refresh := e.leases.usable(cred, now)
		if ok {
			if refresh {
				e.store.refresh(now, pol)
			}
			e.served(ctx, pol, cred, ServedFresh, 0)
			return cred, nil
		}
		cred = nil
	}
	if cred != nil && !cred.LoginUntil.IsZero() {
		// A token is fresh until a margin before its end and never used
		// past it (stale, it would only be rejected); secret_ttl and the
		// store's health do not change that.
		life := cred.LoginUntil.Sub(v.fetchedAt)
		if now.Before(cred.LoginUntil.Add(-expiryMargin(pol.margin, life))) {
			if now.Sub(v.fetchedAt) >= time.Duration(float64(life)*v.ahead) {
				e.store.refresh(now, pol)
			}
			e.served(ctx, pol, cred, ServedFresh, 0)
			return cred, nil
		}
		cred = nil
	}
	if cred != nil {
		age = now.Sub(v.fetchedAt)
		ttl := pol.ttl
		if !cred.RotatesAt.IsZero() {
			// The store replaces these credentials at RotatesAt: fetch again
			// just after it (jittered), not one TTL later.
			if at := cred.RotatesAt.Add(v.rotateGrace).Sub(v.fetchedAt); at < ttl {
				ttl = max(at, 0)
			}
		}
		if age < ttl {
			// While a pending version is in use, look for the configured
			// stage catching up (AWS's finishSecret) every few seconds.
			if age >= ttl-refreshMargin(pol.ttl) || (v.pending && age >= pendingRecheck) {
				e.store.refresh(now, pol)
			}
			e.served(ctx, pol, cred, ServedFresh, 0)
			return cred, nil
		}
		if ttl < pol.ttl {
			age += pol.ttl - ttl // measure staleness from the rotation time
		}
	}
	// Not fresh: what the store is going through decides (read only now,
	// so that a cache hit takes no lock of the store's).
	h := e.store.health()
	usable := cred != nil && age < pol.ttl+pol.maxStale
	if usable && h.failures > 0 {
		// The store is known to be failing: serve the cached credential
		// and keep retrying in the background.
		e.store.refresh(now, pol)
		return e.serveStale(ctx, cred, age, pol), nil
	}
	if !usable && h.lastErr != nil {
		// Waiting for the next slot would only delay the same answer.
		switch {
		case h.failures > 0 && (h.probing || now.Before(h.nextCall)):
			return nil, e.store.failingError(h, now)
		case h.failures == 0 && (h.probing || now.Sub(h.lastCall) < h.interval):
			return nil, h.lastErr // not found, denied, malformed: asked moments ago
		}
	}

	pol.obs.emit(ctx, Event{Kind: KindStoreWait, SecretID: e.store.secretID, Stage: e.store.stage})
	fctx := ctx
	if usable {
		// Past the TTL with a store not known to fail: wait for the fresh
		// version only as long as a healthy store takes.
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, h.hedge)
		defer cancel()
	}
	_, err := e.store.fetch(fctx, e.store.stage, pol, e.cache.since(v.gen))
	if err == nil {
		cred = e.cache.active()
		e.served(ctx, pol, cred, ServedWaited, 0)
		return cred, nil
	}
	if usable && (errors.Is(err, ErrStoreUnavailable) || (ctx.Err() == nil && isContextErr(err))) {
		return e.serveStale(ctx, cred, age, pol), nil
	}
	return nil, err
}

// serveStale records that cred is used past its TTL.
func (e *entry) serveStale(ctx context.Context, cred *Credentials, age time.Duration, pol policy) *Credentials {
	e.served(ctx, pol, cred, ServedStale, age)
	return cred
}

// served emits how a new connection got cred, and when cred stops being
// usable for new logins: a lease's end as renewed so far, a token's end.
func (e *entry) served(ctx context.Context, pol policy, cred *Credentials, how string, age time.Duration) {
	end := cred.LoginUntil
	if cred.expiring() {
		end = e.leases.expires(cred)
	}
	pol.obs.emit(ctx, Event{Kind: KindServed, SecretID: e.store.secretID, Stage: cred.Stage, VersionID: cred.VersionID,
		Outcome: how, Duration: age, Expires: end})
}
