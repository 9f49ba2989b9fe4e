package iamtest

// A Google token issuer for tests of Cloud SQL and AlloyDB IAM database
// authentication: the OAuth2 token endpoint a service account key's
// token_uri names, and the GCE metadata server that GCE_METADATA_HOST
// points golang.org/x/oauth2/google and cloud.google.com/go/compute/metadata
// at. Its Verifier checks the access tokens it issued the way Cloud SQL and
// AlloyDB do at login. Standard library only: the client side under test
// brings the Google libraries.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// OAuth2 scopes that matter for IAM database logins.
const (
	// ScopeCloudSQLLogin is the scope Cloud SQL's connectors request for
	// IAM database authentication: it allows the login and nothing else.
	ScopeCloudSQLLogin = "https://www.googleapis.com/auth/sqlservice.login"
	// ScopeCloudSQLAdmin is the Cloud SQL Admin API scope; Cloud SQL's
	// documentation once told users to log in with such a token, and
	// Cloud SQL still accepts it.
	ScopeCloudSQLAdmin = "https://www.googleapis.com/auth/sqlservice.admin"
	// ScopeAlloyDBLogin is the scope AlloyDB's documentation restricts a
	// login token to (gcloud auth application-default print-access-token
	// --scopes=…alloydb.login).
	ScopeAlloyDBLogin = "https://www.googleapis.com/auth/alloydb.login"
	// ScopeCloudPlatform is the catch-all scope of gcloud auth
	// print-access-token and of a VM's default service account; both
	// services accept it.
	ScopeCloudPlatform = "https://www.googleapis.com/auth/cloud-platform"
)

// CloudSQLLoginScopes returns the scopes Cloud SQL accepts on a login
// token, for GoogleOptions.LoginScopes.
func CloudSQLLoginScopes() []string {
	return []string{ScopeCloudSQLLogin, ScopeCloudSQLAdmin, ScopeCloudPlatform}
}

// AlloyDBLoginScopes returns the scopes AlloyDB accepts on a login token,
// for GoogleOptions.LoginScopes.
func AlloyDBLoginScopes() []string { return []string{ScopeAlloyDBLogin, ScopeCloudPlatform} }

// Reasons a Google token is refused, beside ReasonExpired (its hour is
// over), ReasonUser (it belongs to another principal than the login
// user), ReasonTooOld and ReasonInjected.
const (
	// ReasonNotIssued: the password is not an access token the
	// GoogleIssuer issued (a typo, a token of another project, a key).
	ReasonNotIssued = "token not issued by the issuer"
	// ReasonNoLoginScope: the token was issued without any of the scopes
	// the database accepts (GoogleOptions.LoginScopes): a token for some
	// other API.
	ReasonNoLoginScope = "token lacks a login scope"
)

// ServiceAccountSuffix is what a service account's email ends with and
// its database user does not: sa@project.iam.gserviceaccount.com logs in
// as sa@project.iam.
const ServiceAccountSuffix = ".gserviceaccount.com"

// DefaultGoogleTokenLifetime is how long Google's access tokens live.
const DefaultGoogleTokenLifetime = time.Hour

// jwtBearerGrant is the grant type of a service account's signed
// assertion (RFC 7523).
const jwtBearerGrant = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// googleMaxAssertionLife is the longest an assertion may be valid (exp -
// iat), and googleMaxSkew how far in the future its iat may be: Google's
// limits.
const (
	googleMaxAssertionLife = time.Hour
	googleMaxSkew          = 5 * time.Minute
)

// GoogleOptions configure a GoogleIssuer. All are optional.
type GoogleOptions struct {
	// ProjectID is the project of the keys and of the metadata server.
	// Default "iamtest-project".
	ProjectID string
	// MetadataEmail is the email of the metadata server's default service
	// account. Default "vm@PROJECT.iam.gserviceaccount.com".
	MetadataEmail string
	// MetadataScopes are the scopes of the metadata server's tokens when
	// the client asks for none (a VM's access scopes). Default
	// cloud-platform.
	MetadataScopes []string
	// LoginScopes are the scopes the Verifier accepts, one of which a
	// token must carry: CloudSQLLoginScopes or AlloyDBLoginScopes.
	// Default both together.
	LoginScopes []string
	// TokenLifetime is the life of an access token (expires_in).
	// Default DefaultGoogleTokenLifetime.
	TokenLifetime time.Duration
	// Now is the issuer's clock, for assertions, issue times and expiry.
	// Default time.Now.
	Now func() time.Time
	// Logf, if set, receives one line per request (never a token, an
	// assertion or a key). StartGoogle defaults it to t.Logf.
	Logf func(format string, args ...any)
}

// TokenFailure is how the token endpoints answer while FailTokens is set.
type TokenFailure int

const (
	// TokensOK: tokens are issued normally.
	TokensOK TokenFailure = iota
	// TokensServerError: every token request gets HTTP 500 (an outage:
	// clients should retry).
	TokensServerError
	// TokensInvalidGrant: every token request is refused, HTTP 400
	// {"error":"invalid_grant"} from the token endpoint and 403 from the
	// metadata server (a deleted or disabled key or account: retrying
	// does not help).
	TokensInvalidGrant
)

// GoogleIssuer is a running Google token issuer. Its methods are safe for
// concurrent use.
type GoogleIssuer struct {
	opts GoogleOptions
	ln   net.Listener
	srv  *http.Server
	url  string
	done chan struct{}

	mu      sync.Mutex
	keys    map[string]googleKey   // by private_key_id
	refresh map[string]string      // refresh token hash -> user email
	tokens  map[string]googleToken // access token hash -> what it is
	failure TokenFailure
	issued  int
	closed  bool
}

// googleKey is a service account key the issuer made.
type googleKey struct {
	email string
	pub   *rsa.PublicKey
}

// googleToken is what the issuer knows of an access token it issued.
type googleToken struct {
	email   string
	user    bool // a user account's (authorized_user), not a service account's
	scopes  []string
	issued  time.Time
	expires time.Time
}

// NewGoogleIssuer starts an issuer on 127.0.0.1:0. Call Close when done.
func NewGoogleIssuer(opts GoogleOptions) (*GoogleIssuer, error) {
	if opts.ProjectID == "" {
		opts.ProjectID = "iamtest-project"
	}
	if opts.MetadataEmail == "" {
		opts.MetadataEmail = "vm@" + opts.ProjectID + ".iam" + ServiceAccountSuffix
	}
	if len(opts.MetadataScopes) == 0 {
		opts.MetadataScopes = []string{ScopeCloudPlatform}
	}
	if len(opts.LoginScopes) == 0 {
		opts.LoginScopes = []string{ScopeCloudSQLLogin, ScopeCloudSQLAdmin, ScopeAlloyDBLogin, ScopeCloudPlatform}
	}
	opts.MetadataScopes = slices.Clone(opts.MetadataScopes)
	opts.LoginScopes = slices.Clone(opts.LoginScopes)
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultGoogleTokenLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	g := &GoogleIssuer{
		opts:    opts,
		ln:      ln,
		url:     "http://" + ln.Addr().String(),
		done:    make(chan struct{}),
		keys:    make(map[string]googleKey),
		refresh: make(map[string]string),
		tokens:  make(map[string]googleToken),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", g.serveToken)
	mux.HandleFunc("/computeMetadata/v1/", g.serveMetadata)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// What a metadata server answers at its root: the header is how
		// a client tells it from any other web server.
		w.Header().Set("Metadata-Flavor", "Google")
		http.NotFound(w, r)
	})
	g.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(g.done)
		_ = g.srv.Serve(ln)
	}()
	return g, nil
}

// StartGoogle starts an issuer for the test and closes it in t.Cleanup.
// Log lines go to t.Logf unless opts.Logf is set.
func StartGoogle(t testing.TB, opts GoogleOptions) *GoogleIssuer {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	g, err := NewGoogleIssuer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// Close stops the issuer and returns when its server has ended. Tokens it
// issued stay valid for its Verifier. Calling it again does nothing.
func (g *GoogleIssuer) Close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.mu.Unlock()
	_ = g.srv.Close()
	<-g.done
}

// URL is the issuer's base URL, "http://127.0.0.1:PORT".
func (g *GoogleIssuer) URL() string { return g.url }

// TokenURL is the OAuth2 token endpoint, the token_uri of the keys it
// makes.
func (g *GoogleIssuer) TokenURL() string { return g.url + "/token" }

// MetadataHost is the value for GCE_METADATA_HOST, "127.0.0.1:PORT".
// cloud.google.com/go/compute/metadata then believes it runs on Google
// Cloud without probing, and asks this issuer for the VM's account and
// tokens.
func (g *GoogleIssuer) MetadataHost() string { return g.ln.Addr().String() }

// MetadataEmail is the metadata server's default service account.
func (g *GoogleIssuer) MetadataEmail() string { return g.opts.MetadataEmail }

// ProjectID is the project of the keys and of the metadata server.
func (g *GoogleIssuer) ProjectID() string { return g.opts.ProjectID }

// FailTokens makes both token endpoints answer every request with f until
// it is called again with TokensOK. Tokens already issued stay valid.
func (g *GoogleIssuer) FailTokens(f TokenFailure) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failure = f
}

// TokensIssued counts the access tokens issued so far, by either endpoint.
func (g *GoogleIssuer) TokensIssued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.issued
}

// ServiceAccountKey makes a new key for the service account email (which
// should end in ServiceAccountSuffix) and returns it as the JSON file
// Google hands out, for GOOGLE_APPLICATION_CREDENTIALS; its token_uri is
// TokenURL. An account may have several keys; each works until Close.
func (g *GoogleIssuer) ServiceAccountKey(email string) ([]byte, error) {
	if email == "" {
		return nil, errors.New("iamtest: ServiceAccountKey needs an email")
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	kid := googleRandomHex(20)
	g.mu.Lock()
	g.keys[kid] = googleKey{email: email, pub: &key.PublicKey}
	g.mu.Unlock()
	return json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  g.opts.ProjectID,
		"private_key_id":              kid,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                email,
		"client_id":                   googleRandomDigits(21),
		"auth_uri":                    g.url + "/auth",
		"token_uri":                   g.TokenURL(),
		"auth_provider_x509_cert_url": g.url + "/certs",
		"universe_domain":             "googleapis.com",
	}, "", "  ")
}

// AuthorizedUser returns the JSON of a user account's application default
// credentials for email (what gcloud auth application-default login
// writes, with token_uri = TokenURL): a refresh token the token endpoint
// exchanges for access tokens of that user.
func (g *GoogleIssuer) AuthorizedUser(email string) ([]byte, error) {
	if email == "" {
		return nil, errors.New("iamtest: AuthorizedUser needs an email")
	}
	rt := "1//" + googleRandomHex(32)
	g.mu.Lock()
	g.refresh[googleHash(rt)] = email
	g.mu.Unlock()
	return json.MarshalIndent(map[string]string{
		"type":            "authorized_user",
		"client_id":       googleRandomDigits(12) + ".apps.googleusercontent.com",
		"client_secret":   googleRandomHex(12),
		"refresh_token":   rt,
		"token_uri":       g.TokenURL(),
		"universe_domain": "googleapis.com",
	}, "", "  ")
}

// DatabaseUser is the database user a Google principal logs in as: a
// service account's email without ServiceAccountSuffix, a user account's
// email as it is.
func DatabaseUser(email string) string { return strings.TrimSuffix(email, ServiceAccountSuffix) }

// RefusedMessage is what Cloud SQL answers a refused IAM login with (SQLSTATE
// 28000, iamtest's default), for Options.RefusedMessage: it names the kind
// of account, never why.
func (g *GoogleIssuer) RefusedMessage(user, _ string) string {
	if strings.HasSuffix(user, ".iam") {
		return fmt.Sprintf("Cloud SQL IAM service account authentication failed for user %q", user)
	}
	return fmt.Sprintf("Cloud SQL IAM user authentication failed for user %q", user)
}

// Verifier returns the Verifier for Options.Verifier: the password must be
// an access token the issuer issued, not expired, with one of
// GoogleOptions.LoginScopes, of the principal whose DatabaseUser is the
// login user.
func (g *GoogleIssuer) Verifier() Verifier { return googleVerifier{g} }

type googleVerifier struct{ g *GoogleIssuer }

// Verify implements Verifier. Tokens are looked up by their hash, so
// nothing it returns can hold one.
func (v googleVerifier) Verify(_ context.Context, user, token string, now time.Time) (time.Time, string, string) {
	g := v.g
	g.mu.Lock()
	t, ok := g.tokens[googleHash(token)]
	g.mu.Unlock()
	if !ok {
		return time.Time{}, ReasonNotIssued, "the password is not an access token of this issuer"
	}
	if !now.Before(t.expires) {
		return t.issued, ReasonExpired, fmt.Sprintf("issued at %s, expired at %s, now %s",
			t.issued.UTC().Format(time.RFC3339), t.expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !slices.ContainsFunc(t.scopes, func(s string) bool { return slices.Contains(g.opts.LoginScopes, s) }) {
		return t.issued, ReasonNoLoginScope, fmt.Sprintf("scopes %s, none of %s", strings.Join(t.scopes, " "), strings.Join(g.opts.LoginScopes, " "))
	}
	want := DatabaseUser(t.email)
	if t.user {
		want = t.email
	}
	if want != user {
		return t.issued, ReasonUser, fmt.Sprintf("token of %q (database user %q), login user %q", t.email, want, user)
	}
	return t.issued, "", ""
}

// issue records and returns a new access token.
func (g *GoogleIssuer) issue(email string, user bool, scopes []string) (token string, life time.Duration) {
	token = "ya29.iamtest-" + googleRandomHex(32)
	now := g.opts.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens[googleHash(token)] = googleToken{email: email, user: user, scopes: slices.Clone(scopes), issued: now,
		expires: now.Add(g.opts.TokenLifetime)}
	g.issued++
	return token, g.opts.TokenLifetime
}

func (g *GoogleIssuer) currentFailure() TokenFailure {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failure
}

func (g *GoogleIssuer) logf(format string, args ...any) {
	if g.opts.Logf != nil {
		g.opts.Logf(format, args...)
	}
}

// serveToken is the OAuth2 token endpoint: a service account's signed
// assertion (what golang.org/x/oauth2/jwt posts for a service_account
// key) or a user's refresh token (authorized_user).
func (g *GoogleIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		googleOAuthError(w, http.StatusMethodNotAllowed, "invalid_request", "POST required")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		googleOAuthError(w, http.StatusBadRequest, "invalid_request", "the body is not a form")
		return
	}
	switch g.currentFailure() {
	case TokensServerError:
		g.logf("iamtest/google: token request answered 500 (FailTokens)")
		googleOAuthError(w, http.StatusInternalServerError, "internal_failure", "injected by FailTokens")
		return
	case TokensInvalidGrant:
		g.logf("iamtest/google: token request refused (FailTokens)")
		googleOAuthError(w, http.StatusBadRequest, "invalid_grant", "account disabled (injected by FailTokens)")
		return
	}
	switch gt := r.PostForm.Get("grant_type"); gt {
	case jwtBearerGrant:
		email, scopes, desc := g.checkAssertion(r.PostForm.Get("assertion"))
		if desc != "" {
			g.logf("iamtest/google: assertion refused: %s", desc)
			googleOAuthError(w, http.StatusBadRequest, "invalid_grant", desc)
			return
		}
		if len(scopes) == 0 {
			googleOAuthError(w, http.StatusBadRequest, "invalid_scope", "Empty or missing scope not allowed.")
			return
		}
		g.grant(w, email, false, scopes)
	case "refresh_token":
		g.mu.Lock()
		email, ok := g.refresh[googleHash(r.PostForm.Get("refresh_token"))]
		g.mu.Unlock()
		if !ok {
			g.logf("iamtest/google: unknown refresh token")
			googleOAuthError(w, http.StatusBadRequest, "invalid_grant", "Bad Request")
			return
		}
		scopes := strings.Fields(r.PostForm.Get("scope"))
		if len(scopes) == 0 {
			scopes = []string{ScopeCloudPlatform} // what the refresh token was granted
		}
		g.grant(w, email, true, scopes)
	default:
		googleOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q", gt))
	}
}

// grant issues a token and writes the token response.
func (g *GoogleIssuer) grant(w http.ResponseWriter, email string, user bool, scopes []string) {
	token, life := g.issue(email, user, scopes)
	g.logf("iamtest/google: issued a token for %s, scopes %s, for %s", email, strings.Join(scopes, " "), life)
	googleJSON(w, http.StatusOK, map[string]any{
		"access_token": token,
		"expires_in":   int(life / time.Second),
		"token_type":   "Bearer",
	})
}

// googleClaims are the claims of a service account's assertion.
type googleClaims struct {
	Iss   string `json:"iss"`
	Sub   string `json:"sub"`
	Aud   string `json:"aud"`
	Scope string `json:"scope"`
	Iat   int64  `json:"iat"`
	Exp   int64  `json:"exp"`
}

// checkAssertion verifies a service account's signed assertion and
// returns its account and scopes, or a description of what is wrong
// (never a part of the assertion).
func (g *GoogleIssuer) checkAssertion(assertion string) (email string, scopes []string, problem string) {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return "", nil, "the assertion is not a JWT"
	}
	var header struct {
		Kid string `json:"kid"`
	}
	h, err := b64.DecodeString(parts[0])
	if err != nil || json.Unmarshal(h, &header) != nil {
		return "", nil, "the assertion's header is not JSON"
	}
	g.mu.Lock()
	key, ok := g.keys[header.Kid]
	g.mu.Unlock()
	if !ok {
		return "", nil, "Invalid JWT Signature: unknown key id"
	}
	var c googleClaims
	if _, err := verifyJWT(assertion, key.pub, &c); err != nil {
		return "", nil, "Invalid JWT Signature."
	}
	now := g.opts.Now()
	iat, exp := time.Unix(c.Iat, 0), time.Unix(c.Exp, 0)
	switch {
	case c.Iss != key.email:
		return "", nil, fmt.Sprintf("iss %q is not the key's account", c.Iss)
	case c.Sub != "" && c.Sub != key.email:
		return "", nil, "domain-wide delegation (sub) is not allowed for this account"
	case c.Aud != g.TokenURL():
		return "", nil, fmt.Sprintf("Invalid JWT: aud %q is not the token endpoint", c.Aud)
	case c.Iat == 0 || c.Exp == 0 || !exp.After(iat) || exp.Sub(iat) > googleMaxAssertionLife:
		return "", nil, "Invalid JWT: iat and exp must be set, exp after iat, at most an hour apart"
	case iat.After(now.Add(googleMaxSkew)):
		return "", nil, "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
	case !now.Before(exp):
		return "", nil, "Invalid JWT: the assertion has expired"
	}
	return key.email, strings.Fields(c.Scope), ""
}

// serveMetadata is the part of the GCE metadata server that
// golang.org/x/oauth2/google and cloud.google.com/go/compute/metadata use:
// the service accounts' email, scopes and token, and the project id.
// Unlike the real one, which hands out the token it holds until shortly
// before its end, it issues a new token per request.
func (g *GoogleIssuer) serveMetadata(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	if r.Header.Get("Metadata-Flavor") != "Google" {
		// The real server refuses requests without the header, so that a
		// browser or a redirected request cannot read it.
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET required", http.StatusMethodNotAllowed)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	text := func(s string) {
		w.Header().Set("Content-Type", "application/text")
		_, _ = w.Write([]byte(s))
	}
	switch path {
	case "project/project-id":
		text(g.opts.ProjectID)
		return
	case "project/numeric-project-id":
		text("123456789012")
		return
	case "universe/universe_domain":
		text("googleapis.com")
		return
	}
	rest, ok := strings.CutPrefix(path, "instance/service-accounts/")
	account, item, _ := strings.Cut(rest, "/")
	if !ok || (account != "default" && account != g.opts.MetadataEmail) {
		http.NotFound(w, r)
		return
	}
	switch item {
	case "email":
		text(g.opts.MetadataEmail)
	case "scopes":
		text(strings.Join(g.opts.MetadataScopes, "\n") + "\n")
	case "token":
		switch g.currentFailure() {
		case TokensServerError:
			g.logf("iamtest/google: metadata token request answered 500 (FailTokens)")
			http.Error(w, "injected by FailTokens", http.StatusInternalServerError)
			return
		case TokensInvalidGrant:
			g.logf("iamtest/google: metadata token request refused (FailTokens)")
			http.Error(w, "the service account is disabled (injected by FailTokens)", http.StatusForbidden)
			return
		}
		scopes := g.opts.MetadataScopes
		if s := r.URL.Query().Get("scopes"); s != "" {
			scopes = strings.Split(s, ",")
		}
		g.grant(w, g.opts.MetadataEmail, false, scopes)
	default:
		http.NotFound(w, r)
	}
}

// googleOAuthError writes an RFC 6749 error response.
func googleOAuthError(w http.ResponseWriter, status int, code, desc string) {
	googleJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

func googleJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// googleHash keys the maps of secrets, so that the issuer holds no token
// in a form a dump of its state would show.
func googleHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func googleRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func googleRandomDigits(n int) string {
	var b strings.Builder
	for _, c := range []byte(googleRandomHex(n)) {
		b.WriteString(strconv.Itoa(int(c) % 10))
	}
	return b.String()[:n]
}
