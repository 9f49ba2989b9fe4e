package iamtest_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/iamtest"
)

// entraGet asks the issuer for a token the way MSAL does for an App
// Service managed identity; header "" sends none.
func entraGet(t *testing.T, e *iamtest.EntraIssuer, header string, q url.Values) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.Endpoint()+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if header != "" {
		req.Header.Set("X-IDENTITY-HEADER", header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("status %d, body not JSON: %s", resp.StatusCode, body)
	}
	return resp.StatusCode, m
}

// entraQuery is the query MSAL sends for resource, with an optional
// selector (client_id=…).
func entraQuery(resource string, kv ...string) url.Values {
	q := url.Values{"api-version": {iamtest.EntraAPIVersion}, "resource": {resource}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}

// jwtClaims decodes a JWT's claims without checking its signature.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// The endpoint speaks the App Service protocol: a token for the
// system-assigned identity without a selector and for a user-assigned one
// by client id, with the claims Azure's server reads and expires_on as a
// string of Unix seconds; a missing or wrong header secret gets 401, a
// wrong api-version or unknown identity 400, Fail its status; only
// issued tokens count, and no token or secret reaches the log.
func TestEntraEndpoint(t *testing.T) {
	logs := &syncBuffer{}
	e := iamtest.StartEntra(t, iamtest.EntraOptions{
		SystemAssigned: &iamtest.EntraIdentity{Principal: "myapp"},
		UserAssigned:   []iamtest.EntraIdentity{{ClientID: "11111111-2222-4333-8444-555555555555", ObjectID: "aaaaaaaa-2222-4333-8444-555555555555", Principal: "uami"}},
		TokenLifetime:  90 * time.Minute,
		Logf:           logs.logf,
	})
	env := e.Env()
	if env["IDENTITY_ENDPOINT"] != e.Endpoint() || !strings.HasPrefix(e.Endpoint(), "http://127.0.0.1:") || env["IDENTITY_HEADER"] != e.HeaderSecret() || len(e.HeaderSecret()) < 32 {
		t.Fatalf("Env() = %v", env)
	}
	header := env["IDENTITY_HEADER"]
	sa, ok := e.SystemAssigned()
	if !ok || sa.ClientID == "" || sa.ObjectID == "" || sa.Principal != "myapp" {
		t.Fatalf("system-assigned identity %+v, %v", sa, ok)
	}

	before := time.Now()
	status, body := entraGet(t, e, header, entraQuery(iamtest.EntraResource))
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, body)
	}
	exp, isString := body["expires_on"].(string)
	secs, err := strconv.ParseInt(exp, 10, 64)
	if !isString || err != nil || body["token_type"] != "Bearer" || body["resource"] != iamtest.EntraResource || body["client_id"] != sa.ClientID {
		t.Fatalf("response %v", body)
	}
	if end := time.Unix(secs, 0); end.Before(before.Add(89*time.Minute)) || end.After(time.Now().Add(91*time.Minute)) {
		t.Errorf("expires_on %s, want 90 minutes from now", end)
	}
	tok, _ := body["access_token"].(string)
	c := jwtClaims(t, tok)
	want := map[string]any{"aud": iamtest.EntraResource, "iss": e.Issuer(), "tid": e.Tenant(), "appid": sa.ClientID, "oid": sa.ObjectID}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("claim %s = %v, want %v", k, c[k], v)
		}
	}
	if mirid, _ := c["xms_mirid"].(string); !strings.HasSuffix(mirid, "/Microsoft.Web/sites/myapp") {
		t.Errorf("xms_mirid %q does not name the principal", mirid)
	}
	if c["exp"].(float64)-c["iat"].(float64) != 5400 || c["nbf"] != c["iat"] {
		t.Errorf("iat %v nbf %v exp %v", c["iat"], c["nbf"], c["exp"])
	}

	status, body = entraGet(t, e, header, entraQuery(iamtest.EntraResource, "client_id", "11111111-2222-4333-8444-555555555555"))
	if status != http.StatusOK || body["client_id"] != "11111111-2222-4333-8444-555555555555" {
		t.Fatalf("user-assigned by client id: %d %v", status, body)
	}
	tok2, _ := body["access_token"].(string)
	if c := jwtClaims(t, tok2); c["oid"] != "aaaaaaaa-2222-4333-8444-555555555555" || !strings.HasSuffix(c["xms_mirid"].(string), "/userAssignedIdentities/uami") {
		t.Errorf("user-assigned claims %v", c)
	}
	if tok2 == tok {
		t.Error("two identities got the same token")
	}
	if n := e.Issued(); n != 2 {
		t.Errorf("Issued() = %d after two tokens", n)
	}

	for _, tc := range []struct {
		name   string
		header string
		q      url.Values
		status int
	}{
		{"no header", "", entraQuery(iamtest.EntraResource), http.StatusUnauthorized},
		{"wrong header", header + "x", entraQuery(iamtest.EntraResource), http.StatusUnauthorized},
		{"old api-version", header, url.Values{"api-version": {"2017-09-01"}, "resource": {iamtest.EntraResource}}, http.StatusBadRequest},
		{"no resource", header, url.Values{"api-version": {iamtest.EntraAPIVersion}}, http.StatusBadRequest},
		{"unknown client id", header, entraQuery(iamtest.EntraResource, "client_id", "99999999-2222-4333-8444-555555555555"), http.StatusBadRequest},
	} {
		if status, body := entraGet(t, e, tc.header, tc.q); status != tc.status {
			t.Errorf("%s: status %d, want %d (%v)", tc.name, status, tc.status, body)
		}
	}
	e.Fail(http.StatusInternalServerError)
	if status, _ := entraGet(t, e, header, entraQuery(iamtest.EntraResource)); status != http.StatusInternalServerError {
		t.Errorf("Fail(500): status %d", status)
	}
	e.Fail(0)
	if status, _ := entraGet(t, e, header, entraQuery(iamtest.EntraResource)); status != http.StatusOK {
		t.Errorf("Fail(0): status %d", status)
	}
	if n, r := e.Issued(), e.Requests(); n != 3 || r != 9 {
		t.Errorf("Issued() = %d, Requests() = %d, want 3 and 9", n, r)
	}
	if toks := e.IssuedTokens(); len(toks) != 3 || toks[0] != tok || toks[1] != tok2 {
		t.Errorf("IssuedTokens() does not list the tokens issued, in order")
	}
	for _, tok := range e.IssuedTokens() {
		if strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), tok[strings.LastIndex(tok, ".")+1:]) {
			t.Error("a token in the issuer's log")
		}
	}
	if strings.Contains(logs.String(), header) {
		t.Error("the header secret in the issuer's log")
	}
	if !strings.Contains(logs.String(), "401") {
		t.Errorf("the issuer did not log the refused requests: %s", logs.String())
	}
}

// NewEntraIssuer refuses options it cannot serve.
func TestEntraOptionsRefused(t *testing.T) {
	for name, o := range map[string]iamtest.EntraOptions{
		"no identity":              {},
		"no principal":             {SystemAssigned: &iamtest.EntraIdentity{}},
		"slash in principal":       {SystemAssigned: &iamtest.EntraIdentity{Principal: "a/b"}},
		"user-assigned, no client": {UserAssigned: []iamtest.EntraIdentity{{Principal: "x"}}},
		"client id twice": {UserAssigned: []iamtest.EntraIdentity{
			{ClientID: "c1", Principal: "x"}, {ClientID: "C1", Principal: "y"}}},
	} {
		if e, err := iamtest.NewEntraIssuer(o); err == nil {
			e.Close()
			t.Errorf("%s: no error", name)
		}
	}
}

// lateEntra lets a rig's front end use an issuer made after the rig (whose
// principal is the rig's role).
type lateEntra struct {
	e atomic.Pointer[iamtest.EntraIssuer]
}

func (l *lateEntra) Verify(ctx context.Context, user, token string, now time.Time) (time.Time, string, string) {
	return l.e.Load().Verifier().Verify(ctx, user, token, now)
}

// newEntraRig is a rig whose front end takes the tokens of an issuer
// whose system-assigned identity is the rig's role (edit may change the
// issuer's options), and one user-assigned identity "someone_else".
func newEntraRig(t *testing.T, edit func(*rig, *iamtest.EntraOptions)) (*rig, *iamtest.EntraIssuer) {
	late := &lateEntra{}
	r := newRig(t, func(o *iamtest.Options) {
		o.Verifier = late
		o.RefusedMessage = func(user, reason string) string { return late.e.Load().RefusedMessage(user, reason) }
		o.AuthFailedCode = iamtest.EntraAuthFailedCode
	})
	opts := iamtest.EntraOptions{
		SystemAssigned: &iamtest.EntraIdentity{Principal: r.user},
		UserAssigned:   []iamtest.EntraIdentity{{ClientID: "c-someone-else", Principal: "someone_else"}},
		Logf:           r.logs.logf,
	}
	if edit != nil {
		edit(r, &opts)
	}
	e := iamtest.StartEntra(t, opts)
	late.e.Store(e)
	t.Cleanup(func() { entraCheckNoLeak(t, r, e) })
	return r, e
}

// entraCheckNoLeak checks that no issued token, nor its signature, nor
// the header secret is in the login records or the logs.
func entraCheckNoLeak(t *testing.T, r *rig, e *iamtest.EntraIssuer) {
	var rec strings.Builder
	for _, l := range r.srv.Logins() {
		fmt.Fprintf(&rec, "%+v\n", l)
	}
	logs := r.logs.String()
	for _, tok := range e.IssuedTokens() {
		for _, s := range []string{tok, tok[strings.LastIndex(tok, ".")+1:]} {
			if strings.Contains(rec.String(), s) || strings.Contains(logs, s) {
				t.Errorf("an Entra token leaked into the records or the log")
			}
		}
	}
	if strings.Contains(rec.String(), e.HeaderSecret()) || strings.Contains(logs, e.HeaderSecret()) {
		t.Error("the header secret leaked into the records or the log")
	}
}

// entraToken issues a token through the endpoint, as the SDK would get it.
func entraToken(t *testing.T, e *iamtest.EntraIssuer, kv ...string) string {
	t.Helper()
	status, body := entraGet(t, e, e.HeaderSecret(), entraQuery(iamtest.EntraResource, kv...))
	tok, _ := body["access_token"].(string)
	if status != http.StatusOK || tok == "" {
		t.Fatalf("token request: %d %v", status, body)
	}
	return tok
}

// Through the front end, a token from the endpoint logs in to the real
// role over verified TLS; a token Azure would refuse is refused with
// 28P01, Azure's message for its reason and the reason in the record.
func TestEntraFrontEnd(t *testing.T) {
	clk := newClock(time.Now())
	r, e := newEntraRig(t, func(r *rig, o *iamtest.EntraOptions) {
		o.Now = clk.now
		// The role's name again, with another object id: a principal of
		// the same name that the role was not created for.
		o.UserAssigned = append(o.UserAssigned, iamtest.EntraIdentity{ClientID: "c-same-name", Principal: r.user})
	})
	other := iamtest.StartEntra(t, iamtest.EntraOptions{SystemAssigned: &iamtest.EntraIdentity{Principal: r.user}, Tenant: e.Tenant()})
	t.Cleanup(func() { entraCheckNoLeak(t, r, other) })

	c, err := r.pgxConnect(r.user, entraToken(t, e))
	if err != nil {
		t.Fatalf("a valid token: %v", err)
	}
	var who string
	if err := c.QueryRow(context.Background(), "SELECT current_user").Scan(&who); err != nil || who != r.user {
		t.Fatalf("current_user = %q, %v", who, err)
	}
	if c.PgConn().ParameterStatus("server_version") == "" {
		t.Error("not a relayed session")
	}
	r.wantLast(r.user, true, "")

	passwordFailed := fmt.Sprintf("password authentication failed for user %q", r.user)
	const expired = "The access token has expired. Please acquire a new token and retry."
	const audience = `The access token does not have a valid audience claim. Please acquire a new token for the resource "https://ossrdbms-aad.database.windows.net".`
	sa, _ := e.SystemAssigned()
	at := func(d time.Duration, issue func() string) func() string {
		return func() string {
			clk.advance(d)
			defer clk.advance(-d)
			return issue()
		}
	}
	cases := []struct {
		name    string
		token   func() string
		reason  string
		message string
	}{
		{"another issuer's key", func() string { return entraToken(t, other) }, iamtest.ReasonSignature, passwordFailed},
		{"another audience", func() string {
			status, body := entraGet(t, e, e.HeaderSecret(), entraQuery("https://database.windows.net"))
			if status != http.StatusOK {
				t.Fatalf("token for another resource: %d", status)
			}
			return body["access_token"].(string)
		}, iamtest.ReasonEntraAudience, audience},
		{"expired", at(-2*time.Hour, func() string { return entraToken(t, e) }), iamtest.ReasonExpired, expired},
		{"not yet valid", at(10*time.Minute, func() string { return entraToken(t, e) }), iamtest.ReasonFuture, passwordFailed},
		{"another principal", func() string { return entraToken(t, e, "client_id", "c-someone-else") }, iamtest.ReasonUser, passwordFailed},
		{"same name, another object id", func() string { return entraToken(t, e, "client_id", "c-same-name") }, iamtest.ReasonUser, passwordFailed},
		{"a password", func() string { return r.pw }, iamtest.ReasonMalformed, passwordFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(r.srv.Logins())
			_, err := r.pgxConnect(r.user, tc.token())
			wantRefused(t, err, iamtest.EntraAuthFailedCode, tc.message)
			if got := len(r.srv.Logins()) - before; got != 1 {
				t.Fatalf("%d logins recorded, want 1", got)
			}
			r.wantLast(r.user, false, tc.reason)
		})
	}

	// iat is the issue time MaxTokenAge measures: a valid token issued
	// ten minutes ago is too old for five.
	old := at(-10*time.Minute, func() string { return entraToken(t, e) })()
	r.srv.MaxTokenAge(5 * time.Minute)
	_, err = r.pgxConnect(r.user, old)
	wantRefused(t, err, iamtest.EntraAuthFailedCode, passwordFailed)
	r.wantLast(r.user, false, iamtest.ReasonTooOld)
	r.srv.MaxTokenAge(0)
	if c, err := r.pgxConnect(r.user, old); err != nil {
		t.Errorf("a 10-minute-old token without MaxTokenAge: %v", err)
	} else {
		c.Close(context.Background())
	}
	if sa.ClientID == "" {
		t.Error("no client id for the system-assigned identity")
	}
}

// Configure sets what a front end for the issuer needs.
func TestEntraConfigure(t *testing.T) {
	e := iamtest.StartEntra(t, iamtest.EntraOptions{SystemAssigned: &iamtest.EntraIdentity{Principal: "app"}})
	var o iamtest.Options
	e.Configure(&o)
	if o.Verifier == nil || o.RefusedMessage == nil || o.AuthFailedCode != "28P01" {
		t.Fatalf("Configure left %+v", o)
	}
	if m := o.RefusedMessage("app", iamtest.ReasonSignature); m != `password authentication failed for user "app"` {
		t.Errorf("message %q", m)
	}
	tok, _, err := e.IssueToken(func() iamtest.EntraIdentity { id, _ := e.SystemAssigned(); return id }(), iamtest.EntraResource)
	if err != nil {
		t.Fatal(err)
	}
	if _, reason, detail := o.Verifier.Verify(context.Background(), "app", tok, time.Now()); reason != "" {
		t.Errorf("a fresh token refused: %s (%s)", reason, detail)
	}
	if _, reason, _ := o.Verifier.Verify(context.Background(), "app", tok, time.Now().Add(time.Hour)); reason != iamtest.ReasonExpired {
		t.Errorf("a token an hour later: reason %q", reason)
	}
}
