package pgsecrets

import (
	"context"
	"database/sql/driver"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Expiring credentials (Vault leases) get four things the core does for no
// other kind:
//
//   - renewal first (for a Leaser): the current lease, and any lease with
//     open connections, is renewed at half its life while the store extends
//     it; a newer one is fetched in the background only when a renewal was
//     capped (at 30–40% of the remaining time), refused (at once) or is not
//     possible at all (at 60–70% of the life), jittered so that a fleet does
//     not fetch at once;
//   - no new connection within the expiry margin of their end;
//   - connections that are closed before that margin, whatever
//     SetConnMaxLifetime says: the connection is wrapped, and the wrapper
//     declines reuse (driver.Validator, driver.SessionResetter) and closes
//     itself when idle at that time;
//   - for a Leaser, revocation once a newer lease serves new connections
//     and the last connection of the old one has closed, or when the
//     connector closes.
//
// Credentials that do not expire are never wrapped: their connections are
// the engine's own.

const (
	// minExpiryMargin and maxExpiryMargin bound the default expiry margin,
	// a tenth of a credential's life.
	minExpiryMargin = 250 * time.Millisecond
	maxExpiryMargin = time.Minute
	// revokeTimeout bounds one revocation, also at Close.
	revokeTimeout = 5 * time.Second
)

// leaseBook tracks the expiring credentials of one cache entry and runs the
// keeper goroutine that renews, retires and revokes them.
//
// The leases are the entry's, shared by every connector on it, so what
// happens to them (renewals, revocations) is told to every open connector:
// counted in each one's Stats, logged once to each distinct logger. The
// keeper's refresh ahead is a store call made for them all; it is counted
// and logged as the oldest open connector's. A closed connector hears of
// nothing more.
type leaseBook struct {
	secretID string
	leaser   Leaser // nil if the provider cannot renew or revoke
	life     *lifetime
	// refresh starts a background fetch of the configured stage (the
	// store's), when the current lease is due for replacement.
	refresh func(time.Time, policy)

	mu      sync.Mutex // never held while calling another part
	all     map[*Credentials]*lease
	current *lease
	running bool
	users   []policy      // of the open connectors, oldest first
	wake    chan struct{} // buffered: a change the keeper should look at
}

// lease is one expiring credential and the connections made with it.
type lease struct {
	creds  *Credentials
	life   time.Duration // the duration granted at issue
	margin time.Duration
	// refreshAt is when a newer one is fetched, if this is current; zero
	// while renewals can still extend it (renew first: a new lease is a new
	// database role, a renewal is not).
	refreshAt time.Time
	retireAt  atomic.Int64
	// guarded by leaseBook.mu
	expires    time.Time
	capped     bool // renewals reached the store's maximum, or it cannot be renewed
	conns      map[*leaseConn]struct{}
	dialing    int
	nextRenew  time.Time
	renewFails int
	renewing   bool
}

func newLeaseBook(secretID string, p Provider, life *lifetime) *leaseBook {
	b := &leaseBook{secretID: secretID, life: life, all: map[*Credentials]*lease{}, wake: make(chan struct{}, 1)}
	b.leaser, _ = p.(Leaser)
	return b
}

// expiryMargin is the margin for a credential of life d.
func expiryMargin(configured, d time.Duration) time.Duration {
	if configured > 0 {
		return configured
	}
	return min(max(d/10, minExpiryMargin), maxExpiryMargin)
}

// adopt records freshly fetched expiring credentials as the ones new
// connections use.
func (b *leaseBook) adopt(c *Credentials, pol policy) {
	b.mu.Lock()
	l := b.all[c]
	if l != nil {
		b.current = l // a login opened it already: keep its connections' count
	} else {
		b.addLocked(c, pol, true)
	}
	b.mu.Unlock()
	if l == nil {
		b.tell(Event{Kind: KindLeaseIssued, Stage: c.Stage, VersionID: c.VersionID, LeaseID: c.LeaseID, User: c.Username,
			Expires: c.Expires})
	}
	b.startKeeper()
	b.poke()
}

// startKeeper starts the keeper goroutine unless it runs.
func (b *leaseBook) startKeeper() {
	b.mu.Lock()
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start && !b.life.spawn(b.keep) {
		b.mu.Lock()
		b.running = false // the entry is closed
		b.mu.Unlock()
	}
}

func (b *leaseBook) addLocked(c *Credentials, pol policy, current bool) *lease {
	now := time.Now()
	life := c.Expires.Sub(now)
	if life <= 0 {
		life = time.Millisecond
	}
	l := &lease{creds: c, life: life, margin: expiryMargin(pol.margin, life), expires: c.Expires,
		conns: map[*leaseConn]struct{}{}, capped: !c.Renewable || b.leaser == nil}
	if l.capped {
		l.refreshAt = now.Add(time.Duration(float64(life) * (0.6 + 0.1*rand.Float64())))
	}
	l.nextRenew = now.Add(life / 2)
	l.retireAt.Store(c.Expires.Add(-l.margin).UnixNano())
	b.all[c] = l
	if current {
		b.current = l
	}
	return l
}

// refreshDue reports whether a newer lease should be fetched at now.
func (l *lease) refreshDue(now time.Time) bool {
	return !l.refreshAt.IsZero() && !now.Before(l.refreshAt)
}

// planRefresh has a newer lease fetched after d, unless one is planned
// sooner. Called with leaseBook.mu held.
func (l *lease) planRefresh(now time.Time, d time.Duration) {
	if at := now.Add(max(d, 0)); l.refreshAt.IsZero() || at.Before(l.refreshAt) {
		l.refreshAt = at
	}
}

// join registers an open connector; leave forgets it (pol.obs tells
// which). Connectors join when created and leave once closed.
func (b *leaseBook) join(pol policy) {
	b.mu.Lock()
	b.users = append(b.users, pol)
	b.mu.Unlock()
}

func (b *leaseBook) leave(pol policy) {
	b.mu.Lock()
	b.users = slices.DeleteFunc(b.users, func(u policy) bool { return u.obs == pol.obs })
	b.mu.Unlock()
}

// tell reports an event of the entry's leases to every open connector
// (see fanOut). Called without b.mu.
func (b *leaseBook) tell(e Event) {
	b.mu.Lock()
	all := make([]*observers, len(b.users))
	for i, u := range b.users {
		all[i] = u.obs
	}
	b.mu.Unlock()
	e.SecretID = b.secretID
	fanOut(context.Background(), all, e)
}

// discard revokes expiring credentials that were fetched but will never be
// used (a hedged request that lost).
func (b *leaseBook) discard(c *Credentials) {
	if b.leaser == nil || c.LeaseID == "" {
		return
	}
	if !b.life.spawn(func() { b.revoke(context.Background(), c, "unused") }) {
		// The entry is closing, and waits for the caller's goroutine.
		b.revoke(context.Background(), c, "unused")
	}
}

// usable reports whether c may be given to a new connection now, and
// whether a refresh ahead is due.
func (b *leaseBook) usable(c *Credentials, now time.Time) (ok, refresh bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.all[c]
	if l == nil {
		return false, true
	}
	return now.UnixNano() < l.retireAt.Load(), b.current == l && l.refreshDue(now)
}

// open registers a login about to be made with c; the lease is not revoked
// while it runs. Credentials the cache does not hold as current (a
// version recovery found) are added as superseded ones.
func (b *leaseBook) open(c *Credentials, pol policy) *lease {
	b.mu.Lock()
	l := b.all[c]
	if l == nil {
		l = b.addLocked(c, pol, false)
	}
	l.dialing++
	b.mu.Unlock()
	b.startKeeper()
	return l
}

// opened wraps a connection made with l for the connector whose counters
// are stats; failed ends a login that did not produce one.
func (b *leaseBook) opened(l *lease, conn driver.Conn, obs *observers) *leaseConn {
	lc := newLeaseConn(conn, b, l, obs)
	b.mu.Lock()
	l.dialing--
	l.conns[lc] = struct{}{}
	b.mu.Unlock()
	return lc
}

func (b *leaseBook) failed(l *lease) {
	b.mu.Lock()
	l.dialing--
	b.mu.Unlock()
	b.poke()
}

func (b *leaseBook) closed(lc *leaseConn) {
	b.mu.Lock()
	delete(lc.l.conns, lc)
	b.mu.Unlock()
	b.poke()
}

func (b *leaseBook) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// expires is c's current end (renewals move it).
func (b *leaseBook) expires(c *Credentials) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.all[c]; l != nil {
		return l.expires
	}
	return c.Expires
}

// held is the number of leases the book holds (not yet revoked or expired).
func (b *leaseBook) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.all)
}

// keep is the keeper goroutine: it runs until the entry closes (release
// then revokes what is left, once every goroutine that could still add a
// lease has stopped).
func (b *leaseBook) keep() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := b.step(time.Now())
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-b.wake:
		case <-b.life.ctx.Done():
			return
		}
	}
}

// step does what is due at now and returns when to look again.
func (b *leaseBook) step(now time.Time) time.Time {
	next := now.Add(time.Minute)
	soon := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	var revoke []*Credentials
	var renew []*lease
	var retire []*leaseConn
	refresh := false
	b.mu.Lock()
	for c, l := range b.all {
		inUse := len(l.conns) > 0 || l.dialing > 0
		retireAt := time.Unix(0, l.retireAt.Load())
		switch {
		case l != b.current && !inUse:
			// Superseded and unused: end it now rather than at expiry.
			delete(b.all, c)
			if now.Before(l.expires) {
				revoke = append(revoke, c)
			}
			continue
		case !now.Before(l.expires) && !inUse:
			delete(b.all, c) // the current lease ran out unused; nothing left to revoke
			if b.current == l {
				b.current = nil
			}
			continue
		}
		if !now.Before(retireAt) {
			for lc := range l.conns {
				retire = append(retire, lc)
			}
			// Busy connections retire when they are returned; look again
			// in a while for those left idle.
			soon(now.Add(l.margin / 4))
		} else {
			soon(retireAt)
		}
		// Renew first: a lease with connections, and the current one (the
		// next connections' lease), is renewed while renewals extend it.
		if !l.capped && (inUse || l == b.current) && !l.renewing {
			if !now.Before(l.nextRenew) {
				l.renewing = true
				renew = append(renew, l)
			} else {
				soon(l.nextRenew)
			}
		}
		if l == b.current && !l.refreshAt.IsZero() {
			if l.refreshDue(now) {
				refresh = true
				// Try again after the pacing interval if no newer one came.
				l.refreshAt = now.Add(minCallInterval)
			}
			soon(l.refreshAt)
		}
	}
	var pol policy
	if len(b.users) > 0 {
		pol = b.users[0]
	} else {
		refresh = false // every connector is closing: nobody needs a newer lease
	}
	b.mu.Unlock()

	for _, lc := range retire {
		lc.retireIdle()
	}
	for _, c := range revoke {
		c := c
		if !b.life.spawn(func() { b.revoke(b.life.ctx, c, "superseded") }) {
			b.revoke(context.Background(), c, "superseded") // closing: release waits for the keeper
		}
	}
	for _, l := range renew {
		l := l
		if !b.life.spawn(func() { b.renew(l) }) {
			b.mu.Lock()
			l.renewing = false
			b.mu.Unlock()
		}
	}
	if refresh {
		b.refresh(now, pol)
	}
	return next
}

// renew extends l by its original life.
func (b *leaseBook) renew(l *lease) {
	ctx, cancel := context.WithTimeout(b.life.ctx, storeTimeout)
	asked := time.Now()
	inc := max(l.life.Round(time.Second), time.Second) // stores count in seconds
	exp, err := b.leaser.Renew(ctx, l.creds, inc)
	cancel()
	b.mu.Lock()
	if err != nil {
		if b.life.ctx.Err() != nil {
			l.renewing = false
			b.mu.Unlock()
			return
		}
		l.renewFails++
		// A new lease now (jittered across processes): this one may not
		// last.
		l.planRefresh(time.Now(), time.Duration(rand.Int64N(int64(minCallInterval))))
		if errors.Is(err, ErrSecretNotFound) {
			// The store no longer knows the lease (revoked by someone
			// else): its role is gone, so its connections retire now.
			l.capped = true
			l.expires = time.Now()
			l.retireAt.Store(l.expires.UnixNano())
		} else {
			l.nextRenew = time.Now().Add(backoff(backoffBase, max(min(l.life/4, 30*time.Second), backoffBase), l.renewFails))
		}
		expires := l.expires
		l.renewing = false
		b.mu.Unlock()
		b.poke()
		b.tell(Event{Kind: KindLeaseRenewFailed, LeaseID: l.creds.LeaseID, User: l.creds.Username, Err: err,
			Outcome: ErrorClass(err), Expires: expires})
		return
	}
	l.renewFails = 0
	if exp.After(l.expires) {
		l.expires = exp
		l.retireAt.Store(exp.Add(-l.margin).UnixNano())
	}
	// A lease extended by less than asked (Vault counts whole seconds)
	// reached its maximum and will not move again.
	capped := exp.Before(asked.Add(inc - 500*time.Millisecond))
	if capped {
		// Renewals reached the role's max_ttl: the next connections get a
		// new lease, fetched well before this one's connections retire.
		l.capped = true
		now := time.Now()
		l.planRefresh(now, time.Duration(float64(l.expires.Sub(now))*(0.3+0.1*rand.Float64())))
	}
	l.nextRenew = l.expires.Add(-l.life / 2)
	expires := l.expires
	l.renewing = false
	b.mu.Unlock()
	b.poke()
	if capped {
		b.tell(Event{Kind: KindLeaseCapped, LeaseID: l.creds.LeaseID, User: l.creds.Username, Expires: exp})
	}
	b.tell(Event{Kind: KindLeaseRenewed, LeaseID: l.creds.LeaseID, User: l.creds.Username, Expires: expires})
}

// revoke ends one lease at the store.
func (b *leaseBook) revoke(parent context.Context, c *Credentials, why string) {
	if b.leaser == nil || c.LeaseID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), revokeTimeout)
	defer cancel()
	if err := b.leaser.Revoke(ctx, c); err != nil {
		b.tell(Event{Kind: KindLeaseRevokeFailed, LeaseID: c.LeaseID, User: c.Username, Reason: why, Err: err,
			Outcome: ErrorClass(err)})
		return
	}
	b.tell(Event{Kind: KindLeaseRevoked, LeaseID: c.LeaseID, User: c.Username, Reason: why})
}

// revokeAll revokes every lease still held; the entry has closed and its
// goroutines have stopped.
func (b *leaseBook) revokeAll() {
	b.mu.Lock()
	var all []*Credentials
	now := time.Now()
	for c, l := range b.all {
		if now.Before(l.expires) {
			all = append(all, c)
		}
	}
	b.all = map[*Credentials]*lease{}
	b.current = nil
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.revoke(context.Background(), c, "closed")
		}()
	}
	wg.Wait()
}

// leaseConn is an engine's connection made with expiring credentials. It
// declines reuse once its lease is within the expiry margin of its end,
// and closes itself if idle then.
//
// database/sql says when it hands a connection out (ResetSession) and gets
// it back (IsValid), but not for a new one: its opener may park a new
// connection unused in the pool, and hand it out later with neither call.
// So a connection starts idle, and the first use that database/sql makes
// of it without ResetSession checks it as ResetSession would.
type leaseConn struct {
	conn   driver.Conn
	q      driver.QueryerContext
	x      driver.ExecerContext
	p      driver.ConnPrepareContext
	bt     driver.ConnBeginTx
	book   *leaseBook
	l      *lease
	obs    *observers // of the connector that made it
	owner  *Connector // closed with the connection (Driver.Open), or nil
	mu     sync.Mutex
	busy   atomic.Bool // in use: written under mu, read without it on the query path
	closed bool
	once   sync.Once
}

func newLeaseConn(conn driver.Conn, b *leaseBook, l *lease, obs *observers) *leaseConn {
	lc := &leaseConn{conn: conn, book: b, l: l, obs: obs}
	lc.q, _ = conn.(driver.QueryerContext)
	lc.x, _ = conn.(driver.ExecerContext)
	lc.p, _ = conn.(driver.ConnPrepareContext)
	lc.bt, _ = conn.(driver.ConnBeginTx)
	return lc
}

// retired tells the connection's connector that it retires it.
func (lc *leaseConn) retired() {
	lc.obs.emit(context.Background(), Event{Kind: KindConnRetired, SecretID: lc.book.secretID, LeaseID: lc.l.creds.LeaseID,
		VersionID: lc.l.creds.VersionID, Expires: time.Unix(0, lc.l.retireAt.Load())})
}

func (lc *leaseConn) expired() bool { return time.Now().UnixNano() >= lc.l.retireAt.Load() }

// retireIdle closes the connection if database/sql is not using it.
func (lc *leaseConn) retireIdle() {
	lc.mu.Lock()
	if lc.busy.Load() || lc.closed {
		lc.mu.Unlock()
		return
	}
	lc.closed = true
	lc.mu.Unlock()
	lc.retired()
	_ = lc.conn.Close()
	lc.once.Do(func() { lc.book.closed(lc) })
}

// use marks the connection in use at the start of every call database/sql
// makes on it. Handed out without ResetSession while idle, it is checked
// first: one closed while idle, or within the margin of its lease's end,
// is refused with driver.ErrBadConn before anything is sent, so that
// database/sql takes another.
func (lc *leaseConn) use() error {
	if lc.busy.Load() {
		return nil
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closed {
		return driver.ErrBadConn
	}
	if lc.expired() {
		lc.retired()
		return driver.ErrBadConn
	}
	lc.busy.Store(true)
	return nil
}

// IsValid is called by database/sql when the connection is returned to the
// pool.
func (lc *leaseConn) IsValid() bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.busy.Store(false)
	if lc.closed {
		return false
	}
	if lc.expired() {
		lc.retired()
		return false
	}
	if v, ok := lc.conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// ResetSession is called by database/sql before it reuses the connection.
func (lc *leaseConn) ResetSession(ctx context.Context) error {
	lc.mu.Lock()
	if lc.closed {
		lc.mu.Unlock()
		return driver.ErrBadConn
	}
	if lc.expired() {
		lc.mu.Unlock()
		lc.retired()
		return driver.ErrBadConn
	}
	lc.busy.Store(true)
	lc.mu.Unlock()
	if r, ok := lc.conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// Close closes the underlying connection once, and the connector that
// owns it, if any.
func (lc *leaseConn) Close() error {
	lc.mu.Lock()
	already := lc.closed
	lc.closed = true
	lc.mu.Unlock()
	var err error
	if !already {
		err = lc.conn.Close()
	}
	lc.once.Do(func() { lc.book.closed(lc) })
	if lc.owner != nil {
		// Only here, never in retireIdle: closing the last connector waits
		// for the keeper, which runs retireIdle.
		_ = lc.owner.Close()
	}
	return err
}

func (lc *leaseConn) Prepare(query string) (driver.Stmt, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	return lc.conn.Prepare(query)
}

func (lc *leaseConn) Begin() (driver.Tx, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	return lc.conn.Begin() //nolint:staticcheck // driver.Conn requires it
}

func (lc *leaseConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	if lc.p == nil {
		return lc.conn.Prepare(query)
	}
	return lc.p.PrepareContext(ctx, query)
}

func (lc *leaseConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	if lc.bt == nil {
		return nil, errors.New("pgsecrets: the connection cannot begin transactions with options")
	}
	return lc.bt.BeginTx(ctx, opts)
}

func (lc *leaseConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	if lc.q == nil {
		return nil, driver.ErrSkip
	}
	return lc.q.QueryContext(ctx, query, args)
}

func (lc *leaseConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := lc.use(); err != nil {
		return nil, err
	}
	if lc.x == nil {
		return nil, driver.ErrSkip
	}
	return lc.x.ExecContext(ctx, query, args)
}

func (lc *leaseConn) Ping(ctx context.Context) error {
	if err := lc.use(); err != nil {
		return err
	}
	if p, ok := lc.conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// CheckNamedValue keeps the engine's argument conversions (lib/pq's arrays,
// pgx's types) working through the wrapper.
func (lc *leaseConn) CheckNamedValue(nv *driver.NamedValue) error {
	if c, ok := lc.conn.(driver.NamedValueChecker); ok {
		return c.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

var (
	_ driver.Conn               = (*leaseConn)(nil)
	_ driver.Validator          = (*leaseConn)(nil)
	_ driver.SessionResetter    = (*leaseConn)(nil)
	_ driver.QueryerContext     = (*leaseConn)(nil)
	_ driver.ExecerContext      = (*leaseConn)(nil)
	_ driver.ConnPrepareContext = (*leaseConn)(nil)
	_ driver.ConnBeginTx        = (*leaseConn)(nil)
	_ driver.Pinger             = (*leaseConn)(nil)
	_ driver.NamedValueChecker  = (*leaseConn)(nil)
)
