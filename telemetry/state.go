package telemetry

import (
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// secKey names one secret of one provider: the series of the observable
// instruments.
type secKey struct{ provider, secret string }

// secState is what the observable instruments report for one secret.
type secState struct {
	breakerOpen  atomic.Int64
	storeFailing atomic.Int64
	expiry       atomic.Pointer[expiry] // nil: nothing served yet, or credentials that do not expire
	renewed      atomic.Pointer[expiry] // the latest renewal's version and end
	leasesSeen   atomic.Bool
}

// expiry is the end of the credentials the latest connection got.
type expiry struct {
	version string
	at      time.Time
}

// leaseInfo is one lease held.
type leaseInfo struct {
	key     secKey
	version string
	expires time.Time
}

// state is an instrument set's memory: per secret for the observable
// instruments, the leases held, and the last event of each shared stream
// (see first).
type state struct {
	secrets sync.Map // secKey → *secState

	mu     sync.Mutex
	leases map[string]leaseInfo // by lease id
	last   map[streamKey]fingerprint
}

func newState() *state {
	return &state{leases: map[string]leaseInfo{}, last: map[streamKey]fingerprint{}}
}

func (s *state) secret(k secKey) *secState {
	if v, ok := s.secrets.Load(k); ok {
		return v.(*secState)
	}
	v, _ := s.secrets.LoadOrStore(k, &secState{})
	return v.(*secState)
}

// served records the end of the credentials a new connection got. Renewals
// move a lease's end beyond the one its credentials were fetched with, so
// for the same version the later end stands.
func (s *state) served(k secKey, version string, at time.Time) {
	ss := s.secret(k)
	if at.IsZero() {
		if ss.expiry.Load() != nil {
			ss.expiry.Store(nil)
		}
		return
	}
	if r := ss.renewed.Load(); r != nil && r.version == version && r.at.After(at) {
		at = r.at
	}
	for {
		cur := ss.expiry.Load()
		if cur != nil && cur.version == version && !at.After(cur.at) {
			return
		}
		if ss.expiry.CompareAndSwap(cur, &expiry{version: version, at: at}) {
			return
		}
	}
}

// lease applies a lease event to the leases held and to the expiry of the
// credentials served.
func (s *state) lease(k secKey, e pgsecrets.Event) {
	if e.LeaseID == "" {
		return
	}
	ss := s.secret(k)
	ss.leasesSeen.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	l, held := s.leases[e.LeaseID]
	switch e.Kind {
	case pgsecrets.KindLeaseIssued:
		s.leases[e.LeaseID] = leaseInfo{key: k, version: e.VersionID, expires: e.Expires}
	case pgsecrets.KindLeaseRenewed, pgsecrets.KindLeaseCapped, pgsecrets.KindLeaseRenewFailed:
		if !held || e.Expires.IsZero() {
			return
		}
		l.expires = e.Expires
		s.leases[e.LeaseID] = l
		if l.version != "" {
			ss.renewed.Store(&expiry{version: l.version, at: e.Expires})
		}
		if cur := ss.expiry.Load(); cur != nil && cur.version == l.version && l.version != "" {
			ss.expiry.Store(&expiry{version: l.version, at: e.Expires})
		}
	case pgsecrets.KindLeaseRevoked:
		if !held {
			return
		}
		delete(s.leases, e.LeaseID)
		// Revoked credentials no longer serve anything.
		if cur := ss.expiry.Load(); cur != nil && cur.version == l.version && l.version != "" {
			ss.expiry.CompareAndSwap(cur, nil)
		}
	}
}

// observe reports every secret's state at now to f, forgetting leases past
// their end (they end without an event).
func (s *state) observe(now time.Time, f func(k secKey, breakerOpen, storeFailing, leases int64, hasLeases bool, ttl float64, hasTTL bool)) {
	counts := map[secKey]int64{}
	s.mu.Lock()
	for id, l := range s.leases {
		if !now.Before(l.expires) {
			delete(s.leases, id)
			continue
		}
		counts[l.key]++
	}
	s.mu.Unlock()
	var keys []secKey
	s.secrets.Range(func(k, _ any) bool {
		keys = append(keys, k.(secKey))
		return true
	})
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].provider != keys[j].provider {
			return keys[i].provider < keys[j].provider
		}
		return keys[i].secret < keys[j].secret
	})
	for _, k := range keys {
		ss := s.secret(k)
		var ttl float64
		ex := ss.expiry.Load()
		if ex != nil {
			ttl = ex.at.Sub(now).Seconds()
		}
		f(k, ss.breakerOpen.Load(), ss.storeFailing.Load(), counts[k], ss.leasesSeen.Load(), ttl, ex != nil)
	}
}

// Shared events. The breaker and the leases belong to parts every
// connector on a secret shares, and pgsecrets hands each of their events
// to the observers of every such connector, one after the other: with
// telemetry on several of them, one instrument set would hear it several
// times. first lets through the first delivery of each: a stream (a
// secret's breaker, one lease) repeating its last event exactly is a copy.
// Real events never repeat exactly, except a breaker reopening after a
// failed probe (not a new opening, as for Stats.BreakerOpens) and a renewal
// that did not move the lease's end.

type streamKey struct {
	key   secKey
	lease string // "" for the breaker
}

type fingerprint struct {
	kind     pgsecrets.EventKind
	expires  int64
	reason   string
	sqlstate string
	duration time.Duration
	version  string
	err      any
}

// maxStreams bounds the memory of first; past it, it starts afresh (a copy
// arriving at that moment is counted twice).
const maxStreams = 4096

func (s *state) first(k secKey, e pgsecrets.Event) bool {
	sk := streamKey{key: k, lease: e.LeaseID}
	fp := fingerprint{kind: e.Kind, reason: e.Reason, sqlstate: e.SQLState, duration: e.Duration, version: e.VersionID,
		err: errIdentity(e.Err)}
	if !e.Expires.IsZero() {
		fp.expires = e.Expires.UnixNano()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.last[sk]; ok && last == fp {
		return false
	}
	if len(s.last) >= maxStreams {
		clear(s.last)
	}
	s.last[sk] = fp
	return true
}

// errIdentity is a comparable stand-in for err: the pointer itself (each
// failure is a new error value), else its text.
func errIdentity(err error) any {
	if err == nil {
		return nil
	}
	if reflect.TypeOf(err).Kind() == reflect.Pointer {
		return err
	}
	return err.Error()
}
