package pgsecrets

import (
	"context"
	"io"
	"sync"
)

// entries holds the cache entries shared by every connector of the
// process, keyed by provider identity, secret, stage and JSON keys.
var entries = struct {
	sync.Mutex
	m map[string]*entry
}{m: map[string]*entry{}}

// entry is what every connector of the process on one secret shares: the
// store-call side (store.go), the cached credentials (cache.go), the lease
// book (lease.go) and one recovery target per database (target.go). Each
// part owns its state and its lock, and none of them holds its lock while
// it calls another, so there is no lock order to keep. The entry itself
// only counts its connectors and owns the goroutines of its parts
// (lifetime).
type entry struct {
	key  string // in entries
	refs int    // guarded by entries

	life    *lifetime
	store   *store
	cache   *cache
	leases  *leaseBook
	targets sync.Map // database (server.key) → *target
}

func acquireEntry(key, secretID, stage string, p Provider) *entry {
	entries.Lock()
	defer entries.Unlock()
	if e, ok := entries.m[key]; ok {
		e.refs++
		if c, ok := p.(io.Closer); ok && p != e.store.provider {
			_ = c.Close() // the entry's own provider serves this connector
		}
		return e
	}
	e := &entry{key: key, refs: 1, life: newLifetime(), cache: &cache{}}
	e.leases = newLeaseBook(secretID, p, e.life)
	e.store = newStore(secretID, stage, p, e.life, e)
	e.leases.refresh = e.store.refresh
	entries.m[key] = e
	return e
}

// fetched records a successful call of the configured stage: the lease
// book takes a new lease, then the cache the new version (in that order:
// a caller that finds a lease in the cache finds it in the book).
func (e *entry) fetched(creds *Credentials, pol policy) {
	if creds.expiring() {
		e.leases.adopt(creds, pol)
	}
	prev := e.cache.record(creds)
	if prev != nil && prev.VersionID != creds.VersionID {
		pol.obs.emit(context.Background(), Event{Kind: KindRotation, SecretID: e.store.secretID, Stage: creds.Stage,
			VersionID: creds.VersionID, PreviousVersionID: prev.VersionID})
	}
}

func (e *entry) discard(c *Credentials) { e.leases.discard(c) }

func (e *entry) cached() (string, bool) {
	if c := e.cache.current(); c != nil {
		return c.VersionID, true
	}
	return "", false
}

// release drops one reference; the last one stops the entry's goroutines,
// waits for them, revokes the leases left and closes the provider.
func (e *entry) release() {
	entries.Lock()
	e.refs--
	last := e.refs == 0
	if last {
		delete(entries.m, e.key)
	}
	entries.Unlock()
	if !last {
		return
	}
	e.life.end()
	e.leases.revokeAll()
	if c, ok := e.store.provider.(io.Closer); ok {
		_ = c.Close()
	}
}

// lifetime owns the goroutines of one entry: fetches, background
// refreshes, recoveries, the lease keeper. ctx ends when the last
// connector closes; end then waits for every goroutine.
type lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // makes closed and wg.Add one step, so Add never races with Wait
	closed bool
}

func newLifetime() *lifetime {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifetime{ctx: ctx, cancel: cancel}
}

// spawn runs fn in a goroutine that end waits for, unless the entry has
// ended (then it reports false and fn does not run).
func (l *lifetime) spawn(fn func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn()
	}()
	return true
}

// end cancels ctx and waits for every goroutine spawned.
func (l *lifetime) end() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}
