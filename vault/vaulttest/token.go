package vaulttest

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// TokenOptions describe a token made by [Server.CreateToken] or by a login.
type TokenOptions struct {
	// TTL is the token's lifetime, and what a renewal without increment
	// extends it by. 0 makes a token that never expires (and so cannot be
	// renewed), which keeps tests that do not care about tokens simple;
	// Vault would apply its default of 768h instead.
	TTL time.Duration
	// MaxTTL caps the lifetime, counted from creation, however often the
	// token is renewed (Vault's explicit_max_ttl). 0 means no cap.
	MaxTTL time.Duration
	// Renewable allows auth/token/renew-self.
	Renewable bool
	// Policies name policies made with [Server.SetPolicy]; they decide which
	// paths the token may use. The policy "root" allows everything. Vault's
	// implicit "default" policy is not added.
	Policies []string
}

type token struct {
	id          string
	accessor    string
	policies    []string
	ttl         time.Duration // the creation TTL
	maxTTL      time.Duration
	renewable   bool
	created     time.Time
	expires     time.Time // zero: never
	maxExpires  time.Time // zero: no cap
	revoked     bool
	reaped      bool // its leases were revoked after it expired or was revoked
	displayName string
	path        string
	meta        map[string]string
}

func (t *token) liveAt(now time.Time) bool {
	return !t.revoked && (t.expires.IsZero() || now.Before(t.expires))
}

func (t *token) isRoot() bool { return slices.Contains(t.policies, "root") }

// newTokenLocked makes and registers a token.
func (s *Server) newTokenLocked(o TokenOptions, displayName, path string, meta map[string]string) *token {
	now := time.Now()
	t := &token{
		id:          "hvs." + randString(24, alnum),
		accessor:    randString(24, alnum),
		policies:    slices.Clone(o.Policies),
		ttl:         max(o.TTL, 0),
		maxTTL:      max(o.MaxTTL, 0),
		renewable:   o.Renewable,
		created:     now,
		displayName: displayName,
		path:        path,
		meta:        meta,
	}
	if t.policies == nil {
		t.policies = []string{}
	}
	if t.maxTTL > 0 {
		t.maxExpires = now.Add(t.maxTTL)
	}
	if t.ttl > 0 {
		t.expires = now.Add(t.ttl)
		if !t.maxExpires.IsZero() && t.expires.After(t.maxExpires) {
			t.expires = t.maxExpires
		}
	} else if !t.maxExpires.IsZero() {
		t.expires = t.maxExpires
	}
	s.tokens[t.id] = t
	s.byAccessor[t.accessor] = t
	return t
}

// RootToken returns the server's root token: it never expires and may use
// every path.
func (s *Server) RootToken() string { return s.root.id }

// CreateToken makes a token, as auth/token/create would, and returns it.
// Its expiry (if o.TTL is set) is enforced by the real-time clock: once it
// passes, the token is refused with 403 and the leases it created are
// revoked.
func (s *Server) CreateToken(o TokenOptions) string {
	s.mu.Lock()
	t := s.newTokenLocked(o, "token", "auth/token/create", nil)
	s.mu.Unlock()
	s.wake()
	return t.id
}

// TokenAccessor returns the accessor of a token ("" if unknown), which is
// how [Lease.TokenAccessor] names the owner without exposing the token.
func (s *Server) TokenAccessor(tok string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tokens[tok]; t != nil {
		return t.accessor
	}
	return ""
}

// RevokeToken revokes a token, as auth/token/revoke would, and with it
// every lease it created (their roles are dropped before RevokeToken
// returns). It returns the first error of dropping a role; the leases whose
// role could not be dropped stay active. Revoking an unknown or already
// revoked token is not an error. The root token cannot be revoked.
func (s *Server) RevokeToken(tok string) error {
	s.mu.Lock()
	t := s.tokens[tok]
	if t == nil || t == s.root {
		s.mu.Unlock()
		if t == s.root {
			return fmt.Errorf("vaulttest: the root token cannot be revoked")
		}
		return nil
	}
	t.revoked = true
	t.reaped = true
	s.broadcastLocked()
	s.mu.Unlock()
	return s.revokeLeasesOf(s.ctx, t, RevokedByToken)
}

// SetPolicy defines (or replaces) the policy name as the list of paths it
// allows, in Vault's path syntax without capabilities: "database/creds/app"
// allows exactly that path, a trailing "*" matches any rest
// ("database/creds/*", "secret/data/app/*"), and "+" matches one path
// segment ("secret/data/+/config"). Every path allows all operations.
// Whatever the policies, a live token may use auth/token/lookup-self,
// renew-self and revoke-self and the sys/leases endpoints, as Vault's
// default policy allows.
func (s *Server) SetPolicy(name string, paths ...string) {
	s.mu.Lock()
	s.policies[name] = slices.Clone(paths)
	s.mu.Unlock()
}

// allowedLocked reports whether t may use the Vault path p.
func (s *Server) allowedLocked(t *token, p string) bool {
	if t.isRoot() {
		return true
	}
	switch p {
	case "auth/token/lookup-self", "auth/token/renew-self", "auth/token/revoke-self",
		"sys/renew", "sys/revoke":
		return true
	}
	if strings.HasPrefix(p, "sys/leases/") || strings.HasPrefix(p, "sys/renew/") || strings.HasPrefix(p, "sys/revoke/") {
		return true
	}
	for _, name := range t.policies {
		for _, pat := range s.policies[name] {
			if pathMatch(pat, p) {
				return true
			}
		}
	}
	return false
}

// pathMatch matches a Vault policy path pattern.
func pathMatch(pat, p string) bool {
	pat = strings.TrimPrefix(pat, "/")
	glob := strings.HasSuffix(pat, "*")
	pat = strings.TrimSuffix(pat, "*")
	for {
		i := strings.IndexByte(pat, '+')
		if i < 0 {
			break
		}
		// The literal before "+" must match, then "+" eats one segment.
		if !strings.HasPrefix(p, pat[:i]) {
			return false
		}
		p = p[i:]
		pat = pat[i+1:]
		j := strings.IndexByte(p, '/')
		if j < 0 {
			p = ""
		} else {
			p = p[j:]
		}
	}
	if glob {
		return strings.HasPrefix(p, pat)
	}
	return p == pat
}

// authenticate returns the live token named by the request, or nil.
func (s *Server) authenticate(r *http.Request) *token {
	id := r.Header.Get("X-Vault-Token")
	if id == "" {
		// Vault also accepts the token as a bearer token.
		if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
			id = strings.TrimPrefix(a, "Bearer ")
		}
	}
	if id == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[id]
	if t == nil || !t.liveAt(time.Now()) {
		return nil
	}
	return t
}

// ttlLeft is the token's remaining lifetime (0 for a token that never
// expires).
func (t *token) ttlLeft(now time.Time) time.Duration {
	if t.expires.IsZero() {
		return 0
	}
	return max(t.expires.Sub(now), 0)
}

func timeOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (s *Server) handleTokenLookupSelf(_ context.Context, w http.ResponseWriter, q *request) {
	now := time.Now()
	s.mu.Lock()
	t := q.token
	data := map[string]any{
		"accessor":         t.accessor,
		"creation_time":    t.created.Unix(),
		"creation_ttl":     seconds(t.ttl),
		"display_name":     t.displayName,
		"entity_id":        "",
		"expire_time":      timeOrNil(t.expires),
		"explicit_max_ttl": seconds(t.maxTTL),
		"id":               t.id,
		"issue_time":       t.created.UTC().Format(time.RFC3339Nano),
		"meta":             t.meta,
		"num_uses":         0,
		"orphan":           true,
		"path":             t.path,
		"policies":         slices.Clone(t.policies),
		"renewable":        t.renewable && !t.expires.IsZero(),
		"ttl":              seconds(t.ttlLeft(now)),
		"type":             "service",
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, &secretResponse{RequestID: newUUID(), Data: data})
}

func (s *Server) handleTokenRenewSelf(_ context.Context, w http.ResponseWriter, q *request) {
	inc, err := durationParam(q.body["increment"])
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	now := time.Now()
	s.mu.Lock()
	t := q.token
	if !t.renewable || t.expires.IsZero() {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "lease is not renewable")
		return
	}
	if inc <= 0 {
		inc = t.ttl
	}
	ttl, warning, err := capTTL(inc, now, t.maxExpires)
	if err != nil {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	t.expires = now.Add(ttl)
	if !t.maxExpires.IsZero() && t.expires.After(t.maxExpires) {
		t.expires = t.maxExpires
	}
	auth := s.authBodyLocked(t, now)
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	resp := &secretResponse{RequestID: newUUID(), Auth: auth}
	if warning != "" {
		resp.Warnings = []string{warning}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleTokenRevokeSelf(_ context.Context, w http.ResponseWriter, q *request) {
	s.mu.Lock()
	t := q.token
	if t == s.root {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "cannot revoke the root token of vaulttest")
		return
	}
	t.revoked = true
	t.reaped = true
	s.broadcastLocked()
	s.mu.Unlock()
	if err := s.revokeLeasesOf(s.ctx, t, RevokedByToken); err != nil {
		writeError(w, http.StatusInternalServerError, "failed to revoke the token's leases: "+err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// capTTL limits a requested TTL to what is left until maxEnd (zero: no
// limit), with Vault's warning when it had to, and Vault's error once
// nothing is left.
func capTTL(want time.Duration, now, maxEnd time.Time) (time.Duration, string, error) {
	if maxEnd.IsZero() {
		return want, "", nil
	}
	left := maxEnd.Sub(now)
	if left <= 0 {
		return 0, "", fmt.Errorf("past the max TTL, cannot renew")
	}
	if want <= left {
		return want, "", nil
	}
	return left, fmt.Sprintf("TTL of %q exceeded the effective max_ttl of %q; TTL value is capped accordingly",
		want.Truncate(time.Second), left.Truncate(time.Second)), nil
}

// authBodyLocked is the "auth" object of login and renew-self answers.
func (s *Server) authBodyLocked(t *token, now time.Time) map[string]any {
	return map[string]any{
		"client_token":   t.id,
		"accessor":       t.accessor,
		"policies":       slices.Clone(t.policies),
		"token_policies": slices.Clone(t.policies),
		"metadata":       t.meta,
		"lease_duration": seconds(t.ttlLeft(now)),
		"renewable":      t.renewable && !t.expires.IsZero(),
		"entity_id":      "",
		"token_type":     "service",
		"orphan":         true,
	}
}

// Auth methods.

type authKind int

const (
	authAppRole authKind = iota + 1
	authKubernetes
)

func (k authKind) String() string {
	if k == authAppRole {
		return "approle"
	}
	return "kubernetes"
}

type authMount struct {
	path  string
	kind  authKind
	roles map[string]*authRole // by role name
}

type authRole struct {
	name     string
	roleID   string
	secretID string
	jwt      string
	opts     TokenOptions
}

func (s *Server) authMountLocked(mount string, kind authKind) *authMount {
	mount = normalizeMount(mount)
	m := s.authMounts[mount]
	if m == nil {
		m = &authMount{path: mount, kind: kind, roles: make(map[string]*authRole)}
		s.authMounts[mount] = m
	}
	if m.kind != kind {
		panic(fmt.Sprintf("vaulttest: auth mount %q is a %v mount", mount, m.kind))
	}
	return m
}

// AddAppRole enables the AppRole method at auth/<mount> (typically
// "approle") if needed and adds a role that logs in with roleID and
// secretID (PUT auth/<mount>/login with {"role_id","secret_id"}), getting a
// token made with o. It panics if mount is already used by another method.
func (s *Server) AddAppRole(mount, roleName, roleID, secretID string, o TokenOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.authMountLocked(mount, authAppRole)
	m.roles[roleName] = &authRole{name: roleName, roleID: roleID, secretID: secretID, opts: o}
}

// AddKubernetesRole enables the Kubernetes method at auth/<mount>
// (typically "kubernetes") if needed and adds a role that logs in with the
// service account token jwt (PUT auth/<mount>/login with {"role","jwt"}),
// getting a token made with o. The JWT is compared as an opaque string; it
// is not parsed or verified. It panics if mount is already used by another
// method.
func (s *Server) AddKubernetesRole(mount, roleName, jwt string, o TokenOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.authMountLocked(mount, authKubernetes)
	m.roles[roleName] = &authRole{name: roleName, jwt: jwt, opts: o}
}

func equalSecret(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (s *Server) handleLogin(_ context.Context, w http.ResponseWriter, q *request) {
	m := q.auth
	var role *authRole
	var meta map[string]string
	s.mu.Lock()
	switch m.kind {
	case authAppRole:
		roleID, _ := q.body["role_id"].(string)
		secretID, _ := q.body["secret_id"].(string)
		if roleID == "" {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "missing role_id")
			return
		}
		for _, name := range sortedKeys(m.roles) {
			r := m.roles[name]
			if equalSecret(r.roleID, roleID) && equalSecret(r.secretID, secretID) {
				role = r
				break
			}
		}
		if role == nil {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "invalid role or secret ID")
			return
		}
		meta = map[string]string{"role_name": role.name}
	case authKubernetes:
		name, _ := q.body["role"].(string)
		jwt, _ := q.body["jwt"].(string)
		if name == "" {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "missing role")
			return
		}
		if jwt == "" {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "missing jwt")
			return
		}
		role = m.roles[name]
		if role == nil {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid role name %q", name))
			return
		}
		if !equalSecret(role.jwt, jwt) {
			s.mu.Unlock()
			writeError(w, http.StatusForbidden, "permission denied")
			return
		}
		meta = map[string]string{"role": role.name}
	}
	now := time.Now()
	t := s.newTokenLocked(role.opts, m.kind.String()+"-"+role.name, "auth/"+m.path+"/login", meta)
	s.logins[m.path]++
	auth := s.authBodyLocked(t, now)
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	writeJSON(w, http.StatusOK, &secretResponse{RequestID: newUUID(), Auth: auth})
}
