package vaulttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

// DefaultLeaseTTL is the lease of a [DatabaseRole] without TTL: Vault's
// default of 768h.
const DefaultLeaseTTL = 768 * time.Hour

// validUntilGrace is how long after its lease a role stays valid in
// PostgreSQL: Vault's database engine sets VALID UNTIL a little past the
// lease end so that revocation, not the password expiry, ends the
// credentials; a client that sees logins fail before its lease ends has a
// clock or renewal problem.
const validUntilGrace = 5 * time.Second

// revocationRetry is how long the scheduler waits before trying again to
// revoke a lease (or rotate a password) after PostgreSQL refused.
const revocationRetry = time.Second

// Why a lease was revoked ([Lease.RevokedBy]).
const (
	// RevokedByRequest: sys/leases/revoke or [Server.RevokeLease].
	RevokedByRequest = "revoke"
	// RevokedByExpiry: the lease ran out without being renewed.
	RevokedByExpiry = "expired"
	// RevokedByToken: the token that created the lease was revoked or
	// expired.
	RevokedByToken = "token"
)

// DatabaseRole is a role of the database secrets engine that issues
// dynamic credentials (GET <mount>/creds/<name>).
type DatabaseRole struct {
	// DB is a connection pool with the right to create and drop roles
	// (typically the test's superuser). The server does not close it.
	// Required.
	DB *sql.DB
	// TTL is each lease's initial duration and the default renewal
	// increment; 0 means DefaultLeaseTTL.
	TTL time.Duration
	// MaxTTL caps a lease's lifetime from issue, however it is renewed;
	// 0 means no cap.
	MaxTTL time.Duration
	// Grants are statements run after CREATE ROLE, in the same transaction,
	// with every {{name}} replaced by the quoted role name, such as
	// `GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}}`.
	Grants []string
}

type dbRole struct {
	mount, name string
	cfg         DatabaseRole
}

// Lease is a snapshot of a dynamic credential's lease.
type Lease struct {
	// ID is the lease id, <mount>/creds/<role>/<random>.
	ID string
	// Mount and Role are where the credentials were issued.
	Mount, Role string
	// Username is the PostgreSQL role created for the lease.
	Username string
	// TokenAccessor is the accessor of the token that asked for the
	// credentials (compare with [Server.TokenAccessor]).
	TokenAccessor string
	// IssuedAt is when the credentials were issued.
	IssuedAt time.Time
	// Expires is when the lease ends unless renewed.
	Expires time.Time
	// MaxExpires is the latest Expires renewals can reach; zero if the role
	// has no MaxTTL.
	MaxExpires time.Time
	// LastRenewal is the time of the last renewal; zero if none.
	LastRenewal time.Time
	// Renewals counts successful renewals.
	Renewals int
	// Revoked is set once the role has been dropped.
	Revoked bool
	// RevokedBy is one of the RevokedBy constants.
	RevokedBy string
	// RevokedAt is when the role was dropped.
	RevokedAt time.Time
}

type lease struct {
	pub   Lease
	db    *sql.DB
	ttl   time.Duration // the role's TTL, the default increment
	token *token

	opMu      sync.Mutex // serializes renewal and revocation
	pendingBy string     // a revocation that failed and is retried
	retryAt   time.Time
}

// AddDatabaseRole adds (or replaces) a dynamic role at <mount>/creds/<name>,
// enabling a database secrets engine at mount (such as "database"; it may
// contain slashes) if needed. Leases already issued keep the settings they
// were issued with. It panics if r.DB is nil, name is empty or has a slash,
// or mount is already used by a KV engine.
func (s *Server) AddDatabaseRole(mount, name string, r DatabaseRole) {
	if r.DB == nil {
		panic("vaulttest: AddDatabaseRole: DB is nil")
	}
	checkRoleName(name)
	r.Grants = append([]string(nil), r.Grants...)
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mountLocked(mount, mountDatabase)
	m.dbRoles[name] = &dbRole{mount: m.path, name: name, cfg: r}
}

func checkRoleName(name string) {
	if name == "" || strings.Contains(name, "/") {
		panic(fmt.Sprintf("vaulttest: invalid role name %q", name))
	}
}

// pgUsername makes the name of a dynamic role in Vault's style,
// v-<display name>-<role>-<random>, within PostgreSQL's 63 bytes.
func pgUsername(role string) string {
	const maxLen = 63
	suffix := "-" + randString(20, alnum)
	prefix := "v-token-" + role
	if len(prefix)+len(suffix) > maxLen {
		prefix = prefix[:maxLen-len(suffix)]
	}
	return prefix + suffix
}

// validUntil is the VALID UNTIL literal for a lease ending at end.
func validUntil(end time.Time) string {
	return pq.QuoteLiteral(end.Add(validUntilGrace).UTC().Truncate(time.Second).Format("2006-01-02 15:04:05+00"))
}

// dbErrorText describes a database error without the statement: only
// PostgreSQL's message and SQLSTATE, which name roles but hold no secret.
func dbErrorText(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return fmt.Sprintf("%s (SQLSTATE %s)", pqErr.Message, pqErr.Code)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	}
	return "database error"
}

func (s *Server) handleCreds(ctx context.Context, w http.ResponseWriter, q *request) {
	s.mu.Lock()
	role := q.mount.dbRoles[q.rest]
	s.mu.Unlock()
	if role == nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown role: %s", q.rest))
		return
	}
	ttl := role.cfg.TTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	var warnings []string
	if role.cfg.MaxTTL > 0 && ttl > role.cfg.MaxTTL {
		warnings = append(warnings, fmt.Sprintf("TTL of %q exceeded the effective max_ttl of %q; TTL value is capped accordingly", ttl, role.cfg.MaxTTL))
		ttl = role.cfg.MaxTTL
	}
	now := time.Now()
	end := now.Add(ttl)
	username := pgUsername(role.name)
	password := randString(24, alnum)
	if err := createRole(ctx, role.cfg, username, password, end); err != nil {
		s.log.Warn("vaulttest: creating credentials failed", "mount", role.mount, "role", role.name,
			"username", username, "error", dbErrorText(err))
		writeError(w, http.StatusInternalServerError, "failed to create credentials: "+dbErrorText(err))
		return
	}
	l := &lease{
		pub: Lease{
			ID:       role.mount + "/creds/" + role.name + "/" + randString(24, alnum),
			Mount:    role.mount,
			Role:     role.name,
			Username: username,
			IssuedAt: now,
			Expires:  end,
		},
		db:    role.cfg.DB,
		ttl:   ttl,
		token: q.token,
	}
	if role.cfg.MaxTTL > 0 {
		l.pub.MaxExpires = now.Add(role.cfg.MaxTTL)
	}
	s.mu.Lock()
	l.pub.TokenAccessor = q.token.accessor
	// The token may have been revoked while the role was being created; its
	// leases have been revoked already, so this one must not outlive it.
	if !q.token.liveAt(time.Now()) || q.token.reaped {
		s.mu.Unlock()
		if err := dropRole(s.ctx, l.db, username); err != nil {
			s.log.Warn("vaulttest: dropping a role of a revoked token failed", "username", username, "error", dbErrorText(err))
		}
		permissionDenied(w)
		return
	}
	s.leases[l.pub.ID] = l
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	s.log.Info("vaulttest: issued credentials", "lease_id", l.pub.ID, "username", username, "ttl", ttl)
	writeJSON(w, http.StatusOK, &secretResponse{
		RequestID:     newUUID(),
		LeaseID:       l.pub.ID,
		Renewable:     true,
		LeaseDuration: seconds(ttl),
		Data:          map[string]any{"username": username, "password": password},
		Warnings:      warnings,
		MountType:     "database",
	})
}

// createRole creates the login role of a lease and runs the role's grants,
// all in one transaction so that a failing grant leaves no role behind.
func createRole(ctx context.Context, cfg DatabaseRole, username, password string, end time.Time) error {
	verifier, err := scramVerifier(password)
	if err != nil {
		return err
	}
	id := pq.QuoteIdentifier(username)
	tx, err := cfg.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "CREATE ROLE "+id+" WITH LOGIN PASSWORD "+pq.QuoteLiteral(verifier)+
		" VALID UNTIL "+validUntil(end)); err != nil {
		return err
	}
	for _, g := range cfg.Grants {
		if _, err := tx.ExecContext(ctx, strings.ReplaceAll(g, "{{name}}", id)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// dropRole is Vault's default revocation for PostgreSQL in short: whatever
// the role owns in the connected database goes to the caller, its
// privileges are revoked, and the role is dropped. Sessions of the role are
// not ended; as in PostgreSQL they go on until they disconnect.
func dropRole(ctx context.Context, db *sql.DB, username string) error {
	var exists bool
	if err := db.QueryRowContext(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", username).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return nil
	}
	id := pq.QuoteIdentifier(username)
	_, err := db.ExecContext(ctx, "REASSIGN OWNED BY "+id+" TO CURRENT_USER; DROP OWNED BY "+id+"; DROP ROLE IF EXISTS "+id)
	return err
}

var errLeaseNotFound = errors.New("lease not found")

// leaseError is an error to answer a lease request with.
type leaseError struct {
	status int
	msg    string
}

func (e *leaseError) Error() string { return e.msg }

func leaseID(q *request) string {
	if q.rest != "" {
		return q.rest
	}
	id, _ := q.body["lease_id"].(string)
	return strings.TrimSpace(id)
}

func (s *Server) handleRenew(ctx context.Context, w http.ResponseWriter, q *request) {
	id := leaseID(q)
	if id == "" {
		writeError(w, http.StatusBadRequest, "lease_id must be specified")
		return
	}
	inc, err := durationParam(q.body["increment"])
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ttl, warning, err := s.renewLease(ctx, id, inc)
	if err != nil {
		var le *leaseError
		if errors.As(err, &le) {
			writeError(w, le.status, le.msg)
			return
		}
		writeError(w, http.StatusInternalServerError, "failed to renew entry: "+dbErrorText(err))
		return
	}
	resp := &secretResponse{RequestID: newUUID(), LeaseID: id, Renewable: true, LeaseDuration: seconds(ttl)}
	if warning != "" {
		resp.Warnings = []string{warning}
	}
	writeJSON(w, http.StatusOK, resp)
}

// renewLease extends a lease by inc (0: the role's TTL), capped at its
// MaxTTL, moving the role's VALID UNTIL along.
func (s *Server) renewLease(ctx context.Context, id string, inc time.Duration) (time.Duration, string, error) {
	s.mu.Lock()
	l := s.leases[id]
	s.mu.Unlock()
	if l == nil {
		return 0, "", &leaseError{http.StatusBadRequest, errLeaseNotFound.Error()}
	}
	l.opMu.Lock()
	defer l.opMu.Unlock()
	now := time.Now()
	s.mu.Lock()
	if l.pub.Revoked {
		s.mu.Unlock()
		return 0, "", &leaseError{http.StatusBadRequest, errLeaseNotFound.Error()}
	}
	if !now.Before(l.pub.Expires) || l.pendingBy != "" {
		s.mu.Unlock()
		return 0, "", &leaseError{http.StatusBadRequest, "lease expired"}
	}
	if inc <= 0 {
		inc = l.ttl
	}
	ttl, warning, err := capTTL(inc, now, l.pub.MaxExpires)
	s.mu.Unlock()
	if err != nil {
		return 0, "", &leaseError{http.StatusBadRequest, err.Error()}
	}
	end := now.Add(ttl)
	if _, err := l.db.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(l.pub.Username)+" VALID UNTIL "+validUntil(end)); err != nil {
		s.log.Warn("vaulttest: renewing a lease failed", "lease_id", id, "error", dbErrorText(err))
		return 0, "", err
	}
	s.mu.Lock()
	l.pub.Expires = end
	l.pub.LastRenewal = now
	l.pub.Renewals++
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	return ttl, warning, nil
}

func (s *Server) handleRevoke(ctx context.Context, w http.ResponseWriter, q *request) {
	id := leaseID(q)
	if id == "" {
		writeError(w, http.StatusBadRequest, "lease_id must be specified")
		return
	}
	s.mu.Lock()
	l := s.leases[id]
	s.mu.Unlock()
	// Like Vault, revoking an unknown or revoked lease succeeds.
	if l != nil {
		if _, err := s.revoke(ctx, l, RevokedByRequest, nil); err != nil {
			writeError(w, http.StatusInternalServerError, "failed to revoke entry: "+dbErrorText(err))
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleLookup(_ context.Context, w http.ResponseWriter, q *request) {
	id := leaseID(q)
	if id == "" {
		writeError(w, http.StatusBadRequest, "missing lease id")
		return
	}
	now := time.Now()
	s.mu.Lock()
	l := s.leases[id]
	if l == nil || l.pub.Revoked {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "invalid lease")
		return
	}
	data := map[string]any{
		"id":           l.pub.ID,
		"issue_time":   l.pub.IssuedAt.UTC().Format(time.RFC3339Nano),
		"expire_time":  l.pub.Expires.UTC().Format(time.RFC3339Nano),
		"last_renewal": timeOrNil(l.pub.LastRenewal),
		"renewable":    true,
		"ttl":          seconds(l.pub.Expires.Sub(now)),
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, &secretResponse{RequestID: newUUID(), Data: data})
}

// revoke drops the lease's role and marks it revoked by by. If cond is not
// nil it is checked, with s.mu held, once the lease's other operations are
// done; revoke does nothing when it is false (the lease was renewed
// meanwhile). done reports whether the lease is revoked now.
func (s *Server) revoke(ctx context.Context, l *lease, by string, cond func(now time.Time) bool) (done bool, err error) {
	l.opMu.Lock()
	defer l.opMu.Unlock()
	s.mu.Lock()
	if l.pub.Revoked {
		s.mu.Unlock()
		return true, nil
	}
	if cond != nil && !cond(time.Now()) {
		s.mu.Unlock()
		return false, nil
	}
	username := l.pub.Username
	s.mu.Unlock()
	if err := dropRole(ctx, l.db, username); err != nil {
		s.log.Warn("vaulttest: revoking a lease failed", "lease_id", l.pub.ID, "username", username,
			"by", by, "error", dbErrorText(err))
		return false, err
	}
	s.mu.Lock()
	l.pub.Revoked = true
	l.pub.RevokedBy = by
	l.pub.RevokedAt = time.Now()
	l.pendingBy = ""
	s.broadcastLocked()
	s.mu.Unlock()
	s.log.Info("vaulttest: revoked lease", "lease_id", l.pub.ID, "username", username, "by", by)
	return true, nil
}

// revokeLeasesOf revokes every active lease of t. A lease whose role cannot
// be dropped is left to the scheduler to try again.
func (s *Server) revokeLeasesOf(ctx context.Context, t *token, by string) error {
	s.mu.Lock()
	var ls []*lease
	for _, l := range s.leases {
		if l.token == t && !l.pub.Revoked {
			ls = append(ls, l)
		}
	}
	s.mu.Unlock()
	var first error
	for _, l := range ls {
		if _, err := s.revoke(ctx, l, by, nil); err != nil {
			if first == nil {
				first = err
			}
			s.mu.Lock()
			if !l.pub.Revoked {
				l.pendingBy = by
				l.retryAt = time.Now().Add(revocationRetry)
			}
			s.mu.Unlock()
			s.wake()
		}
	}
	return first
}

// RevokeLease revokes a lease at once, as sys/leases/revoke does: its role
// is dropped before RevokeLease returns. It returns an error for an unknown
// lease id and for a failure of PostgreSQL (the lease then stays active);
// revoking a revoked lease is not an error.
func (s *Server) RevokeLease(id string) error {
	s.mu.Lock()
	l := s.leases[id]
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("vaulttest: RevokeLease: %w: %q", errLeaseNotFound, id)
	}
	if _, err := s.revoke(s.ctx, l, RevokedByRequest, nil); err != nil {
		return fmt.Errorf("vaulttest: RevokeLease %q: %s", id, dbErrorText(err))
	}
	return nil
}

// Leases returns a snapshot of every lease issued, revoked ones included,
// in the order they were issued.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, l.pub)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].IssuedAt.Equal(out[j].IssuedAt) {
			return out[i].IssuedAt.Before(out[j].IssuedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Lease returns a snapshot of one lease and whether it exists.
func (s *Server) Lease(id string) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.leases[id]; l != nil {
		return l.pub, true
	}
	return Lease{}, false
}

// ActiveLeases returns the number of leases not revoked yet (including any
// whose end has just passed and that the server is about to revoke).
func (s *Server) ActiveLeases() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.leases {
		if !l.pub.Revoked {
			n++
		}
	}
	return n
}

// WaitLeaseRevoked blocks until the lease id is revoked (its role dropped),
// ctx ends or the server closes ([ErrClosed]), and returns the lease's
// snapshot. It is how tests wait for expiry without sleeping.
func (s *Server) WaitLeaseRevoked(ctx context.Context, id string) (Lease, error) {
	err := s.waitFor(ctx, func() bool {
		l := s.leases[id]
		return l != nil && l.pub.Revoked
	})
	l, _ := s.Lease(id)
	return l, err
}

// schedule is the server's one background goroutine: it revokes leases
// whose end has passed, revokes the leases of tokens that expired, and
// rotates static passwords, each when due. It sleeps on a timer set to the
// earliest deadline, and is woken early whenever deadlines change.
func (s *Server) schedule() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next, worked := s.runDue()
		if s.isClosed() {
			return
		}
		if worked {
			continue // deadlines may have moved while working
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		timer.Reset(wait)
		select {
		case <-s.closing:
			return
		case <-s.kick:
		case <-timer.C:
		}
	}
}

// runDue does what is due now and returns the next deadline (zero if
// none) and whether it did anything.
func (s *Server) runDue() (next time.Time, worked bool) {
	now := time.Now()
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	type dueLease struct {
		l  *lease
		by string
	}
	var leases []dueLease
	var tokens []*token
	var statics []*staticRole
	s.mu.Lock()
	for _, t := range s.tokens {
		if t.reaped || t.expires.IsZero() {
			continue
		}
		if !t.expires.After(now) {
			t.reaped = true
			tokens = append(tokens, t)
		} else {
			soonest(t.expires)
		}
	}
	for _, l := range s.leases {
		if l.pub.Revoked {
			continue
		}
		at, by := l.pub.Expires, RevokedByExpiry
		if l.pendingBy != "" {
			at, by = l.retryAt, l.pendingBy
		} else if l.retryAt.After(at) {
			at = l.retryAt
		}
		if !at.After(now) {
			leases = append(leases, dueLease{l, by})
		} else {
			soonest(at)
		}
	}
	for _, m := range s.mounts {
		for _, sr := range m.staticRoles {
			at := sr.next
			if sr.retryAt.After(at) {
				at = sr.retryAt
			}
			if !at.After(now) {
				statics = append(statics, sr)
			} else {
				soonest(at)
			}
		}
	}
	s.mu.Unlock()

	for _, t := range tokens {
		worked = true
		s.log.Info("vaulttest: token expired, revoking its leases", "accessor", t.accessor)
		s.revokeLeasesOf(s.ctx, t, RevokedByToken)
	}
	for _, d := range leases {
		worked = true
		l, by := d.l, d.by
		_, err := s.revoke(s.ctx, l, by, func(now time.Time) bool {
			// Still due: not renewed while waiting for a renewal to finish.
			return l.pendingBy != "" || !l.pub.Expires.After(now)
		})
		if err != nil {
			s.mu.Lock()
			l.retryAt = time.Now().Add(revocationRetry)
			s.mu.Unlock()
		}
	}
	for _, sr := range statics {
		worked = true
		if err := s.rotate(s.ctx, sr, true); err != nil {
			s.mu.Lock()
			sr.retryAt = time.Now().Add(revocationRetry)
			s.mu.Unlock()
		}
	}
	return next, worked
}
