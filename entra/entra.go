// Package entra logs in to Azure Database for PostgreSQL with Microsoft
// Entra ID (Azure AD) access tokens: importing it registers
// secret_provider=entra, whose password is a token azidentity's
// DefaultAzureCredential gets for the database's scope (environment,
// workload identity, managed identity, Azure CLI, …), for the DSN's user,
// which is the Entra principal's database role.
//
//	import _ "github.com/pgsecrets/pgsecrets/entra"
//
//	db, err := sql.Open("pgsecrets", "host=mydb.postgres.database.azure.com user=my-app-identity dbname=app "+
//		"sslmode=verify-full sslrootcert=/etc/ssl/azure-roots.pem secret_provider=entra")
//
// pgsecrets is the cache: one token per process for each identity, scope,
// server and user, fetched again at 60–70% of its life and at once after
// the server refused it, while connections made with a token live on
// after its end (PostgreSQL checks it only at login). A program with a
// credential of its own (a client secret, a certificate, a chain of its
// choosing) registers it under another secret_provider name with
// Register.
package entra

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/pgsecrets/pgsecrets"
)

// DefaultScope is the scope tokens are requested for when the DSN does
// not set secret_entra_scope: Azure Database for PostgreSQL in the public
// cloud. Sovereign clouds have their own: Azure Government
// "https://ossrdbms-aad.database.usgovcloudapi.net/.default", Azure
// operated by 21Vianet (China) "https://ossrdbms-aad.database.chinacloudapi.cn/.default".
const DefaultScope = "https://ossrdbms-aad.database.windows.net/.default"

// DSN keys of secret_provider=entra.
const (
	// KeyScope is the scope the token is requested for (DefaultScope if
	// unset): the server only takes tokens whose audience is its cloud's
	// resource.
	KeyScope = "secret_entra_scope"
	// KeyClientID selects a user-assigned managed identity by its client
	// id, for a resource that has several. Unset, the process's identity
	// is DefaultAzureCredential's (AZURE_CLIENT_ID, if set, selects the
	// user-assigned identity for the whole process).
	KeyClientID = "secret_entra_client_id"
)

// Name is the secret_provider name the package registers.
const Name = "entra"

func init() {
	pgsecrets.RegisterTokenProvider(Name, func(_ context.Context, cfg *pgsecrets.Config) (pgsecrets.Provider, error) {
		return newProvider(cfg, Name, nil)
	}, KeyScope, KeyClientID)
}

// Register makes cred available as secret_provider=name (with
// secret_entra_scope, not secret_entra_client_id: cred already is an
// identity), for both engines and for pools, from an init function or
// before the first DSN that names it is opened. It panics, as
// pgsecrets.RegisterProvider does, if name is taken, and if cred is nil.
//
// It is a provider name rather than an option because a provider is what
// a DSN selects: database/sql, GORM, sqlx and pgxsecrets pools all reach
// it through the DSN, and the core needs no new API. The name also keeps
// connectors with different credentials from sharing tokens.
//
// Recovery after the server refused a token needs a new one: Fetch asks
// cred with TokenRequestOptions.Claims set (a CAE "nbf" claims request),
// which azidentity's credentials take as a reason to skip their cache. A credential that ignores Claims and returns the refused
// token again cannot recover until its cache lets go of it (for
// azidentity's, five minutes before the token's end): the login fails
// with ErrAuthFailed meanwhile. Give cred's ClientOptions
// Retry.MaxRetries -1: pgsecrets retries and hedges Fetch itself, and the
// SDK's own retries would make an endpoint that fails at once look like
// one that does not answer.
func Register(name string, cred azcore.TokenCredential) {
	if cred == nil {
		panic("entra: Register needs a credential")
	}
	pgsecrets.RegisterTokenProvider(name, func(_ context.Context, cfg *pgsecrets.Config) (pgsecrets.Provider, error) {
		return newProvider(cfg, name, cred)
	}, KeyScope)
}

// provider gets Entra tokens for one login.
type provider struct {
	name     string
	secretID string
	scope    string
	clientID string
	user     string
	endpoint string
	source   string // which credential, for errors and Describe
	cred     azcore.TokenCredential

	mu     sync.Mutex
	expiry time.Time // of the last token returned, for Describe
}

func newProvider(cfg *pgsecrets.Config, name string, cred azcore.TokenCredential) (*provider, error) {
	t, err := cfg.TokenTarget()
	if err != nil {
		return nil, err
	}
	p := &provider{name: name, secretID: cfg.SecretID, scope: DefaultScope, user: t.User, endpoint: t.Endpoint(), cred: cred}
	if v, ok := cfg.ProviderParam(KeyScope); ok {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "api") || u.Host == "" || strings.ContainsAny(v, " \t") {
			return nil, &pgsecrets.DSNError{Key: KeyScope, Msg: "must be a scope such as " + DefaultScope}
		}
		p.scope = v
	}
	if cred != nil {
		p.source = fmt.Sprintf("the credential registered as %q (%T)", name, cred)
		return p, nil
	}
	if v, ok := cfg.ProviderParam(KeyClientID); ok {
		if v == "" || strings.ContainsAny(v, " \t/?&=") {
			return nil, &pgsecrets.DSNError{Key: KeyClientID, Msg: "must be the client id of a user-assigned managed identity"}
		}
		p.clientID = v
		// DefaultAzureCredential (v1.15) takes a user-assigned identity
		// only from AZURE_CLIENT_ID, for the whole process; a DSN's
		// identity is a managed identity, asked for directly.
		mi, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: clientOptions(),
			ID: azidentity.ClientID(v)})
		if err != nil {
			return nil, &pgsecrets.DSNError{Key: KeyClientID, Msg: "cannot use the managed identity", Err: err}
		}
		p.cred, p.source = mi, "the user-assigned managed identity with client id "+v
		return p, nil
	}
	// Constructing the chain reads the environment and makes no request.
	dac, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: clientOptions()})
	if err != nil {
		return nil, &pgsecrets.DSNError{Key: "secret_provider", Msg: "azidentity's DefaultAzureCredential cannot be built from the environment", Err: err}
	}
	p.cred, p.source = dac, "DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI, Azure Developer CLI, Azure PowerShell)"
	return p, nil
}

// clientOptions are the SDK options of the credentials the provider
// builds: no retries of the SDK's own. pgsecrets retries a failed Fetch
// with backoff and sends a second request beside one that is slow; the
// SDK's retries (up to three, 0.8 s to several seconds apart, more for
// IMDS) would make an endpoint that answers 500 at once look like one
// that never answers, and hold a caller that has no token yet for
// seconds.
func clientOptions() azcore.ClientOptions {
	return azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}
}

// Fetch returns a token for the login, valid for new logins until its
// end (LoginUntil).
//
// pgsecrets calls Fetch only when it needs a token it does not have: the
// first, one newer than its own at 60–70% of the token's life, one to
// replace a token the server refused, or on Refresh. azidentity caches
// tokens until five minutes before their end (for managed identities in
// a cache global to the process, so a new credential would not help), and
// would hand back the very token pgsecrets wants replaced, or one that
// another part of the process got a while ago. So Fetch asks with
// TokenRequestOptions.Claims set, which makes azidentity skip its cache:
// a managed identity endpoint gets a new request (the claims are not sent
// to it); Entra ID gets the claims request
// {"access_token":{"nbf":{"essential":true,"value":"NOW"}}}, the form of a
// CAE challenge, asking for a token issued from now on. The cost is one
// token request per Fetch, which pgsecrets limits to about one per 40
// minutes per process and login, plus recoveries. Should the request with
// claims fail for good (the Azure CLI credential refuses claims; an
// endpoint that refuses), Fetch asks again without them: a cached token
// is better than none, and the error then is the plain request's. A
// failure worth retrying is returned as such.
func (p *provider) Fetch(ctx context.Context, _ string) (*pgsecrets.Credentials, error) {
	opts := policy.TokenRequestOptions{Scopes: []string{p.scope},
		Claims: fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, time.Now().Unix())}
	tok, err := p.cred.GetToken(ctx, opts)
	if err != nil {
		if ferr := p.fetchError(ctx, err); errors.Is(ferr, pgsecrets.ErrStoreUnavailable) {
			return nil, ferr
		}
		opts.Claims = ""
		if tok, err = p.cred.GetToken(ctx, opts); err != nil {
			return nil, p.fetchError(ctx, err)
		}
	}
	if tok.Token == "" {
		return nil, p.errorf(pgsecrets.ErrStoreUnavailable, nil, "the credential returned an empty token")
	}
	p.mu.Lock()
	p.expiry = tok.ExpiresOn
	p.mu.Unlock()
	sum := sha256.Sum256([]byte(tok.Token))
	return &pgsecrets.Credentials{
		Username: p.user,
		Password: pgsecrets.NewSecret(tok.Token),
		// A digest's prefix tells tokens apart in logs without revealing
		// anything of the token.
		VersionID:  "token-" + hex.EncodeToString(sum[:4]),
		LoginUntil: tok.ExpiresOn,
	}, nil
}

// fetchError classifies a credential's error: ErrStoreUnavailable when
// retrying can help (no answer, a timeout, throttling, a server error of
// the endpoint or of Entra ID, and the 404 and 410 IMDS answers while it
// starts or updates), ErrAccessDenied when the process has no usable
// identity or the endpoint refused it, so that callers fail fast.
func (p *provider) fetchError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return p.errorf(pgsecrets.ErrStoreUnavailable, err, "the token request did not finish in time")
	}
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) {
		// credentialUnavailable: no credential of the chain is configured
		// (not on Azure, no environment, no az login).
		return p.errorf(pgsecrets.ErrAccessDenied, err, "no Azure credential is available to "+p.source)
	}
	if afe.RawResponse == nil {
		return p.errorf(pgsecrets.ErrStoreUnavailable, err, "the token endpoint could not be reached")
	}
	switch code := afe.RawResponse.StatusCode; {
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500,
		code == http.StatusNotFound, code == http.StatusGone:
		return p.errorf(pgsecrets.ErrStoreUnavailable, err, fmt.Sprintf("the token endpoint answered HTTP %d", code))
	default:
		return p.errorf(pgsecrets.ErrAccessDenied, err, fmt.Sprintf("the token endpoint refused %s with HTTP %d", p.source, code))
	}
}

func (p *provider) errorf(kind, err error, detail string) error {
	return &pgsecrets.SecretError{Kind: kind, SecretID: p.secretID, Err: err, Detail: detail,
		Hint: "the process needs an Entra identity that may get a token for " + p.scope +
			": a managed identity assigned to the resource (secret_entra_client_id names a user-assigned one), workload identity, " +
			"AZURE_TENANT_ID with AZURE_CLIENT_ID and a secret or certificate, or az login"}
}

// AuthHint implements pgsecrets.AuthHinter: what to check on Azure when
// the server refused a token the identity did get.
func (p *provider) AuthHint(sqlstate string) string {
	return "Azure Database for PostgreSQL refused the Entra token: check that Microsoft Entra authentication is enabled on the server, " +
		"that role " + p.user + " was created for this identity (SELECT * FROM pgaadauth_create_principal('" + p.user +
		"', false, false), or pgaadauth_create_principal_with_oid) under the identity's exact name, which the DSN's user must match, " +
		"that the token's scope " + p.scope + " is the server's cloud, and which identity the process uses: " + p.source
}

// CacheKey implements pgsecrets.CacheKeyer: connectors of the process for
// the same credential, scope, server and user share one token.
func (p *provider) CacheKey() string {
	return strings.Join([]string{p.name, p.scope, p.clientID, p.endpoint, p.user}, "|")
}

// Describe implements pgsecrets.Describer from what the provider knows,
// without asking for a token.
func (p *provider) Describe(context.Context) ([]pgsecrets.Fact, error) {
	facts := []pgsecrets.Fact{{Name: "token for", Value: p.user + "@" + p.endpoint}, {Name: "scope", Value: p.scope},
		{Name: "identity", Value: p.source}}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.expiry.IsZero() {
		facts = append(facts, pgsecrets.Fact{Name: "last token ends", Value: p.expiry.UTC().Format(time.RFC3339)})
	}
	return facts, nil
}
