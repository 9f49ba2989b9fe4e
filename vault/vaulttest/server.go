package vaulttest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// ErrClosed is returned by the waiting methods ([Server.WaitCalls],
// [Server.WaitLeaseRevoked], [Server.WaitStaticRotations]) when the server
// is closed before what they wait for happens.
var ErrClosed = errors.New("vaulttest: server closed")

// Server is a fake Vault listening on 127.0.0.1. Create one with [NewServer]
// or [Start]. All methods are safe for concurrent use, including while
// requests are being served.
type Server struct {
	hs        *httptest.Server
	log       *slog.Logger
	namespace string // required X-Vault-Namespace; "" accepts any
	root      *token

	// ctx ends when Close starts. It bounds every statement sent to
	// PostgreSQL, so that Close never waits for a slow database.
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	closing   chan struct{} // closed when Close starts
	kick      chan struct{} // wakes the scheduler when deadlines change
	wg        sync.WaitGroup

	mu         sync.Mutex
	tokens     map[string]*token // by id
	byAccessor map[string]*token
	policies   map[string][]string
	authMounts map[string]*authMount
	mounts     map[string]*mount
	leases     map[string]*lease
	calls      map[string]int
	total      int
	namespaces map[string]int
	logins     map[string]int
	changed    chan struct{} // closed and replaced whenever state changes
	faults     []*faultEntry
	faultSeq   uint64
	observer   func(op, path string)
}

// Option configures a [Server].
type Option func(*Server)

// WithLogger makes the server log each request (at Debug), revocations and
// rotations (Info) and failures of PostgreSQL statements (Warn) to l. The
// default discards everything. No token, password, secret ID or JWT is ever
// logged, so the output is safe to show in test logs.
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithNamespace makes the server behave as the Vault Enterprise namespace ns
// (such as "team-a" or "team-a/app"): every request, logins included, must
// carry the header X-Vault-Namespace with that value (leading and trailing
// slashes do not matter), as the client's SetNamespace sends it. Other
// requests get 403 permission denied, which is what Vault answers when a
// token is presented to a namespace it does not belong to. Without this
// option the header is only recorded (see [Server.Namespaces]). Vault's
// other spelling, the namespace as a prefix of the path, is not supported.
func WithNamespace(ns string) Option {
	return func(s *Server) { s.namespace = normalizeNamespace(ns) }
}

// NewServer starts a server on 127.0.0.1 with a random port. Call
// [Server.Close] when done, or use [Start] in tests.
func NewServer(opts ...Option) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:        slog.New(slog.DiscardHandler),
		ctx:        ctx,
		cancel:     cancel,
		closing:    make(chan struct{}),
		kick:       make(chan struct{}, 1),
		tokens:     make(map[string]*token),
		byAccessor: make(map[string]*token),
		policies:   make(map[string][]string),
		authMounts: make(map[string]*authMount),
		mounts:     make(map[string]*mount),
		leases:     make(map[string]*lease),
		calls:      make(map[string]int),
		namespaces: make(map[string]int),
		logins:     make(map[string]int),
		changed:    make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	s.mu.Lock()
	s.root = s.newTokenLocked(TokenOptions{Policies: []string{"root"}}, "root", "auth/token/root", nil)
	s.mu.Unlock()
	s.hs = httptest.NewServer(s)
	s.wg.Add(1)
	go s.schedule()
	return s
}

// Start is [NewServer] for tests: it registers [Server.Close] with
// tb.Cleanup.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := NewServer(opts...)
	tb.Cleanup(s.Close)
	return s
}

// URL returns the server's base URL, such as http://127.0.0.1:40123: the
// client's Config.Address (or VAULT_ADDR).
func (s *Server) URL() string { return s.hs.URL }

// Close shuts the server down. Requests held by a FaultHang or FaultLatency
// fault are released first (with 503), statements still running in
// PostgreSQL are canceled, and the lease and rotation timers stop; Close
// returns once no goroutine of the server is left. It may be called more
// than once.
//
// Close does not revoke outstanding leases: their roles stay in PostgreSQL
// until their VALID UNTIL time passes (5 s after the lease end), as when a
// real Vault is stopped. Revoke them first with [Server.RevokeLease] or
// [Server.RevokeToken] if the test needs them gone. The Go methods reading
// state ([Server.Leases] and so on) keep working after Close.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.cancel()
		s.hs.Close()
		s.wg.Wait()
		s.mu.Lock()
		s.broadcastLocked()
		s.mu.Unlock()
	})
}

func (s *Server) isClosed() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// broadcastLocked wakes everyone waiting for a state change.
func (s *Server) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitFor blocks until cond (called with s.mu held) is true, ctx ends or the
// server closes.
func (s *Server) waitFor(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			s.mu.Lock()
			ok := cond()
			s.mu.Unlock()
			if ok {
				return nil
			}
			return ErrClosed
		}
	}
}

// wake tells the scheduler that a deadline changed.
func (s *Server) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// OnRequest registers fn to be called for every request that reaches the
// server, as it is counted and before any fault takes effect, with the
// operation (one of the Op constants, or "" for a path the server does not
// know) and the Vault path (such as "database/creds/app", without /v1/ and
// query). fn runs on the request's goroutine, so it must be safe for
// concurrent use and should not block. A nil fn removes the hook.
func (s *Server) OnRequest(fn func(op, path string)) {
	s.mu.Lock()
	s.observer = fn
	s.mu.Unlock()
}

// count records one request and calls the hook.
func (s *Server) count(op, path, ns string) {
	s.mu.Lock()
	if op != "" {
		s.calls[op]++
	}
	s.total++
	s.namespaces[ns]++
	s.broadcastLocked()
	observer := s.observer
	s.mu.Unlock()
	if observer != nil {
		observer(op, path)
	}
}

// Calls returns how many requests for op reached the server since it
// started or since the last [Server.ResetCalls]. Every request counts,
// including those that were denied, failed or were answered by an injected
// fault; each retry of the client is a separate request. Calls(OpAny) (or
// Calls("")) is [Server.TotalCalls].
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsLocked(op)
}

func (s *Server) callsLocked(op string) int {
	if op == "" || op == OpAny {
		return s.total
	}
	return s.calls[op]
}

// TotalCalls returns the number of requests of any kind, including those to
// paths the server does not know.
func (s *Server) TotalCalls() int { return s.Calls(OpAny) }

// ResetCalls sets the request counters of [Server.Calls], [Server.Logins]
// and [Server.Namespaces] to zero.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	clear(s.calls)
	clear(s.logins)
	clear(s.namespaces)
	s.total = 0
	s.mu.Unlock()
}

// WaitCalls blocks until Calls(op) >= n, ctx ends, or the server is closed
// (then it returns [ErrClosed]). Tests use it to learn that a request has
// arrived, for example one that a FaultHang holds, instead of sleeping.
func (s *Server) WaitCalls(ctx context.Context, op string, n int) error {
	return s.waitFor(ctx, func() bool { return s.callsLocked(op) >= n })
}

// Namespaces returns how many requests came with each value of the header
// X-Vault-Namespace (without leading and trailing slashes; "" for requests
// without it), since the start or the last [Server.ResetCalls].
func (s *Server) Namespaces() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.namespaces))
	for k, v := range s.namespaces {
		m[k] = v
	}
	return m
}

// Logins returns how many logins succeeded at the auth mount (such as
// "approle"; "" for all mounts) since the start or the last
// [Server.ResetCalls]. [Server.Calls](OpLogin) counts attempts instead.
func (s *Server) Logins(mount string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mount == "" {
		n := 0
		for _, v := range s.logins {
			n += v
		}
		return n
	}
	return s.logins[normalizeMount(mount)]
}

func normalizeNamespace(ns string) string { return strings.Trim(ns, "/") }

func normalizeMount(m string) string { return strings.Trim(m, "/") }

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// randString returns n characters drawn uniformly from alphabet with
// crypto/rand, rejecting bytes that would bias the draw.
func randString(n int, alphabet string) string {
	limit := 256 - 256%len(alphabet)
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2+8)
	for len(out) < n {
		rand.Read(buf) // never fails (crypto/rand panics instead)
		for _, b := range buf {
			if int(b) < limit {
				out = append(out, alphabet[int(b)%len(alphabet)])
				if len(out) == n {
					break
				}
			}
		}
	}
	return string(out)
}

// newUUID returns a random (version 4) UUID, the format of Vault's request
// ids and accessors of some kinds.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// seconds is a duration as Vault reports it: whole seconds, rounded down.
func seconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(d / time.Second)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
