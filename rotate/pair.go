package rotate

// Alternating users share one set of privileges through a role
// membership rather than copies of grants: the clone is a member of the
// owner (the name without "_clone") and logs in acting as it. Copies go
// stale the moment a DBA grants or revokes something on the owner, and
// they can never carry ownership; membership carries privileges, owner
// rights and later grants at once, and acting as the owner makes what the
// clone's sessions create the owner's, so the other user can use it
// without waiting for a rotation. AWS's MultiUser template stops at the
// membership, which leaves tables made during the clone's turn owned by
// the clone.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lib/pq"
)

// pair is the two roles of the alternating strategy.
type pair struct{ owner, clone string }

// pairOf orders two user names as owner and clone, whichever is current.
func pairOf(a, b string) (pair, bool) {
	switch {
	case b == a+"_clone":
		return pair{owner: a, clone: b}, true
	case a == b+"_clone":
		return pair{owner: b, clone: a}, true
	}
	return pair{}, false
}

func (p pair) String() string { return p.owner + "/" + p.clone }

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// loginRoleSQL is the role a login of $1 into the current database acts
// as because of its own `role` settings (this database's before the
// global one; "none" means itself), or $1 itself. Settings of the
// database as a whole are left out: the clone's own role setting would
// override them anyway.
const loginRoleSQL = `
	SELECT coalesce((
		SELECT nullif(substr(c, 6), 'none')
		FROM pg_db_role_setting s, unnest(s.setconfig) c
		WHERE s.setrole = r.oid AND c LIKE 'role=%'
			AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
		ORDER BY s.setdatabase DESC LIMIT 1), r.rolname)
	FROM pg_roles r WHERE r.rolname = $1`

// loginRole is what a login of role into q's database acts as; ok is
// false when role does not exist.
func loginRole(ctx context.Context, q querier, role string) (string, bool, error) {
	var acting string
	err := q.QueryRowContext(ctx, loginRoleSQL, role).Scan(&acting)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("rotate: reading the role settings of %s: %w", role, err)
	}
	return acting, true, nil
}

// setup makes p a working pair, as the admin session db, whichever of the
// two is about to become current: every step looks before it changes, so
// running it again changes nothing. What is not carried by membership is
// synced from the owner: role settings, connection limit, and the default
// privileges the owner receives. Grants and memberships are no longer
// copied; those an older pgsecrets copied to the clone stay (see the
// README): the clone's sessions act as the owner, so they are unused
// there.
//
// It is one transaction, so that logins see the pair before or after,
// never between: a clone login acting as the owner while the clone still
// owned what it made, or a clone session acting as itself after its
// objects moved but before its membership, would be refused queries. The
// transaction ends with REASSIGN OWNED, which locks each object the clone
// owns while the application runs; see repair for why it is bounded to
// half of deadlock_timeout, and tried again.
func (p pair) setup(ctx context.Context, db *sql.DB) (string, error) {
	var deadlockMS int
	if err := db.QueryRowContext(ctx, "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'").Scan(&deadlockMS); err != nil {
		return "", err
	}
	budget := max(deadlockMS/2, 10)
	const attempts = 10
	for i := 0; ; i++ {
		did, err := p.setupOnce(ctx, db, budget)
		if err == nil {
			if len(did) == 0 {
				return "pair " + p.String() + " already set up", nil
			}
			if i > 0 {
				did = append(did, fmt.Sprintf("on attempt %d (REASSIGN OWNED gave way to the application's locks before)", i+1))
			}
			return "pair " + p.String() + ": " + strings.Join(did, ", "), nil
		}
		if !pqCode(err, "57014", "55P03", "40P01") || i == attempts-1 {
			if i > 0 {
				return "", fmt.Errorf("%w (tried %d times, REASSIGN OWNED bounded to %d ms each so that the application's queries are never the ones cancelled)", err, i+1, budget)
			}
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(min(time.Duration(budget*(i+1))*time.Millisecond, 2*time.Second)): // lets the application's lock holders finish
		}
	}
}

func (p pair) setupOnce(ctx context.Context, db *sql.DB, budgetMS int) ([]string, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var (
		version                  int
		ownerExists, cloneExists bool
		canLogin, inherits       bool
		member, reverse          bool
		ownerLimit, cloneLimit   int
	)
	err = tx.QueryRowContext(ctx, `
		WITH o AS (SELECT * FROM pg_roles WHERE rolname = $1), c AS (SELECT * FROM pg_roles WHERE rolname = $2)
		SELECT current_setting('server_version_num')::int,
			EXISTS (SELECT FROM o), EXISTS (SELECT FROM c),
			coalesce((SELECT rolcanlogin FROM c), false), coalesce((SELECT rolinherit FROM c), false),
			coalesce((SELECT rolconnlimit FROM o), -1), coalesce((SELECT rolconnlimit FROM c), -1),
			EXISTS (SELECT FROM pg_auth_members m WHERE m.roleid = (SELECT oid FROM c) AND m.member = (SELECT oid FROM o))`,
		p.owner, p.clone).Scan(&version, &ownerExists, &cloneExists, &canLogin, &inherits, &ownerLimit, &cloneLimit, &reverse)
	if err != nil {
		return nil, fmt.Errorf("rotate: reading the roles %s: %w", p, err)
	}
	if !ownerExists {
		return nil, fmt.Errorf("rotate: role %s does not exist: alternating users need the application's role %s, with %s as its clone (the name with _clone)",
			p.owner, p.owner, p.clone)
	}
	var did []string
	exec := func(what, q string, args ...any) error {
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("rotate: %s: %w", what, err)
		}
		did = append(did, what)
		return nil
	}
	owner, clone := pq.QuoteIdentifier(p.owner), pq.QuoteIdentifier(p.clone)
	// INHERIT: the clone's own privileges then include the owner's, which
	// the login itself needs (CONNECT on a database only the owner may
	// connect to is checked before the role setting applies) and which a
	// clone session that left the owner's role (SET ROLE NONE) keeps.
	switch {
	case !cloneExists:
		if err := exec("created role "+p.clone, "CREATE ROLE "+clone+" WITH LOGIN INHERIT"); err != nil {
			return nil, err
		}
		cloneLimit = -1
	case !canLogin || !inherits:
		if err := exec("made "+p.clone+" LOGIN INHERIT", "ALTER ROLE "+clone+" WITH INHERIT LOGIN"); err != nil {
			return nil, err
		}
	}
	// A circular membership is refused (0LP01): an owner made a member of
	// its clone by an earlier setup would block the grant below.
	if reverse {
		if version >= 160000 {
			rows, err := tx.QueryContext(ctx, `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.grantor
				WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $2) AND m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)`, p.owner, p.clone)
			if err != nil {
				return nil, err
			}
			reverseGrantors, err := scanStrings(rows)
			if err != nil {
				return nil, err
			}
			for _, g := range reverseGrantors {
				if err := exec("revoked "+p.clone+" from "+p.owner+" (granted by "+g+")",
					"REVOKE "+clone+" FROM "+owner+" GRANTED BY "+pq.QuoteIdentifier(g)); err != nil {
					return nil, err
				}
			}
		} else if err := exec("revoked "+p.clone+" from "+p.owner, "REVOKE "+clone+" FROM "+owner); err != nil {
			return nil, err
		}
	}
	// Since PostgreSQL 16 inheritance and SET ROLE are options of each
	// grant; before, inheritance is the member's attribute (set above) and
	// any membership allows SET ROLE.
	memberQ := `SELECT EXISTS (SELECT FROM pg_auth_members m WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1)
		AND m.member = (SELECT oid FROM pg_roles WHERE rolname = $2))`
	grant := "GRANT " + owner + " TO " + clone
	if version >= 160000 {
		memberQ = `SELECT EXISTS (SELECT FROM pg_auth_members m WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1)
			AND m.member = (SELECT oid FROM pg_roles WHERE rolname = $2) AND m.inherit_option AND m.set_option)`
		grant += " WITH INHERIT TRUE, SET TRUE"
	}
	if err := tx.QueryRowContext(ctx, memberQ, p.owner, p.clone).Scan(&member); err != nil {
		return nil, err
	}
	if !member {
		if err := exec("granted "+p.owner+" to "+p.clone, grant); err != nil {
			return nil, err
		}
	}
	if ownerLimit != cloneLimit {
		if err := exec(fmt.Sprintf("connection limit %d of %s", ownerLimit, p.clone),
			fmt.Sprintf("ALTER ROLE %s CONNECTION LIMIT %d", clone, ownerLimit)); err != nil {
			return nil, err
		}
	}
	// Default privileges the owner receives on what others create. Through
	// membership the clone has them anyway; the copy serves a clone session
	// that left the owner's role, and is harmless otherwise.
	rows, err := tx.QueryContext(ctx, `SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I %s GRANT %s ON %s TO %I',
			r.rolname, CASE WHEN d.defaclnamespace = 0 THEN '' ELSE format('IN SCHEMA %I', n.nspname) END,
			a.privilege_type,
			CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END,
			$2::text)
		FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
			aclexplode(d.defaclacl) a
		WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
			AND NOT EXISTS (SELECT FROM aclexplode(d.defaclacl) b
				WHERE b.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2) AND b.privilege_type = a.privilege_type)`, p.owner, p.clone)
	if err != nil {
		return nil, fmt.Errorf("rotate: reading the default privileges of %s: %w", p.owner, err)
	}
	defaults, err := scanStrings(rows)
	if err != nil {
		return nil, err
	}
	for _, s := range defaults {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return nil, fmt.Errorf("rotate: copying a default privilege to %s: %q: %w", p.clone, s, err)
		}
	}
	if len(defaults) > 0 {
		did = append(did, plural(len(defaults), "default privilege"))
	}
	// syncSettings applies each value to this session (SET LOCAL) on the
	// way, so only the repair, which sets its own statement_timeout,
	// follows it.
	n, err := syncSettings(ctx, tx, p.owner, p.clone)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		did = append(did, plural(n, "role setting")+" synced")
	}
	moved, to, err := p.repair(ctx, tx, budgetMS)
	if err != nil {
		return nil, err
	}
	if moved > 0 {
		did = append(did, fmt.Sprintf("gave %s %s owned here to %s", plural(moved, "object"), p.clone, to))
	}
	return did, tx.Commit()
}

// repair gives what the clone owns in this database (and shared objects:
// databases) to the role the owner's logins act as: objects a clone
// session made while acting as itself (AWS's template, an older
// pgsecrets, sessions opened before setup, SET ROLE NONE), which the
// owner cannot use.
//
// REASSIGN OWNED locks each object in turn while the application runs:
// a table's lock taken after its sequence's, against an INSERT holding the
// table and waiting for the sequence, is a deadlock, and PostgreSQL might
// cancel the application's query to break it. Bounding the statement (it
// ends the transaction) to half of deadlock_timeout means no session waits
// on it long enough for the deadlock check to run: it is this statement
// that gives up, and setup tries again.
func (p pair) repair(ctx context.Context, tx *sql.Tx, budgetMS int) (int, string, error) {
	var n int
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pg_shdepend WHERE deptype = 'o' AND refclassid = 'pg_authid'::regclass
		AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
		AND dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))`, p.clone).Scan(&n)
	if err != nil {
		return 0, "", fmt.Errorf("rotate: counting what %s owns: %w", p.clone, err)
	}
	if n == 0 {
		return 0, "", nil
	}
	to, _, err := loginRole(ctx, tx, p.owner)
	if err != nil {
		return 0, "", err
	}
	if _, err := tx.ExecContext(ctx, "SELECT set_config('statement_timeout', $1, true)", fmt.Sprintf("%dms", budgetMS)); err != nil {
		return 0, "", err
	}
	if _, err := tx.ExecContext(ctx, "REASSIGN OWNED BY "+pq.QuoteIdentifier(p.clone)+" TO "+pq.QuoteIdentifier(to)); err != nil {
		return 0, "", fmt.Errorf("rotate: REASSIGN OWNED BY %s TO %s (what %s made while acting as itself): %w", p.clone, to, p.clone, err)
	}
	return n, to, nil
}

func pqCode(err error, codes ...string) bool {
	var pe *pq.Error
	if !errors.As(err, &pe) {
		return false
	}
	for _, c := range codes {
		if string(pe.Code) == c {
			return true
		}
	}
	return false
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func scanStrings(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// problems says, in words, why the pair would not both work, read from
// the catalogs through q (any role may read them): the clone not a member
// of the owner (or without inheritance), a clone login that would not act
// as the owner's logins do, and, with owned, objects in this database the
// clone owns, which the owner cannot use.
func (p pair) problems(ctx context.Context, q querier, owned bool) ([]string, error) {
	var out []string
	var member, usage, cloneExists bool
	err := q.QueryRowContext(ctx, `
		WITH o AS (SELECT oid FROM pg_roles WHERE rolname = $1), c AS (SELECT oid FROM pg_roles WHERE rolname = $2)
		SELECT EXISTS (SELECT FROM c),
			coalesce((SELECT pg_has_role(c.oid, o.oid, 'MEMBER') FROM o, c), false),
			coalesce((SELECT pg_has_role(c.oid, o.oid, 'USAGE') FROM o, c), false)`, p.owner, p.clone).Scan(&cloneExists, &member, &usage)
	if err != nil {
		return nil, fmt.Errorf("rotate: reading the memberships of %s: %w", p, err)
	}
	if !cloneExists {
		return []string{fmt.Sprintf("role %s does not exist", p.clone)}, nil
	}
	switch {
	case !member:
		out = append(out, fmt.Sprintf("%s is not a member of %s (was it revoked?): its logins get none of %s's privileges; GRANT %s TO %s (setSecret grants it on every rotation)",
			p.clone, p.owner, p.owner, pq.QuoteIdentifier(p.owner), pq.QuoteIdentifier(p.clone)))
	case !usage:
		out = append(out, fmt.Sprintf("%s is a member of %s without inheriting its privileges (NOINHERIT): ALTER ROLE %s INHERIT (setSecret sets it on every rotation)",
			p.clone, p.owner, pq.QuoteIdentifier(p.clone)))
	}
	want, _, err := loginRole(ctx, q, p.owner)
	if err != nil {
		return nil, err
	}
	got, _, err := loginRole(ctx, q, p.clone)
	if err != nil {
		return nil, err
	}
	if got != want {
		what := "has no role setting"
		if got != p.clone {
			what = "is set to act as " + got
		}
		out = append(out, fmt.Sprintf("%s %s, so its logins here act as %s, not as %s like %s's: what it creates would belong to %s (setSecret sets role = %s on every rotation)",
			p.clone, what, got, want, p.owner, got, want))
	}
	if !owned {
		return out, nil
	}
	o, err := p.owned(ctx, q)
	if err != nil {
		return nil, err
	}
	if o.here > 0 {
		more := ""
		if o.here > len(o.names) {
			more = fmt.Sprintf(", and %d more", o.here-len(o.names))
		}
		out = append(out, fmt.Sprintf("%s owns %s here that %s cannot use: %s%s (made by a session acting as %s: before the pair was set up, or after SET ROLE NONE); the next rotation's setSecret gives them to %s's role, or REASSIGN OWNED BY %s TO %s",
			p.clone, plural(o.here, "object"), p.owner, strings.Join(o.names, ", "), more, p.clone, p.owner, pq.QuoteIdentifier(p.clone), pq.QuoteIdentifier(want)))
	}
	if o.elsewhere > 0 {
		out = append(out, fmt.Sprintf("%s owns %s in other databases, which the rotation does not reach (it works in the secret's database): REASSIGN OWNED BY %s TO %s in each",
			p.clone, plural(o.elsewhere, "object"), pq.QuoteIdentifier(p.clone), pq.QuoteIdentifier(want)))
	}
	return out, nil
}

// ownedObjects is what the clone owns: here (this database and shared
// objects), with up to ten names, and in other databases.
type ownedObjects struct {
	here, elsewhere int
	names           []string
}

func (p pair) owned(ctx context.Context, q querier) (ownedObjects, error) {
	var o ownedObjects
	err := q.QueryRowContext(ctx, `
		WITH d AS (SELECT s.classid, s.objid, s.objsubid, s.dbid FROM pg_shdepend s
			WHERE s.deptype = 'o' AND s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)),
		here AS (SELECT (pg_identify_object(classid, objid, objsubid)).* FROM d
			WHERE dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())))
		SELECT (SELECT count(*) FROM here),
			(SELECT count(*) FROM d WHERE dbid NOT IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))),
			coalesce((SELECT array_agg(x ORDER BY x) FROM (SELECT type || ' ' || identity AS x FROM here ORDER BY 1 LIMIT 10) t), '{}')`,
		p.clone).Scan(&o.here, &o.elsewhere, pq.Array(&o.names))
	if err != nil {
		return o, fmt.Errorf("rotate: reading what %s owns: %w", p.clone, err)
	}
	return o, nil
}

// cloneOnly lists what the clone holds by itself in this database that
// the session q (acting as the owner's logins do) may not: privileges
// granted to the clone directly, and memberships besides the owner.
// Ownership is reported by owned.
func (p pair) cloneOnly(ctx context.Context, q querier) ([]string, error) {
	rows, err := q.QueryContext(ctx, `
		WITH c AS (SELECT oid FROM pg_roles WHERE rolname = $1), o AS (SELECT oid FROM pg_roles WHERE rolname = $2)
		SELECT a.privilege_type || ' on database ' || quote_ident(d.datname)
		FROM pg_database d, aclexplode(d.datacl) a, c
		WHERE d.datname = current_database() AND a.grantee = c.oid AND d.datdba <> c.oid
			AND NOT has_database_privilege(d.oid, a.privilege_type)
		UNION ALL
		SELECT a.privilege_type || ' on schema ' || quote_ident(n.nspname)
		FROM pg_namespace n, aclexplode(n.nspacl) a, c
		WHERE a.grantee = c.oid AND n.nspowner <> c.oid AND NOT has_schema_privilege(n.oid, a.privilege_type)
		UNION ALL
		SELECT a.privilege_type || CASE WHEN r.relkind = 'S' THEN ' on sequence ' ELSE ' on table ' END || format('%I.%I', n.nspname, r.relname)
		FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace, aclexplode(r.relacl) a, c
		WHERE a.grantee = c.oid AND r.relowner <> c.oid AND r.relkind IN ('r','p','v','m','f','S')
			AND NOT CASE WHEN r.relkind = 'S' THEN has_sequence_privilege(r.oid, a.privilege_type) ELSE has_table_privilege(r.oid, a.privilege_type) END
		UNION ALL
		SELECT 'membership in ' || quote_ident(g.rolname)
		FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid, c, o
		WHERE m.member = c.oid AND m.roleid <> o.oid AND NOT pg_has_role(g.oid, 'USAGE')
		ORDER BY 1`, p.clone, p.owner)
	if err != nil {
		return nil, fmt.Errorf("rotate: reading what %s holds by itself: %w", p.clone, err)
	}
	return scanStrings(rows)
}

// sessionProblems checks who the session q is: logged in as user and, for
// the clone, acting as the owner's logins do.
func (p pair) sessionProblems(ctx context.Context, q querier, user string) ([]string, error) {
	var session, current string
	if err := q.QueryRowContext(ctx, "SELECT session_user, current_user").Scan(&session, &current); err != nil {
		return nil, err
	}
	var out []string
	if session != user {
		out = append(out, fmt.Sprintf("the session's user is %s, not %s", session, user))
	}
	if user != p.clone {
		return out, nil
	}
	want, _, err := loginRole(ctx, q, p.owner)
	if err != nil {
		return nil, err
	}
	if current != want {
		out = append(out, fmt.Sprintf("%s's session acts as %s, not as %s", p.clone, current, want))
	}
	return out, nil
}

// SessionTLS is what pg_stat_ssl says about a database session.
type SessionTLS struct {
	// Encrypted reports whether the session runs over TLS.
	Encrypted bool `json:"encrypted"`
	// Version and Cipher are the TLS version (e.g. TLSv1.3) and cipher;
	// empty without TLS.
	Version string `json:"version,omitempty"`
	Cipher  string `json:"cipher,omitempty"`
}

// ReadSessionTLS reads the TLS state of the session that db (a *sql.Conn
// for a given session, or a *sql.DB) runs its next transaction on. That
// is pg_stat_ssl's row for the session, which PostgreSQL shows only to
// roles with the privileges of the session's login role; a session that
// acts as another role (an alternating pair's clone acting as the owner,
// ALTER ROLE … SET role) has not them, so the row is read as the login
// role (SET LOCAL ROLE NONE, in a read-only transaction that is rolled
// back). When no row is visible the error is sql.ErrNoRows.
func ReadSessionTLS(ctx context.Context, db interface {
	BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error)
}) (SessionTLS, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return SessionTLS{}, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "SET LOCAL ROLE NONE"); err != nil {
		return SessionTLS{}, err
	}
	var ssl sql.NullBool
	var version, cipher sql.NullString
	if err := tx.QueryRowContext(ctx, "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version, &cipher); err != nil {
		return SessionTLS{}, err
	}
	return SessionTLS{Encrypted: ssl.Bool, Version: version.String, Cipher: cipher.String}, nil
}
