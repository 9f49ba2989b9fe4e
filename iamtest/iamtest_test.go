package iamtest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

func TestMain(m *testing.M) {
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(testdb.RunMain(m, testdb.Options{}))
}

const (
	akid   = "AKIDIAMTEST000001"
	secret = "iamtest-secret-key-1"
	// tempAKID has a session token, like STS credentials.
	tempAKID     = "ASIAIAMTEST000002"
	tempSecret   = "iamtest-secret-key-2"
	sessionToken = "iamtest-session-token"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) logf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(&b.b, format+"\n", args...)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// clock is a settable clock for Options.Now.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// rig is a PostgreSQL role behind an iamtest server.
type rig struct {
	t      testing.TB
	pg     *testdb.Cluster
	srv    *iamtest.Server
	user   string
	pw     string
	logs   *syncBuffer
	tokens []string // every token handed to a client, to check none leaks
}

var roleSeq atomic.Int64

// newRig creates a role with a password and an iamtest server in front of
// the shared cluster. edit may change the options before the server starts.
func newRig(t testing.TB, edit func(*iamtest.Options)) *rig {
	t.Helper()
	pg := testdb.Shared(t)
	r := &rig{t: t, pg: pg, logs: &syncBuffer{}}
	r.user = fmt.Sprintf("iam_user_%d", roleSeq.Add(1))
	r.pw = fmt.Sprintf("pw-%d-%d", time.Now().UnixNano(), roleSeq.Load())
	ctx := context.Background()
	if err := pg.CreateRole(ctx, r.user, r.pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.DropRole(context.Background(), r.user); err != nil {
			t.Error(err)
		}
	})
	opts := iamtest.Options{
		Credentials: map[string]iamtest.Credential{
			akid:     {SecretKey: secret},
			tempAKID: {SecretKey: tempSecret, SessionToken: sessionToken},
		},
		Upstream: func(user string) (string, error) {
			if user != r.user {
				return "", fmt.Errorf("no such role %q", user)
			}
			return r.upstreamDSN(r.pw), nil
		},
		Logf: func(format string, args ...any) {
			r.logs.logf(format, args...)
			t.Logf(format, args...)
		},
	}
	if edit != nil {
		edit(&opts)
	}
	// Registered after DropRole's cleanup, so it runs first: the server's
	// sessions end before the role is dropped.
	r.srv = iamtest.Start(t, opts)
	t.Cleanup(r.checkNoLeak)
	return r
}

// upstreamDSN is a pgx conn string for the real server.
func (r *rig) upstreamDSN(pw string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
		r.pg.Host(), r.pg.Port(), r.user, quote(pw), quote(r.pg.CAFile()))
}

func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// token builds a token for user with the SDK, for the server's endpoint
// and region unless given.
func (r *rig) token(user, endpoint, region, key, sec, session string) string {
	r.t.Helper()
	if endpoint == "" {
		endpoint = r.srv.Endpoint()
	}
	if region == "" {
		region = r.srv.Region()
	}
	tok, err := auth.BuildAuthToken(context.Background(), endpoint, region, user,
		credentials.NewStaticCredentialsProvider(key, sec, session))
	if err != nil {
		r.t.Fatal(err)
	}
	r.tokens = append(r.tokens, tok)
	return tok
}

// goodToken is a valid token for the rig's role.
func (r *rig) goodToken() string { return r.token(r.user, "", "", akid, secret, "") }

// presign builds a token signed at a given time, with the v4 signer
// directly (BuildAuthToken always signs at time.Now).
func (r *rig) presign(user string, at time.Time, expires int) string {
	r.t.Helper()
	q := url.Values{}
	q.Set("Action", "connect")
	q.Set("DBUser", user)
	q.Set("X-Amz-Expires", strconv.Itoa(expires))
	req, err := http.NewRequest(http.MethodGet, "https://"+r.srv.Endpoint()+"/?"+q.Encode(), nil)
	if err != nil {
		r.t.Fatal(err)
	}
	const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	signed, _, err := v4.NewSigner().PresignHTTP(context.Background(),
		aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}, req, emptySHA256, "rds-db", r.srv.Region(), at.UTC())
	if err != nil {
		r.t.Fatal(err)
	}
	tok := strings.TrimPrefix(signed, "https://")
	r.tokens = append(r.tokens, tok)
	return tok
}

// pgxConfig is a pgx configuration that logs in to the server as user
// with password over TLS verified against the server's CA.
func (r *rig) pgxConfig(user, password, sslmode string) *pgx.ConnConfig {
	r.t.Helper()
	if sslmode == "" {
		sslmode = "verify-full"
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=%s sslrootcert=%s connect_timeout=30",
		r.srv.Port(), user, sslmode, quote(r.srv.CAFile())))
	if err != nil {
		r.t.Fatal(err)
	}
	cfg.Password = password
	return cfg
}

// pgxConnect logs in with pgx.
func (r *rig) pgxConnect(user, password string) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(context.Background(), r.pgxConfig(user, password, ""))
	if err == nil {
		r.t.Cleanup(func() { c.Close(context.Background()) })
	}
	return c, err
}

// mustLogin logs in with a fresh token and checks current_user.
func (r *rig) mustLogin() *pgx.Conn {
	r.t.Helper()
	c, err := r.pgxConnect(r.user, r.goodToken())
	if err != nil {
		r.t.Fatalf("login with a valid token: %v", err)
	}
	var who string
	if err := c.QueryRow(context.Background(), "SELECT current_user").Scan(&who); err != nil {
		r.t.Fatal(err)
	}
	if who != r.user {
		r.t.Fatalf("current_user = %q, want %q", who, r.user)
	}
	return c
}

// wantRefused checks err is a PostgreSQL error with code (and message, if
// not "").
func wantRefused(t *testing.T, err error, code, message string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want SQLSTATE %s, got %v", code, err)
	}
	if pgErr.Code != code {
		t.Errorf("SQLSTATE = %s (%s), want %s", pgErr.Code, pgErr.Message, code)
	}
	if message != "" && pgErr.Message != message {
		t.Errorf("message = %q, want %q", pgErr.Message, message)
	}
}

// lastLogin is the newest login record.
func (r *rig) lastLogin() iamtest.Login {
	r.t.Helper()
	ls := r.srv.Logins()
	if len(ls) == 0 {
		r.t.Fatal("no login recorded")
	}
	return ls[len(ls)-1]
}

// wantLast checks the newest login record.
func (r *rig) wantLast(user string, accepted bool, reason string) {
	r.t.Helper()
	l := r.lastLogin()
	if l.User != user || l.Accepted != accepted || l.Reason != reason || l.At.IsZero() {
		r.t.Errorf("last login = %+v, want user %q accepted %v reason %q", l, user, accepted, reason)
	}
}

// checkNoLeak checks that no token (nor its signature) appears in the
// login records or the server's log.
func (r *rig) checkNoLeak() {
	var rec strings.Builder
	for _, l := range r.srv.Logins() {
		fmt.Fprintf(&rec, "%+v\n", l)
	}
	logs := r.logs.String()
	for _, tok := range r.tokens {
		sig := tok[strings.Index(tok, "X-Amz-Signature=")+len("X-Amz-Signature="):]
		for _, s := range []string{tok, sig, url.QueryEscape(tok)} {
			if strings.Contains(rec.String(), s) {
				r.t.Errorf("a token leaked into Logins: %s", rec.String())
			}
			if strings.Contains(logs, s) {
				r.t.Errorf("a token leaked into the log: %s", logs)
			}
		}
	}
}

func pamFailed(user string) string {
	return fmt.Sprintf("PAM authentication failed for user %q", user)
}

func TestValidTokenPgx(t *testing.T) {
	r := newRig(t, nil)
	c := r.mustLogin()
	r.wantLast(r.user, true, "")

	// The session is the upstream's: its parameters and key data, and a
	// relay that carries large results both ways.
	if v := c.PgConn().ParameterStatus("server_version"); v == "" {
		t.Error("no server_version parameter status")
	}
	if c.PgConn().PID() == 0 {
		t.Error("no backend key data")
	}
	var pid uint32
	if err := c.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid != c.PgConn().PID() {
		t.Errorf("BackendKeyData pid %d, session pid %d", c.PgConn().PID(), pid)
	}
	big := strings.Repeat("x", 1<<20)
	var n int
	if err := c.QueryRow(context.Background(), "SELECT length($1::text || repeat('y', 1000000))", big).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1<<20+1000000 {
		t.Errorf("length = %d", n)
	}
	// The login asked for database "postgres" and got it.
	var db string
	if err := c.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil || db != "postgres" {
		t.Errorf("current_database = %q, %v", db, err)
	}
}

// A client that asks for protocol 3.2 is told 3.0 (NegotiateProtocolVersion)
// and gets a working session.
func TestProtocol32Client(t *testing.T) {
	r := newRig(t, nil)
	cfg := r.pgxConfig(r.user, r.goodToken(), "")
	cfg.MaxProtocolVersion = "3.2"
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var who string
	if err := c.QueryRow(context.Background(), "SELECT current_user").Scan(&who); err != nil || who != r.user {
		t.Fatalf("current_user = %q, %v", who, err)
	}
}

func TestValidTokenLibPQ(t *testing.T) {
	r := newRig(t, nil)
	tok := r.goodToken()
	conn, err := pq.NewConnectorConfig(pq.Config{
		Host:           "127.0.0.1",
		Hostaddr:       netip.MustParseAddr("127.0.0.1"),
		Port:           uint16(r.srv.Port()),
		User:           r.user,
		Password:       tok,
		Database:       "postgres",
		SSLMode:        pq.SSLModeVerifyFull,
		SSLRootCert:    r.srv.CAFile(),
		ConnectTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	var who string
	if err := db.QueryRow("SELECT current_user").Scan(&who); err != nil {
		t.Fatal(err)
	}
	if who != r.user {
		t.Errorf("current_user = %q, want %q", who, r.user)
	}
	r.wantLast(r.user, true, "")
}

func TestSessionToken(t *testing.T) {
	r := newRig(t, nil)
	c, err := r.pgxConnect(r.user, r.token(r.user, "", "", tempAKID, tempSecret, sessionToken))
	if err != nil {
		t.Fatalf("token with the right session token: %v", err)
	}
	c.Close(context.Background())
	r.wantLast(r.user, true, "")

	_, err = r.pgxConnect(r.user, r.token(r.user, "", "", tempAKID, tempSecret, "another-session"))
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonSessionToken)

	_, err = r.pgxConnect(r.user, r.token(r.user, "", "", tempAKID, tempSecret, ""))
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonSessionToken)
}

func TestBadTokens(t *testing.T) {
	r := newRig(t, nil)
	now := time.Now()
	cases := []struct {
		name   string
		token  func() string
		reason string
	}{
		{"wrong secret key", func() string { return r.token(r.user, "", "", akid, "not-the-secret", "") }, iamtest.ReasonSignature},
		{"unknown access key", func() string { return r.token(r.user, "", "", "AKIDUNKNOWN", secret, "") }, iamtest.ReasonUnknownKey},
		{"token for another user", func() string { return r.token("someone_else", "", "", akid, secret, "") }, iamtest.ReasonUser},
		{"another port", func() string {
			return r.token(r.user, net.JoinHostPort("127.0.0.1", strconv.Itoa(r.srv.Port()+1)), "", akid, secret, "")
		}, iamtest.ReasonEndpoint},
		{"another host", func() string {
			return r.token(r.user, net.JoinHostPort("localhost", strconv.Itoa(r.srv.Port())), "", akid, secret, "")
		}, iamtest.ReasonEndpoint},
		{"another region", func() string { return r.token(r.user, "", "eu-west-1", akid, secret, "") }, iamtest.ReasonScope},
		{"expired", func() string { return r.presign(r.user, now.Add(-16*time.Minute), 900) }, iamtest.ReasonExpired},
		{"short expiry passed", func() string { return r.presign(r.user, now.Add(-2*time.Minute), 60) }, iamtest.ReasonExpired},
		{"signed in the future", func() string { return r.presign(r.user, now.Add(10*time.Minute), 900) }, iamtest.ReasonFuture},
		{"expires beyond 15 minutes", func() string { return r.presign(r.user, now, 3600) }, iamtest.ReasonMalformed},
		{"tampered", func() string {
			tok := r.goodToken()
			return strings.Replace(tok, "X-Amz-Expires=900", "X-Amz-Expires=899", 1)
		}, iamtest.ReasonSignature},
		{"a password", func() string { return r.pw }, iamtest.ReasonMalformed},
		{"empty", func() string { return "" }, iamtest.ReasonMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(r.srv.Logins())
			_, err := r.pgxConnect(r.user, tc.token())
			wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
			if got := len(r.srv.Logins()) - before; got != 1 {
				t.Fatalf("%d logins recorded, want 1", got)
			}
			r.wantLast(r.user, false, tc.reason)
		})
	}
	// A token signed 10 minutes ago is still good (no MaxTokenAge).
	if c, err := r.pgxConnect(r.user, r.presign(r.user, now.Add(-10*time.Minute), 900)); err != nil {
		t.Fatalf("10-minute-old token: %v", err)
	} else {
		c.Close(context.Background())
	}
}

func TestPlaintextStartupRefused(t *testing.T) {
	r := newRig(t, nil)
	_, err := pgx.ConnectConfig(context.Background(), r.pgxConfig(r.user, r.goodToken(), "disable"))
	wantRefused(t, err, "28000", "")
	if err != nil && !strings.Contains(err.Error(), "no encryption") {
		t.Errorf("error %v does not say no encryption", err)
	}
	r.wantLast(r.user, false, iamtest.ReasonNoTLS)
}

func TestRejectNext(t *testing.T) {
	r := newRig(t, nil)
	r.srv.RejectNext(2)
	for i := range 2 {
		_, err := r.pgxConnect(r.user, r.goodToken())
		wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
		r.wantLast(r.user, false, iamtest.ReasonInjected)
		if t.Failed() {
			t.Fatalf("attempt %d", i)
		}
	}
	// A bad token does not use up an injected rejection.
	r.srv.RejectNext(1)
	_, err := r.pgxConnect(r.user, r.token(r.user, "", "", akid, "wrong", ""))
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonSignature)
	_, err = r.pgxConnect(r.user, r.goodToken())
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonInjected)

	r.mustLogin()
	r.wantLast(r.user, true, "")
}

func TestMaxTokenAge(t *testing.T) {
	r := newRig(t, nil)
	old := r.presign(r.user, time.Now().Add(-10*time.Minute), 900)
	r.srv.MaxTokenAge(5 * time.Minute)
	_, err := r.pgxConnect(r.user, old)
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonTooOld)

	r.mustLogin() // a fresh token is fine
	r.srv.MaxTokenAge(0)
	if c, err := r.pgxConnect(r.user, old); err != nil {
		t.Fatalf("knob off: %v", err)
	} else {
		c.Close(context.Background())
	}
}

func TestThrottle(t *testing.T) {
	clk := newClock(time.Now())
	r := newRig(t, func(o *iamtest.Options) { o.Now = clk.now })
	r.srv.Throttle(2)
	r.mustLogin()
	clk.advance(500 * time.Millisecond)
	r.mustLogin()
	clk.advance(499 * time.Millisecond)
	_, err := r.pgxConnect(r.user, r.goodToken())
	wantRefused(t, err, iamtest.CodeTooManyConnections, "rate exceeded")
	r.wantLast(r.user, false, iamtest.ReasonThrottled)

	// One second after the first login, one more fits.
	clk.advance(2 * time.Millisecond)
	r.mustLogin()
	_, err = r.pgxConnect(r.user, r.goodToken())
	wantRefused(t, err, iamtest.CodeTooManyConnections, "rate exceeded")

	r.srv.Throttle(0)
	r.mustLogin()
	r.mustLogin()
	r.mustLogin()
}

func TestUpstreamFailure(t *testing.T) {
	var r *rig
	r = newRig(t, func(o *iamtest.Options) {
		o.Upstream = func(user string) (string, error) { return r.upstreamDSN("wrong-password"), nil }
	})
	_, err := r.pgxConnect(r.user, r.goodToken())
	wantRefused(t, err, iamtest.CodeConnectionFailure, "")
	if err != nil && !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("error %v does not carry the upstream's message", err)
	}
	r.wantLast(r.user, false, iamtest.ReasonUpstream)
	if l := r.lastLogin(); strings.Contains(l.Detail, "wrong-password") {
		t.Errorf("upstream password in the record: %+v", l)
	}
}

func TestAuthFailedCodeOption(t *testing.T) {
	r := newRig(t, func(o *iamtest.Options) { o.AuthFailedCode = "28P01" })
	_, err := r.pgxConnect(r.user, r.token(r.user, "", "", akid, "wrong", ""))
	wantRefused(t, err, "28P01", pamFailed(r.user))
}

func TestEndpointOption(t *testing.T) {
	r := newRig(t, func(o *iamtest.Options) { o.Endpoint = "mydb.cluster-xyz.us-east-1.rds.amazonaws.com:5432" })
	if r.srv.Endpoint() != "mydb.cluster-xyz.us-east-1.rds.amazonaws.com:5432" {
		t.Fatalf("Endpoint() = %q", r.srv.Endpoint())
	}
	r.mustLogin()
	_, err := r.pgxConnect(r.user, r.token(r.user, r.srv.Addr(), "", akid, secret, ""))
	wantRefused(t, err, iamtest.CodeAuthFailed, pamFailed(r.user))
	r.wantLast(r.user, false, iamtest.ReasonEndpoint)
}

// TestRawProtocol drives the server with pgproto3: GSSENCRequest is
// declined, a CancelRequest is dropped, and a client that pipelines its
// first query right behind the password loses nothing.
func TestRawProtocol(t *testing.T) {
	r := newRig(t, nil)

	// CancelRequest: the server closes the connection.
	c, err := net.Dial("tcp", r.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf, _ := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after a cancel request: read %d, %v; want EOF", n, err)
	}

	c2, err := net.Dial("tcp", r.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	// A hang guard, not a timing assertion: a lost query would otherwise
	// block the test forever.
	_ = c2.SetDeadline(time.Now().Add(time.Minute))
	// GSSENCRequest → 'N', then SSLRequest → 'S'.
	buf, _ = (&pgproto3.GSSEncRequest{}).Encode(nil)
	buf, _ = (&pgproto3.SSLRequest{}).Encode(buf) // sent only after the answer
	if _, err := c2.Write(buf[:8]); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c2, b); err != nil || b[0] != 'N' {
		t.Fatalf("GSSENCRequest answer %q, %v", b, err)
	}
	if _, err := c2.Write(buf[8:]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c2, b); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b, err)
	}
	tc := tls.Client(c2, &tls.Config{RootCAs: r.srv.CAPool(), ServerName: "localhost"})
	fe := pgproto3.NewFrontend(tc, tc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": r.user, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*pgproto3.AuthenticationCleartextPassword); !ok {
		t.Fatalf("got %T, want AuthenticationCleartextPassword", m)
	}
	// Password and a query in one write.
	fe.Send(&pgproto3.PasswordMessage{Password: r.goodToken()})
	fe.Send(&pgproto3.Query{String: "SELECT current_user"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	readies := 0
	for readies < 2 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			readies++
		case *pgproto3.DataRow:
			got = append(got, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			t.Fatalf("error %s: %s", m.Code, m.Message)
		}
	}
	if len(got) != 1 || got[0] != r.user {
		t.Errorf("rows %q, want [%q]", got, r.user)
	}
	fe.Send(&pgproto3.Terminate{})
	_ = fe.Flush()
}

// TestCloseEndsSessions checks that Close ends relayed sessions and that
// none of the server's goroutines outlives it.
func TestCloseEndsSessions(t *testing.T) {
	pg := testdb.Shared(t)
	user := fmt.Sprintf("iam_user_%d", roleSeq.Add(1))
	ctx := context.Background()
	if err := pg.CreateRole(ctx, user, "close-pw"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.DropRole(context.Background(), user) })
	srv, err := iamtest.New(iamtest.Options{
		Credentials: map[string]iamtest.Credential{akid: {SecretKey: secret}},
		Upstream: func(string) (string, error) {
			return fmt.Sprintf("host=%s port=%d user=%s password=close-pw dbname=postgres sslmode=verify-full sslrootcert=%s",
				pg.Host(), pg.Port(), user, quote(pg.CAFile())), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.BuildAuthToken(ctx, srv.Endpoint(), srv.Region(), user, credentials.NewStaticCredentialsProvider(akid, secret, ""))
	if err != nil {
		t.Fatal(err)
	}
	var conns []*pgx.Conn
	for range 3 {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
			srv.Port(), user, quote(srv.CAFile())))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = tok
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// A connection that never finishes its startup.
	idle, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	caFile := srv.CAFile()
	srv.Close() // returns only once every server goroutine has ended
	srv.Close()

	if stacks := serverGoroutines(); stacks != "" {
		t.Errorf("server goroutines after Close:\n%s", stacks)
	}
	for i, c := range conns {
		if _, err := c.Exec(ctx, "SELECT 1"); err == nil {
			t.Errorf("session %d still works after Close", i)
		}
	}
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("unfinished connection still open after Close")
	}
	if _, err := os.Stat(caFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CA file after Close: %v", err)
	}
	if _, err := net.Dial("tcp", srv.Addr()); err == nil {
		t.Error("listener still accepting after Close")
	}
}

// serverGoroutines returns the stacks of goroutines running code of
// package iamtest (not its tests).
func serverGoroutines() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "pgsecrets/iamtest.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
