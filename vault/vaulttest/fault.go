package vaulttest

import (
	"fmt"
	"net/http"
	"time"
)

// Operations, for [Server.Inject], [Server.Calls] and [Server.OnRequest].
// Each names one kind of request, whatever its mount.
const (
	// OpAny matches every request in Inject and counts all in Calls.
	OpAny = "*"
	// OpCreds is GET <mount>/creds/<role> (dynamic database credentials).
	OpCreds = "creds"
	// OpRenew is PUT sys/leases/renew (or the old sys/renew).
	OpRenew = "renew"
	// OpRevoke is PUT sys/leases/revoke (or the old sys/revoke).
	OpRevoke = "revoke"
	// OpLookup is PUT sys/leases/lookup.
	OpLookup = "lookup"
	// OpTokenLookup is GET auth/token/lookup-self.
	OpTokenLookup = "token-lookup-self"
	// OpTokenRenew is PUT auth/token/renew-self.
	OpTokenRenew = "token-renew-self"
	// OpTokenRevoke is PUT auth/token/revoke-self.
	OpTokenRevoke = "token-revoke-self"
	// OpLogin is PUT auth/<mount>/login, for AppRole and Kubernetes alike.
	OpLogin = "login"
	// OpStaticCreds is GET <mount>/static-creds/<role>.
	OpStaticCreds = "static-creds"
	// OpRotateRole is PUT <mount>/rotate-role/<role>.
	OpRotateRole = "rotate-role"
	// OpKVRead is GET <mount>/data/<path> of a KV version 2 mount.
	OpKVRead = "kv-read"
	// OpKVWrite is PUT <mount>/data/<path> of a KV version 2 mount.
	OpKVWrite = "kv-write"
)

// FaultKind says what an injected [Fault] does to a request.
type FaultKind int

// Fault kinds.
const (
	// FaultError answers with Fault.Status (503 if zero) and Vault's error
	// body {"errors":[Message]}. The client retries 5xx answers unless its
	// MaxRetries is 0.
	FaultError FaultKind = iota + 1
	// FaultLatency waits Fault.Delay, then lets the request go on: later
	// faults may still apply, otherwise it is served normally. If the server
	// closes meanwhile, the answer is 503.
	FaultLatency
	// FaultHang holds the request until the client gives up (its context
	// ends) or the server closes (then it answers 503), to test client
	// timeouts.
	FaultHang
	// FaultDrop closes the connection without an answer, as when Vault or a
	// load balancer in front of it dies mid-request.
	FaultDrop
)

var faultKindNames = map[FaultKind]string{
	FaultError:   "FaultError",
	FaultLatency: "FaultLatency",
	FaultHang:    "FaultHang",
	FaultDrop:    "FaultDrop",
}

// String returns the kind's name, such as "FaultHang".
func (k FaultKind) String() string {
	if n, ok := faultKindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault describes a failure to inject with [Server.Inject].
type Fault struct {
	// Kind is what happens to a matching request. Required.
	Kind FaultKind
	// Status is the HTTP status of a FaultError; 0 means 503, which Vault
	// answers when sealed or in standby without a leader.
	Status int
	// Message is the error text of a FaultError. The default depends on
	// Status: "Vault is sealed" for 503, "internal error" for 500, else the
	// status text.
	Message string
	// Delay is how long a FaultLatency waits. On FaultError and FaultDrop it
	// is waited before the fault takes effect.
	Delay time.Duration
	// Count limits the fault to the next Count matching requests; 0 means
	// until it is removed.
	Count int
}

type faultEntry struct {
	id        uint64
	op        string
	f         Fault
	remaining int // 0: unlimited
}

// Inject adds a fault for requests of op (one of the Op constants; OpAny
// for all) and returns a function that removes it (calling it again is
// harmless). Faults apply before the token is checked, so they also hit
// requests that would be denied, as an outage of Vault would. They are
// considered in the order injected: each matching FaultLatency applies in
// turn, and the first matching fault of another kind decides the answer.
// Requests are counted by [Server.Calls] whether or not a fault applies.
// Inject panics if f.Kind is not a known kind.
func (s *Server) Inject(op string, f Fault) (remove func()) {
	if _, ok := faultKindNames[f.Kind]; !ok {
		panic(fmt.Sprintf("vaulttest: Inject: invalid fault kind %v", f.Kind))
	}
	if op == "" {
		op = OpAny
	}
	s.mu.Lock()
	s.faultSeq++
	e := &faultEntry{id: s.faultSeq, op: op, f: f, remaining: max(f.Count, 0)}
	s.faults = append(s.faults, e)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.removeFaultLocked(e.id)
		s.mu.Unlock()
	}
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

func (s *Server) removeFaultLocked(id uint64) {
	for i, e := range s.faults {
		if e.id == id {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			return
		}
	}
}

// takeFaults returns the faults that apply to one request, using up their
// Count.
func (s *Server) takeFaults(op string) []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Fault
	for i := 0; i < len(s.faults); i++ {
		e := s.faults[i]
		if e.op != OpAny && e.op != op {
			continue
		}
		out = append(out, e.f)
		if e.remaining > 0 {
			e.remaining--
			if e.remaining == 0 {
				s.removeFaultLocked(e.id)
				i--
			}
		}
		if e.f.Kind != FaultLatency {
			break
		}
	}
	return out
}

// applyFaults carries out the faults of one request. It reports whether the
// request was answered (or its connection dropped) and must not be served.
func (s *Server) applyFaults(w http.ResponseWriter, r *http.Request, faults []Fault) bool {
	for _, f := range faults {
		if f.Kind != FaultHang && f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				panic(http.ErrAbortHandler)
			case <-s.closing:
				t.Stop()
				writeError(w, http.StatusServiceUnavailable, "Vault is sealed")
				return true
			}
		}
		switch f.Kind {
		case FaultLatency:
			continue
		case FaultHang:
			select {
			case <-r.Context().Done():
				panic(http.ErrAbortHandler)
			case <-s.closing:
				writeError(w, http.StatusServiceUnavailable, "Vault is sealed")
			}
			return true
		case FaultDrop:
			// net/http closes the connection without writing anything and
			// without logging when a handler panics with this value.
			panic(http.ErrAbortHandler)
		case FaultError:
			status := f.Status
			if status == 0 {
				status = http.StatusServiceUnavailable
			}
			msg := f.Message
			if msg == "" {
				switch status {
				case http.StatusServiceUnavailable:
					msg = "Vault is sealed"
				case http.StatusInternalServerError:
					msg = "internal error"
				default:
					msg = http.StatusText(status)
				}
			}
			writeError(w, status, msg)
			return true
		}
	}
	return false
}
