package entra_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/entra"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
)

func TestMain(m *testing.M) {
	os.Exit(testdb.RunMain(m, testdb.Options{}))
}

var seq atomic.Int64

// guid is a fresh client id: MSAL caches managed identity tokens per
// process by identity, so each test asks for an identity of its own.
func guid() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:]
}

// rig is a PostgreSQL role and a user-assigned managed identity of that
// name, served by an Entra issuer that the real DefaultAzureCredential
// reaches through IDENTITY_ENDPOINT/IDENTITY_HEADER and AZURE_CLIENT_ID.
type rig struct {
	pg       *testdb.Cluster
	user, pw string
	clientID string
	issuer   *iamtest.EntraIssuer
	logs     *testkit.SyncBuffer // the front ends', the issuer's and pgsecrets' debug log
}

// newRig makes the role and the issuer and sets the environment (so not
// in a parallel test). edit may change the issuer's options.
func newRig(t testing.TB, edit func(r *rig, o *iamtest.EntraOptions)) *rig {
	t.Helper()
	r := &rig{pg: testdb.Shared(t), logs: &testkit.SyncBuffer{}, clientID: guid()}
	r.user = fmt.Sprintf("entra_user_%d", seq.Add(1))
	r.pw = testkit.RandomPassword()
	ctx := context.Background()
	if err := r.pg.CreateRole(ctx, r.user, r.pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.pg.DropRole(context.Background(), r.user); err != nil {
			t.Error(err)
		}
	})
	opts := iamtest.EntraOptions{
		UserAssigned: []iamtest.EntraIdentity{{ClientID: r.clientID, Principal: r.user}},
		Logf:         r.logf(t),
	}
	if edit != nil {
		edit(r, &opts)
	}
	r.issuer = iamtest.StartEntra(t, opts)
	r.issuer.SetEnv(t)
	t.Setenv("AZURE_CLIENT_ID", r.clientID)
	t.Cleanup(func() { r.checkNoLeak(t) })
	return r
}

func (r *rig) logf(t testing.TB) func(string, ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(r.logs, format+"\n", args...)
		t.Logf(format, args...)
	}
}

// frontEnd starts an Azure-like server in front of the role.
func (r *rig) frontEnd(t testing.TB) *iamtest.Server {
	opts := iamtest.Options{
		Upstream: func(user string) (string, error) {
			if user != r.user {
				return "", fmt.Errorf("no such role %q", user)
			}
			return fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=postgres sslmode=verify-full sslrootcert='%s'",
				r.pg.Host(), r.pg.Port(), r.user, r.pw, r.pg.CAFile()), nil
		},
		Logf: r.logf(t),
	}
	r.issuer.Configure(&opts)
	return iamtest.Start(t, opts)
}

// dsn is a secret_provider=entra DSN for user on srv with driver.
func dsn(srv *iamtest.Server, user, driver, extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=entra secret_driver=%s %s",
		srv.Port(), user, srv.CAFile(), driver, extra)
}

// open opens a *sql.DB on dsn, logging to r.logs at debug level, with
// no idle connections: every query logs in.
func (r *rig) open(t *testing.T, dsn string) (*sql.DB, *pgsecrets.Connector) {
	t.Helper()
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// checkNoLeak checks that no token the issuer issued, nor its signature,
// nor the header secret is in the logs.
func (r *rig) checkNoLeak(t testing.TB) {
	logs := r.logs.String()
	for _, tok := range r.issuer.IssuedTokens() {
		if strings.Contains(logs, tok) || strings.Contains(logs, tok[strings.LastIndex(tok, ".")+1:]) {
			t.Error("a token is in the logs")
		}
	}
	if strings.Contains(logs, r.issuer.HeaderSecret()) {
		t.Error("the header secret is in the logs")
	}
}

// noSecretIn fails if err's message carries a token or the header secret.
func (r *rig) noSecretIn(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, tok := range r.issuer.IssuedTokens() {
		if strings.Contains(msg, tok) || strings.Contains(msg, tok[strings.LastIndex(tok, ".")+1:]) {
			t.Errorf("a token is in the error %q", msg)
		}
	}
	if strings.Contains(msg, r.issuer.HeaderSecret()) {
		t.Errorf("the header secret is in the error %q", msg)
	}
}

func currentUser(t *testing.T, db *sql.DB) string {
	t.Helper()
	var u string
	if err := db.QueryRowContext(context.Background(), "SELECT current_user").Scan(&u); err != nil {
		t.Fatalf("query: %v", err)
	}
	return u
}

// On both engines, the real DefaultAzureCredential's token logs in as the
// identity's role over verified TLS; a refused token is replaced inside
// the call by a new one (the SDK's cache, which still holds the refused
// hour-long token, is bypassed); a DSN user the identity does not map to
// fails fast with the server's message; nothing secret is logged.
func TestEntraLogin(t *testing.T) {
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			r := newRig(t, nil)
			srv := r.frontEnd(t)
			db, c := r.open(t, dsn(srv, r.user, driver, ""))
			if u := currentUser(t, db); u != r.user {
				t.Fatalf("current_user = %q", u)
			}
			if n := r.issuer.Issued(); n != 1 {
				t.Errorf("%d tokens issued for one login", n)
			}
			st := c.Stats()
			if !strings.HasPrefix(st.VersionID, "token-") || len(st.VersionID) != len("token-")+8 {
				t.Errorf("version id %q", st.VersionID)
			}

			srv.RejectNext(1)
			if err := db.PingContext(context.Background()); err != nil {
				t.Fatalf("a refused token was not recovered inside the call: %v", err)
			}
			if st := c.Stats(); st.AuthFailures != 1 || st.AuthRecovered != 1 {
				t.Errorf("after one refused token: %d failures, %d recovered", st.AuthFailures, st.AuthRecovered)
			}
			if n := r.issuer.Issued(); n != 2 {
				t.Errorf("recovery got %d new tokens, want 1: the SDK's cache was not bypassed", n-1)
			}
			if c.Stats().VersionID == st.VersionID {
				t.Error("the version id did not change with the token")
			}

			// Another role, which the identity does not map to: one
			// recovery round, then the server's answer.
			other := fmt.Sprintf("entra_other_%d", seq.Add(1))
			odb, _ := r.open(t, dsn(srv, other, driver, ""))
			err := odb.PingContext(context.Background())
			var se *pgsecrets.SecretError
			if !errors.Is(err, pgsecrets.ErrAuthFailed) || !errors.As(err, &se) || se.SQLState != iamtest.EntraAuthFailedCode ||
				!strings.Contains(err.Error(), "entra:"+other+"@127.0.0.1") ||
				!strings.Contains(err.Error(), fmt.Sprintf("password authentication failed for user %q", other)) ||
				!strings.Contains(err.Error(), "pgaadauth_create_principal") {
				t.Errorf("a role the identity does not map to: %v", err)
			}
			r.noSecretIn(t, err)
			if !strings.Contains(r.logs.String(), "level=DEBUG") {
				t.Error("no debug log: the leak check saw nothing")
			}
		})
	}
}

// The system-assigned identity (no AZURE_CLIENT_ID), through the default
// chain; Refresh, which pgsecrets uses when told of a change, gets a new
// token although the SDK holds a valid one; Describe names the identity
// without a request of its own.
func TestEntraSystemAssigned(t *testing.T) {
	r := newRig(t, func(r *rig, o *iamtest.EntraOptions) {
		o.UserAssigned = nil
		o.SystemAssigned = &iamtest.EntraIdentity{Principal: r.user}
	})
	os.Unsetenv("AZURE_CLIENT_ID") // restored by newRig's t.Setenv
	srv := r.frontEnd(t)
	db, c := r.open(t, dsn(srv, r.user, "pq", ""))
	if u := currentUser(t, db); u != r.user {
		t.Fatalf("current_user = %q", u)
	}
	v1 := c.Stats().VersionID
	v2, err := c.Refresh(context.Background())
	if err != nil || v2 == v1 || r.issuer.Issued() != 2 {
		t.Fatalf("Refresh: %q (was %q), %v, %d tokens issued", v2, v1, err, r.issuer.Issued())
	}
	if u := currentUser(t, db); u != r.user {
		t.Fatalf("current_user after Refresh = %q", u)
	}
	facts, err := c.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(facts)
	for _, want := range []string{"DefaultAzureCredential", entra.DefaultScope, r.user + "@127.0.0.1:", "last token ends"} {
		if !strings.Contains(got, want) {
			t.Errorf("Describe %s lacks %q", got, want)
		}
	}
}

// The churn every token provider passes, on both engines at once: a
// minute of 16 workers with connections of 250 ms, while each server
// refuses tokens older than testkit.ChurnTokenAge. Tokens live an hour,
// so the SDK would hand back every refused token from its cache: no query
// may fail.
func TestEntraTokenChurn(t *testing.T) {
	r := newRig(t, nil)
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			srv := r.frontEnd(t)
			db, _ := r.open(t, dsn(srv, r.user, driver, ""))
			srv.MaxTokenAge(testkit.ChurnTokenAge)
			before := r.issuer.Issued()
			res := testkit.RunTokenChurn(t, db, testkit.TokenChurn{Refused: func() int { return srv.Refusals(iamtest.ReasonTooOld) }})
			t.Logf("%s: %d tokens refused for their age; the issuer issued %d tokens meanwhile, for both engines together", driver, res.Refused, r.issuer.Issued()-before)
		})
	}
}

// The identity endpoint refusing (a 403, or a wrong header secret: 401)
// fails fast with ErrAccessDenied naming the secret, without retries.
func TestEntraEndpointRefuses(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	check := func(t *testing.T) {
		before := r.issuer.Requests()
		db, _ := r.open(t, dsn(srv, r.user, "pgx", ""))
		err := db.PingContext(context.Background())
		if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), "entra:"+r.user+"@127.0.0.1") {
			t.Errorf("refused by the identity endpoint: %v", err)
		}
		var se *pgsecrets.SecretError
		if errors.As(err, &se) && se.Temporary() {
			t.Error("a refusal is reported as temporary")
		}
		// One request with claims, one without (for a credential that
		// cannot take claims): a refusal is not retried.
		if n := r.issuer.Requests() - before; n != 2 {
			t.Errorf("%d requests to the endpoint, want 2", n)
		}
		r.noSecretIn(t, err)
	}
	t.Run("403", func(t *testing.T) {
		r.issuer.Fail(http.StatusForbidden)
		defer r.issuer.Fail(0)
		check(t)
	})
	t.Run("wrong header secret", func(t *testing.T) {
		t.Setenv("IDENTITY_HEADER", "not-the-secret")
		check(t)
	})
	if len(srv.Logins()) != 0 {
		t.Error("a login was tried without a token")
	}
}

// No identity at all (not on Azure, nothing configured): ErrAccessDenied.
func TestEntraNoCredential(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	for _, k := range iamtest.EntraClearEnv {
		os.Unsetenv(k) // restored by newRig's t.Setenv
	}
	t.Setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential") // no IMDS probe, no az
	db, _ := r.open(t, dsn(srv, r.user, "pq", ""))
	err := db.PingContext(context.Background())
	if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), "no Azure credential is available") {
		t.Errorf("no credential: %v", err)
	}
}

// With a token in the cache, an identity endpoint that fails (500, then
// gone) does not stop new logins; a forced fetch meanwhile says
// ErrStoreUnavailable (worth retrying), not a refusal.
func TestEntraEndpointDown(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	db, c := r.open(t, dsn(srv, r.user, "pq", ""))
	currentUser(t, db)
	queries := func(t *testing.T) {
		for range 5 {
			if u := currentUser(t, db); u != r.user {
				t.Fatalf("current_user = %q", u)
			}
		}
	}
	r.issuer.Fail(http.StatusInternalServerError)
	queries(t)
	_, err := c.Refresh(context.Background())
	var se *pgsecrets.SecretError
	if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !errors.As(err, &se) || !se.Temporary() || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("refresh against a failing endpoint: %v", err)
	}
	r.noSecretIn(t, err)
	queries(t)
	r.issuer.Close()
	_, err = c.Refresh(context.Background())
	if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !strings.Contains(err.Error(), "could not be reached") {
		t.Errorf("refresh against a closed endpoint: %v", err)
	}
	queries(t)
	if n := len(srv.Logins()); n < 11 {
		t.Errorf("%d logins, want at least 11: the queries did not log in", n)
	}
}

// secret_entra_client_id picks a user-assigned identity whatever
// AZURE_CLIENT_ID says; one the endpoint does not know is refused.
func TestEntraClientID(t *testing.T) {
	uami := guid()
	r := newRig(t, func(r *rig, o *iamtest.EntraOptions) {
		o.UserAssigned = []iamtest.EntraIdentity{{ClientID: uami, Principal: r.user}}
	})
	// AZURE_CLIENT_ID names an identity the endpoint does not have.
	srv := r.frontEnd(t)
	db, _ := r.open(t, dsn(srv, r.user, "pgx", "secret_entra_client_id="+uami))
	if u := currentUser(t, db); u != r.user {
		t.Fatalf("current_user = %q", u)
	}
	bad, _ := r.open(t, dsn(srv, r.user, "pgx", "secret_entra_client_id="+guid()))
	if err := bad.PingContext(context.Background()); !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("an identity the endpoint does not have: %v", err)
	}
}

// A token for another scope is refused by the server with Azure's
// audience message.
func TestEntraScope(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	db, _ := r.open(t, dsn(srv, r.user, "pq", "secret_entra_scope=https://database.windows.net/.default"))
	err := db.PingContext(context.Background())
	if !errors.Is(err, pgsecrets.ErrAuthFailed) || !strings.Contains(err.Error(), "does not have a valid audience claim") ||
		!strings.Contains(err.Error(), "https://database.windows.net/.default") {
		t.Errorf("a token for another scope: %v", err)
	}
}

var registered atomic.Int64

// A credential of the program's own, registered under another name: here
// azidentity's ManagedIdentityCredential for the rig's identity. It logs
// in, and a refused token is replaced because Fetch asks with Claims.
func TestEntraRegister(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(r.clientID)})
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("entra-own-%d", registered.Add(1))
	entra.Register(name, cred)
	d := strings.Replace(dsn(srv, r.user, "pgx", ""), "secret_provider=entra", "secret_provider="+name, 1)
	db, c := r.open(t, d)
	if u := currentUser(t, db); u != r.user {
		t.Fatalf("current_user = %q", u)
	}
	srv.RejectNext(1)
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatalf("recovery with a registered credential: %v", err)
	}
	if st := c.Stats(); st.AuthRecovered != 1 || r.issuer.Issued() != 2 {
		t.Errorf("%d recovered, %d tokens issued", st.AuthRecovered, r.issuer.Issued())
	}
	if _, err := pgsecrets.NewConnector(d + " secret_entra_client_id=x"); !errors.Is(err, pgsecrets.ErrInvalidDSN) {
		t.Errorf("secret_entra_client_id with a registered credential: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("registering a name twice did not panic")
		}
	}()
	entra.Register(name, cred)
}

// noClaims is a credential that, like the Azure CLI's, refuses requests
// with claims and otherwise hands out the one token it has.
type noClaims struct {
	token   string
	expires time.Time
	claims  atomic.Int64
}

func (c *noClaims) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if o.Claims != "" {
		c.claims.Add(1)
		return azcore.AccessToken{}, errors.New("this credential cannot take claims: run az login --claims-challenge")
	}
	return azcore.AccessToken{Token: c.token, ExpiresOn: c.expires}, nil
}

// endpointToken gets a token for the rig's identity from the endpoint,
// as the SDK would.
func (r *rig) endpointToken(t testing.TB) string {
	t.Helper()
	q := url.Values{"api-version": {iamtest.EntraAPIVersion}, "resource": {iamtest.EntraResource}, "client_id": {r.clientID}}
	req, err := http.NewRequest(http.MethodGet, r.issuer.Endpoint()+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-IDENTITY-HEADER", r.issuer.HeaderSecret())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		t.Fatalf("token request: %d, %v", resp.StatusCode, err)
	}
	return body.AccessToken
}

// A registered credential that cannot take claims still logs in with the
// token it has, after the request with claims was refused.
func TestEntraCredentialWithoutClaims(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	tok := r.endpointToken(t)
	cred := &noClaims{token: tok, expires: time.Now().Add(time.Hour)}
	name := fmt.Sprintf("entra-own-%d", registered.Add(1))
	entra.Register(name, cred)
	db, _ := r.open(t, strings.Replace(dsn(srv, r.user, "pq", ""), "secret_provider=entra", "secret_provider="+name, 1))
	if u := currentUser(t, db); u != r.user {
		t.Fatalf("current_user = %q", u)
	}
	if cred.claims.Load() == 0 {
		t.Error("Fetch did not ask with claims first")
	}
}

// A pgxsecrets pool logs in with Entra tokens too.
func TestEntraPool(t *testing.T) {
	r := newRig(t, nil)
	srv := r.frontEnd(t)
	pool, err := pgxsecrets.NewPool(context.Background(), dsn(srv, r.user, "pgx", "pool_max_conns=2"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var u string
	if err := pool.QueryRow(context.Background(), "SELECT current_user").Scan(&u); err != nil || u != r.user {
		t.Fatalf("current_user = %q, %v", u, err)
	}
}

// DSNs a token must not be sent with, or that the provider cannot use,
// are refused before any request, naming the key.
func TestEntraDSNErrors(t *testing.T) {
	for _, tc := range []struct{ dsn, key string }{
		{"host=db.example.com sslmode=verify-full secret_provider=entra", "user"},
		{"host=db1.example.com,db2.example.com user=app sslmode=verify-full secret_provider=entra", "host"},
		{"host=/var/run/postgresql user=app sslmode=verify-full secret_provider=entra", "host"},
		{"host=db.example.com user=app sslmode=disable secret_provider=entra", "sslmode"},
		{"host=db.example.com user=app sslmode=prefer secret_provider=entra", "sslmode"},
		{"host=db.example.com user=app sslmode=verify-full secret_provider=entra secret_entra_scope=ossrdbms", entra.KeyScope},
		{"host=db.example.com user=app sslmode=verify-full secret_provider=entra secret_entra_client_id=", entra.KeyClientID},
	} {
		_, err := pgsecrets.NewConnector(tc.dsn)
		var de *pgsecrets.DSNError
		if !errors.Is(err, pgsecrets.ErrInvalidDSN) || !errors.As(err, &de) || de.Key != tc.key {
			t.Errorf("%s: %v, want a DSN error for key %s", tc.dsn, err, tc.key)
		}
	}
	c, err := pgsecrets.NewConnector("host=db.example.com user=app sslmode=verify-full secret_provider=entra")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Config().SecretID != "entra:app@db.example.com:5432" {
		t.Errorf("secret id %q", c.Config().SecretID)
	}
}

// Whoever answers on the network path in the server's place gets no
// token: not in a plaintext startup, not behind a certificate from another
// CA (the attacker's test every token provider passes).
func TestEntraTokenNeverSentToImpostor(t *testing.T) {
	r := newRig(t, nil)
	testkit.TokenNeverSentToImpostor(t, r.pg.CAFile(), func(port int, sslmode string) error {
		c, err := pgsecrets.NewConnector(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres %s secret_provider=entra",
			port, r.user, sslmode))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conn, err := c.Connect(context.Background())
		if err == nil {
			conn.Close()
		}
		return err
	})
	if r.issuer.Issued() == 0 {
		t.Error("no token was got: the test proved nothing about where it goes")
	}
}
