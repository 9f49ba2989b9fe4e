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
	"strings"
	"time"

	"github.com/lib/pq"
)

// loginTimeout bounds one login of the rotation.
const loginTimeout = 15 * time.Second

// open logs in as s's user where s and the operator's settings say (see
// where), and returns a single-connection *sql.DB.
func (r *Rotator) open(ctx context.Context, s *secret) (*sql.DB, error) {
	loc, err := r.where(s)
	if err != nil {
		return nil, err
	}
	return r.openAt(ctx, loc, s.user(), s.password())
}

// openAt logs in as user at loc with the operator's TLS settings.
func (r *Rotator) openAt(ctx context.Context, loc location, user, password string) (*sql.DB, error) {
	cfg := r.conn.base.Clone()
	if !r.conn.host {
		// The operator named no host list: the one host of loc is the only
		// server.
		cfg.Host, cfg.Multi = loc.host, nil
	}
	cfg.Port, cfg.Database = loc.port, loc.dbname
	cfg.User, cfg.Password = user, password
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

// adminPlan is who may change the users' passwords, and where: resolved
// and checked before any login of the step, so that no password of the
// rotation goes to a server the admin's side has not vouched for.
type adminPlan struct {
	secret *secret  // the admin's (masterarn); nil: the user changes its own
	at     location // where the admin logs in
}

// planAdmin reads the admin secret named by cur's masterarn and checks
// that cur names the admin's server. Without masterarn the user changes
// its own password (single user only).
func (r *Rotator) planAdmin(ctx context.Context, cur *secret) (adminPlan, error) {
	arn := cur.str("masterarn")
	if arn == "" {
		if r.opt.Strategy == AlternatingUsers {
			return adminPlan{}, fmt.Errorf("rotate: alternating users need an admin: put the admin secret's ARN in the field masterarn")
		}
		return adminPlan{}, nil
	}
	m, err := r.get(ctx, arn, "", StageCurrent)
	if err != nil {
		return adminPlan{}, fmt.Errorf("rotate: reading the admin secret %s: %w", arn, err)
	}
	at, err := r.adminWhere(m, cur)
	if err != nil {
		return adminPlan{}, err
	}
	if err := r.sameServer(cur, m); err != nil {
		return adminPlan{}, err
	}
	return adminPlan{secret: m, at: at}, nil
}

// admin opens the plan's session after AWSCURRENT has logged in (when
// prove is set) and refuses privileged targets among users. Without an
// admin secret, the user logs in with AWSCURRENT to change its own
// password: that login is the proof, and no other role is touched.
func (r *Rotator) admin(ctx context.Context, plan adminPlan, cur *secret, prove bool, users ...string) (*sql.DB, string, error) {
	m := plan.secret
	if m == nil {
		db, err := r.open(ctx, cur)
		if err != nil {
			return nil, "", fmt.Errorf("rotate: logging in as %s with AWSCURRENT to change its password: %w", cur.user(), err)
		}
		return db, cur.user(), nil
	}
	if prove {
		if err := r.proveCurrent(ctx, cur); err != nil {
			return nil, "", err
		}
	}
	db, err := r.openAt(ctx, plan.at, m.user(), m.password())
	if err != nil {
		return nil, "", fmt.Errorf("rotate: logging in as the admin %s (secret %s) at %s: %w", m.user(), m.id, plan.at.host, err)
	}
	if err := r.checkTargets(ctx, db, users...); err != nil {
		db.Close()
		return nil, "", err
	}
	return db, m.user(), nil
}

func (r *Rotator) setSecret(ctx context.Context, secretID, token string) (bool, string, error) {
	pend, err := r.get(ctx, secretID, token, StagePending)
	if err != nil {
		return false, "", fmt.Errorf("rotate: reading the pending version: %w", err)
	}
	cur, err := r.get(ctx, secretID, "", StageCurrent)
	if err != nil {
		return false, "", err
	}
	if err := r.related(cur, pend); err != nil {
		return false, "", err
	}
	plan, err := r.planAdmin(ctx, cur)
	if err != nil {
		return false, "", err
	}
	if db, err := r.open(ctx, pend); err == nil {
		db.Close()
		return false, "the database already accepts the pending credentials of " + pend.user(), nil
	} else if !authFailed(err) {
		return false, "", fmt.Errorf("rotate: trying the pending credentials: %w", err)
	}
	db, as, err := r.admin(ctx, plan, cur, true, cur.user(), pend.user())
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

// syncClone sets up the alternating pair that cur and pend form, in
// either direction: the clone a member of the owner, acting as it at
// login, with the owner's settings, and what the clone owns here given to
// the owner (see pair.go).
func syncClone(ctx context.Context, db *sql.DB, cur, pend string) (string, error) {
	p, ok := pairOf(cur, pend)
	if !ok {
		return "", fmt.Errorf("rotate: %s and %s are not an alternating pair (<user> and <user>_clone)", cur, pend)
	}
	return p.setup(ctx, db)
}

// syncSettings makes clone's role settings (ALTER ROLE … SET, for all
// databases and per database) those of owner, and reports how many it
// changed. The exception is role, the setting that makes the clone's
// logins act as the owner: the clone's is the owner's own (a login role
// that acts as a group makes its clone act as that group too), else the
// owner itself. Other values go through set_config as a parameter, then
// ALTER ROLE … SET … FROM CURRENT, so list settings such as search_path
// keep their shape; the value set_config returns is the form FROM CURRENT
// stores, so an unchanged setting is left alone. SET LOCAL scope keeps
// them out of the rotation's own session once the transaction ends.
func syncSettings(ctx context.Context, tx *sql.Tx, owner, clone string) (int, error) {
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
	want, err := read(owner)
	if err != nil {
		return 0, fmt.Errorf("rotate: reading the role settings of %s: %w", owner, err)
	}
	have, err := read(clone)
	if err != nil {
		return 0, err
	}
	global := false
	for i, w := range want {
		if w.name == "role" {
			global = global || w.db == ""
			if w.value == "none" {
				want[i].value = owner
			}
		}
	}
	if !global {
		want = append(want, setting{name: "role", value: owner})
	}
	scope := func(db string) string {
		if db == "" {
			return ""
		}
		return " IN DATABASE " + pq.QuoteIdentifier(db)
	}
	changed := 0
	for _, h := range have {
		keep := false
		for _, w := range want {
			keep = keep || (w.db == h.db && w.name == h.name)
		}
		if !keep {
			if _, err := tx.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(clone)+scope(h.db)+" RESET "+pq.QuoteIdentifier(h.name)); err != nil {
				return 0, err
			}
			changed++
		}
	}
	current := func(w setting) (string, bool) {
		for _, h := range have {
			if h.db == w.db && h.name == w.name {
				return h.value, true
			}
		}
		return "", false
	}
	for _, w := range want {
		old, had := current(w)
		if w.name == "role" {
			// Never through set_config: that would switch this session's
			// own role.
			if had && old == w.value {
				continue
			}
			if _, err := tx.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(clone)+scope(w.db)+" SET role = "+pq.QuoteIdentifier(w.value)); err != nil {
				return 0, fmt.Errorf("rotate: making %s's logins act as %s: %w", clone, w.value, err)
			}
			changed++
			continue
		}
		var shown string
		if err := tx.QueryRowContext(ctx, "SELECT set_config($1, $2, true)", w.name, w.value).Scan(&shown); err != nil {
			return 0, fmt.Errorf("rotate: role setting %s of %s: %w", w.name, owner, err)
		}
		if had && old == shown {
			continue
		}
		if _, err := tx.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(clone)+scope(w.db)+" SET "+pq.QuoteIdentifier(w.name)+" FROM CURRENT"); err != nil {
			return 0, fmt.Errorf("rotate: copying role setting %s to %s: %w", w.name, clone, err)
		}
		changed++
	}
	return changed, nil
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
	if err := r.related(cur, pend); err != nil {
		return "", err
	}
	if _, err := r.planAdmin(ctx, cur); err != nil {
		return "", err
	}
	db, err := r.open(ctx, pend)
	if err != nil {
		return "", fmt.Errorf("%w: logging in as %s with AWSPENDING: %w", ErrTestFailed, pend.user(), err)
	}
	defer db.Close()
	// A session whose pg_stat_ssl row is not visible counts as unencrypted.
	session, err := ReadSessionTLS(ctx, db)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	tls := session.Encrypted
	if !tls && !r.conn.plaintext {
		return "", fmt.Errorf("%w: the session of %s is not encrypted", ErrTestFailed, pend.user())
	}
	checked, against := 0, cur.user()
	if cur.user() != pend.user() {
		if checked, against, err = comparePair(ctx, db, cur.user(), pend.user()); err != nil {
			return "", err
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
	return fmt.Sprintf("logged in as %s over %s; %d privileges of %s checked; %d probes ran", pend.user(), enc, checked, against, len(r.opt.Probes)), nil
}

// comparePair checks the pending session db of user pend against cur,
// the user whose credentials the application uses now: the session is who
// it should be (a clone acts as the owner's logins do), and it may do
// everything cur's logins may. For a pair that is what they act as (the
// owner, or the group the owner's logins act as), not cur's own
// privileges: an owner acting as a group does not use its own. Going back
// to the owner, what the clone holds by itself (direct grants, other
// memberships, objects it owns) is checked too, since sessions that acted
// as the clone, before the pair was set up, may have used it. It reports
// how many privileges it compared and whose; its error wraps ErrTestFailed
// when the application would break, saying what is missing and why.
func comparePair(ctx context.Context, db *sql.DB, cur, pend string) (int, string, error) {
	p, isPair := pairOf(cur, pend)
	against := cur
	var wrong []string
	if isPair {
		var err error
		if wrong, err = p.sessionProblems(ctx, db, pend); err != nil {
			return 0, "", err
		}
		if acting, ok, err := loginRole(ctx, db, cur); err != nil {
			return 0, "", err
		} else if ok {
			against = acting
		}
	}
	missing, n, err := missingPrivileges(ctx, db, against)
	if err != nil {
		return 0, "", err
	}
	var own []string
	var owned ownedObjects
	if isPair && pend == p.owner {
		if own, err = p.cloneOnly(ctx, db); err != nil {
			return 0, "", err
		}
		if owned, err = p.owned(ctx, db); err != nil {
			return 0, "", err
		}
	}
	if len(missing) == 0 && len(wrong) == 0 && len(own) == 0 && owned.here == 0 {
		return n, against, nil
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("%s lacks privileges %s has: %s", pend, against, listSome(missing)))
	}
	parts = append(parts, wrong...)
	if len(own) > 0 {
		parts = append(parts, fmt.Sprintf("%s lacks privileges granted to %s itself: %s; the application had them only in sessions acting as %s "+
			"(AWS's template, a DBA, or copies an older pgsecrets made): grant them to %s (the clone gets everything %s has through membership), "+
			"or revoke them from %s if nothing needs them",
			pend, p.clone, listSome(own), p.clone, p.owner, p.owner, p.clone))
	}
	if isPair {
		why, err := p.problems(ctx, db, pend == p.owner)
		if err != nil {
			return 0, "", err
		}
		parts = append(parts, why...)
	}
	return n, against, fmt.Errorf("%w: %s", ErrTestFailed, strings.Join(parts, "; "))
}

// listSome joins the first 20 items of a list that may be long.
func listSome(items []string) string {
	const shown = 20
	s := strings.Join(items[:min(len(items), shown)], ", ")
	if len(items) > shown {
		s += fmt.Sprintf(", and %d more", len(items)-shown)
	}
	return s
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
