// Package gcpiam is the Google Cloud SQL and AlloyDB IAM database
// authentication provider of pgsecrets: importing it registers
// secret_provider=gcp-iam, whose password is an OAuth2 access token of the
// process's Google identity (Application Default Credentials: a service
// account key in GOOGLE_APPLICATION_CREDENTIALS, gcloud's application
// default credentials file, or the metadata server on Compute Engine, GKE
// and Cloud Run), minted for the DSN's user:
//
//	import _ "github.com/pgsecrets/pgsecrets/gcpiam"
//
//	db, err := sql.Open("pgsecrets", "host=10.1.2.3 user=app@my-project.iam dbname=app "+
//		"sslmode=verify-full sslrootcert=server-ca.pem secret_provider=gcp-iam")
//
// pgsecrets caches the token for the whole process, fetches a new one in
// the background at 60–70% of its hour, and fetches again when the
// database refuses one. A token is checked only at login: connections
// outlive it.
//
// Register and RegisterCredentials make the same provider available under
// another secret_provider name with tokens from a source the program
// chooses.
package gcpiam

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/pgsecrets/pgsecrets"
)

// ProviderName is the secret_provider this package registers.
const ProviderName = "gcp-iam"

// The login scopes a token is requested with. Each service accepts its
// own and cloud-platform; asking for the narrow one means a token that
// leaks from a connection string can log in and do nothing else.
const (
	// ScopeCloudSQLLogin is Cloud SQL's, what its connectors ask for.
	ScopeCloudSQLLogin = "https://www.googleapis.com/auth/sqlservice.login"
	// ScopeAlloyDBLogin is AlloyDB's.
	ScopeAlloyDBLogin = "https://www.googleapis.com/auth/alloydb.login"
)

// DSN keys of the provider.
const (
	// KeyService (cloudsql, the default, or alloydb) chooses the login
	// scope of the token: Cloud SQL refuses AlloyDB's and the other way
	// round.
	KeyService = "secret_gcp_service"
	// KeyLoginRate paces new logins to at most that many per second per
	// database and process (pgsecrets.LoginPacer); 0, the default, does
	// not pace.
	KeyLoginRate = "secret_login_rate"
)

// serviceAccountSuffix is what a service account's email ends with and
// its database user does not.
const serviceAccountSuffix = ".gserviceaccount.com"

// assumedTokenLife is the life of a token whose source gave no expiry;
// Google's access tokens last an hour.
const assumedTokenLife = time.Hour

// DatabaseUser is the database user a Google principal logs in as: a
// service account's email without ".gserviceaccount.com"
// (app@project.iam), a user account's email as it is.
func DatabaseUser(email string) string { return strings.TrimSuffix(email, serviceAccountSuffix) }

// TokenSourceFunc returns the source of one fetch's token, for the login
// scopes the DSN's service needs. pgsecrets calls it for every fetch (at
// 60–70% of a token's life, and after the database refused a token) and
// calls Token once on what it returns: it should build a source without a
// cache of its own (google.CredentialsFromJSONWithParams, say), or a
// token the database refused comes back until the cache lets it go. ctx
// carries the fetch's deadline and, under oauth2.HTTPClient, an
// *http.Client bound to it.
type TokenSourceFunc func(ctx context.Context, scopes []string) (oauth2.TokenSource, error)

func init() {
	register(ProviderName, findADC, "Application Default Credentials")
}

// Register makes secret_provider=name mint its tokens with newSource
// instead of Application Default Credentials, with everything else as
// gcp-iam: the same DSN keys, cache, refresh and recovery, on either
// engine and with pgxsecrets pools. It is the way to give pgsecrets a
// credential the program made itself (a key from its own secret store,
// impersonation, workload identity federation) without new core API: the
// DSN names the source, so database/sql, pgx pools and `pgsecrets check`
// all reach it. The principal is not known in advance, so a DSN user that
// is not the token's account is found only when the database refuses it.
// Call it from an init function; it panics if name is empty or taken, as
// pgsecrets.RegisterTokenProvider does.
func Register(name string, newSource TokenSourceFunc) {
	if newSource == nil {
		panic("gcpiam: Register needs a TokenSourceFunc")
	}
	register(name, func(ctx context.Context, scopes []string) (*found, error) {
		ts, err := newSource(ctx, scopes)
		if err != nil {
			return nil, err
		}
		return &found{ts: ts, kind: "the program's token source (" + name + ")"}, nil
	}, "token source registered as "+name)
}

// RegisterCredentials makes secret_provider=name use creds. Credentials
// read from JSON (creds.JSON set: a service account key, an authorized
// user, an external account) are rebuilt from that JSON for every fetch,
// with the DSN's login scope, so that a refused token is replaced at once,
// and a service account's email is checked against the DSN's user before
// any request. Credentials without JSON (the metadata server's, or a
// TokenSource set by hand) are used as they are: their scopes are the
// ones they were made with, and if their source caches, a token the
// database refused is replaced only when the source refreshes it. It
// panics as Register does.
func RegisterCredentials(name string, creds *google.Credentials) {
	if creds == nil || (creds.JSON == nil && creds.TokenSource == nil) {
		panic("gcpiam: RegisterCredentials needs credentials with JSON or a TokenSource")
	}
	register(name, func(ctx context.Context, scopes []string) (*found, error) {
		if creds.JSON == nil {
			return &found{ts: creds.TokenSource, kind: "the program's credentials (" + name + ")"}, nil
		}
		c, err := google.CredentialsFromJSONWithParams(ctx, creds.JSON, google.CredentialsParams{Scopes: scopes})
		if err != nil {
			return nil, err
		}
		f := fromJSON(c.JSON)
		f.ts = c.TokenSource
		return f, nil
	}, "credentials registered as "+name)
}

// found is what one fetch logs in with: the token source and, where the
// credentials say, the account it belongs to.
type found struct {
	ts        oauth2.TokenSource
	principal string // the account's email, "" if unknown
	kind      string // where the credentials came from, for errors
}

// finder finds one fetch's credentials.
type finder func(ctx context.Context, scopes []string) (*found, error)

func register(name string, find finder, source string) {
	pgsecrets.RegisterTokenProvider(name, func(_ context.Context, cfg *pgsecrets.Config) (pgsecrets.Provider, error) {
		return newProvider(cfg, name, find, source)
	}, KeyService, KeyLoginRate)
}

// provider is one DSN's token provider.
type provider struct {
	name     string
	find     finder
	source   string // what find uses, for Describe
	secretID string
	user     string
	endpoint string
	service  string // cloudsql or alloydb
	scopes   []string
	rate     float64

	vmMu    sync.Mutex
	vmEmail string // the metadata server's account, once known
}

func newProvider(cfg *pgsecrets.Config, name string, find finder, source string) (*provider, error) {
	t, err := cfg.TokenTarget()
	if err != nil {
		return nil, err
	}
	p := &provider{name: name, find: find, source: source, secretID: cfg.SecretID, user: t.User, endpoint: t.Endpoint(),
		service: "cloudsql", scopes: []string{ScopeCloudSQLLogin}}
	if v, ok := cfg.ProviderParam(KeyService); ok {
		switch v {
		case "cloudsql":
		case "alloydb":
			p.service, p.scopes = v, []string{ScopeAlloyDBLogin}
		default:
			return nil, &pgsecrets.DSNError{Key: KeyService, Msg: fmt.Sprintf("must be cloudsql or alloydb, not %q: it chooses the token's login scope", v)}
		}
	}
	if v, ok := cfg.ProviderParam(KeyLoginRate); ok {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || math.IsInf(r, 0) || math.IsNaN(r) {
			return nil, &pgsecrets.DSNError{Key: KeyLoginRate, Msg: "must be a number of logins per second (0: not paced)"}
		}
		p.rate = r
	}
	return p, nil
}

// Fetch gets a new token. It finds the credentials and builds their token
// source anew every time, bypassing the caches of oauth2.ReuseTokenSource
// and of the credentials: pgsecrets is the cache, and after the database
// refused a token that oauth2 still deems valid, only a fresh source
// returns a new one. The cost is one token request per fetch (at 60–70% of
// the hour, and per recovery), plus reading and parsing the key file.
// The metadata server, though, hands out the token it holds until a few
// minutes before its end, so on Google Cloud a refused token may come back
// until then.
func (p *provider) Fetch(ctx context.Context, _ string) (*pgsecrets.Credentials, error) {
	tr := &fetchTransport{ctx: ctx, base: http.DefaultTransport}
	fctx := context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Transport: tr})
	f, err := p.find(fctx, p.scopes)
	if err != nil {
		if ctx.Err() != nil || tr.failed() != nil {
			return nil, p.errorf(pgsecrets.ErrStoreUnavailable, err, "finding the Google credentials failed", p.credentialsHint())
		}
		return nil, p.errorf(pgsecrets.ErrAccessDenied, err,
			"no usable Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata server)",
			"set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run `gcloud auth application-default login`, or run on Google Cloud with a service account attached")
	}
	if f.principal == "" && f.kind == kindMetadata {
		f.principal = p.metadataEmail(ctx)
	}
	if f.principal != "" && DatabaseUser(f.principal) != p.user {
		return nil, p.errorf(pgsecrets.ErrAccessDenied, nil,
			fmt.Sprintf("the credentials found (%s) are those of %s, whose database user is %q, but the DSN's user is %q",
				f.kind, f.principal, DatabaseUser(f.principal), p.user),
			fmt.Sprintf("set user=%s in the DSN, or give the process the credentials of the account whose database user is %q", DatabaseUser(f.principal), p.user))
	}
	tok, err := token(ctx, f.ts)
	if err != nil {
		kind, detail := classify(ctx, err, tr.failed())
		if nerr := tr.failed(); nerr != nil && kind == pgsecrets.ErrStoreUnavailable {
			err = fmt.Errorf("%w (%w)", err, nerr) // oauth2 flattens the network error into text; keep it reachable
		}
		return nil, p.errorf(kind, err, detail+" ("+f.kind+")", p.credentialsHint())
	}
	if tok.AccessToken == "" {
		return nil, p.errorf(pgsecrets.ErrStoreUnavailable, nil, "the token endpoint returned an empty access token ("+f.kind+")", "")
	}
	until := tok.Expiry
	if until.IsZero() {
		until = time.Now().Add(assumedTokenLife)
	}
	sum := sha256.Sum256([]byte(tok.AccessToken))
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(tok.AccessToken),
		VersionID: "token-" + hex.EncodeToString(sum[:4]), LoginUntil: until}, nil
}

func (p *provider) errorf(kind error, err error, detail, hint string) error {
	return &pgsecrets.SecretError{Kind: kind, SecretID: p.secretID, Err: err, Detail: detail, Hint: hint}
}

// credentialsHint says what to check when no token could be had.
func (p *provider) credentialsHint() string {
	return "check that the account exists and is enabled, that its key (GOOGLE_APPLICATION_CREDENTIALS) has not been deleted, " +
		"and that the token endpoint or metadata server is reachable; the token's scope is " + strings.Join(p.scopes, " ")
}

// metadataEmail asks the metadata server for its account once; a failure
// leaves the check to the database.
func (p *provider) metadataEmail(ctx context.Context) string {
	p.vmMu.Lock()
	defer p.vmMu.Unlock()
	if p.vmEmail == "" {
		if e, err := metadata.EmailWithContext(ctx, "default"); err == nil {
			p.vmEmail = strings.TrimSpace(e)
		}
	}
	return p.vmEmail
}

// kindMetadata marks credentials from the metadata server.
const kindMetadata = "the metadata server's service account"

// findADC finds Application Default Credentials as oauth2/google does,
// every time: the environment, gcloud's file, then the metadata server.
func findADC(ctx context.Context, scopes []string) (*found, error) {
	creds, err := google.FindDefaultCredentialsWithParams(ctx, google.CredentialsParams{Scopes: scopes})
	if err != nil {
		return nil, err
	}
	if creds.JSON == nil {
		return &found{ts: creds.TokenSource, kind: kindMetadata}, nil
	}
	f := fromJSON(creds.JSON)
	f.ts = creds.TokenSource
	return f, nil
}

// fromJSON reads what a credentials file says about its principal: a
// service account key's client_email, or the account an impersonating
// file acts as; a user's file does not name its user.
func fromJSON(b []byte) *found {
	var j struct {
		Type             string `json:"type"`
		ClientEmail      string `json:"client_email"`
		ImpersonationURL string `json:"service_account_impersonation_url"`
	}
	_ = json.Unmarshal(b, &j)
	f := &found{kind: "a " + j.Type + " credentials file"}
	switch {
	case j.ImpersonationURL != "":
		// …/serviceAccounts/EMAIL:generateAccessToken
		if _, after, ok := strings.Cut(j.ImpersonationURL, "/serviceAccounts/"); ok {
			email, _, _ := strings.Cut(after, ":")
			if e, err := url.PathUnescape(email); err == nil {
				f.principal = e
			}
		}
	case j.Type == "service_account":
		f.kind = "the service account key"
		f.principal = j.ClientEmail
	case j.Type == "authorized_user":
		f.kind = "a user's application default credentials"
	}
	return f
}

// token calls ts.Token within ctx. The metadata client takes no context
// from oauth2's compute source and retries on its own for up to seconds;
// a caller whose ctx ends must not wait for it (the call ends by itself).
func token(ctx context.Context, ts oauth2.TokenSource) (*oauth2.Token, error) {
	type result struct {
		t   *oauth2.Token
		err error
	}
	ch := make(chan result, 1)
	go func() {
		t, err := ts.Token()
		ch <- result{t, err}
	}()
	select {
	case r := <-ch:
		return r.t, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// classify tells a refusal (fail fast) from an outage (retry with backoff
// while the cached token serves). netErr is the transport's error, which
// oauth2's JWT flow flattens into text.
func classify(ctx context.Context, err, netErr error) (kind error, detail string) {
	var re *oauth2.RetrieveError
	var me *metadata.Error
	status := 0
	switch {
	case errors.As(err, &re):
		if re.Response != nil {
			status = re.Response.StatusCode
		}
	case errors.As(err, &me):
		status = me.Code
	case ctx.Err() != nil || netErr != nil || isNetError(err):
		return pgsecrets.ErrStoreUnavailable, "the token request did not get an answer"
	}
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500:
		return pgsecrets.ErrStoreUnavailable, fmt.Sprintf("the token request failed with HTTP %d", status)
	case status >= 400:
		return pgsecrets.ErrAccessDenied, fmt.Sprintf("the token request was refused (HTTP %d)", status)
	case strings.Contains(err.Error(), "not running on GCE"), strings.Contains(err.Error(), "private key"):
		return pgsecrets.ErrAccessDenied, "the credentials cannot make a token"
	}
	return pgsecrets.ErrStoreUnavailable, "the token request failed"
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}

// fetchTransport binds one fetch's token requests to its ctx (oauth2's
// JWT flow sends them without one) and remembers a network failure.
type fetchTransport struct {
	ctx  context.Context
	base http.RoundTripper
	mu   sync.Mutex
	err  error
}

func (t *fetchTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r.WithContext(t.ctx))
	if err != nil {
		t.mu.Lock()
		t.err = err
		t.mu.Unlock()
	}
	return resp, err
}

func (t *fetchTransport) failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// AuthHint implements pgsecrets.AuthHinter: Cloud SQL and AlloyDB answer
// every refused token alike (28000, "… IAM … authentication failed"),
// whatever the cause.
func (p *provider) AuthHint(string) string {
	if p.service == "alloydb" {
		return "AlloyDB refused the IAM token: check that the instance has alloydb.iam_authentication=on, that " + p.user +
			" was added as an IAM user of the cluster (gcloud alloydb users create … --type=IAM_BASED), that the account has " +
			"roles/alloydb.databaseUser and roles/serviceusage.serviceUsageConsumer, that the role was GRANTed what it needs, " +
			"and that the token's scope is alloydb.login or cloud-platform (secret_gcp_service=alloydb)"
	}
	return "Cloud SQL refused the IAM token: check that the instance has cloudsql.iam_authentication=on, that " + p.user +
		" was created as an IAM user (gcloud sql users create " + p.user + " --instance=INSTANCE --type=cloud_iam_service_account, " +
		"or --type=cloud_iam_user for a person), that the account has roles/cloudsql.instanceUser (and roles/cloudsql.client " +
		"through the Auth Proxy), that the role was GRANTed what it needs, and that the token's scope is sqlservice.login " +
		"(secret_gcp_service=cloudsql for Cloud SQL, alloydb for AlloyDB)"
}

// LoginRate implements pgsecrets.LoginPacer: secret_login_rate, 0 (not
// paced) by default. AlloyDB has a per-minute sign-in quota per instance,
// failed sign-ins included, but does not publish it; a guessed default
// would turn a reconnect storm into errors of pgsecrets' own. Refused
// tokens are already bounded: pgsecrets lets only a few logins try a
// token that has not logged in yet.
func (p *provider) LoginRate() float64 { return p.rate }

// CacheKey implements pgsecrets.CacheKeyer: connectors of the process
// with the same source, service, endpoint and user share one token.
func (p *provider) CacheKey() string {
	return p.name + "|" + p.service + "|" + p.endpoint + "|" + p.user
}

// Describe implements pgsecrets.Describer without asking for a token or
// probing the metadata server.
func (p *provider) Describe(context.Context) ([]pgsecrets.Fact, error) {
	facts := []pgsecrets.Fact{
		{Name: "token for", Value: p.user + "@" + p.endpoint},
		{Name: "service", Value: p.service},
		{Name: "scope", Value: strings.Join(p.scopes, " ")},
		{Name: "credentials", Value: p.source},
	}
	if p.name == ProviderName {
		facts = append(facts, pgsecrets.Fact{Name: "found in", Value: adcWhere()})
	}
	return facts, nil
}

// adcWhere says where Application Default Credentials will be looked for
// first, from the environment and the file system only.
func adcWhere() string {
	if f := os.Getenv("GOOGLE_APPLICATION_CREDENTIALS"); f != "" {
		return "GOOGLE_APPLICATION_CREDENTIALS=" + f
	}
	if f := wellKnownFile(); f != "" {
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	if h := os.Getenv("GCE_METADATA_HOST"); h != "" {
		return "the metadata server at " + h
	}
	return "the metadata server, if on Google Cloud"
}

// wellKnownFile is where gcloud auth application-default login writes.
func wellKnownFile() string {
	const name = "application_default_credentials.json"
	if runtime.GOOS == "windows" {
		return filepath.Join(os.Getenv("APPDATA"), "gcloud", name)
	}
	home := os.Getenv("HOME")
	if home == "" {
		return ""
	}
	return filepath.Join(home, ".config", "gcloud", name)
}
