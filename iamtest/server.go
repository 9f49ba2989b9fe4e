// Package iamtest is an Amazon RDS IAM authentication front end for tests:
// a PostgreSQL wire-protocol server on 127.0.0.1 that accepts logins whose
// password is an RDS IAM authentication token (a SigV4-presigned
// "host:port/?Action=connect&DBUser=…" URL, as built by
// github.com/aws/aws-sdk-go-v2/feature/rds/auth.BuildAuthToken), verifies the
// token the way RDS does, and then relays the session to a real PostgreSQL
// server, logged in with that role's real password.
//
// Like RDS with rds.force_ssl, it requires TLS; its certificate (for
// localhost, 127.0.0.1 and ::1) is signed by a CA it generates, available
// as CAFile and CAPool. A refused token gets RDS's answer: FATAL "PAM
// authentication failed for user …", SQLSTATE 28000 by default.
//
// Fault knobs (RejectNext, MaxTokenAge, Throttle) simulate the ways IAM
// logins fail in production; Logins records every attempt with its outcome
// (never the token).
package iamtest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// DefaultRegion is the region tokens must be signed for when
// Options.Region is empty.
const DefaultRegion = "us-east-1"

// SQLSTATE codes the server answers with.
const (
	// CodeAuthFailed is what RDS answers a bad IAM token with:
	// invalid_authorization_specification, as PostgreSQL does for every PAM
	// failure (not 28P01, invalid_password). Options.AuthFailedCode
	// overrides it.
	CodeAuthFailed = "28000"
	// CodeTooManyConnections (too_many_connections) answers a throttled
	// login.
	CodeTooManyConnections = "53300"
	// CodeConnectionFailure (connection_failure) answers a login whose
	// token was valid but whose upstream login failed.
	CodeConnectionFailure = "08006"
)

// Credential is an AWS access key the server accepts tokens from.
type Credential struct {
	// SecretKey is the secret access key the token must be signed with.
	SecretKey string
	// SessionToken, if set, must equal the token's X-Amz-Security-Token
	// (temporary credentials); if empty the token must not have one.
	SessionToken string
}

// A Verifier decides whether a password is a valid token for a user, the
// way a cloud's database service does. The server applies MaxTokenAge,
// RejectNext and Throttle around it.
type Verifier interface {
	// Verify checks token as the password of user at now. It returns when
	// the token was issued (for MaxTokenAge), and "" if the token is valid,
	// else a Reason for the record and a detail that never holds the token
	// or a part of its signature.
	Verify(ctx context.Context, user, token string, now time.Time) (issued time.Time, reason, detail string)
}

// Options configure a Server. Upstream is required, and either Credentials
// (RDS IAM tokens) or Verifier (another cloud's tokens).
type Options struct {
	// Credentials maps access key ids to the keys the server accepts RDS
	// IAM tokens from.
	Credentials map[string]Credential

	// Verifier, if set, checks tokens instead of RDS's SigV4 verification
	// (an Entra ID or Google token issuer's Verifier); Credentials, Endpoint
	// and Region are then unused.
	Verifier Verifier

	// RefusedMessage is the message a login of user refused for reason
	// (a Reason constant) gets. Default: RDS's "PAM authentication failed
	// for user …", whatever the reason.
	RefusedMessage func(user, reason string) string

	// Upstream returns the connection string (pgx/libpq syntax) with which
	// the server logs in to the real PostgreSQL server as user, once that
	// user's token is verified. The database and run-time parameters of the
	// client's startup message override the string's.
	Upstream func(user string) (connString string, err error)

	// Endpoint is the host:port tokens must be signed for; clients sign for
	// the host they dial. Default: the listener's "127.0.0.1:PORT".
	Endpoint string

	// Region is the region tokens must be signed for. Default DefaultRegion.
	Region string

	// AuthFailedCode is the SQLSTATE of a refused token. Default
	// CodeAuthFailed ("28000", what RDS sends); set "28P01" to imitate a
	// password-authenticating server instead.
	AuthFailedCode string

	// Now is the server's clock, for token expiry, MaxTokenAge, Throttle
	// and Login.At. Default time.Now.
	Now func() time.Time

	// Logf, if set, receives one line per connection event (never a
	// token). Start defaults it to t.Logf.
	Logf func(format string, args ...any)
}

// Login is the record of one login attempt: a startup message that got as
// far as the server's authentication decision.
type Login struct {
	// User is the user of the startup message.
	User string
	// Database is the database of the startup message.
	Database string
	// Accepted says the client got a session.
	Accepted bool
	// Reason is "" for an accepted login, else one of the Reason
	// constants.
	Reason string
	// Detail explains Reason (which parameter, which host:port, which
	// access key id); it never holds the token or its signature.
	Detail string
	// At is when the server decided, by Options.Now.
	At time.Time
}

// Server is a running RDS IAM front end. Its methods are safe for
// concurrent use.
type Server struct {
	opts     Options
	ln       net.Listener
	addr     string
	endpoint string
	tls      *serverTLS
	dir      string
	caFile   string

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	conns      map[net.Conn]struct{}
	logins     []Login
	rejectNext int
	maxAge     time.Duration
	perSecond  int
	window     []time.Time // admitted logins within the last second
}

// New starts a server on 127.0.0.1:0. Call Close when done.
func New(opts Options) (*Server, error) {
	if opts.Upstream == nil {
		return nil, errors.New("iamtest: Options.Upstream is required")
	}
	if len(opts.Credentials) == 0 && opts.Verifier == nil {
		return nil, errors.New("iamtest: Options.Credentials is empty and Options.Verifier is nil")
	}
	creds := make(map[string]Credential, len(opts.Credentials))
	for k, v := range opts.Credentials {
		if k == "" || v.SecretKey == "" {
			return nil, errors.New("iamtest: empty access key id or secret key in Options.Credentials")
		}
		creds[k] = v
	}
	opts.Credentials = creds
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.AuthFailedCode == "" {
		opts.AuthFailedCode = CodeAuthFailed
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RefusedMessage == nil {
		opts.RefusedMessage = func(user, _ string) string { return fmt.Sprintf("PAM authentication failed for user %q", user) }
	}

	st, err := newServerTLS(time.Now())
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "iamtest-")
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, st.caPEM, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	s := &Server{
		opts:     opts,
		ln:       ln,
		addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port)),
		endpoint: opts.Endpoint,
		tls:      st,
		dir:      dir,
		caFile:   caFile,
		conns:    make(map[net.Conn]struct{}),
	}
	if s.endpoint == "" {
		s.endpoint = s.addr
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Start starts a server for the test and closes it in t.Cleanup. Log lines
// go to t.Logf unless opts.Logf is set. It fails the test if the server
// cannot start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr is the address the server listens on, "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.addr }

// Host is the host the server listens on, "127.0.0.1".
func (s *Server) Host() string { return "127.0.0.1" }

// Port is the port the server listens on.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Endpoint is the host:port tokens must be signed for (Options.Endpoint,
// or Addr).
func (s *Server) Endpoint() string { return s.endpoint }

// Region is the region tokens must be signed for.
func (s *Server) Region() string { return s.opts.Region }

// CAFile is the path of a PEM file with the CA that signed the server's
// certificate (for sslrootcert). It is removed by Close.
func (s *Server) CAFile() string { return s.caFile }

// CAPool is a pool holding the CA that signed the server's certificate
// (for tls.Config.RootCAs).
func (s *Server) CAPool() *x509.CertPool { return s.tls.caPool.Clone() }

// Logins returns a copy of the record of login attempts, oldest first. An
// attempt is recorded before the client gets the answer.
func (s *Server) Logins() []Login {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Login(nil), s.logins...)
}

// Refusals returns how many logins were refused for reason (a Reason
// constant) so far.
func (s *Server) Refusals(reason string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.logins {
		if !l.Accepted && l.Reason == reason {
			n++
		}
	}
	return n
}

// RejectNext makes the next n logins with a valid token fail as if the
// token were bad (ReasonInjected). n <= 0 cancels earlier calls.
func (s *Server) RejectNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectNext = max(n, 0)
}

// MaxTokenAge makes the server refuse tokens issued more than d ago even
// if they have not expired (ReasonTooOld): what happens to an RDS token
// signed with temporary credentials that expire before the token does, or
// to any token its issuer revoked early.
// d <= 0 turns it off.
func (s *Server) MaxTokenAge(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxAge = max(d, 0)
}

// Throttle limits logins to perSecond in any one-second window (by
// Options.Now); the ones beyond get SQLSTATE 53300 "rate exceeded"
// (ReasonThrottled) before they are asked for a password. Refused logins
// do not count toward the limit. 0 turns it off.
func (s *Server) Throttle(perSecond int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.perSecond = max(perSecond, 0)
	s.window = nil
}

// Close stops the listener and ends every connection, relayed or not, and
// returns when all of the server's goroutines have ended. It removes
// CAFile. Calling it again does nothing.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	s.cancel()
	s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	os.RemoveAll(s.dir)
}

// serve accepts connections until the listener is closed.
func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.isClosed() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.logf("iamtest: accept: %v", err)
			return
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.handle(c)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers c so that Close closes it; it reports false (and does
// not register c) once the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// record appends a login attempt.
func (s *Server) record(l Login) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logins = append(s.logins, l)
}

// admit applies Throttle: it reports whether a login arriving at now is
// within the rate, and counts it if so.
func (s *Server) admit(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perSecond == 0 {
		return true
	}
	cut := now.Add(-time.Second)
	keep := s.window[:0]
	for _, t := range s.window {
		if t.After(cut) {
			keep = append(keep, t)
		}
	}
	s.window = keep
	if len(s.window) >= s.perSecond {
		return false
	}
	s.window = append(s.window, now)
	return true
}

// injectRejection consumes one RejectNext if any is pending.
func (s *Server) injectRejection() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejectNext == 0 {
		return false
	}
	s.rejectNext--
	return true
}

// verify checks token for user at now with the configured verifier,
// then against MaxTokenAge.
func (s *Server) verify(user, token string, now time.Time) (reason, detail string) {
	v := s.opts.Verifier
	if v == nil {
		v = &rdsVerifier{endpoint: s.endpoint, region: s.opts.Region, creds: s.opts.Credentials}
	}
	issued, reason, detail := v.Verify(s.ctx, user, token, now)
	if reason != "" {
		return reason, detail
	}
	s.mu.Lock()
	maxAge := s.maxAge
	s.mu.Unlock()
	if maxAge > 0 && now.Sub(issued) > maxAge {
		return ReasonTooOld, fmt.Sprintf("issued at %s, max age %s, now %s", issued.UTC().Format(time.RFC3339), maxAge, now.UTC().Format(time.RFC3339))
	}
	return "", ""
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
