package rotate

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

// loginTimeout bounds one login of the rotation.
const loginTimeout = 15 * time.Second

// open logs in as s's user, at the database its fields and ConnParams
// name, and returns a single-connection *sql.DB.
func (r *Rotator) open(ctx context.Context, s *secret) (*sql.DB, error) {
	params := r.opt.ConnParams
	cfg, err := pq.NewConfig(params)
	if err != nil {
		return nil, fmt.Errorf("rotate: connection parameters: %w", err)
	}
	has := func(k string) bool {
		for _, f := range strings.Fields(params) {
			if strings.HasPrefix(f, k+"=") {
				return true
			}
		}
		return false
	}
	if !has("sslmode") {
		cfg.SSLMode = pq.SSLModeRequire
	}
	if h := s.str("host"); h != "" && !has("host") {
		cfg.Host = h
	}
	if d := s.str("dbname"); d != "" && !has("dbname") {
		cfg.Database = d
	}
	if !has("port") {
		switch p := s.fields["port"].(type) {
		case float64:
			cfg.Port = uint16(p)
		case string:
			if n, err := strconv.Atoi(p); err == nil {
				cfg.Port = uint16(n)
			}
		}
	}
	cfg.User, cfg.Password = s.user(), s.password()
	c, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("rotate: connection parameters: %w", err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	lctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	if err := db.PingContext(lctx); err != nil {
		db.Close()
		return nil, err
	}
	// Statement logging would record what this session sends; it may only
	// be turned off by a superuser, and the password never travels in
	// clear anyway (see verifier).
	_, _ = db.ExecContext(ctx, "SET log_statement = 'none'")
	return db, nil
}

// authFailed reports a rejected login.
func authFailed(err error) bool {
	var pe *pq.Error
	return errors.As(err, &pe) && (pe.Code == "28P01" || pe.Code == "28000")
}

// admin opens a session that may change user's password: the admin whose
// secret masterarn names, else the user itself with current (single user
// only).
func (r *Rotator) admin(ctx context.Context, cur *secret) (*sql.DB, string, error) {
	if arn := cur.str("masterarn"); arn != "" {
		m, err := r.get(ctx, arn, "", StageCurrent)
		if err != nil {
			return nil, "", fmt.Errorf("rotate: reading the admin secret %s: %w", arn, err)
		}
		// The admin's secret may leave out the database location.
		for _, k := range []string{"host", "port", "dbname"} {
			if _, ok := m.fields[k]; !ok {
				if v, ok := cur.fields[k]; ok {
					m.fields[k] = v
				}
			}
		}
		db, err := r.open(ctx, m)
		if err != nil {
			return nil, "", fmt.Errorf("rotate: logging in as the admin %s (secret %s): %w", m.user(), arn, err)
		}
		return db, m.user(), nil
	}
	if r.opt.Strategy == AlternatingUsers {
		return nil, "", fmt.Errorf("rotate: alternating users need an admin: put the admin secret's ARN in the field masterarn")
	}
	db, err := r.open(ctx, cur)
	if err != nil {
		return nil, "", fmt.Errorf("rotate: logging in as %s with AWSCURRENT to change its password: %w", cur.user(), err)
	}
	return db, cur.user(), nil
}

func (r *Rotator) setSecret(ctx context.Context, secretID, token string) (bool, string, error) {
	pend, err := r.get(ctx, secretID, token, StagePending)
	if err != nil {
		return false, "", fmt.Errorf("rotate: reading the pending version: %w", err)
	}
	if db, err := r.open(ctx, pend); err == nil {
		db.Close()
		return false, "the database already accepts the pending credentials of " + pend.user(), nil
	} else if !authFailed(err) {
		return false, "", fmt.Errorf("rotate: trying the pending credentials: %w", err)
	}
	cur, err := r.get(ctx, secretID, "", StageCurrent)
	if err != nil {
		return false, "", err
	}
	db, as, err := r.admin(ctx, cur)
	if err != nil {
		return false, "", err
	}
	defer db.Close()
	what := ""
	if r.opt.Strategy == AlternatingUsers && pend.user() != cur.user() {
		what, err = syncClone(ctx, db, cur.user(), pend.user())
		if err != nil {
			return false, "", err
		}
		what += "; "
	}
	v, err := verifier(pend.password())
	if err != nil {
		return false, "", err
	}
	if _, err := db.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(pend.user())+" WITH PASSWORD "+pq.QuoteLiteral(v)); err != nil {
		return false, "", fmt.Errorf("rotate: ALTER ROLE %s PASSWORD (as %s): %w", pend.user(), as, err)
	}
	check, err := r.open(ctx, pend)
	if err != nil {
		return true, "", fmt.Errorf("rotate: the new password of %s was set but does not log in: %w", pend.user(), err)
	}
	check.Close()
	return true, what + fmt.Sprintf("set the password of %s (as %s, sent as a SCRAM verifier)", pend.user(), as), nil
}

// verifier is PostgreSQL's SCRAM-SHA-256 verifier for password: what
// ALTER ROLE … PASSWORD stores, so the server never sees the password.
func verifier(password string) (string, error) {
	const iterations = 4096
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, 32)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	server := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(server)), nil
}

// syncClone creates clone if needed and gives it what orig has: role
// attributes that matter for login, memberships, settings, privileges and
// default privileges granted to orig. The statements are built by the
// server with format('%I'), so no name is ever spliced into SQL here.
func syncClone(ctx context.Context, db *sql.DB, orig, clone string) (string, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	var exists bool
	if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", clone).Scan(&exists); err != nil {
		return "", err
	}
	created := ""
	if !exists {
		if _, err := tx.ExecContext(ctx, "CREATE ROLE "+pq.QuoteIdentifier(clone)+" WITH LOGIN"); err != nil {
			return "", fmt.Errorf("rotate: creating %s: %w", clone, err)
		}
		created = "created role " + clone + "; "
	}
	var stmts []string
	collect := func(what, q string, args ...any) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("rotate: reading the %s of %s: %w", what, orig, err)
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return err
			}
			stmts = append(stmts, s)
		}
		return rows.Err()
	}
	steps := []struct{ what, q string }{
		// Role attributes the login depends on.
		{"connection limit and validity", `SELECT format('ALTER ROLE %I CONNECTION LIMIT %s', $2::text, o.rolconnlimit)
			FROM pg_roles o WHERE o.rolname = $1`},
		// Memberships: orig's groups, less the pair itself.
		{"memberships", `SELECT format('GRANT %I TO %I', g.rolname, $2::text)
			FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
			WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) AND g.rolname <> $2`},
		{"memberships to drop", `SELECT format('REVOKE %I FROM %I', g.rolname, $2::text)
			FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
			WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $2) AND g.rolname <> $1
			AND g.oid NOT IN (SELECT roleid FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = $1))`},
		// Database, schema, table/sequence/view and function privileges.
		{"database privileges", `SELECT format('GRANT %s ON DATABASE %I TO %I', a.privilege_type, d.datname, $2::text)
			FROM pg_database d, aclexplode(d.datacl) a
			WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`},
		{"schema privileges", `SELECT format('GRANT %s ON SCHEMA %I TO %I', a.privilege_type, n.nspname, $2::text)
			FROM pg_namespace n, aclexplode(n.nspacl) a
			WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`},
		{"table privileges", `SELECT format('GRANT %s ON %s %I.%I TO %I', a.privilege_type,
				CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname, $2::text)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
			WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`},
		{"function privileges", `SELECT format('GRANT %s ON FUNCTION %s TO %I', a.privilege_type, p.oid::regprocedure, $2::text)
			FROM pg_proc p, aclexplode(p.proacl) a
			WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`},
		// Default privileges orig receives on objects others create.
		{"default privileges", `SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I %s GRANT %s ON %s TO %I',
				r.rolname, CASE WHEN d.defaclnamespace = 0 THEN '' ELSE format('IN SCHEMA %I', n.nspname) END,
				a.privilege_type,
				CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END,
				$2::text)
			FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
				aclexplode(d.defaclacl) a
			WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`},
	}
	for _, s := range steps {
		if err := collect(s.what, s.q, orig, clone); err != nil {
			return "", err
		}
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return "", fmt.Errorf("rotate: copying to %s: %q: %w", clone, s, err)
		}
	}
	n, err := syncSettings(ctx, tx, orig, clone)
	if err != nil {
		return "", err
	}
	if err := tx.Commit(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%scopied %d grants and memberships and %d role settings from %s to %s", created, len(stmts)-1, n, orig, clone), nil
}

// syncSettings makes clone's role settings (ALTER ROLE … SET, for all
// databases and per database) those of orig. Each value goes through
// set_config as a parameter, then ALTER ROLE … SET … FROM CURRENT, so list
// settings such as search_path keep their shape; SET LOCAL scope keeps
// them out of the rotation's own session.
func syncSettings(ctx context.Context, tx *sql.Tx, orig, clone string) (int, error) {
	type setting struct{ db, name, value string }
	read := func(role string) ([]setting, error) {
		rows, err := tx.QueryContext(ctx, `SELECT coalesce(d.datname, ''), split_part(c, '=', 1), substr(c, strpos(c, '=') + 1)
			FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c
			WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)`, role)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []setting
		for rows.Next() {
			var s setting
			if err := rows.Scan(&s.db, &s.name, &s.value); err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, rows.Err()
	}
	want, err := read(orig)
	if err != nil {
		return 0, fmt.Errorf("rotate: reading the role settings of %s: %w", orig, err)
	}
	have, err := read(clone)
	if err != nil {
		return 0, err
	}
	scope := func(db string) string {
		if db == "" {
			return ""
		}
		return " IN DATABASE " + pq.QuoteIdentifier(db)
	}
	for _, h := range have {
		keep := false
		for _, w := range want {
			keep = keep || (w.db == h.db && w.name == h.name)
		}
		if !keep {
			if _, err := tx.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(clone)+scope(h.db)+" RESET "+pq.QuoteIdentifier(h.name)); err != nil {
				return 0, err
			}
		}
	}
	for _, w := range want {
		if _, err := tx.ExecContext(ctx, "SELECT set_config($1, $2, true)", w.name, w.value); err != nil {
			return 0, fmt.Errorf("rotate: role setting %s of %s: %w", w.name, orig, err)
		}
		if _, err := tx.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(clone)+scope(w.db)+" SET "+pq.QuoteIdentifier(w.name)+" FROM CURRENT"); err != nil {
			return 0, fmt.Errorf("rotate: copying role setting %s to %s: %w", w.name, clone, err)
		}
	}
	return len(want), nil
}

func (r *Rotator) testSecret(ctx context.Context, secretID, token string) (string, error) {
	pend, err := r.get(ctx, secretID, token, StagePending)
	if err != nil {
		return "", fmt.Errorf("rotate: reading the pending version: %w", err)
	}
	cur, err := r.get(ctx, secretID, "", StageCurrent)
	if err != nil {
		return "", err
	}
	db, err := r.open(ctx, pend)
	if err != nil {
		return "", fmt.Errorf("%w: logging in as %s with AWSPENDING: %w", ErrTestFailed, pend.user(), err)
	}
	defer db.Close()
	var tls bool
	if err := db.QueryRowContext(ctx, "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)").Scan(&tls); err != nil {
		return "", err
	}
	if !tls && !strings.Contains(r.opt.ConnParams, "sslmode=disable") {
		return "", fmt.Errorf("%w: the session of %s is not encrypted", ErrTestFailed, pend.user())
	}
	checked := 0
	if cur.user() != pend.user() {
		missing, n, err := missingPrivileges(ctx, db, cur.user())
		if err != nil {
			return "", err
		}
		checked = n
		if len(missing) > 0 {
			return "", fmt.Errorf("%w: %s lacks privileges %s has: %s (objects owned by %s need a group role owning them, granted to both users)",
				ErrTestFailed, pend.user(), cur.user(), strings.Join(missing, ", "), cur.user())
		}
	}
	for _, p := range r.opt.Probes {
		if err := probe(ctx, db, p); err != nil {
			return "", fmt.Errorf("%w: probe %q as %s: %w", ErrTestFailed, p, pend.user(), err)
		}
	}
	enc := "TLS"
	if !tls {
		enc = "no TLS (sslmode=disable)"
	}
	return fmt.Sprintf("logged in as %s over %s; %d privileges of %s checked; %d probes ran", pend.user(), enc, checked, cur.user(), len(r.opt.Probes)), nil
}

// missingPrivileges lists what other may do that the session's user may
// not, on this database, its schemas, tables, views and sequences.
func missingPrivileges(ctx context.Context, db *sql.DB, other string) ([]string, int, error) {
	rows, err := db.QueryContext(ctx, `
		WITH objs AS (
			SELECT 'database' AS kind, quote_ident(current_database()) AS name, p AS priv,
				has_database_privilege($1, current_database(), p) AS theirs, has_database_privilege(current_database(), p) AS ours
			FROM unnest(ARRAY['CONNECT','CREATE','TEMPORARY']) p
			UNION ALL
			SELECT 'schema', quote_ident(n.nspname), p, has_schema_privilege($1, n.oid, p), has_schema_privilege(n.oid, p)
			FROM pg_namespace n, unnest(ARRAY['USAGE','CREATE']) p
			WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
			UNION ALL
			SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, format('%I.%I', n.nspname, c.relname), p,
				CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, p) ELSE has_table_privilege($1, c.oid, p) END,
				CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, p) ELSE has_table_privilege(c.oid, p) END
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
				unnest(CASE WHEN c.relkind = 'S' THEN ARRAY['USAGE','SELECT','UPDATE']
					ELSE ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER'] END) p
			WHERE c.relkind IN ('r','p','v','m','f','S') AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
		)
		SELECT kind, name, priv, ours FROM objs WHERE theirs`, other)
	if err != nil {
		return nil, 0, fmt.Errorf("rotate: comparing privileges with %s: %w", other, err)
	}
	defer rows.Close()
	var missing []string
	n := 0
	for rows.Next() {
		var kind, name, priv string
		var ours bool
		if err := rows.Scan(&kind, &name, &priv, &ours); err != nil {
			return nil, 0, err
		}
		n++
		if !ours {
			missing = append(missing, fmt.Sprintf("%s on %s %s", priv, kind, name))
		}
	}
	return missing, n, rows.Err()
}

// probe runs one of the user's SQL probes in a read-only transaction that
// is rolled back.
func probe(ctx context.Context, db *sql.DB, q string) error {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}
