package smtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// Defaults used when no [Option] says otherwise.
const (
	DefaultRegion          = "us-east-1"
	DefaultAccountID       = "123456789012"
	DefaultAccessKeyID     = "test"
	DefaultSecretAccessKey = "test"
)

// ErrClosed is returned by [Server.WaitCalls] when the server is closed
// before the awaited number of calls was reached.
var ErrClosed = errors.New("smtest: server closed")

// Server is a fake AWS Secrets Manager endpoint listening on 127.0.0.1.
// Create one with [NewServer] or [Start]. All methods are safe for concurrent
// use, including while requests are being served.
type Server struct {
	hs        *httptest.Server
	region    string
	partition string
	account   string
	akid      string // access key id given to clients and SetEnv
	strictKey bool   // reject requests signed with another access key id
	now       func() time.Time

	closeOnce sync.Once
	closing   chan struct{} // closed when Close starts

	mu        sync.Mutex
	secrets   map[string]*secret // by name
	byARN     map[string]*secret // by full ARN
	byPartial map[string]*secret // by ARN without the random suffix
	calls     map[string]int
	total     int
	changed   chan struct{} // closed and replaced whenever a counter grows
	faults    []*faultEntry
	faultSeq  uint64
	observer  func(op, secretID string)
	secretSeq uint64
	onRotate  RotateFunc
	listener  net.Listener // from WithListener; nil for a random loopback port
	quota     quota        // SetQuota's token bucket and the per-client counters
}

// Option configures a [Server].
type Option func(*Server)

// WithRegion sets the region the server pretends to be in (default
// us-east-1). It appears in ARNs, in [Server.Region], and in the region that
// [Server.Client], [Server.AWSConfig] and [Server.SetEnv] configure.
func WithRegion(region string) Option {
	return func(s *Server) { s.region = region }
}

// WithAccountID sets the 12-digit account id used in ARNs (default
// 123456789012).
func WithAccountID(id string) Option {
	return func(s *Server) { s.account = id }
}

// WithAccessKeyID makes the server accept only requests signed with the given
// access key id; others fail with UnrecognizedClientException, as AWS does for
// unknown keys. [Server.Client], [Server.AWSConfig] and [Server.SetEnv] use
// this key. Without this option any SigV4-signed request is accepted and the
// helpers use the access key id "test".
func WithAccessKeyID(id string) Option {
	return func(s *Server) { s.akid = id; s.strictKey = true }
}

// WithClock replaces the clock used for CreatedDate, LastChangedDate,
// LastAccessedDate and similar timestamps. now must be safe for concurrent
// use.
func WithClock(now func() time.Time) Option {
	return func(s *Server) { s.now = now }
}

// WithListener makes the server accept connections on l instead of on a
// random port of 127.0.0.1, for a server that must be reachable at a known
// address (the smtest command's --addr). [Server.URL] is derived from
// l.Addr(); [Server.Close] closes l.
func WithListener(l net.Listener) Option {
	return func(s *Server) { s.listener = l }
}

// NewServer starts a server on 127.0.0.1 with a random port. Call
// [Server.Close] when done, or use [Start] in tests.
func NewServer(opts ...Option) *Server {
	s := &Server{
		region:    DefaultRegion,
		account:   DefaultAccountID,
		akid:      DefaultAccessKeyID,
		now:       time.Now,
		closing:   make(chan struct{}),
		secrets:   make(map[string]*secret),
		byARN:     make(map[string]*secret),
		byPartial: make(map[string]*secret),
		calls:     make(map[string]int),
		changed:   make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	s.partition = partitionFor(s.region)
	if s.listener == nil {
		s.hs = httptest.NewServer(s)
		return s
	}
	s.hs = httptest.NewUnstartedServer(s)
	s.hs.Listener.Close()
	s.hs.Listener = s.listener
	s.hs.Start()
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

func partitionFor(region string) string {
	switch {
	case strings.HasPrefix(region, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	case strings.HasPrefix(region, "us-iso-"):
		return "aws-iso"
	case strings.HasPrefix(region, "us-isob-"):
		return "aws-iso-b"
	default:
		return "aws"
	}
}

// URL returns the server's base URL, such as http://127.0.0.1:40123. Use it
// as the SDK's BaseEndpoint, in AWS_ENDPOINT_URL_SECRETS_MANAGER, or as the
// DSN key secret_endpoint.
func (s *Server) URL() string { return s.hs.URL }

// Region returns the region the server pretends to be in.
func (s *Server) Region() string { return s.region }

// AccountID returns the account id used in ARNs.
func (s *Server) AccountID() string { return s.account }

// Close shuts the server down and waits for its handlers to finish. Requests
// held by a Delay or HangUntilCancel fault are released first (they get an
// InternalServiceError), so Close returns promptly. Close may be called more
// than once. The secrets stay readable through the Go methods afterwards.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.hs.Close()
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

// OnRequest registers fn to be called for every request that reaches the
// server, as it is counted and before any fault takes effect, with the
// operation name (such as "GetSecretValue") and the request's SecretId (Name
// for CreateSecret; empty if absent). fn runs on the request's goroutine, so
// it must be safe for concurrent use and should not block. A nil fn removes
// the observer.
func (s *Server) OnRequest(fn func(op, secretID string)) {
	s.mu.Lock()
	s.observer = fn
	s.mu.Unlock()
}

// count records one request for op, wakes WaitCalls callers and calls the
// observer.
func (s *Server) count(op, secretID string) {
	s.mu.Lock()
	if op != "" {
		s.calls[op]++
	}
	s.total++
	close(s.changed)
	s.changed = make(chan struct{})
	observer := s.observer
	s.mu.Unlock()
	if observer != nil {
		observer(op, secretID)
	}
}

// Calls returns how many requests for the operation op (such as
// "GetSecretValue") reached the server since it started or since the last
// [Server.ResetCalls]. Every request counts, including those that failed or
// were answered by an injected fault; each retry attempt of the SDK is a
// separate request. Calls("") and Calls("*") return [Server.TotalCalls].
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.callsLocked(op)
}

func (s *Server) callsLocked(op string) int {
	if op == "" || op == "*" {
		return s.total
	}
	return s.calls[op]
}

// TotalCalls returns the number of requests of any operation, including
// malformed or unknown ones, that reached the server.
func (s *Server) TotalCalls() int {
	return s.Calls("")
}

// CallCounts returns a copy of the per-operation request counters.
func (s *Server) CallCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		m[k] = v
	}
	return m
}

// ResetCalls sets all request counters to zero, those of
// [Server.Throttled] and [Server.ClientCounts] included.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	clear(s.calls)
	s.total = 0
	s.mu.Unlock()
	s.quota.resetCounts()
}

// WaitCalls blocks until Calls(op) >= n, ctx is done, or the server is
// closed. It returns nil once the count is reached, ctx.Err() if ctx ended
// first, and [ErrClosed] if the server was closed first. Tests use it to learn
// that a request has arrived instead of sleeping. A request is counted once
// its body has been read and the fault that applies to it, if any, has been
// chosen (using up one of its Times), so a request that a Delay or
// HangUntilCancel fault holds is known to stay held, until its client gives
// up or the server closes, as soon as WaitCalls returns.
func (s *Server) WaitCalls(ctx context.Context, op string, n int) error {
	for {
		s.mu.Lock()
		reached := s.callsLocked(op) >= n
		ch := s.changed
		s.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			if s.Calls(op) >= n {
				return nil
			}
			return ErrClosed
		}
	}
}

// credentials returns a provider for the static test credentials.
func (s *Server) credentials() aws.CredentialsProvider {
	akid := s.akid
	return aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{
			AccessKeyID:     akid,
			SecretAccessKey: DefaultSecretAccessKey,
			Source:          "smtest",
		}, nil
	})
}

// AWSConfig returns an aws.Config that reaches this server: the server's
// region, static test credentials, BaseEndpoint set to [Server.URL], and
// the HTTP client described at [HTTPClient]. Pass it to
// secretsmanager.NewFromConfig or to code that takes an aws.Config.
func (s *Server) AWSConfig() aws.Config {
	return aws.Config{
		Region:       s.region,
		Credentials:  s.credentials(),
		BaseEndpoint: aws.String(s.URL()),
		HTTPClient:   HTTPClient(),
	}
}

// Client returns a real Secrets Manager SDK client pointed at this server,
// with static credentials, the server's region and the HTTP client
// described at [HTTPClient]. It keeps the SDK's default (standard) retryer;
// pass [NoRetries] or [FastRetries], or any other option function, to
// change that, for example when a test counts calls.
func (s *Server) Client(optFns ...func(*secretsmanager.Options)) *secretsmanager.Client {
	return secretsmanager.New(secretsmanager.Options{
		Region:       s.region,
		Credentials:  s.credentials(),
		BaseEndpoint: aws.String(s.URL()),
		HTTPClient:   HTTPClient(),
	}, optFns...)
}

// HTTPClient returns the SDK's default HTTP client wrapped so that it hands
// net/http a private copy of each request body.
//
// Without it, the SDK (aws-sdk-go-v2 issues #1825 and #2737) closes the
// request body as soon as the response headers arrive, which can make
// net/http's writer goroutine, still finishing the request, close the
// connection while the response body is being read: the call fails with
// "deserialization failed ... use of closed network connection" although
// the server answered 200. Against a server on the loopback interface, which
// answers within microseconds, this happens now and then for responses too
// large to arrive in one read (a few KiB, such as a large secret). The SDK's
// standard retryer retries the error, so a call succeeds anyway but counts
// twice; with retries off it fails. [Server.Client] and [Server.AWSConfig]
// use this client; use it with clients you build yourself (set
// Options.HTTPClient or aws.Config.HTTPClient) to keep call counts exact.
func HTTPClient() aws.HTTPClient {
	return bufferedBodyClient{next: awshttp.NewBuildableClient()}
}

type bufferedBodyClient struct {
	next aws.HTTPClient
}

func (c bufferedBodyClient) Do(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return c.next.Do(req)
	}
	b, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	r.ContentLength = int64(len(b))
	return c.next.Do(r)
}

// NoRetries is a [Server.Client] option that turns the SDK's retries off, so
// that every SDK call is exactly one request.
func NoRetries(o *secretsmanager.Options) {
	o.Retryer = aws.NopRetryer{}
}

// FastRetries returns a [Server.Client] option that uses the SDK's standard
// retry rules (what is retried and how often) with maxAttempts attempts in
// total, but without backoff delays and without the client-side retry quota,
// so tests of retry behaviour run fast and deterministically.
func FastRetries(maxAttempts int) func(*secretsmanager.Options) {
	return func(o *secretsmanager.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = maxAttempts
			so.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
			so.RateLimiter = ratelimit.None
		})
	}
}

// Environ returns environment entries (KEY=value) that make
// config.LoadDefaultConfig resolve to this server: static credentials, the
// region, AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_EC2_METADATA_DISABLED=true,
// shared config and credentials files set to the null device, and empty
// values for variables that could redirect the SDK elsewhere (AWS_PROFILE,
// AWS_SESSION_TOKEN, web identity and container credentials, FIPS and
// dual-stack endpoints, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS). Append it to
// os.Environ() for a child process; later entries win.
func (s *Server) Environ() []string {
	kv := s.envVars()
	out := make([]string, 0, len(kv))
	for _, k := range sortedKeys(kv) {
		out = append(out, k+"="+kv[k])
	}
	return out
}

func (s *Server) envVars() map[string]string {
	kv := isolatedEnv(s.akid, s.region)
	kv["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = s.URL()
	return kv
}

// isolatedEnv is the environment that makes the SDK's default
// configuration resolve static credentials and region, read no AWS files
// of the machine and never contact the metadata service. Empty values mean
// unset.
func isolatedEnv(akid, region string) map[string]string {
	return map[string]string{
		"AWS_ACCESS_KEY_ID":                      akid,
		"AWS_SECRET_ACCESS_KEY":                  DefaultSecretAccessKey,
		"AWS_REGION":                             region,
		"AWS_DEFAULT_REGION":                     region,
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_SECRETS_MANAGER":       "",
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_CONFIG_FILE":                        os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE":            os.DevNull,
		"AWS_PROFILE":                            "",
		"AWS_DEFAULT_PROFILE":                    "",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_SECURITY_TOKEN":                     "",
		"AWS_ROLE_ARN":                           "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS":    "",
		"AWS_USE_FIPS_ENDPOINT":                  "",
		"AWS_USE_DUALSTACK_ENDPOINT":             "",
		// The server speaks plain HTTP; a machine's CA bundle would only
		// be parsed again by every client built (milliseconds each).
		"AWS_CA_BUNDLE": "",
	}
}

// IsolateEnv is for TestMain, where no testing.TB exists: it sets the
// process environment so that the AWS SDK's default configuration finds
// static test credentials (DefaultAccessKeyID) and DefaultRegion, reads no
// AWS files of the machine, never contacts the EC2 metadata service and
// names no endpoint (tests then put secret_endpoint=<Server.URL> in their
// DSNs, so that parallel tests can use servers of their own). It returns a
// function that restores the previous environment.
//
//	func TestMain(m *testing.M) {
//		restore := smtest.IsolateEnv()
//		code := m.Run()
//		restore()
//		os.Exit(code)
//	}
func IsolateEnv() (restore func()) {
	kv := isolatedEnv(DefaultAccessKeyID, DefaultRegion)
	type old struct {
		v  string
		ok bool
	}
	saved := map[string]old{}
	for _, k := range sortedKeys(kv) {
		v, ok := os.LookupEnv(k)
		saved[k] = old{v, ok}
		if kv[k] == "" {
			os.Unsetenv(k)
		} else {
			os.Setenv(k, kv[k])
		}
	}
	return func() {
		for k, o := range saved {
			if o.ok {
				os.Setenv(k, o.v)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

// SetEnv points the AWS SDK's default configuration at this server for the
// rest of the test, using tb.Setenv (so it cannot be used in parallel tests
// or their ancestors): it sets the variables listed at [Server.Environ] and
// unsets those given empty values there. config.LoadDefaultConfig then
// resolves static credentials, this server's region, and this server as the
// Secrets Manager endpoint, and never contacts the EC2 metadata service.
// The previous environment is restored when the test ends.
func (s *Server) SetEnv(tb testing.TB) {
	tb.Helper()
	kv := s.envVars()
	for _, k := range sortedKeys(kv) {
		v := kv[k]
		tb.Setenv(k, v) // records the old value for restoring
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
