package rotate_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/rotate"
)

// appWorld is a world whose application user owns its database, as after
// CREATE DATABASE … OWNER app: the secret points there and names an admin
// (masterarn), as alternating users need.
type appWorld struct {
	*world
	dbname string
	su     *sql.DB // the cluster's superuser, in dbname
}

func newAppWorld(t *testing.T) *appWorld {
	t.Helper()
	w := newWorld(t, nil)
	ctx := context.Background()
	adminARN := w.admin() // dropped after the database (cleanups run last first)
	a := &appWorld{world: w, dbname: w.user + "_db"}
	if err := w.pg.CreateDatabase(ctx, a.dbname, w.user); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.pg.DropDatabase(context.Background(), a.dbname) })
	su, err := sql.Open("postgres", w.pg.DSN(testdb.AdminUser, w.pg.AdminPassword(), a.dbname))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { su.Close() })
	a.su = su
	w.changeCurrent(map[string]any{"masterarn": adminARN, "dbname": a.dbname})
	return a
}

// awsTemplateClone sets up the clone as AWS's MultiUser template leaves
// it: a member of the owner that logs in with a password of its own,
// nothing more. It returns the clone's version of the secret (AWSCURRENT's
// fields with the clone's username and password), not yet written.
func (a *appWorld) awsTemplateClone() map[string]any {
	a.t.Helper()
	clone, pw := a.user+"_clone", testkit.RandomPassword()
	if err := a.pg.CreateRole(context.Background(), clone, pw); err != nil {
		a.t.Fatal(err)
	}
	a.exec("GRANT " + pq.QuoteIdentifier(a.user) + " TO " + pq.QuoteIdentifier(clone))
	_, v := a.stage(rotate.StageCurrent)
	v["username"], v["password"] = clone, pw
	return v
}

func (a *appWorld) exec(qs ...string) {
	a.t.Helper()
	for _, q := range qs {
		if _, err := a.su.Exec(q); err != nil {
			a.t.Fatalf("%s: %v", q, err)
		}
	}
}

// as logs in with a version's credentials to the application's database.
func (a *appWorld) as(v map[string]any) *sql.DB {
	a.t.Helper()
	db, err := sql.Open("postgres", a.pg.DSN(v["username"].(string), v["password"].(string), a.dbname))
	if err != nil {
		a.t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	a.t.Cleanup(func() { db.Close() })
	if err := db.Ping(); err != nil {
		a.t.Fatalf("logging in as %v: %v", v["username"], err)
	}
	return db
}

// whoami is a session's login role and the role it acts as.
func whoami(t *testing.T, db *sql.DB) (session, current string) {
	t.Helper()
	if err := db.QueryRow("SELECT session_user, current_user").Scan(&session, &current); err != nil {
		t.Fatal(err)
	}
	return session, current
}

// use is what the application does with one object: write and read a
// table or view, draw from a sequence.
type use struct{ name, q string }

func useTable(schema, name string) use {
	n := pq.QuoteIdentifier(schema) + "." + pq.QuoteIdentifier(name)
	return use{name: schema + "." + name,
		q: "WITH i AS (INSERT INTO " + n + " (who) VALUES (session_user) RETURNING 1) SELECT (SELECT count(*) FROM i) + count(*) FROM " + n}
}

func useSequence(schema, name string) use {
	return use{name: schema + "." + name,
		q: "SELECT nextval(" + pq.QuoteLiteral(pq.QuoteIdentifier(schema)+"."+pq.QuoteIdentifier(name)) + "::regclass)"}
}

func (u use) run(ctx context.Context, db *sql.DB) error {
	var n int64
	if err := db.QueryRowContext(ctx, u.q).Scan(&n); err != nil {
		return fmt.Errorf("%s: %w", u.name, err)
	}
	return nil
}

// objectLoad runs the application's queries on its objects through the
// driver, round robin over a list that grows as objects are made.
type objectLoad struct {
	*testkit.Load
	uses atomic.Pointer[[]use]
}

func startObjectLoad(t *testing.T, db *sql.DB, n int, uses ...use) *objectLoad {
	l := &objectLoad{}
	l.uses.Store(&uses)
	var next atomic.Uint64
	l.Load = testkit.Start(t, n, func(ctx context.Context) error {
		us := *l.uses.Load()
		return us[next.Add(1)%uint64(len(us))].run(ctx, db)
	})
	l.WaitQueries(t, 50)
	return l
}

func (l *objectLoad) add(us ...use) {
	all := append(append([]use(nil), *l.uses.Load()...), us...)
	l.uses.Store(&all)
}

// rotateOnce runs every step twice, as runTwice does, and returns what
// the first run of each did.
func rotateOnce(t *testing.T, r *rotate.Rotator, secretID, token string) map[rotate.Step]rotate.Result {
	t.Helper()
	out := map[rotate.Step]rotate.Result{}
	for _, step := range rotate.Steps {
		res, err := r.Run(context.Background(), secretID, token, step)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		t.Logf("%s: %s (%s)", step, res.What, res.Took.Round(time.Millisecond))
		out[step] = res
		again, err := r.Run(context.Background(), secretID, token, step)
		if err != nil {
			t.Fatalf("%s again: %v", step, err)
		}
		if again.Changed {
			t.Errorf("%s run twice changed something the second time: %s", step, again.What)
		}
	}
	return out
}

// loadApp is the application_name of the driver's sessions.
const loadApp = "pgsecrets-load"

// appDriver opens the application's pool through pgsecrets as driver()
// does, with its sessions named so they can be told from the test's own.
// Alternating users leave the previous credentials valid, so the driver
// would keep them for its secret_ttl: the test calls Refresh after each
// rotation, as an application hooked to RotationSucceeded does.
func (a *appWorld) appDriver() (*sql.DB, *pgsecrets.Connector) {
	a.t.Helper()
	c, err := pgsecrets.NewConnector(fmt.Sprintf("sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=1h application_name=%s",
		a.pg.CAFile(), a.secretID, a.sm.URL(), loadApp), pgsecrets.WithLogger(a.logger))
	if err != nil {
		a.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
	a.t.Cleanup(func() { db.Close() })
	return db, c
}

// switchTo refreshes the driver's credentials and waits until its pool
// has a session logged in as user.
func (a *appWorld) switchTo(c *pgsecrets.Connector, user string) {
	a.t.Helper()
	if _, err := c.Refresh(context.Background()); err != nil {
		a.t.Fatal(err)
	}
	testkit.Eventually(a.t, "a driver session of "+user, func() bool {
		var n int
		_ = a.su.QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 AND application_name = $3",
			user, a.dbname, loadApp).Scan(&n)
		return n > 0
	})
}

// The application user owns its database, a schema and its tables, as
// when migrations run as the application. Three alternating rotations
// under load need no manual step; objects made during each user's turn
// are usable by the other at once; at the end both users use everything.
func TestAlternatingOwnerOwnsEverything(t *testing.T) {
	a := newAppWorld(t)
	app, clone := a.user, a.user+"_clone"
	ctx := context.Background()
	a.exec(
		"CREATE SCHEMA s AUTHORIZATION "+pq.QuoteIdentifier(app),
		"CREATE TABLE s.orders (id serial PRIMARY KEY, who text)",
		"ALTER TABLE s.orders OWNER TO "+pq.QuoteIdentifier(app),
		"CREATE TABLE public.items (id bigint GENERATED ALWAYS AS IDENTITY, who text)",
		"ALTER TABLE public.items OWNER TO "+pq.QuoteIdentifier(app),
		"ALTER ROLE "+pq.QuoteIdentifier(app)+" IN DATABASE "+pq.QuoteIdentifier(a.dbname)+" SET statement_timeout = '30s'",
	)
	uses := []use{useTable("s", "orders"), useTable("public", "items")}
	driver, conn := a.appDriver()
	l := startObjectLoad(t, driver, 16, uses...)
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers, Probes: []string{"SELECT 1 FROM s.orders LIMIT 1"}})

	for i := 1; i <= 3; i++ {
		token := fmt.Sprintf("a%d111111-2222-4333-8444-555555555555", i)
		res := rotateOnce(t, r, a.secretID, token)
		set := res[rotate.SetSecret].What
		if i > 1 && !strings.Contains(set, "already set up") {
			t.Errorf("rotation %d: setSecret changed the pair again: %s", i, set)
		}
		_, cur := a.stage(rotate.StageCurrent)
		_, prev := a.stage(rotate.StagePrevious)
		want := map[bool]string{true: clone, false: app}[i%2 == 1]
		if cur["username"] != want || prev["username"] == want {
			t.Fatalf("rotation %d: AWSCURRENT %v, AWSPREVIOUS %v", i, cur["username"], prev["username"])
		}
		a.switchTo(conn, want)

		// Whoever AWSCURRENT names makes a table, a sequence and a view.
		mine := a.as(cur)
		if s, c := whoami(t, mine); s != want || c != app {
			t.Errorf("a login as %s: session_user %s, current_user %s; want current_user %s", want, s, c, app)
		}
		tbl, seq, view := fmt.Sprintf("t%d", i), fmt.Sprintf("seq%d", i), fmt.Sprintf("v%d", i)
		for _, q := range []string{
			"CREATE TABLE s." + tbl + " (id serial, who text)",
			"CREATE SEQUENCE s." + seq,
			"CREATE VIEW s." + view + " AS SELECT id, who FROM s." + tbl,
		} {
			if _, err := mine.ExecContext(ctx, q); err != nil {
				t.Fatalf("as %s: %s: %v", want, q, err)
			}
		}
		made := []use{useTable("s", tbl), useSequence("s", seq), useTable("s", view)}
		// At once, the previous user, still valid, uses them.
		theirs := a.as(prev)
		for _, u := range made {
			if err := u.run(ctx, theirs); err != nil {
				t.Errorf("rotation %d: %v uses what %s made: %v", i, prev["username"], want, err)
			}
		}
		l.add(made...)
		uses = append(uses, made...)
		l.WaitQueries(t, 200)
	}
	l.AssertNoFailures(t)
	t.Logf("load: %d queries through the driver on the application's objects, 0 failed", l.OK())

	_, cur := a.stage(rotate.StageCurrent)
	_, prev := a.stage(rotate.StagePrevious)
	for _, v := range []map[string]any{cur, prev} {
		db := a.as(v)
		for _, u := range uses {
			if err := u.run(ctx, db); err != nil {
				t.Errorf("as %v: %v", v["username"], err)
			}
		}
	}
	var strays []string
	rows, err := a.su.Query(`SELECT n.nspname || '.' || c.relname || ' (' || c.relowner::regrole || ')' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname IN ('s', 'public') AND c.relowner <> $1::regrole
		UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 's' AND nspowner <> $1::regrole
		UNION ALL SELECT 'database ' || datname FROM pg_database WHERE datname = current_database() AND datdba <> $1::regrole`, app)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		strays = append(strays, s)
	}
	rows.Close()
	if len(strays) > 0 {
		t.Errorf("not owned by %s: %v", app, strays)
	}
	st := r.Check(ctx, a.secretID, time.Now())
	if p := pairProblems(st); len(p) > 0 {
		t.Errorf("monitor: %v", p)
	}
}

// pairProblems are the monitor's findings about the alternating pair and
// the privilege comparison, leaving out the rotation schedule.
func pairProblems(st rotate.Status) []string {
	var out []string
	for _, p := range st.Problems {
		if strings.Contains(p, "alternating pair") || strings.Contains(p, "lacks privileges") {
			out = append(out, p)
		}
	}
	return out
}

// A DBA's grant to the application user, on a table a third role owns,
// reaches the clone while it is current, at once and in sessions already
// open; a revoke does too, since nothing was copied.
func TestAlternatingLaterGrantReachesClone(t *testing.T) {
	a := newAppWorld(t)
	app, third := a.user, a.user+"_third"
	a.exec("CREATE ROLE " + pq.QuoteIdentifier(third) + " NOLOGIN")
	t.Cleanup(func() { _ = a.pg.DropRole(context.Background(), third) }) // after the database
	a.exec("CREATE TABLE public.later (id int, who text)", "ALTER TABLE public.later OWNER TO "+pq.QuoteIdentifier(third))
	driver, conn := a.appDriver()
	l := startLoad(t, driver, 8)
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	rotateOnce(t, r, a.secretID, "b1111111-2222-4333-8444-555555555555")
	_, cur := a.stage(rotate.StageCurrent)
	if cur["username"] != app+"_clone" {
		t.Fatalf("AWSCURRENT user %v", cur["username"])
	}
	open := a.as(cur) // a clone session from before the grant
	later := useTable("public", "later")
	if err := later.run(context.Background(), open); !pqCode(err, "42501") {
		t.Fatalf("before the grant: %v, want permission denied", err)
	}
	a.exec("GRANT SELECT, INSERT ON public.later TO " + pq.QuoteIdentifier(app))
	if err := later.run(context.Background(), open); err != nil {
		t.Errorf("the clone's open session after the grant: %v", err)
	}
	if err := later.run(context.Background(), a.as(cur)); err != nil {
		t.Errorf("a new clone session after the grant: %v", err)
	}
	a.switchTo(conn, app+"_clone")
	if err := later.run(context.Background(), driver); err != nil {
		t.Errorf("through the driver after the grant: %v", err)
	}
	a.exec("REVOKE INSERT ON public.later FROM " + pq.QuoteIdentifier(app))
	if err := later.run(context.Background(), open); !pqCode(err, "42501") {
		t.Errorf("the clone after the revoke from %s: %v, want permission denied", app, err)
	}
	l.AssertNoFailures(t)
	t.Logf("load: %d queries, 0 failed", l.OK())
}

func pqCode(err error, code string) bool {
	var pe *pq.Error
	return errors.As(err, &pe) && string(pe.Code) == code
}

// A database rotated by AWS's MultiUser template: the clone exists, is a
// member of the original, and owns a table it made during its turn, which
// the original cannot use. The first rotation here takes it over under
// load without a failed query, and both users can use everything after.
func TestAlternatingTakesOverAWSTemplate(t *testing.T) {
	a := newAppWorld(t)
	app, clone := a.user, a.user+"_clone"
	ctx := context.Background()
	a.exec("CREATE TABLE public.app_t (id serial, who text)", "ALTER TABLE public.app_t OWNER TO "+pq.QuoteIdentifier(app))
	awsVersion := a.awsTemplateClone()
	_, cur := a.stage(rotate.StageCurrent)
	made := a.as(awsVersion)
	for _, q := range []string{
		"CREATE TABLE public.clone_t (id serial, who text)",
		"CREATE SEQUENCE public.clone_seq",
		"CREATE VIEW public.clone_v AS SELECT id, who FROM public.app_t",
	} {
		if _, err := made.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	made.Close()
	uses := []use{useTable("public", "app_t"), useTable("public", "clone_t"), useSequence("public", "clone_seq"), useTable("public", "clone_v")}
	if err := uses[1].run(ctx, a.as(cur)); !pqCode(err, "42501") {
		t.Fatalf("the hole AWS's template leaves: %s on the clone's table: %v, want permission denied", app, err)
	}
	a.writeCurrent(awsVersion)
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	if err := a.sm.SetRotation(a.secretID, true, 30, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := pairProblems(r.Check(ctx, a.secretID, time.Now()))
	if s := strings.Join(before, "\n"); !strings.Contains(s, "clone_t") || !strings.Contains(s, "has no role setting") {
		t.Errorf("monitor before the takeover: %v, want the clone's table and its missing role setting", before)
	}

	driver, conn := a.appDriver()
	l := startObjectLoad(t, driver, 16, uses...)
	a.switchTo(conn, clone)
	res := rotateOnce(t, r, a.secretID, "c1111111-2222-4333-8444-555555555555")
	if set := res[rotate.SetSecret].What; !strings.Contains(set, "gave 4 objects") {
		t.Errorf("setSecret: %s, want the clone's 4 objects (table, its sequence, sequence, view) given to %s", set, app)
	}
	a.switchTo(conn, app)
	l.WaitQueries(t, 200)
	for _, v := range []string{rotate.StageCurrent, rotate.StagePrevious} {
		_, ver := a.stage(v)
		db := a.as(ver)
		for _, u := range uses {
			if err := u.run(ctx, db); err != nil {
				t.Errorf("as %v (%s): %v", ver["username"], v, err)
			}
		}
	}
	if p := pairProblems(r.Check(ctx, a.secretID, time.Now())); len(p) > 0 {
		t.Errorf("monitor after the takeover: %v", p)
	}
	// And on, back to the clone.
	rotateOnce(t, r, a.secretID, "c2111111-2222-4333-8444-555555555555")
	a.switchTo(conn, clone)
	l.WaitQueries(t, 200)
	l.AssertNoFailures(t)
	t.Logf("load: %d queries through the driver on both users' objects, 0 failed", l.OK())
	var owner string
	if err := a.su.QueryRow("SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = 'public.clone_t'::regclass").Scan(&owner); err != nil || owner != app {
		t.Errorf("clone_t owned by %s (%v)", owner, err)
	}
}

// The monitor reports a pair whose users would not both work: a table the
// clone owns, a membership revoked, a role setting removed.
func TestAlternatingMonitorReportsBrokenPair(t *testing.T) {
	a := newAppWorld(t)
	app, clone := a.user, a.user+"_clone"
	ctx := context.Background()
	a.exec("CREATE TABLE public.t (id int, who text)", "ALTER TABLE public.t OWNER TO "+pq.QuoteIdentifier(app))
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	rotateOnce(t, r, a.secretID, "d1111111-2222-4333-8444-555555555555")
	if err := a.sm.SetRotation(a.secretID, true, 30, time.Now()); err != nil {
		t.Fatal(err)
	}
	check := func(what string, want ...string) {
		t.Helper()
		st := r.Check(ctx, a.secretID, time.Now())
		got := strings.Join(st.Problems, "\n")
		if len(want) == 0 && !st.Healthy() {
			t.Errorf("%s: problems %q", what, st.Problems)
		}
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: problems %q, want one saying %q", what, st.Problems, w)
			}
		}
		t.Logf("%s: %q", what, st.Problems)
	}
	check("a pair set up by the rotation")

	// A clone session that leaves the owner's role makes a table as itself.
	_, cur := a.stage(rotate.StageCurrent)
	db := a.as(cur)
	if _, err := db.Exec("SET ROLE NONE"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE public.stray (id int)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	check("a table the clone owns", "owns 1 object here", "table public.stray")
	// The next rotation gives it to the owner.
	rotateOnce(t, r, a.secretID, "d2111111-2222-4333-8444-555555555555")
	check("after the next rotation")

	a.exec("REVOKE " + pq.QuoteIdentifier(app) + " FROM " + pq.QuoteIdentifier(clone))
	check("membership revoked", clone+" is not a member of "+app)
	a.exec("GRANT "+pq.QuoteIdentifier(app)+" TO "+pq.QuoteIdentifier(clone), "ALTER ROLE "+pq.QuoteIdentifier(clone)+" RESET role")
	check("role setting removed", "has no role setting")
}

// The repair's REASSIGN OWNED locks the clone's objects one by one while
// the application holds some of them. Here it holds the first object's
// lock, is queued behind a transaction on the second, and the
// application, holding the third, asks for the first: once the second is
// free the cycle closes, and PostgreSQL's deadlock check, run by the
// application's session (which waited first), would cancel the
// application's query. The repair gives way instead: the application's
// query succeeds and setSecret completes on a later attempt.
func TestAlternatingRepairGivesWayToTheApplication(t *testing.T) {
	a := newAppWorld(t)
	clone := a.user + "_clone"
	ctx := context.Background()
	awsVersion := a.awsTemplateClone()
	maker := a.as(awsVersion)
	for _, n := range []string{"r1", "r2", "r3"} {
		if _, err := maker.Exec("CREATE TABLE public." + n + " (id int)"); err != nil {
			t.Fatal(err)
		}
	}
	// REASSIGN OWNED visits the role's objects in the order of
	// pg_shdepend's index, whose equal keys are in heap order.
	var order []string
	rows, err := a.su.Query(`SELECT objid::regclass::text FROM pg_shdepend WHERE deptype = 'o' AND refclassid = 'pg_authid'::regclass
		AND refobjid = $1::regrole AND classid = 'pg_class'::regclass ORDER BY ctid`, clone)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		order = append(order, s)
	}
	rows.Close()
	if len(order) != 3 {
		t.Fatalf("the clone owns %v", order)
	}
	first, second, third := order[0], order[1], order[2]
	a.writeCurrent(awsVersion)

	// Two of the application's transactions (sessions acting as the clone,
	// as under AWS's template): one reads the second table, the other has
	// written to the third.
	txOn := func(q string) (*sql.Tx, int) {
		tx, err := a.as(awsVersion).BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var pid int
		if err := tx.QueryRow("SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(q, err)
		}
		return tx, pid
	}
	reader, _ := txOn("SELECT count(*) FROM " + second)
	writer, writerPID := txOn("INSERT INTO " + third + " VALUES (1)")

	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	token := "e1111111-2222-4333-8444-555555555555"
	if _, err := r.Run(ctx, a.secretID, token, rotate.CreateSecret); err != nil {
		t.Fatal(err)
	}
	setDone := make(chan error, 1)
	var setRes rotate.Result
	go func() {
		var err error
		setRes, err = r.Run(ctx, a.secretID, token, rotate.SetSecret)
		setDone <- err
	}()
	waiting := func(rel string, pid int) bool {
		var n int
		_ = a.su.QueryRow(`SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass AND ($2 = 0 OR pid = $2)`, rel, pid).Scan(&n)
		return n > 0
	}
	testkit.Eventually(t, "REASSIGN OWNED queued behind the reader of "+second, func() bool { return waiting(second, 0) })
	queried := make(chan error, 1)
	go func() {
		var n int
		queried <- writer.QueryRow("SELECT count(*) FROM " + first).Scan(&n)
	}()
	var queued bool
	testkit.Eventually(t, "the application's query on "+first+" to wait or finish", func() bool {
		queued = queued || waiting(first, writerPID)
		return queued || len(queried) > 0
	})
	t.Logf("the application's query waited for the repair's lock: %v", queued)
	if err := reader.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-queried; err != nil {
		t.Fatalf("the application's query: %v", err)
	}
	if err := writer.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-setDone; err != nil {
		t.Fatalf("setSecret: %v", err)
	}
	t.Logf("setSecret: %s", setRes.What)
	if !strings.Contains(setRes.What, "gave 3 objects") {
		t.Errorf("setSecret: %s", setRes.What)
	}
}

// Two setups the pair must absorb: a clone left a member's parent (GRANT
// clone TO app, which would make the needed grant circular), and an owner
// that logs in acting as a group role, whose clone must act as that group
// too so that both create as the same role.
func TestAlternatingOwnerActingAsGroup(t *testing.T) {
	a := newAppWorld(t)
	app, clone, group := a.user, a.user+"_clone", a.user+"_group"
	ctx := context.Background()
	a.exec("CREATE ROLE " + pq.QuoteIdentifier(group) + " NOLOGIN")
	t.Cleanup(func() { _ = a.pg.DropRole(context.Background(), group) }) // after the database
	a.exec(
		"GRANT "+pq.QuoteIdentifier(group)+" TO "+pq.QuoteIdentifier(app),
		"ALTER ROLE "+pq.QuoteIdentifier(app)+" SET role = "+pq.QuoteIdentifier(group),
		"CREATE SCHEMA g AUTHORIZATION "+pq.QuoteIdentifier(group),
		"CREATE TABLE g.orders (id serial, who text)",
		"ALTER TABLE g.orders OWNER TO "+pq.QuoteIdentifier(group),
		"CREATE ROLE "+pq.QuoteIdentifier(clone)+" LOGIN",
		"GRANT "+pq.QuoteIdentifier(clone)+" TO "+pq.QuoteIdentifier(app),
	)
	driver, conn := a.appDriver()
	l := startObjectLoad(t, driver, 8, useTable("g", "orders"))
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	res := rotateOnce(t, r, a.secretID, "f1111111-2222-4333-8444-555555555555")
	if set := res[rotate.SetSecret].What; !strings.Contains(set, "revoked "+clone+" from "+app) {
		t.Errorf("setSecret: %s, want the reverse membership revoked", set)
	}
	a.switchTo(conn, clone)
	var reverse, member bool
	if err := a.su.QueryRow("SELECT pg_has_role($1, $2, 'MEMBER'), pg_has_role($2, $1, 'USAGE')", app, clone).Scan(&reverse, &member); err != nil {
		t.Fatal(err)
	}
	if reverse || !member {
		t.Errorf("%s member of %s: %v; %s inherits %s: %v", app, clone, reverse, clone, app, member)
	}
	_, cur := a.stage(rotate.StageCurrent)
	_, prev := a.stage(rotate.StagePrevious)
	mine := a.as(cur)
	if s, c := whoami(t, mine); s != clone || c != group {
		t.Errorf("a login as %s: session_user %s, current_user %s; want current_user %s", clone, s, c, group)
	}
	if _, err := mine.Exec("CREATE TABLE g.made (id serial, who text)"); err != nil {
		t.Fatal(err)
	}
	made := useTable("g", "made")
	if err := made.run(ctx, a.as(prev)); err != nil {
		t.Errorf("%s uses what %s made: %v", app, clone, err)
	}
	l.add(made)
	l.WaitQueries(t, 200)
	rotateOnce(t, r, a.secretID, "f2111111-2222-4333-8444-555555555555")
	a.switchTo(conn, app)
	l.WaitQueries(t, 200)
	l.AssertNoFailures(t)
	t.Logf("load: %d queries, 0 failed", l.OK())
	var owner string
	if err := a.su.QueryRow("SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = 'g.made'::regclass").Scan(&owner); err != nil || owner != group {
		t.Errorf("g.made owned by %s (%v), want %s", owner, err, group)
	}
}

// Under AWS's template a DBA may have granted to the clone directly while
// it was current. The owner's sessions will not have that: the rotation to
// the owner stops at testSecret naming it, and completes once it is
// granted to the owner.
func TestAlternatingTakeoverNamesDirectGrants(t *testing.T) {
	a := newAppWorld(t)
	app, clone, third := a.user, a.user+"_clone", a.user+"_third"
	ctx := context.Background()
	awsVersion := a.awsTemplateClone()
	a.exec("CREATE ROLE " + pq.QuoteIdentifier(third) + " NOLOGIN")
	t.Cleanup(func() { _ = a.pg.DropRole(context.Background(), third) }) // after the database
	a.exec(
		"CREATE TABLE public.reports (id int)",
		"ALTER TABLE public.reports OWNER TO "+pq.QuoteIdentifier(third),
		"GRANT SELECT ON public.reports TO "+pq.QuoteIdentifier(clone),
	)
	curID := a.writeCurrent(awsVersion)
	r := a.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	token := "71111111-2222-4333-8444-555555555555"
	for _, step := range []rotate.Step{rotate.CreateSecret, rotate.SetSecret} {
		if _, err := r.Run(ctx, a.secretID, token, step); err != nil {
			t.Fatal(step, err)
		}
	}
	_, err := r.Run(ctx, a.secretID, token, rotate.TestSecret)
	if !errors.Is(err, rotate.ErrTestFailed) || !strings.Contains(err.Error(), "SELECT on table public.reports") ||
		!strings.Contains(err.Error(), "granted to "+clone+" itself") {
		t.Fatalf("testSecret: %v, want ErrTestFailed naming the clone's own SELECT on public.reports", err)
	}
	t.Log(err)
	if id, _ := a.stage(rotate.StageCurrent); id != curID {
		t.Errorf("AWSCURRENT moved to %s", id)
	}
	a.exec("GRANT SELECT ON public.reports TO " + pq.QuoteIdentifier(app))
	for _, step := range []rotate.Step{rotate.TestSecret, rotate.FinishSecret} {
		if _, err := r.Run(ctx, a.secretID, token, step); err != nil {
			t.Fatal(step, err)
		}
	}
}
