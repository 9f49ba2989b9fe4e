// Package vault registers the "vault" secret provider with pgsecrets:
// database credentials from HashiCorp Vault or OpenBao.
//
//	import _ "github.com/pgsecrets/pgsecrets/vault"
//
//	db, err := sql.Open("pgsecrets",
//		"host=db.internal dbname=app secret_provider=vault secret_id=database/creds/app")
//
// secret_id is the Vault path, and its shape says what it is:
//
//   - <mount>/creds/<role>: dynamic credentials of the database secrets
//     engine. Each is a lease (a PostgreSQL role of its own) that pgsecrets
//     renews while it is the current one or connections made with it are
//     open, replaces (ahead of time) only when Vault no longer extends it,
//     revokes once it is no longer used and when the connector closes, and
//     never lets a connection outlive.
//   - <mount>/static-creds/<role>: a static role, whose password Vault
//     rotates every rotation_period. pgsecrets reads it again just after the
//     rotation time Vault announces (ttl), and at once after an
//     authentication failure.
//   - <mount>/data/<path>: a KV version 2 secret in the JSON format of an AWS
//     RDS secret (username, password, optional host, port, dbname).
//
// The address, TLS and namespace settings come from the environment as in
// the Vault CLI (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH, VAULT_SKIP_VERIFY,
// VAULT_NAMESPACE, VAULT_CLIENT_CERT/KEY); secret_endpoint overrides the
// address (VAULT_ADDR and VAULT_AGENT_ADDR) and secret_vault_namespace the
// namespace, which every request carries, logins included. An address over
// plain http to a host other than loopback, or VAULT_SKIP_VERIFY toward one,
// is logged once per connector as pgsecrets.EventUnprotectedStore: the
// requests carry the token and the answers the password. Authentication is
// chosen with secret_vault_auth:
//
//   - token (default): VAULT_TOKEN, else the CLI's token file
//     (~/.vault-token). A renewable token is renewed; one that can be neither
//     renewed nor replaced is reported before the leases it holds end.
//   - approle: secret_vault_role_id and the secret id read from
//     secret_vault_secret_id_file (or VAULT_SECRET_ID), at
//     auth/<secret_vault_auth_mount, default approle>/login.
//   - kubernetes: secret_vault_role and the service account token read from
//     secret_vault_jwt_file (default
//     /var/run/secrets/kubernetes.io/serviceaccount/token), at
//     auth/<secret_vault_auth_mount, default kubernetes>/login.
//
// With approle and kubernetes, pgsecrets logs in again before the token
// reaches its maximum TTL, so that fresh leases are fetched under the new
// token before the old token's leases are revoked with it. Tokens and secret
// ids never appear in logs or errors.
package vault

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/pgsecrets/pgsecrets"
)

// DSN keys of the vault provider.
const (
	KeyAuth         = "secret_vault_auth"
	KeyAuthMount    = "secret_vault_auth_mount"
	KeyRole         = "secret_vault_role"
	KeyRoleID       = "secret_vault_role_id"
	KeySecretIDFile = "secret_vault_secret_id_file"
	KeyJWTFile      = "secret_vault_jwt_file"
	KeyNamespace    = "secret_vault_namespace"
)

// DefaultJWTFile is where Kubernetes mounts a pod's service account token.
const DefaultJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

func init() {
	pgsecrets.RegisterProvider("vault", newProvider, KeyAuth, KeyAuthMount, KeyRole, KeyRoleID, KeySecretIDFile, KeyJWTFile, KeyNamespace)
}

type kind int

const (
	dynamic kind = iota
	static
	kv
)

// provider reads one Vault path.
type provider struct {
	client *api.Client
	// loginClient sends logins: no token, the namespace of client.
	loginClient *api.Client
	addr        string // for errors and logs: no userinfo
	rawAddr     string // where requests go
	skipVerify  bool
	namespace   string
	path        string
	kind        kind
	kvMount     string
	kvPath      string
	usernameKey string
	passwordKey string
	auth        string
	authMount   string
	role        string
	roleID      string
	secretFile  string
	jwtFile     string
	cacheKey    string

	mu sync.Mutex
	// token state; the token itself lives only in client
	tokenKnown     bool      // looked up or logged in
	tokenEnd       time.Time // zero: does not expire
	tokenTTL       time.Duration
	tokenRenewable bool
	tokenOurs      bool // created by a login here: revoked at Close
	loginErr       error
	// A lease ends with the token it was issued under, not with the
	// token that renews it: tokenGen counts the logins, leaseGen says
	// under which a lease was issued, pastEnds when each replaced token
	// ends (entries are dropped once that time has passed).
	tokenGen uint64
	leaseGen map[string]uint64
	pastEnds map[uint64]time.Time
}

func newProvider(ctx context.Context, cfg *pgsecrets.Config) (pgsecrets.Provider, error) {
	vc := api.DefaultConfig()
	if vc.Error != nil {
		return nil, &pgsecrets.DSNError{Msg: "the VAULT_* environment is invalid", Err: vc.Error}
	}
	if cfg.Endpoint != "" {
		vc.Address = cfg.Endpoint
		// vault/api prefers VAULT_AGENT_ADDR to the address; the DSN is
		// more specific than the environment.
		vc.AgentAddress = ""
	}
	// pgsecrets paces, hedges and backs off store calls itself; the
	// client's own retries would only multiply requests to a failing Vault.
	vc.MaxRetries = 0
	client, err := api.NewClient(vc)
	if err != nil {
		return nil, &pgsecrets.DSNError{Key: "secret_endpoint", Msg: "cannot build a Vault client for this address", Err: err}
	}
	raw := vc.Address
	if vc.AgentAddress != "" {
		raw = vc.AgentAddress
	}
	p := &provider{client: client, addr: withoutUserinfo(raw), rawAddr: raw, path: strings.Trim(cfg.SecretID, "/"),
		usernameKey: cfg.UsernameKey, passwordKey: cfg.PasswordKey}
	if tr, ok := vc.HttpClient.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		p.skipVerify = tr.TLSClientConfig.InsecureSkipVerify
	}
	param := func(k string) string { v, _ := cfg.ProviderParam(k); return v }
	if ns := param(KeyNamespace); ns != "" {
		client.SetNamespace(ns)
	}
	p.namespace = client.Namespace()
	// Clone would drop the namespace header (and NewClient, which it
	// calls, reads VAULT_NAMESPACE again, which the DSN may override): a
	// login would then reach the root namespace, or another one.
	if p.loginClient, err = client.CloneWithHeaders(); err != nil {
		return nil, &pgsecrets.DSNError{Key: "secret_endpoint", Msg: "cannot build a Vault client for this address", Err: err}
	}
	// NewClient also reads VAULT_TOKEN; a login carries no token (the old
	// one may have expired).
	p.loginClient.ClearToken()
	segs := strings.Split(p.path, "/")
	idx := func(word string) int {
		for i := 1; i < len(segs)-1; i++ {
			if segs[i] == word {
				return i
			}
		}
		return -1
	}
	switch {
	case idx("creds") > 0:
		p.kind = dynamic
	case idx("static-creds") > 0:
		p.kind = static
	case idx("data") > 0:
		p.kind = kv
		i := idx("data")
		p.kvMount, p.kvPath = strings.Join(segs[:i], "/"), strings.Join(segs[i+1:], "/")
	default:
		return nil, &pgsecrets.DSNError{Key: "secret_id", Msg: fmt.Sprintf("%q is not a Vault path pgsecrets can read: use <mount>/creds/<role> (dynamic credentials), <mount>/static-creds/<role> (a static role) or <mount>/data/<path> (KV version 2)", p.path)}
	}
	p.auth = param(KeyAuth)
	if p.auth == "" {
		p.auth = "token"
	}
	p.authMount = strings.Trim(param(KeyAuthMount), "/")
	p.role, p.roleID = param(KeyRole), param(KeyRoleID)
	p.secretFile, p.jwtFile = param(KeySecretIDFile), param(KeyJWTFile)
	identity := ""
	switch p.auth {
	case "token":
		if client.Token() == "" {
			if t := tokenFromFile(); t != "" {
				client.SetToken(t)
			}
		}
		if client.Token() == "" {
			return nil, &pgsecrets.DSNError{Key: KeyAuth, Msg: "no Vault token: set VAULT_TOKEN, log in with the vault CLI (~/.vault-token), or use secret_vault_auth=approle or kubernetes"}
		}
		sum := sha256.Sum256([]byte(client.Token()))
		identity = "token:" + hex.EncodeToString(sum[:8])
	case "approle":
		if p.authMount == "" {
			p.authMount = "approle"
		}
		if p.roleID == "" {
			return nil, &pgsecrets.DSNError{Key: KeyRoleID, Msg: "is required with secret_vault_auth=approle"}
		}
		if p.secretFile == "" && os.Getenv("VAULT_SECRET_ID") == "" {
			return nil, &pgsecrets.DSNError{Key: KeySecretIDFile, Msg: "or VAULT_SECRET_ID is required with secret_vault_auth=approle (the secret id never goes into the DSN)"}
		}
		client.ClearToken()
		identity = "approle:" + p.authMount + ":" + p.roleID
	case "kubernetes":
		if p.authMount == "" {
			p.authMount = "kubernetes"
		}
		if p.role == "" {
			return nil, &pgsecrets.DSNError{Key: KeyRole, Msg: "is required with secret_vault_auth=kubernetes: the Vault role bound to the service account"}
		}
		if p.jwtFile == "" {
			p.jwtFile = DefaultJWTFile
		}
		client.ClearToken()
		identity = "kubernetes:" + p.authMount + ":" + p.role
	default:
		return nil, &pgsecrets.DSNError{Key: KeyAuth, Msg: fmt.Sprintf("%q is not an auth method: use token, approle or kubernetes", p.auth)}
	}
	p.cacheKey = p.addr + "|" + p.namespace + "|" + identity
	return p, nil
}

// tokenFromFile reads the token the vault CLI's default token helper
// stores.
func tokenFromFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(home, ".vault-token"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// CacheKey lets connectors on the same Vault, namespace and identity share
// one cache entry (and one lease) per path.
func (p *provider) CacheKey() string { return p.cacheKey }

// Fetch reads the path. stage is ignored: Vault has no stages.
func (p *provider) Fetch(ctx context.Context, stage string) (*pgsecrets.Credentials, error) {
	if err := p.ensureToken(ctx); err != nil {
		return nil, err
	}
	path := p.path
	if p.kind == kv {
		path = p.kvMount + "/data/" + p.kvPath
	}
	now := time.Now()
	p.mu.Lock()
	gen := p.tokenGen // the token the read goes out with
	p.mu.Unlock()
	sec, err := p.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return nil, p.classify("reading", err)
	}
	if sec == nil {
		return nil, p.errorf(pgsecrets.ErrSecretNotFound, "Vault has nothing at this path",
			"check secret_id: for KV version 2 use <mount>/data/<path>; for dynamic credentials the role must exist")
	}
	switch p.kind {
	case dynamic:
		c, err := p.credsFrom(sec.Data)
		if err != nil {
			return nil, err
		}
		c.LeaseID, c.Renewable = sec.LeaseID, sec.Renewable
		c.VersionID = leaseVersion(sec.LeaseID)
		c.Expires = now.Add(time.Duration(sec.LeaseDuration) * time.Second)
		if c.LeaseID == "" || sec.LeaseDuration <= 0 {
			return nil, p.errorf(pgsecrets.ErrMalformedSecret, "the response carries no lease", "secret_id must be a database secrets engine creds path")
		}
		p.capAtToken(c, gen)
		return c, nil
	case static:
		c, err := p.credsFrom(sec.Data)
		if err != nil {
			return nil, err
		}
		if ttl, ok := number(sec.Data["ttl"]); ok && ttl > 0 {
			// ttl is whole seconds, cut: the rotation comes up to a second
			// later than now+ttl.
			c.RotatesAt = now.Add(time.Duration(ttl)*time.Second + time.Second)
		}
		if s, ok := sec.Data["last_vault_rotation"].(string); ok {
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				c.CreatedAt = t
				c.VersionID = strconv.FormatInt(t.UnixMilli(), 10)
				// The last rotation plus the period is exact, where this
				// clock and Vault's agree.
				if period, ok := number(sec.Data["rotation_period"]); ok && period > 0 {
					if at := t.Add(time.Duration(period) * time.Second); at.After(now) && at.Before(c.RotatesAt) {
						c.RotatesAt = at
					}
				}
			}
		}
		return c, nil
	default:
		data, _ := sec.Data["data"].(map[string]any)
		if data == nil {
			return nil, p.errorf(pgsecrets.ErrSecretNotFound, "the KV secret has no current version (deleted or destroyed)", "")
		}
		raw, _ := json.Marshal(data)
		c, err := pgsecrets.ParseSecret(p.path, string(raw), p.usernameKey, p.passwordKey)
		if err != nil {
			return nil, err
		}
		if md, ok := sec.Data["metadata"].(map[string]any); ok {
			if v, ok := number(md["version"]); ok {
				c.VersionID = strconv.FormatInt(v, 10)
			}
			if s, ok := md["created_time"].(string); ok {
				c.CreatedAt, _ = time.Parse(time.RFC3339Nano, s)
			}
		}
		return c, nil
	}
}

func (p *provider) credsFrom(data map[string]any) (*pgsecrets.Credentials, error) {
	u, _ := data["username"].(string)
	pw, _ := data["password"].(string)
	if u == "" || pw == "" {
		field := "username"
		if u != "" {
			field = "password"
		}
		return nil, &pgsecrets.SecretError{Kind: pgsecrets.ErrMalformedSecret, SecretID: p.path, Field: field,
			Detail: "missing from Vault's response (" + p.where() + ")"}
	}
	return &pgsecrets.Credentials{Username: u, Password: pgsecrets.NewSecret(pw)}, nil
}

// capAtToken keeps a lease's end within the end of the token it was
// issued under (generation gen): Vault revokes a token's leases with it,
// so that is when the credentials really end.
func (p *provider) capAtToken(c *pgsecrets.Credentials, gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leaseGen == nil {
		p.leaseGen = map[string]uint64{}
	}
	p.leaseGen[c.LeaseID] = gen
	if end := p.tokenEndLocked(gen); !end.IsZero() && end.Before(c.Expires) {
		c.Expires = end
		if gen != p.tokenGen || (!p.tokenRenewable && !p.canLogin()) {
			c.Renewable = false
		}
	}
}

// tokenEndLocked is when the token of generation gen ends: the current
// token's end, a replaced one's, or now for one whose end has passed and
// been forgotten.
func (p *provider) tokenEndLocked(gen uint64) time.Time {
	if gen == p.tokenGen {
		return p.tokenEnd
	}
	if end, ok := p.pastEnds[gen]; ok {
		return end
	}
	return time.Now()
}

// Describe says which Vault, path kind, auth method and token state serve
// the credentials, for pgsecrets check. It never shows the token.
func (p *provider) Describe(ctx context.Context) ([]pgsecrets.Fact, error) {
	kinds := map[kind]string{dynamic: "dynamic credentials (a lease each)", static: "static role", kv: "KV version 2"}
	facts := []pgsecrets.Fact{{Name: "vault", Value: p.addr}, {Name: "path", Value: p.path + " (" + kinds[p.kind] + ")"}}
	if p.namespace != "" {
		facts = append(facts, pgsecrets.Fact{Name: "namespace", Value: p.namespace})
	}
	auth := p.auth
	if p.canLogin() {
		auth += " at auth/" + p.authMount
	}
	facts = append(facts, pgsecrets.Fact{Name: "auth", Value: auth})
	sec, err := p.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return facts, p.classify("looking up the token for", err)
	}
	ttl, _ := sec.TokenTTL()
	renewable, _ := sec.TokenIsRenewable()
	tok := "does not expire"
	if ttl > 0 {
		tok = fmt.Sprintf("ends in %s, renewable %v", ttl, renewable)
		if v, ok := number(sec.Data["explicit_max_ttl"]); ok && v > 0 {
			tok += fmt.Sprintf(", max TTL %s", time.Duration(v)*time.Second)
		}
	}
	facts = append(facts, pgsecrets.Fact{Name: "token", Value: tok})
	return facts, nil
}

// Renew extends a lease.
func (p *provider) Renew(ctx context.Context, c *pgsecrets.Credentials, increment time.Duration) (time.Time, error) {
	if err := p.ensureToken(ctx); err != nil {
		return time.Time{}, err
	}
	now := time.Now()
	sec, err := p.client.Sys().RenewWithContext(ctx, c.LeaseID, int(increment.Round(time.Second)/time.Second))
	if err != nil {
		return time.Time{}, p.classify("renewing lease "+c.LeaseID+" of", err)
	}
	if sec == nil {
		return time.Time{}, p.errorf(pgsecrets.ErrSecretNotFound, "the lease is gone", "")
	}
	end := now.Add(time.Duration(sec.LeaseDuration) * time.Second)
	p.mu.Lock()
	gen, ok := p.leaseGen[c.LeaseID]
	if !ok {
		gen = p.tokenGen
	}
	if tokenEnd := p.tokenEndLocked(gen); !tokenEnd.IsZero() && tokenEnd.Before(end) {
		end = tokenEnd
	}
	p.mu.Unlock()
	return end, nil
}

// Revoke ends a lease now; Vault drops its role.
func (p *provider) Revoke(ctx context.Context, c *pgsecrets.Credentials) error {
	if err := p.ensureToken(ctx); err != nil {
		return err
	}
	if err := p.client.Sys().RevokeWithContext(ctx, c.LeaseID); err != nil {
		return p.classify("revoking lease "+c.LeaseID+" of", err)
	}
	p.mu.Lock()
	delete(p.leaseGen, c.LeaseID)
	p.mu.Unlock()
	return nil
}

// Close revokes a token this provider logged in for (with any lease still
// attached to it) and drops idle HTTP connections.
func (p *provider) Close() error {
	p.mu.Lock()
	ours := p.tokenOurs && (p.tokenEnd.IsZero() || time.Now().Before(p.tokenEnd))
	p.mu.Unlock()
	if ours {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = p.client.Auth().Token().RevokeSelfWithContext(ctx, "")
		cancel()
	}
	if hc := p.client.CloneConfig().HttpClient; hc != nil {
		hc.CloseIdleConnections()
	}
	return nil
}

func (p *provider) canLogin() bool { return p.auth != "token" }

// ensureToken looks the token up once, renews it at half its TTL, and
// logs in again (approle, kubernetes) once it cannot be renewed past a
// third of its TTL. A token that can do neither is an error before it ends.
func (p *provider) ensureToken(ctx context.Context) error {
	p.mu.Lock()
	known, end, ttl, renewable := p.tokenKnown, p.tokenEnd, p.tokenTTL, p.tokenRenewable
	p.mu.Unlock()
	now := time.Now()
	switch {
	case !known && p.canLogin():
		return p.login(ctx)
	case !known:
		return p.lookup(ctx)
	case end.IsZero():
		return nil
	}
	left := end.Sub(now)
	if left > ttl/2 {
		return nil
	}
	if renewable {
		if err := p.renewToken(ctx); err == nil {
			p.mu.Lock()
			end = p.tokenEnd
			p.mu.Unlock()
			if time.Until(end) > ttl/3 {
				return nil
			}
		} else if !p.canLogin() {
			if left > 0 {
				return nil // still valid; the next call tries again
			}
			return err
		}
	}
	if p.canLogin() {
		return p.login(ctx)
	}
	if left <= ttl/3 {
		return p.errorf(pgsecrets.ErrAccessDenied,
			fmt.Sprintf("the Vault token ends in %s and can neither be renewed nor replaced", left.Round(time.Second)),
			"give the application a renewable token with a longer max TTL, or use secret_vault_auth=approle or kubernetes so pgsecrets can log in again")
	}
	return nil
}

func (p *provider) lookup(ctx context.Context) error {
	sec, err := p.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return p.classify("looking up the token for", err)
	}
	ttl, _ := sec.TokenTTL()
	renewable, _ := sec.TokenIsRenewable()
	created := ttl
	if v, ok := number(sec.Data["creation_ttl"]); ok && v > 0 {
		created = time.Duration(v) * time.Second
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokenKnown, p.tokenRenewable, p.tokenTTL = true, renewable, created
	if ttl > 0 {
		p.tokenEnd = time.Now().Add(ttl)
	}
	return nil
}

func (p *provider) renewToken(ctx context.Context) error {
	p.mu.Lock()
	inc := int(p.tokenTTL / time.Second)
	p.mu.Unlock()
	sec, err := p.client.Auth().Token().RenewSelfWithContext(ctx, inc)
	if err != nil {
		return p.classify("renewing the token for", err)
	}
	if sec == nil || sec.Auth == nil {
		return p.errorf(pgsecrets.ErrStoreUnavailable, "Vault's token renewal answer has no auth block", "")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tokenRenewable = sec.Auth.Renewable
	if sec.Auth.LeaseDuration > 0 {
		p.tokenEnd = time.Now().Add(time.Duration(sec.Auth.LeaseDuration) * time.Second)
	}
	return nil
}

func (p *provider) login(ctx context.Context) error {
	body := map[string]any{}
	switch p.auth {
	case "approle":
		secretID := os.Getenv("VAULT_SECRET_ID")
		if p.secretFile != "" {
			b, err := os.ReadFile(p.secretFile)
			if err != nil {
				return p.errorf(pgsecrets.ErrAccessDenied, "cannot read the AppRole secret id file "+p.secretFile+": "+ioReason(err), "")
			}
			secretID = strings.TrimSpace(string(b))
		}
		body["role_id"], body["secret_id"] = p.roleID, secretID
	case "kubernetes":
		b, err := os.ReadFile(p.jwtFile)
		if err != nil {
			return p.errorf(pgsecrets.ErrAccessDenied, "cannot read the service account token file "+p.jwtFile+": "+ioReason(err), "")
		}
		body["role"], body["jwt"] = p.role, strings.TrimSpace(string(b))
	}
	sec, err := p.loginClient.Logical().WriteWithContext(ctx, "auth/"+p.authMount+"/login", body)
	if err != nil {
		err = p.classify("logging in ("+p.auth+" at auth/"+p.authMount+") for", err)
		var se *pgsecrets.SecretError
		if errors.As(err, &se) && (se.Kind == pgsecrets.ErrSecretNotFound || se.Kind == pgsecrets.ErrAccessDenied) {
			// Vault answers a rejected login with 400, and one sent to a
			// namespace without this auth mount with 403.
			se.Kind = pgsecrets.ErrAccessDenied
			se.Hint = "Vault rejected the login: check " + KeyRoleID + " and the secret id file for AppRole, " + KeyRole + " and the service account token for Kubernetes, the auth mount, and the namespace (" + KeyNamespace + " or VAULT_NAMESPACE)"
		}
		return err
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return p.errorf(pgsecrets.ErrAccessDenied, "Vault's login answer has no token", "")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The old token ends by itself, with its leases, which pgsecrets
	// replaces before then (their Expires, renewals included, is capped at
	// the old token's end).
	if p.tokenKnown {
		if p.pastEnds == nil {
			p.pastEnds = map[uint64]time.Time{}
		}
		now := time.Now()
		for g, end := range p.pastEnds {
			if !end.IsZero() && end.Before(now) {
				delete(p.pastEnds, g) // its token, and so its leases, ended
			}
		}
		for id, g := range p.leaseGen {
			if _, ok := p.pastEnds[g]; !ok && g != p.tokenGen {
				delete(p.leaseGen, id)
			}
		}
		p.pastEnds[p.tokenGen] = p.tokenEnd // zero: that token does not expire
	}
	p.tokenGen++
	p.client.SetToken(sec.Auth.ClientToken)
	p.tokenKnown, p.tokenOurs, p.tokenRenewable = true, true, sec.Auth.Renewable
	p.tokenTTL = time.Duration(sec.Auth.LeaseDuration) * time.Second
	p.tokenEnd = time.Time{}
	if p.tokenTTL > 0 {
		p.tokenEnd = time.Now().Add(p.tokenTTL)
	}
	return nil
}

// StoreEndpoint implements pgsecrets.Endpointer: requests carry the token,
// answers the password.
func (p *provider) StoreEndpoint() pgsecrets.StoreEndpoint {
	ep := pgsecrets.StoreEndpoint{Store: "Vault", URL: p.rawAddr}
	if p.skipVerify {
		ep.SkipVerify = "VAULT_SKIP_VERIFY"
	}
	return ep
}

// withoutUserinfo drops a user and password from an address, which errors
// and Describe show.
func withoutUserinfo(addr string) string {
	u, err := url.Parse(addr)
	if err != nil || u.User == nil {
		return addr
	}
	u.User = nil
	return u.String()
}

// where names the Vault address, namespace and path, for errors.
func (p *provider) where() string {
	s := "vault " + p.addr
	if p.namespace != "" {
		s += " namespace " + p.namespace
	}
	return s + ", path " + p.path
}

func (p *provider) errorf(kind error, detail, hint string) *pgsecrets.SecretError {
	return &pgsecrets.SecretError{Kind: kind, SecretID: p.path, Detail: detail + " (" + p.where() + ")", Hint: hint}
}

// classify turns a vault/api error into a *SecretError of the right kind.
// vault/api's errors carry the URL and Vault's messages, never the token.
func (p *provider) classify(doing string, err error) error {
	se := &pgsecrets.SecretError{SecretID: p.path, Err: err, Detail: doing + " " + p.where() + " failed"}
	var re *api.ResponseError
	if !errors.As(err, &re) {
		se.Kind = pgsecrets.ErrStoreUnavailable
		se.Hint = "check VAULT_ADDR / secret_endpoint and network access to Vault; leases still valid keep serving meanwhile"
		return se
	}
	switch {
	case re.StatusCode == http.StatusForbidden:
		se.Kind = pgsecrets.ErrAccessDenied
		se.Hint = fmt.Sprintf("the token's policies need read on %q (and update on sys/leases/renew and sys/leases/revoke for dynamic credentials); an expired token also answers 403", p.path)
	case re.StatusCode == http.StatusNotFound:
		se.Kind = pgsecrets.ErrSecretNotFound
		se.Hint = "check secret_id and the mount"
	case re.StatusCode == http.StatusBadRequest:
		se.Kind = pgsecrets.ErrSecretNotFound
		se.Hint = "Vault refused the request: the role or lease does not exist, or the request is malformed"
	case re.StatusCode == http.StatusTooManyRequests:
		se.Kind = pgsecrets.ErrThrottled
		se.Hint = "Vault's rate limit quota refused the request (sys/quotas/rate-limit): raise the quota or secret_ttl; leases still valid keep serving meanwhile"
	case re.StatusCode >= 500:
		se.Kind = pgsecrets.ErrStoreUnavailable
		se.Hint = "Vault is failing or sealed; leases still valid keep serving meanwhile"
	default:
		se.Kind = pgsecrets.ErrStoreUnavailable
	}
	return se
}

// ioReason is why a file could not be read, without the path twice.
func ioReason(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// leaseVersion is the lease id's last segment, the part that tells leases
// apart in logs.
func leaseVersion(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[i+1:]
	}
	return id
}

func number(v any) (int64, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	case float64:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case string:
		i, err := strconv.ParseInt(n, 10, 64)
		return i, err == nil
	}
	return 0, false
}
