package iamtest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Entra ID (Azure AD) side of Azure Database for PostgreSQL's
// Microsoft Entra authentication, for tests: an issuer that answers the
// App Service managed identity protocol the way azidentity's
// ManagedIdentityCredential (through MSAL) speaks it, so that the real
// SDK's DefaultAzureCredential gets its tokens here once IDENTITY_ENDPOINT
// and IDENTITY_HEADER point at it, and a Verifier that checks those tokens
// for the front end the way the Azure server does.
//
// The protocol (MSAL for Go, apps/managedidentity, source "AppService",
// chosen when both IDENTITY_ENDPOINT and IDENTITY_HEADER are set and
// IDENTITY_SERVER_THUMBPRINT is not):
//
//	GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=RESOURCE[&client_id=…|&object_id=…|&mi_res_id=…]
//	X-IDENTITY-HEADER: $IDENTITY_HEADER
//
//	200 {"access_token":"…","expires_on":"<unix seconds, as a string>","resource":"…","token_type":"Bearer","client_id":"…"}
//
// RESOURCE is the scope without "/.default". MSAL parses expires_on as a
// string or a number of Unix seconds (or expires_in), and keeps the token
// in a cache global to the process, keyed by identity and resource, until
// five minutes before its end.

// EntraResource is the resource (the aud claim) Azure Database for
// PostgreSQL accepts tokens for; a client asks for the scope
// EntraResource + "/.default".
const EntraResource = "https://ossrdbms-aad.database.windows.net"

// EntraAPIVersion is the App Service managed identity API version MSAL
// sends; the issuer refuses any other, as the point is to speak exactly
// the SDK's protocol.
const EntraAPIVersion = "2019-08-01"

// EntraAuthFailedCode is the SQLSTATE the Entra front end (Configure)
// answers a refused token with: 28P01, invalid_password. Azure does not
// document the code; its messages ("password authentication failed for
// user …", and the expired or audience ones) come from the password
// authentication path, since the token travels as a cleartext password,
// and PostgreSQL reports every failure of that path as 28P01. pgsecrets
// treats 28P01 and 28000 alike, so the choice does not change recovery.
const EntraAuthFailedCode = "28P01"

// DefaultEntraTenant is the tenant (tid, and the issuer's iss) when
// EntraOptions.Tenant is empty.
const DefaultEntraTenant = "72f988bf-0000-4000-8000-1a7700000001"

// DefaultEntraTokenLifetime is how long tokens last when
// EntraOptions.TokenLifetime is 0: Entra's usual hour for managed
// identity tokens, long enough that MSAL caches them, which is what a
// provider that must replace a refused token has to get around.
const DefaultEntraTokenLifetime = time.Hour

// Reasons an Entra token is refused, beside ReasonMalformed (not a JWT),
// ReasonSignature (not signed by the issuer's key), ReasonFuture (nbf
// more than five minutes ahead), ReasonExpired (exp has passed) and
// ReasonUser (the token's principal is not the login user, or its oid is
// not the one the role was created with).
const (
	// ReasonEntraAudience: the token's aud is not EntraResource, as when
	// the client asked for a token for another resource.
	ReasonEntraAudience = "token is for another audience"
	// ReasonEntraIssuer: the token's iss or tid is not the issuer's
	// tenant.
	ReasonEntraIssuer = "token from another tenant"
)

// Messages the Azure server answers a refused token with.
const (
	entraExpiredMessage  = "The access token has expired. Please acquire a new token and retry."
	entraAudienceMessage = `The access token does not have a valid audience claim. Please acquire a new token for the resource "` + EntraResource + `".`
)

// EntraIdentity is a managed identity the issuer issues tokens for.
type EntraIdentity struct {
	// ClientID is the identity's client (application) id: what a
	// user-assigned identity is asked for by (client_id, azidentity's
	// ClientID), and the token's appid claim. NewEntraIssuer makes one up
	// for a system-assigned identity that has none.
	ClientID string
	// ObjectID is the identity's object (principal) id: the token's oid,
	// what pgaadauth_create_principal_with_oid binds the role to. Made up
	// if empty.
	ObjectID string
	// Principal is the identity's name, which is the database role it logs
	// in as (pgaadauth_create_principal creates the role under the
	// principal's name). Required, without "/".
	Principal string
}

// EntraOptions configure an EntraIssuer. At least one identity is
// required.
type EntraOptions struct {
	// SystemAssigned, if set, is the identity a request without client_id
	// or object_id gets (the resource's system-assigned identity); without
	// it such a request is refused with 400, as on an App Service with
	// only user-assigned identities.
	SystemAssigned *EntraIdentity
	// UserAssigned are the user-assigned identities, asked for by client
	// id or object id.
	UserAssigned []EntraIdentity
	// Tenant is the directory (tenant) id: the tid claim and iss
	// "https://sts.windows.net/TENANT/". Default DefaultEntraTenant.
	Tenant string
	// TokenLifetime is how long a token lasts (exp - iat). Default
	// DefaultEntraTokenLifetime. MSAL reuses a cached token until five
	// minutes before its end, so a lifetime above that makes the SDK's
	// cache matter.
	TokenLifetime time.Duration
	// Now is the issuer's clock, for iat, nbf and exp, and the Verifier's
	// default. Default time.Now.
	Now func() time.Time
	// Logf, if set, receives one line per request (never a token or the
	// header secret). StartEntra defaults it to t.Logf.
	Logf func(format string, args ...any)
}

// EntraIssuer is a running managed identity endpoint. Its methods are
// safe for concurrent use.
type EntraIssuer struct {
	opts   EntraOptions
	key    *rsa.PrivateKey
	kid    string
	header string // the X-IDENTITY-HEADER secret
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}

	mu       sync.Mutex
	closed   bool
	fail     int // status to answer every request with; 0 = serve
	issued   []string
	requests int
}

// entraPath is the path of the token endpoint, as App Service's
// "http://127.0.0.1:PORT/msi/token".
const entraPath = "/msi/token"

// NewEntraIssuer starts an issuer on 127.0.0.1:0 with a new RSA key and
// header secret. Call Close when done.
func NewEntraIssuer(opts EntraOptions) (*EntraIssuer, error) {
	if opts.SystemAssigned == nil && len(opts.UserAssigned) == 0 {
		return nil, errors.New("iamtest: EntraOptions has no identity")
	}
	if opts.Tenant == "" {
		opts.Tenant = DefaultEntraTenant
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultEntraTokenLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	seen := map[string]bool{}
	fill := func(id *EntraIdentity, system bool) error {
		if id.Principal == "" || strings.Contains(id.Principal, "/") {
			return fmt.Errorf("iamtest: Entra identity %q needs a Principal without /", id.ClientID)
		}
		if id.ClientID == "" {
			if !system {
				return fmt.Errorf("iamtest: user-assigned Entra identity %q needs a ClientID", id.Principal)
			}
			id.ClientID = entraGUID()
		}
		if id.ObjectID == "" {
			id.ObjectID = entraGUID()
		}
		if seen[strings.ToLower(id.ClientID)] || seen[strings.ToLower(id.ObjectID)] {
			return fmt.Errorf("iamtest: Entra identity %q: client or object id used twice", id.Principal)
		}
		seen[strings.ToLower(id.ClientID)], seen[strings.ToLower(id.ObjectID)] = true, true
		return nil
	}
	if opts.SystemAssigned != nil {
		sa := *opts.SystemAssigned
		if err := fill(&sa, true); err != nil {
			return nil, err
		}
		opts.SystemAssigned = &sa
	}
	uas := make([]EntraIdentity, len(opts.UserAssigned))
	for i, id := range opts.UserAssigned {
		if err := fill(&id, false); err != nil {
			return nil, err
		}
		uas[i] = id
	}
	opts.UserAssigned = uas

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("iamtest: %w", err)
	}
	e := &EntraIssuer{opts: opts, key: key, kid: entraGUID(), header: entraRandomHex(32), ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc(entraPath, e.serveToken)
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: handshakeTimeout}
	go func() {
		defer close(e.done)
		_ = e.srv.Serve(ln)
	}()
	return e, nil
}

// StartEntra starts an issuer for the test and closes it in t.Cleanup.
// Log lines go to t.Logf unless opts.Logf is set. It fails the test if
// the issuer cannot start.
func StartEntra(t testing.TB, opts EntraOptions) *EntraIssuer {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	e, err := NewEntraIssuer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// Close stops the endpoint and returns once its requests have ended.
// Calling it again does nothing.
func (e *EntraIssuer) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if e.srv.Shutdown(ctx) != nil {
		e.srv.Close()
	}
	<-e.done
}

// Endpoint is the token endpoint's URL, the IDENTITY_ENDPOINT value.
func (e *EntraIssuer) Endpoint() string { return "http://" + e.ln.Addr().String() + entraPath }

// Env returns the environment that makes azidentity's
// ManagedIdentityCredential (alone or in DefaultAzureCredential) use this
// issuer as an App Service managed identity endpoint: IDENTITY_ENDPOINT
// and IDENTITY_HEADER (the secret every request must carry). Set it with
// t.Setenv, after unsetting the variables that would select another
// source or credential (SetEnv does both).
func (e *EntraIssuer) Env() map[string]string {
	return map[string]string{"IDENTITY_ENDPOINT": e.Endpoint(), "IDENTITY_HEADER": e.header}
}

// EntraClearEnv lists the environment variables azidentity's
// DefaultAzureCredential and MSAL read to pick a credential or a managed
// identity source (AZURE_CLIENT_ID, for one, selects a user-assigned
// identity): a test unsets them all before setting Env's, so that the
// chain is deterministic whatever the machine's environment. Unset, not
// empty: azidentity tells an empty AZURE_CLIENT_ID or
// AZURE_TOKEN_CREDENTIALS from a missing one. SetEnv does both.
var EntraClearEnv = []string{
	"AZURE_TOKEN_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
	"AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD",
	"AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_ADDITIONALLY_ALLOWED_TENANTS",
	"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET",
	"IMDS_ENDPOINT", "DEFAULT_IDENTITY_CLIENT_ID",
}

// SetEnv points azidentity at the issuer for the rest of the test: it
// unsets every variable of EntraClearEnv and sets Env's, all restored in
// t.Cleanup (through t.Setenv, so not in a parallel test: set it in the
// parent of parallel subtests). MSAL keeps managed identity tokens in a
// cache global to the process, keyed by identity and resource, so tests
// of one process that must not see each other's tokens use
// user-assigned identities with client ids of their own.
func (e *EntraIssuer) SetEnv(t testing.TB) {
	t.Helper()
	for _, k := range EntraClearEnv {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	for k, v := range e.Env() {
		t.Setenv(k, v)
	}
}

// Tenant is the tenant tokens are issued in (tid).
func (e *EntraIssuer) Tenant() string { return e.opts.Tenant }

// Issuer is the iss claim of the issuer's tokens, Entra's v1 issuer for
// the tenant.
func (e *EntraIssuer) Issuer() string { return "https://sts.windows.net/" + e.opts.Tenant + "/" }

// SystemAssigned returns the system-assigned identity, with the ids
// NewEntraIssuer made up filled in, or false if there is none.
func (e *EntraIssuer) SystemAssigned() (EntraIdentity, bool) {
	if e.opts.SystemAssigned == nil {
		return EntraIdentity{}, false
	}
	return *e.opts.SystemAssigned, true
}

// Fail makes the endpoint answer every request with HTTP status (after
// checking nothing), with a JSON error body: 500 or 503 for an endpoint
// that is down, 400 or 403 for one that refuses the identity. 0 restores
// normal service.
func (e *EntraIssuer) Fail(status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fail = status
}

// Requests is how many requests reached the endpoint, answered or not.
func (e *EntraIssuer) Requests() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.requests
}

// Issued is how many tokens the endpoint has issued.
func (e *EntraIssuer) Issued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.issued)
}

// IssuedTokens returns every token issued so far, oldest first, for a
// test to check that none leaked into logs or errors.
func (e *EntraIssuer) IssuedTokens() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.issued...)
}

// HeaderSecret is the IDENTITY_HEADER value, for a test to check that it
// leaked nowhere.
func (e *EntraIssuer) HeaderSecret() string { return e.header }

// entraClaims are the claims of an Entra v1 access token for a managed
// identity that the issuer sets and the Verifier reads.
type entraClaims struct {
	Aud     string `json:"aud"`
	Iss     string `json:"iss"`
	Iat     int64  `json:"iat"`
	Nbf     int64  `json:"nbf"`
	Exp     int64  `json:"exp"`
	AppID   string `json:"appid"`
	AppIDAC string `json:"appidacr"`
	IdTyp   string `json:"idtyp"`
	OID     string `json:"oid"`
	Sub     string `json:"sub"`
	TID     string `json:"tid"`
	UTI     string `json:"uti"`
	Ver     string `json:"ver"`
	// MIRID is the managed identity's Azure resource id, whose last
	// segment is its name: the principal (see IssueToken).
	MIRID string `json:"xms_mirid"`
}

// IssueToken signs a token for id and resource at the issuer's now,
// without a request, for tests that need one directly. The principal's
// name is carried where Entra carries a managed identity's, in
// xms_mirid, the identity's resource id
// (".../userAssignedIdentities/NAME", or ".../sites/NAME" for a
// system-assigned one), whose last segment the Verifier compares with the
// login user. A random uti makes every token unique.
func (e *EntraIssuer) IssueToken(id EntraIdentity, resource string) (token string, expires time.Time, err error) {
	now := e.opts.Now()
	expires = now.Add(e.opts.TokenLifetime)
	kind := "Microsoft.ManagedIdentity/userAssignedIdentities"
	if sa := e.opts.SystemAssigned; sa != nil && sa.ClientID == id.ClientID {
		kind = "Microsoft.Web/sites"
	}
	c := entraClaims{
		Aud: resource, Iss: e.Issuer(), Iat: now.Unix(), Nbf: now.Unix(), Exp: expires.Unix(),
		AppID: id.ClientID, AppIDAC: "2", IdTyp: "app", OID: id.ObjectID, Sub: id.ObjectID, TID: e.opts.Tenant,
		UTI: entraRandomHex(11), Ver: "1.0",
		MIRID: "/subscriptions/00000000-0000-4000-8000-000000000000/resourcegroups/iamtest/providers/" + kind + "/" + id.Principal,
	}
	token, err = signJWT(e.key, e.kid, c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("iamtest: signing an Entra token: %w", err)
	}
	e.mu.Lock()
	e.issued = append(e.issued, token)
	e.mu.Unlock()
	return token, time.Unix(expires.Unix(), 0), nil
}

// serveToken answers one managed identity token request.
func (e *EntraIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.requests++
	fail := e.fail
	e.mu.Unlock()
	q := r.URL.Query()
	refuse := func(status int, code, description string) {
		e.logf("iamtest/entra: %s %s: %d %s", r.Method, entraQuery(q), status, description)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"statusCode": status, "error": code, "error_description": description})
	}
	switch {
	case fail != 0:
		refuse(fail, "injected_failure", "the endpoint fails on purpose (Fail)")
		return
	case r.Method != http.MethodGet:
		refuse(http.StatusMethodNotAllowed, "invalid_request", "only GET is supported")
		return
	case subtle.ConstantTimeCompare([]byte(r.Header.Get("X-IDENTITY-HEADER")), []byte(e.header)) != 1:
		// App Service answers a missing or wrong header secret with 401.
		refuse(http.StatusUnauthorized, "unauthorized", "X-IDENTITY-HEADER is missing or wrong")
		return
	case q.Get("api-version") != EntraAPIVersion:
		refuse(http.StatusBadRequest, "invalid_request", fmt.Sprintf("api-version %q is not supported", q.Get("api-version")))
		return
	case q.Get("resource") == "":
		refuse(http.StatusBadRequest, "invalid_request", "resource is required")
		return
	}
	id, ok := e.identity(q.Get("client_id"), q.Get("object_id"), q.Get("principal_id"), q.Get("mi_res_id"))
	if !ok {
		refuse(http.StatusBadRequest, "invalid_request", "no managed identity found for the requested id")
		return
	}
	token, expires, err := e.IssueToken(id, q.Get("resource"))
	if err != nil {
		refuse(http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	e.logf("iamtest/entra: issued a token for %s (client id %s) for %s, until %s",
		id.Principal, id.ClientID, q.Get("resource"), expires.UTC().Format(time.RFC3339))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"access_token": token,
		"expires_on":   strconv.FormatInt(expires.Unix(), 10),
		"resource":     q.Get("resource"),
		"token_type":   "Bearer",
		"client_id":    id.ClientID,
	})
}

// identity finds the identity a request asks for: by client id, object
// id, or resource id (its last segment is the name); none of them means
// the system-assigned one.
func (e *EntraIssuer) identity(clientID, objectID, principalID, resID string) (EntraIdentity, bool) {
	all := e.opts.UserAssigned
	if e.opts.SystemAssigned != nil {
		all = append([]EntraIdentity{*e.opts.SystemAssigned}, all...)
	}
	if objectID == "" {
		objectID = principalID
	}
	for _, id := range all {
		switch {
		case clientID != "" && strings.EqualFold(clientID, id.ClientID),
			objectID != "" && strings.EqualFold(objectID, id.ObjectID),
			resID != "" && strings.HasSuffix(resID, "/"+id.Principal):
			return id, true
		}
	}
	if clientID == "" && objectID == "" && resID == "" && e.opts.SystemAssigned != nil {
		return *e.opts.SystemAssigned, true
	}
	return EntraIdentity{}, false
}

func (e *EntraIssuer) logf(format string, args ...any) {
	if e.opts.Logf != nil {
		e.opts.Logf(format, args...)
	}
}

// entraQuery renders a request's query for the log: it holds no secret,
// but is reduced to the keys that say what was asked.
func entraQuery(q map[string][]string) string {
	var b strings.Builder
	for _, k := range []string{"api-version", "resource", "client_id", "object_id", "mi_res_id"} {
		if v, ok := q[k]; ok && len(v) > 0 {
			fmt.Fprintf(&b, "%s=%s ", k, v[0])
		}
	}
	return strings.TrimSpace(b.String())
}

// Verifier returns the check Azure Database for PostgreSQL makes of an
// Entra token, for Options.Verifier (Configure sets it): the signature
// with the issuer's key; aud is EntraResource; iss and tid are the
// issuer's tenant; nbf at most five minutes ahead of now and exp not yet
// reached; and the principal (the last segment of xms_mirid) is the login
// user, with the object id the issuer gave that principal, as a role
// made with pgaadauth_create_principal_with_oid is bound to it. It
// returns iat as the issue time, for MaxTokenAge.
func (e *EntraIssuer) Verifier() Verifier { return entraVerifier{e} }

// Configure makes opts a front end for this issuer's tokens: Verifier,
// RefusedMessage and AuthFailedCode (EntraAuthFailedCode).
func (e *EntraIssuer) Configure(opts *Options) {
	opts.Verifier = e.Verifier()
	opts.RefusedMessage = e.RefusedMessage
	opts.AuthFailedCode = EntraAuthFailedCode
}

// RefusedMessage is the message Azure answers a refused token of user
// with, for Options.RefusedMessage: its own for an expired token and a
// token for another resource, PostgreSQL's password failure otherwise
// (a bad signature or another principal tells the client nothing more).
func (e *EntraIssuer) RefusedMessage(user, reason string) string {
	switch reason {
	case ReasonExpired:
		return entraExpiredMessage
	case ReasonEntraAudience:
		return entraAudienceMessage
	}
	return fmt.Sprintf("password authentication failed for user %q", user)
}

type entraVerifier struct{ e *EntraIssuer }

// Verify implements Verifier. Its details name claims, never the token.
func (v entraVerifier) Verify(_ context.Context, user, token string, now time.Time) (issued time.Time, reason, detail string) {
	if strings.Count(token, ".") != 2 {
		return issued, ReasonMalformed, "not a JWT"
	}
	var c entraClaims
	if _, err := verifyJWT(token, &v.e.key.PublicKey, &c); err != nil {
		return issued, ReasonSignature, err.Error()
	}
	issued = time.Unix(c.Iat, 0)
	if c.Aud != EntraResource {
		return issued, ReasonEntraAudience, fmt.Sprintf("aud %q, want %q", c.Aud, EntraResource)
	}
	if c.Iss != v.e.Issuer() || c.TID != v.e.opts.Tenant {
		return issued, ReasonEntraIssuer, fmt.Sprintf("iss %q, tid %q, want tenant %q", c.Iss, c.TID, v.e.opts.Tenant)
	}
	if time.Unix(c.Nbf, 0).After(now.Add(maxSkew)) {
		return issued, ReasonFuture, fmt.Sprintf("nbf %s, now %s", time.Unix(c.Nbf, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !now.Before(time.Unix(c.Exp, 0)) {
		return issued, ReasonExpired, fmt.Sprintf("exp %s, now %s", time.Unix(c.Exp, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	name := c.MIRID[strings.LastIndex(c.MIRID, "/")+1:]
	if name != user {
		return issued, ReasonUser, fmt.Sprintf("token for principal %q (oid %s), login user %q", name, c.OID, user)
	}
	if id, ok := v.e.principal(user); !ok || !strings.EqualFold(id.ObjectID, c.OID) {
		return issued, ReasonUser, fmt.Sprintf("oid %s is not the object id role %q was created with", c.OID, user)
	}
	return issued, "", ""
}

// principal returns the identity whose database role is name.
func (e *EntraIssuer) principal(name string) (EntraIdentity, bool) {
	if sa := e.opts.SystemAssigned; sa != nil && sa.Principal == name {
		return *sa, true
	}
	for _, id := range e.opts.UserAssigned {
		if id.Principal == name {
			return id, true
		}
	}
	return EntraIdentity{}, false
}

// entraGUID returns a random version 4 UUID, the form of Entra's ids.
func entraGUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// entraRandomHex returns n random bytes in hex.
func entraRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
