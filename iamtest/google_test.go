package iamtest_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// googleRig is a Google issuer and an iamtest front end that verifies its
// tokens, in front of real roles named after Google principals.
type googleRig struct {
	t       *testing.T
	pg      *testdb.Cluster
	g       *iamtest.GoogleIssuer
	srv     *iamtest.Server
	clock   *clock
	logs    *syncBuffer
	secrets []string // tokens, keys and assertions that must not leak
}

var googleSeq atomic.Int64

// newGoogleRig creates a role (with a password only the front end knows)
// for each database user, and an issuer and front end sharing one clock.
func newGoogleRig(t *testing.T, opts iamtest.GoogleOptions, users ...string) *googleRig {
	t.Helper()
	r := &googleRig{t: t, pg: testdb.Shared(t), clock: newClock(time.Now()), logs: &syncBuffer{}}
	logf := func(format string, args ...any) {
		r.logs.logf(format, args...)
		t.Logf(format, args...)
	}
	opts.Now, opts.Logf = r.clock.now, logf
	r.g = iamtest.StartGoogle(t, opts)
	passwords := map[string]string{}
	for _, u := range users {
		pw := fmt.Sprintf("pw-%d-%d", time.Now().UnixNano(), googleSeq.Add(1))
		if err := r.pg.CreateRole(context.Background(), u, pw); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.pg.DropRole(context.Background(), u); err != nil {
				t.Error(err)
			}
		})
		passwords[u] = pw
	}
	r.srv = iamtest.Start(t, iamtest.Options{
		Verifier:       r.g.Verifier(),
		RefusedMessage: r.g.RefusedMessage,
		Now:            r.clock.now,
		Logf:           logf,
		Upstream: func(user string) (string, error) {
			pw, ok := passwords[user]
			if !ok {
				return "", fmt.Errorf("no such role %q", user)
			}
			return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
				r.pg.Host(), r.pg.Port(), quote(user), quote(pw), quote(r.pg.CAFile())), nil
		},
	})
	t.Cleanup(r.checkNoLeak)
	return r
}

// checkNoLeak fails the test if a token, key or assertion reached a log
// line or a login record.
func (r *googleRig) checkNoLeak() {
	var records strings.Builder
	for _, l := range r.srv.Logins() {
		fmt.Fprintf(&records, "%+v\n", l)
	}
	for _, s := range r.secrets {
		if strings.Contains(r.logs.String(), s) || strings.Contains(records.String(), s) {
			r.t.Errorf("a secret (%d bytes) appears in the logs or the login records", len(s))
		}
	}
}

// saEmail is a new service account's email.
func saEmail(name string) string {
	return fmt.Sprintf("%s-%d@iamtest-project.iam.gserviceaccount.com", name, googleSeq.Add(1))
}

// saKey is what the issuer's ServiceAccountKey returns, decoded.
type saKey struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	ClientID     string `json:"client_id"`
	TokenURI     string `json:"token_uri"`
	key          *rsa.PrivateKey
}

func (r *googleRig) key(email string) *saKey {
	r.t.Helper()
	raw, err := r.g.ServiceAccountKey(email)
	if err != nil {
		r.t.Fatal(err)
	}
	var k saKey
	if err := json.Unmarshal(raw, &k); err != nil {
		r.t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(k.PrivateKey))
	if block == nil {
		r.t.Fatal("private_key is not PEM")
	}
	pk, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		r.t.Fatal(err)
	}
	k.key = pk.(*rsa.PrivateKey)
	r.secrets = append(r.secrets, strings.TrimSpace(strings.Split(k.PrivateKey, "\n")[1]))
	return &k
}

// assertion signs claims as golang.org/x/oauth2/jwt does: RS256, kid =
// the key's id.
func (r *googleRig) assertion(k *saKey, kid string, claims map[string]any) string {
	r.t.Helper()
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid})
	c, _ := json.Marshal(claims)
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k.key, crypto.SHA256, sum[:])
	if err != nil {
		r.t.Fatal(err)
	}
	a := signing + "." + enc.EncodeToString(sig)
	r.secrets = append(r.secrets, a)
	return a
}

// claims are a valid assertion's claims for k with scope.
func (r *googleRig) claims(k *saKey, scope string) map[string]any {
	now := r.clock.now().Add(-10 * time.Second)
	return map[string]any{"iss": k.ClientEmail, "scope": scope, "aud": k.TokenURI, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

// tokenResponse is the token endpoint's answer, either kind.
type tokenResponse struct {
	status      int
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	TokenType   string `json:"token_type"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// post sends a token request with plain net/http.
func (r *googleRig) post(form url.Values) tokenResponse {
	r.t.Helper()
	resp, err := http.PostForm(r.g.TokenURL(), form)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr tokenResponse
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &tr); err != nil {
		r.t.Fatalf("token endpoint answered %d with %q", resp.StatusCode, body)
	}
	tr.status = resp.StatusCode
	if tr.AccessToken != "" {
		r.secrets = append(r.secrets, tr.AccessToken)
	}
	return tr
}

// token gets an access token for k with scope through the jwt-bearer grant.
func (r *googleRig) token(k *saKey, scope string) string {
	r.t.Helper()
	tr := r.post(url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
		"assertion": {r.assertion(k, k.PrivateKeyID, r.claims(k, scope))}})
	if tr.status != http.StatusOK || tr.AccessToken == "" {
		r.t.Fatalf("token request: %d %s %s", tr.status, tr.Error, tr.Description)
	}
	return tr.AccessToken
}

// login logs in to the front end as user with password, over TLS
// verified against its CA.
func (r *googleRig) login(user, password string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=30",
		r.srv.Port(), quote(user), quote(r.srv.CAFile())))
	if err != nil {
		r.t.Fatal(err)
	}
	cfg.Password = password
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err == nil {
		r.t.Cleanup(func() { c.Close(context.Background()) })
	}
	return c, err
}

// lastReason is the reason of the last login record.
func (r *googleRig) lastReason() string {
	l := r.srv.Logins()
	if len(l) == 0 {
		return "(no login)"
	}
	return l[len(l)-1].Reason
}

// The token endpoint exchanges a service account's signed assertion for
// an access token that logs in as the account's database user (its email
// without .gserviceaccount.com), and for nothing else.
func TestGoogleServiceAccountLogin(t *testing.T) {
	email := saEmail("app")
	user := iamtest.DatabaseUser(email)
	if user == email || !strings.HasSuffix(user, ".iam") {
		t.Fatalf("DatabaseUser(%q) = %q", email, user)
	}
	r := newGoogleRig(t, iamtest.GoogleOptions{}, user)
	k := r.key(email)
	if k.Type != "service_account" || k.ClientEmail != email || k.TokenURI != r.g.TokenURL() || k.ProjectID != r.g.ProjectID() ||
		k.PrivateKeyID == "" || k.ClientID == "" {
		t.Fatalf("key file: %+v", k)
	}
	tr := r.post(url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
		"assertion": {r.assertion(k, k.PrivateKeyID, r.claims(k, iamtest.ScopeCloudSQLLogin))}})
	if tr.status != http.StatusOK || !strings.HasPrefix(tr.AccessToken, "ya29.") || tr.ExpiresIn != 3600 || tr.TokenType != "Bearer" {
		t.Fatalf("token response: %+v", tr)
	}
	if n := r.g.TokensIssued(); n != 1 {
		t.Errorf("TokensIssued = %d, want 1", n)
	}
	c, err := r.login(user, tr.AccessToken)
	if err != nil {
		t.Fatalf("a valid token was refused: %v", err)
	}
	var current string
	if err := c.QueryRow(context.Background(), "SELECT current_user").Scan(&current); err != nil || current != user {
		t.Fatalf("current_user = %q, %v", current, err)
	}
	if l := r.srv.Logins(); len(l) != 1 || !l[0].Accepted || l[0].User != user {
		t.Errorf("login records: %+v", l)
	}
}

// Every way a Google token is wrong is refused with its own reason and
// Cloud SQL's message, SQLSTATE 28000.
func TestGoogleTokenRefusals(t *testing.T) {
	email, other := saEmail("app"), saEmail("other")
	user := iamtest.DatabaseUser(email)
	r := newGoogleRig(t, iamtest.GoogleOptions{LoginScopes: iamtest.CloudSQLLoginScopes()}, user, iamtest.DatabaseUser(other))
	k, ko := r.key(email), r.key(other)
	good := r.token(k, iamtest.ScopeCloudSQLLogin)
	storage := r.token(k, "https://www.googleapis.com/auth/devstorage.read_only")
	alloy := r.token(k, iamtest.ScopeAlloyDBLogin) // AlloyDB's scope, refused by a Cloud SQL verifier
	otherTok := r.token(ko, iamtest.ScopeCloudSQLLogin)
	saMessage := fmt.Sprintf("Cloud SQL IAM service account authentication failed for user %q", user)

	for _, tc := range []struct {
		name, token, reason string
		advance             time.Duration
	}{
		{"unknown token", "ya29.not-a-token-of-this-issuer", iamtest.ReasonNotIssued, 0},
		{"no login scope", storage, iamtest.ReasonNoLoginScope, 0},
		{"another service's scope", alloy, iamtest.ReasonNoLoginScope, 0},
		{"other principal", otherTok, iamtest.ReasonUser, 0},
		{"expired", good, iamtest.ReasonExpired, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.clock.advance(tc.advance)
			_, err := r.login(user, tc.token)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != saMessage {
				t.Fatalf("login: %v, want 28000 %q", err, saMessage)
			}
			if got := r.lastReason(); got != tc.reason {
				t.Errorf("reason %q, want %q", got, tc.reason)
			}
		})
	}
}

// A user account's refresh token gets tokens that log in as its email
// itself; a refused user gets Cloud SQL's message for users.
func TestGoogleAuthorizedUser(t *testing.T) {
	email := fmt.Sprintf("dev%d@example.com", googleSeq.Add(1))
	r := newGoogleRig(t, iamtest.GoogleOptions{}, email)
	raw, err := r.g.AuthorizedUser(email)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Type         string `json:"type"`
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		RefreshToken string `json:"refresh_token"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.Type != "authorized_user" || f.TokenURI != r.g.TokenURL() {
		t.Fatalf("authorized_user file: %v %+v", err, f)
	}
	r.secrets = append(r.secrets, f.RefreshToken)
	tr := r.post(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}, "client_id": {f.ClientID},
		"client_secret": {f.ClientSecret}})
	if tr.status != http.StatusOK {
		t.Fatalf("refresh grant: %+v", tr)
	}
	if _, err := r.login(email, tr.AccessToken); err != nil {
		t.Fatalf("the user's token was refused: %v", err)
	}
	r.srv.RejectNext(1)
	_, err = r.login(email, tr.AccessToken)
	var pgErr *pgconn.PgError
	want := fmt.Sprintf("Cloud SQL IAM user authentication failed for user %q", email)
	if !errors.As(err, &pgErr) || pgErr.Message != want || r.lastReason() != iamtest.ReasonInjected {
		t.Errorf("refused user: %v (%s), want %q", err, r.lastReason(), want)
	}
	if tr := r.post(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"1//unknown"}}); tr.status != 400 || tr.Error != "invalid_grant" {
		t.Errorf("unknown refresh token: %+v", tr)
	}
}

// A bad assertion gets the OAuth2 error Google sends, and no token.
func TestGoogleBadAssertions(t *testing.T) {
	email := saEmail("app")
	r := newGoogleRig(t, iamtest.GoogleOptions{})
	k := r.key(email)
	stranger := *k
	stranger.key, _ = rsa.GenerateKey(rand.Reader, 2048)
	with := func(edit func(map[string]any)) map[string]any {
		c := r.claims(k, iamtest.ScopeCloudSQLLogin)
		edit(c)
		return c
	}
	now := r.clock.now()
	for _, tc := range []struct {
		name, assertion, code string
	}{
		{"signed by another key", r.assertion(&stranger, k.PrivateKeyID, r.claims(k, iamtest.ScopeCloudSQLLogin)), "invalid_grant"},
		{"unknown key id", r.assertion(k, "0123", r.claims(k, iamtest.ScopeCloudSQLLogin)), "invalid_grant"},
		{"iss is another account", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) { c["iss"] = "x@y.iam.gserviceaccount.com" })), "invalid_grant"},
		{"sub is another account", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) { c["sub"] = "boss@example.com" })), "invalid_grant"},
		{"aud is not the endpoint", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) { c["aud"] = "https://oauth2.googleapis.com/token" })), "invalid_grant"},
		{"expired", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
		})), "invalid_grant"},
		{"too long", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) { c["exp"] = now.Add(3 * time.Hour).Unix() })), "invalid_grant"},
		{"from the future", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(time.Hour).Unix(), now.Add(90*time.Minute).Unix()
		})), "invalid_grant"},
		{"no scope", r.assertion(k, k.PrivateKeyID, with(func(c map[string]any) { delete(c, "scope") })), "invalid_scope"},
		{"not a JWT", "not.a-jwt", "invalid_grant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := r.post(url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {tc.assertion}})
			if tr.status != http.StatusBadRequest || tr.Error != tc.code || tr.AccessToken != "" {
				t.Errorf("got %d %q (%s), want 400 %q", tr.status, tr.Error, tr.Description, tc.code)
			}
		})
	}
	if tr := r.post(url.Values{"grant_type": {"client_credentials"}}); tr.Error != "unsupported_grant_type" {
		t.Errorf("unknown grant type: %+v", tr)
	}
	if n := r.g.TokensIssued(); n != 0 {
		t.Errorf("%d tokens issued for bad assertions", n)
	}
	// FailTokens: an outage, then a disabled account, then back to normal.
	good := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"},
		"assertion": {r.assertion(k, k.PrivateKeyID, r.claims(k, iamtest.ScopeCloudSQLLogin))}}
	r.g.FailTokens(iamtest.TokensServerError)
	if tr := r.post(good); tr.status != http.StatusInternalServerError {
		t.Errorf("TokensServerError: %+v", tr)
	}
	r.g.FailTokens(iamtest.TokensInvalidGrant)
	if tr := r.post(good); tr.status != http.StatusBadRequest || tr.Error != "invalid_grant" {
		t.Errorf("TokensInvalidGrant: %+v", tr)
	}
	r.g.FailTokens(iamtest.TokensOK)
	if tr := r.post(good); tr.status != http.StatusOK || r.g.TokensIssued() != 1 {
		t.Errorf("TokensOK: %+v, %d issued", tr, r.g.TokensIssued())
	}
}

// The metadata server answers only requests with Metadata-Flavor: Google,
// names its account, and issues that account's tokens for the scopes
// asked, which log in as its database user.
func TestGoogleMetadataServer(t *testing.T) {
	vm := saEmail("vm")
	r := newGoogleRig(t, iamtest.GoogleOptions{MetadataEmail: vm}, iamtest.DatabaseUser(vm))
	get := func(path string, flavor bool) (int, string, http.Header) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.g.MetadataHost()+"/computeMetadata/v1/"+path, nil)
		if flavor {
			req.Header.Set("Metadata-Flavor", "Google")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	if code, _, _ := get("instance/service-accounts/default/email", false); code != http.StatusForbidden {
		t.Errorf("without Metadata-Flavor: %d, want 403", code)
	}
	if code, body, h := get("instance/service-accounts/default/email", true); code != 200 || body != vm || h.Get("Metadata-Flavor") != "Google" {
		t.Errorf("email: %d %q %v", code, body, h)
	}
	if code, body, _ := get("project/project-id", true); code != 200 || body != r.g.ProjectID() {
		t.Errorf("project-id: %d %q", code, body)
	}
	if code, _, _ := get("instance/service-accounts/someone-else@x.iam.gserviceaccount.com/token", true); code != http.StatusNotFound {
		t.Errorf("another account's token: %d, want 404", code)
	}
	code, body, _ := get("instance/service-accounts/default/token?scopes="+url.QueryEscape(iamtest.ScopeCloudSQLLogin), true)
	var tr tokenResponse
	if err := json.Unmarshal([]byte(body), &tr); err != nil || code != 200 || tr.ExpiresIn != 3600 || tr.AccessToken == "" {
		t.Fatalf("token: %d %v", code, err)
	}
	r.secrets = append(r.secrets, tr.AccessToken)
	if _, err := r.login(iamtest.DatabaseUser(vm), tr.AccessToken); err != nil {
		t.Fatalf("the metadata server's token was refused: %v", err)
	}
	r.g.FailTokens(iamtest.TokensInvalidGrant)
	if code, _, _ := get("instance/service-accounts/default/token", true); code != http.StatusForbidden {
		t.Errorf("TokensInvalidGrant on the metadata server: %d, want 403", code)
	}
}
