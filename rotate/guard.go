package rotate

// The rotation acts as an admin on the word of a secret that others can
// write. Everything here exists so that a tampered secret cannot turn that
// admin against its own database: the admin's password goes only to a
// server the operator or the admin's own secret names, over verified TLS;
// a role is changed only after the current credentials prove that the
// secret's writer already held it; privileged roles are never targets
// unless the operator says so.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
)

// ErrRefused is wrapped by every refusal of the checks that keep a
// tampered secret from steering the rotation: a pending user that is not
// the current one (or its alternate), a host other than the admin's, a
// privileged role as the target, current credentials that do not log in.
var ErrRefused = errors.New("refused")

// connSettings is the operator's part of every login: ConnParams and the
// PG* environment as lib/pq reads them, with pgsecrets' defaults filled in
// only where the operator chose nothing.
type connSettings struct {
	base pq.Config
	// Whether the operator pinned the database's location; a pinned value
	// wins over the secret's.
	host, port, dbname bool
	// verified: the server's name and certificate are checked
	// (verify-full). plaintext: the sslmode may fall back to no TLS.
	verified, plaintext bool
	sslmode             string
}

// parseConnSettings reads ConnParams (either DSN form) through the
// driver's own parser, so the keys are read exactly as the driver reads
// them, then lets lib/pq build its configuration (PG* variables included,
// as for the driver).
// The defaults verify the server: sslmode=verify-full against the
// system's roots unless sslrootcert names a bundle (RDS's, for example).
func parseConnSettings(params string) (connSettings, error) {
	params = strings.TrimSpace(params)
	kv := params
	if strings.HasPrefix(params, "postgres://") || strings.HasPrefix(params, "postgresql://") {
		var err error
		if kv, err = pq.ParseURL(params); err != nil {
			// url's errors quote the URL, which may hold a password.
			return connSettings{}, errors.New("rotate: connection parameters: not a valid postgres:// URL")
		}
	}
	// pgsecrets.ParseDSN needs a secret_id; the placeholder never leaves
	// this function.
	dsn, err := pgsecrets.ParseDSN(kv + " secret_id=rotation")
	if err != nil {
		return connSettings{}, fmt.Errorf("rotate: connection parameters: %w", err)
	}
	set := map[string]bool{}
	for _, p := range dsn.Params {
		set[p.Key] = true
	}
	has := func(key, env string) bool { return set[key] || os.Getenv(env) != "" }
	var defaults []string
	if !has("sslmode", "PGSSLMODE") {
		defaults = append(defaults, "sslmode=verify-full")
		if !has("sslrootcert", "PGSSLROOTCERT") {
			defaults = append(defaults, "sslrootcert=system")
		}
	}
	cfg, err := pq.NewConfig(strings.TrimSpace(kv + " " + strings.Join(defaults, " ")))
	if err != nil {
		return connSettings{}, fmt.Errorf("rotate: connection parameters: %w", err)
	}
	cs := connSettings{base: cfg, host: has("host", "PGHOST") || has("hostaddr", "PGHOSTADDR"), port: has("port", "PGPORT"),
		dbname: has("dbname", "PGDATABASE"), sslmode: string(cfg.SSLMode)}
	cs.verified = cfg.SSLMode == pq.SSLModeVerifyFull
	switch cfg.SSLMode {
	case pq.SSLModeDisable, pq.SSLModeAllow, pq.SSLModePrefer:
		cs.plaintext = true
	}
	return cs, nil
}

// location is where a login goes.
type location struct {
	host   string
	port   uint16
	dbname string
	// from says who named the host, for errors.
	from string
}

// secretPort reads a secret's port field: a JSON number or a string, in
// 1–65535.
func secretPort(s *secret) (uint16, bool, error) {
	v, ok := s.fields["port"]
	if !ok || v == nil {
		return 0, false, nil
	}
	var n float64
	switch p := v.(type) {
	case float64:
		n = p
	case string:
		i, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return 0, false, fmt.Errorf("rotate: secret %s (version %s): port %q is not a number", s.id, s.version, p)
		}
		n = float64(i)
	default:
		return 0, false, fmt.Errorf("rotate: secret %s (version %s): port is a %T, not a number", s.id, s.version, v)
	}
	if n != math.Trunc(n) || n < 1 || n > 65535 {
		return 0, false, fmt.Errorf("rotate: secret %s (version %s): port %v is not between 1 and 65535", s.id, s.version, n)
	}
	return uint16(n), true, nil
}

// where is the location a login with s goes to: what the operator pinned,
// the rest from s, the rest lib/pq's defaults.
func (r *Rotator) where(s *secret) (location, error) {
	loc := location{host: r.conn.base.Host, port: r.conn.base.Port, dbname: r.conn.base.Database, from: "the connection parameters"}
	if h := s.str("host"); h != "" && !r.conn.host {
		loc.host, loc.from = h, "secret "+s.id
	}
	if p, ok, err := secretPort(s); err != nil {
		return location{}, err
	} else if ok && !r.conn.port {
		loc.port = p
	}
	if d := s.str("dbname"); d != "" && !r.conn.dbname {
		loc.dbname = d
	}
	return loc, nil
}

// adminWhere is where the admin logs in: the operator's pinned host, else
// the admin secret's own. Never where only the application's secret says:
// whoever can write that secret could otherwise receive the admin's
// password. The database name may come from the application's secret (it
// is where the application's objects are); the server may not.
func (r *Rotator) adminWhere(admin, app *secret) (location, error) {
	loc := location{host: r.conn.base.Host, port: r.conn.base.Port, dbname: r.conn.base.Database, from: "the connection parameters"}
	if !r.conn.host {
		h := admin.str("host")
		if h == "" {
			return location{}, fmt.Errorf("%w: the admin secret %s names no host (as RDS-managed master secrets do), and the connection parameters pin none: "+
				"the admin's password goes only where its own secret or the operator says, so set host= in the connection parameters "+
				"(PGSECRETS_CONN_PARAMS for the Lambda, --dsn for pgsecrets rotate)", ErrRefused, admin.id)
		}
		loc.host, loc.from = h, "the admin secret "+admin.id
	}
	if !r.conn.port {
		if p, ok, err := secretPort(admin); err != nil {
			return location{}, err
		} else if ok {
			loc.port = p
		}
	}
	if !r.conn.dbname {
		if d := admin.str("dbname"); d != "" {
			loc.dbname = d
		}
		if d := app.str("dbname"); d != "" {
			loc.dbname = d
		}
	}
	return loc, nil
}

// sameServer checks that the application's secret names the admin's
// server, or names none. The admin's server is the one its own secret
// names, else the operator's pinned host. Names are compared as DNS names
// (case, a trailing dot); an Aurora reader endpoint (.cluster-ro-) matches
// its cluster's writer endpoint (.cluster-); any other name of the same
// server (a read replica, an instance endpoint, a proxy, a tunnel's far
// end) must be listed in Options.DatabaseHosts.
func (r *Rotator) sameServer(app, admin *secret) error {
	h := app.str("host")
	if h == "" {
		return nil
	}
	ref, from := admin.str("host"), "the admin secret "+admin.id
	refPort, refHasPort, err := secretPort(admin)
	if err != nil {
		return err
	}
	if ref == "" {
		ref, from = r.conn.base.Host, "the connection parameters"
		refPort, refHasPort = r.conn.base.Port, r.conn.port
	}
	if !hostsEqual(h, ref) {
		if slices.ContainsFunc(r.opt.DatabaseHosts, func(a string) bool { return hostsEqual(a, h) }) {
			return nil
		}
		return fmt.Errorf("%w: secret %s names host %q, but the admin's database is %q (from %s): the admin does not act for a secret that names another server; "+
			"if %q is another name of the same database (a read replica, an instance endpoint, a proxy), list it in DatabaseHosts (PGSECRETS_DATABASE_HOSTS, --database-host)",
			ErrRefused, app.id, h, ref, from, h)
	}
	if p, ok, err := secretPort(app); err != nil {
		return err
	} else if ok && refHasPort && p != refPort {
		return fmt.Errorf("%w: secret %s names port %d, but the admin's database listens on %d (from %s)", ErrRefused, app.id, p, refPort, from)
	}
	return nil
}

func hostsEqual(a, b string) bool {
	norm := func(s string) string {
		s = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
		return strings.Replace(s, ".cluster-ro-", ".cluster-", 1)
	}
	return norm(a) == norm(b)
}

// related checks that pend is a rotation of cur, before either is used:
// the same user (single) or its alternate (alternating), the same
// database and the same admin. Only the password may be new.
func (r *Rotator) related(cur, pend *secret) error {
	want := cur.user()
	if r.opt.Strategy == AlternatingUsers {
		want = otherUser(cur.user())
	}
	return sameRotation(cur, pend, r.opt.Strategy.String(), want)
}

// relatedEitherWay is related for Rollback, which does not know the
// strategy: the same user or its alternate.
func (r *Rotator) relatedEitherWay(cur, other *secret) error {
	return sameRotation(cur, other, "any", cur.user(), otherUser(cur.user()))
}

func sameRotation(cur, other *secret, strategy string, users ...string) error {
	if !slices.Contains(users, other.user()) {
		return fmt.Errorf("%w: version %s of %s is for user %q, but AWSCURRENT's user is %q: with the %s strategy it must be %s",
			ErrRefused, other.version, cur.id, other.user(), cur.user(), strategy, strings.Join(users, " or "))
	}
	for _, k := range []string{"host", "dbname", "masterarn"} {
		if other.str(k) != cur.str(k) {
			return fmt.Errorf("%w: version %s of %s changes %s from %q to %q; a rotation changes only the password (and the user, alternating)",
				ErrRefused, other.version, cur.id, k, cur.str(k), other.str(k))
		}
	}
	op, _, err := secretPort(other)
	if err != nil {
		return err
	}
	cp, _, err := secretPort(cur)
	if err != nil {
		return err
	}
	if op != cp {
		return fmt.Errorf("%w: version %s of %s changes port from %d to %d", ErrRefused, other.version, cur.id, cp, op)
	}
	return nil
}

// proveCurrent logs in with AWSCURRENT before anything is done as the
// admin: only someone who already held the user's password can have
// written it, so a secret rewritten to name another role (or another
// server) stops here, as in AWS's own templates.
func (r *Rotator) proveCurrent(ctx context.Context, cur *secret) error {
	db, err := r.open(ctx, cur)
	if err != nil {
		return fmt.Errorf("%w: AWSCURRENT of %s (user %s) does not log in, so nothing proves the secret's writer held that user's password; "+
			"nothing was done as the admin: %w", ErrRefused, cur.id, cur.user(), err)
	}
	return db.Close()
}

// powerfulRoles are predefined roles (PostgreSQL's and the managed
// services') whose members can read or change the server itself or
// everyone's data.
var powerfulRoles = []string{
	"pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
	"pg_read_all_data", "pg_write_all_data", "pg_create_subscription",
	"rds_superuser", "rds_replication", "rds_password", "azure_pg_admin", "cloudsqlsuperuser", "alloydbsuperuser",
}

// checkTargets refuses, as the admin session db, to change roles that
// carry power beyond the application's: SUPERUSER, CREATEROLE,
// REPLICATION, BYPASSRLS, membership in a role that has one of them or in
// a powerful predefined role, and the admin itself (or a member of it).
// Roles that do not exist yet (a clone about to be created) pass.
func (r *Rotator) checkTargets(ctx context.Context, db *sql.DB, users ...string) error {
	if r.opt.AllowPrivilegedRoles {
		return nil
	}
	for _, u := range users {
		var why sql.NullString
		err := db.QueryRowContext(ctx, `
			WITH t AS (SELECT * FROM pg_roles WHERE rolname = $1)
			SELECT concat_ws(', ',
				CASE WHEN t.rolsuper THEN 'SUPERUSER' END,
				CASE WHEN t.rolcreaterole THEN 'CREATEROLE' END,
				CASE WHEN t.rolreplication THEN 'REPLICATION' END,
				CASE WHEN t.rolbypassrls THEN 'BYPASSRLS' END,
				CASE WHEN t.rolname = session_user OR t.rolname = current_user
					OR pg_has_role(t.oid, (SELECT oid FROM pg_roles WHERE rolname = session_user), 'MEMBER') THEN 'the admin role itself or a member of it' END,
				(SELECT 'member of ' || string_agg(quote_ident(g.rolname), ', ' ORDER BY g.rolname)
					FROM pg_roles g
					WHERE g.oid <> t.oid AND pg_has_role(t.oid, g.oid, 'MEMBER')
					AND (g.rolsuper OR g.rolcreaterole OR g.rolreplication OR g.rolbypassrls OR g.rolname = ANY($2))))
			FROM t`, u, pq.Array(powerfulRoles)).Scan(&why)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return fmt.Errorf("rotate: checking the attributes of %s: %w", u, err)
		}
		if why.String != "" {
			return fmt.Errorf("%w: role %s is privileged (%s): a rotation driven by a secret that others can write never changes such a role; "+
				"if this secret really is meant to rotate it, set AllowPrivilegedRoles (PGSECRETS_ALLOW_PRIVILEGED_ROLES=true, --allow-privileged-role)",
				ErrRefused, u, why.String)
		}
	}
	return nil
}

// warnWeakTLS says once, when the Rotator is made, that the operator chose
// logins that do not verify the server.
func (r *Rotator) warnWeakTLS() {
	if r.conn.verified {
		return
	}
	r.log.Warn("pgsecrets rotate: the connection parameters do not verify the database server (sslmode="+r.conn.sslmode+
		"): the admin's and the users' passwords go to whichever server answers at that address; use sslmode=verify-full with sslrootcert",
		slog.String("sslmode", r.conn.sslmode))
}
