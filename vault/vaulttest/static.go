package vaulttest

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lib/pq"
)

// DefaultRotationPeriod is the rotation period of a [StaticRole] without
// one.
const DefaultRotationPeriod = 24 * time.Hour

// StaticRole is a role of the database secrets engine that manages the
// password of an existing PostgreSQL role (GET <mount>/static-creds/<name>).
type StaticRole struct {
	// DB is a connection pool allowed to change Username's password
	// (typically the test's superuser). The server does not close it.
	// Required.
	DB *sql.DB
	// Username is the existing PostgreSQL role. Required.
	Username string
	// RotationPeriod is how often the password is replaced, by the
	// real-time clock; 0 means DefaultRotationPeriod.
	RotationPeriod time.Duration
}

type staticRole struct {
	mount, name string
	cfg         StaticRole

	rotMu     sync.Mutex // serializes rotations, so the stored password is the last one set
	password  string
	last      time.Time
	next      time.Time
	retryAt   time.Time
	rotations int
}

// AddStaticRole adds (or replaces) a static role at
// <mount>/static-creds/<name>, enabling a database secrets engine at mount
// if needed. Like Vault it sets a new random password for r.Username at
// once (so the role's old password stops working) and then every
// RotationPeriod. It returns the error of PostgreSQL if the password cannot
// be set; the role is not added then. It panics if r.DB is nil, Username or
// name is empty, or mount is used by a KV engine.
func (s *Server) AddStaticRole(mount, name string, r StaticRole) error {
	if r.DB == nil {
		panic("vaulttest: AddStaticRole: DB is nil")
	}
	if r.Username == "" {
		panic("vaulttest: AddStaticRole: Username is empty")
	}
	checkRoleName(name)
	if r.RotationPeriod <= 0 {
		r.RotationPeriod = DefaultRotationPeriod
	}
	s.mu.Lock()
	m := s.mountLocked(mount, mountDatabase)
	s.mu.Unlock()
	sr := &staticRole{mount: m.path, name: name, cfg: r}
	if err := s.rotate(s.ctx, sr, false); err != nil {
		return fmt.Errorf("vaulttest: AddStaticRole %s/%s: setting the password of %s: %s", m.path, name, r.Username, dbErrorText(err))
	}
	s.mu.Lock()
	m.staticRoles[name] = sr
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	return nil
}

// rotate sets a new password for the static role. onlyIfDue makes it skip
// a rotation that another one made unnecessary while it waited.
func (s *Server) rotate(ctx context.Context, sr *staticRole, onlyIfDue bool) error {
	sr.rotMu.Lock()
	defer sr.rotMu.Unlock()
	if onlyIfDue {
		s.mu.Lock()
		due := !sr.next.After(time.Now())
		s.mu.Unlock()
		if !due {
			return nil
		}
	}
	password := randString(24, alnum)
	verifier, err := scramVerifier(password)
	if err != nil {
		return err
	}
	_, err = sr.cfg.DB.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(sr.cfg.Username)+" WITH PASSWORD "+pq.QuoteLiteral(verifier))
	if err != nil {
		s.log.Warn("vaulttest: rotating a static role failed", "mount", sr.mount, "role", sr.name,
			"username", sr.cfg.Username, "error", dbErrorText(err))
		return err
	}
	now := time.Now()
	s.mu.Lock()
	sr.password = password
	sr.last = now
	sr.next = now.Add(sr.cfg.RotationPeriod)
	sr.retryAt = time.Time{}
	sr.rotations++
	s.broadcastLocked()
	s.mu.Unlock()
	s.wake()
	s.log.Info("vaulttest: rotated static role", "mount", sr.mount, "role", sr.name, "username", sr.cfg.Username)
	return nil
}

func (s *Server) staticRole(mount, name string) *staticRole {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mounts[normalizeMount(mount)]
	if m == nil || m.kind != mountDatabase {
		return nil
	}
	return m.staticRoles[name]
}

// RotateStaticRole sets a new password for a static role at once, as
// <mount>/rotate-role/<name> does; the old password stops working before it
// returns. The next scheduled rotation is a full RotationPeriod later.
func (s *Server) RotateStaticRole(mount, name string) error {
	sr := s.staticRole(mount, name)
	if sr == nil {
		return fmt.Errorf("vaulttest: RotateStaticRole: unknown role %s/%s", normalizeMount(mount), name)
	}
	if err := s.rotate(s.ctx, sr, false); err != nil {
		return fmt.Errorf("vaulttest: RotateStaticRole %s/%s: %s", sr.mount, name, dbErrorText(err))
	}
	return nil
}

// StaticPassword returns the current password of a static role ("" if the
// role is unknown), for tests that check what a client received.
func (s *Server) StaticPassword(mount, name string) string {
	sr := s.staticRole(mount, name)
	if sr == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return sr.password
}

// StaticRotations returns how many times a static role's password has been
// set, the initial one included (0 if the role is unknown).
func (s *Server) StaticRotations(mount, name string) int {
	sr := s.staticRole(mount, name)
	if sr == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return sr.rotations
}

// WaitStaticRotations blocks until StaticRotations(mount, name) >= n, ctx
// ends or the server closes ([ErrClosed]), so tests can wait for a
// scheduled rotation without sleeping.
func (s *Server) WaitStaticRotations(ctx context.Context, mount, name string, n int) error {
	mount = normalizeMount(mount)
	return s.waitFor(ctx, func() bool {
		m := s.mounts[mount]
		if m == nil || m.kind != mountDatabase {
			return false
		}
		sr := m.staticRoles[name]
		return sr != nil && sr.rotations >= n
	})
}

func (s *Server) handleStaticCreds(_ context.Context, w http.ResponseWriter, q *request) {
	now := time.Now()
	s.mu.Lock()
	sr := q.mount.staticRoles[q.rest]
	if sr == nil {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown role: %s", q.rest))
		return
	}
	data := map[string]any{
		"username":            sr.cfg.Username,
		"password":            sr.password,
		"ttl":                 seconds(sr.next.Sub(now)),
		"rotation_period":     seconds(sr.cfg.RotationPeriod),
		"last_vault_rotation": sr.last.UTC().Format(time.RFC3339Nano),
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, &secretResponse{RequestID: newUUID(), Data: data, MountType: "database"})
}

func (s *Server) handleRotateRole(ctx context.Context, w http.ResponseWriter, q *request) {
	s.mu.Lock()
	sr := q.mount.staticRoles[q.rest]
	s.mu.Unlock()
	if sr == nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown role: %s", q.rest))
		return
	}
	if err := s.rotate(ctx, sr, false); err != nil {
		writeError(w, http.StatusInternalServerError, "failed to rotate credentials: "+dbErrorText(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
