package rotate_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	_ "github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/rotate"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

var seq atomic.Int64

// world is one test's database role, its secret, and what must never be
// printed.
type world struct {
	t        *testing.T
	pg       *testdb.Cluster
	sm       *smtest.Server
	user     string
	secretID string
	logs     *testkit.SyncBuffer
	logger   *slog.Logger
}

func newWorld(t *testing.T, extra map[string]any) *world {
	t.Helper()
	w := &world{t: t, pg: testdb.Shared(t), sm: smtest.Start(t), logs: &testkit.SyncBuffer{}}
	w.logger = slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w.user = fmt.Sprintf("rot_%d_%d", os.Getpid(), seq.Add(1))
	pw := testkit.RandomPassword()
	if err := w.pg.CreateRole(context.Background(), w.user, pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, u := range []string{w.user, w.user + "_clone"} {
			_, _ = w.pg.DB().Exec("DROP OWNED BY " + quote(u))
			_ = w.pg.DropRole(context.Background(), u)
		}
	})
	w.secretID = "test/" + w.user
	w.sm.CreateSecret(w.secretID, w.secretJSON(w.user, pw, extra))
	t.Cleanup(w.leakCheck)
	return w
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func (w *world) secretJSON(user, pw string, extra map[string]any) string {
	m := map[string]any{"engine": "postgres", "username": user, "password": pw,
		"host": w.pg.Host(), "port": w.pg.Port(), "dbname": "postgres"}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// leakCheck: no password any version of the secret ever held appears in
// the rotation's logs.
func (w *world) leakCheck() {
	logs := w.logs.String()
	for id := range w.sm.Stages(w.secretID) {
		v, ok := w.value(id)
		if ok && v["password"] != "" && strings.Contains(logs, v["password"].(string)) {
			w.t.Errorf("the rotation's logs contain the password of version %s", id)
		}
	}
}

func (w *world) value(versionID string) (map[string]any, bool) {
	out, err := w.sm.Client().GetSecretValue(context.Background(), getByID(w.secretID, versionID))
	if err != nil || out.SecretString == nil {
		return nil, false
	}
	var m map[string]any
	_ = json.Unmarshal([]byte(*out.SecretString), &m)
	return m, true
}

func (w *world) rotator(opt rotate.Options) *rotate.Rotator {
	if opt.ConnParams == "" {
		opt.ConnParams = "sslmode=verify-full sslrootcert=" + w.pg.CAFile()
	}
	opt.Logger = w.logger
	return rotate.New(w.sm.Client(), opt)
}

// driver opens the application's pool through pgsecrets, configured as in
// the driver's rotation tests.
func (w *world) driver() *sql.DB {
	w.t.Helper()
	c, err := pgsecrets.NewConnector(fmt.Sprintf("sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=1h",
		w.pg.CAFile(), w.secretID, w.sm.URL()), pgsecrets.WithLogger(w.logger))
	if err != nil {
		w.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
	w.t.Cleanup(func() { db.Close() })
	return db
}

// login tries a version's credentials.
func (w *world) login(version map[string]any) error {
	db, err := sql.Open("postgres", w.pg.DSN(version["username"].(string), version["password"].(string), "postgres"))
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Ping()
}

func (w *world) stage(stage string) (string, map[string]any) {
	id, _, ok := w.sm.Version(w.secretID, stage)
	if !ok {
		return "", nil
	}
	v, _ := w.value(id)
	return id, v
}

// writeCurrent writes v as a new AWSCURRENT version of the secret and
// returns its version id.
func (w *world) writeCurrent(v map[string]any) string {
	w.t.Helper()
	b, _ := json.Marshal(v)
	id, err := w.sm.PutSecretValue(w.secretID, string(b))
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

// changeCurrent writes a new AWSCURRENT version, the current fields with
// changes, and returns its version id.
func (w *world) changeCurrent(changes map[string]any) string {
	w.t.Helper()
	_, cur := w.stage(rotate.StageCurrent)
	for k, v := range changes {
		cur[k] = v
	}
	return w.writeCurrent(cur)
}

// admin is a superuser with a secret of its own, for masterarn.
func (w *world) admin() string {
	name := w.user + "_admin"
	pw := testkit.RandomPassword()
	if _, err := w.pg.DB().Exec("CREATE ROLE " + quote(name) + " LOGIN SUPERUSER PASSWORD '" + pw + "'"); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = w.pg.DropRole(context.Background(), name) })
	return w.sm.CreateSecret("test/admin/"+name, w.secretJSON(name, pw, nil))
}

// runTwice runs every step twice: the second run must change nothing.
func runTwice(t *testing.T, r *rotate.Rotator, secretID, token string) {
	t.Helper()
	for _, step := range rotate.Steps {
		res, err := r.Run(context.Background(), secretID, token, step)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		t.Logf("%s: %s (%s)", step, res.What, res.Took.Round(time.Millisecond))
		again, err := r.Run(context.Background(), secretID, token, step)
		if err != nil {
			t.Fatalf("%s again: %v", step, err)
		}
		if again.Changed {
			t.Errorf("%s run twice changed something the second time: %s", step, again.What)
		}
	}
}

// startLoad runs SELECT 1 from n workers through db, once it answers.
func startLoad(t *testing.T, db *sql.DB, n int) *testkit.Load {
	l := testkit.Start(t, n, func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
	l.WaitQueries(t, 50)
	return l
}

func TestSingleUserUnderLoad(t *testing.T) {
	w := newWorld(t, nil)
	_, before := w.stage(rotate.StageCurrent)
	l := startLoad(t, w.driver(), 16)
	r := w.rotator(rotate.Options{})
	token := "11111111-2222-4333-8444-555555555555"
	runTwice(t, r, w.secretID, token)
	time.Sleep(300 * time.Millisecond) // connections of the old password's era retire (250 ms lifetime)
	l.AssertNoFailures(t)
	id, after := w.stage(rotate.StageCurrent)
	if id != token || after["username"] != w.user || after["password"] == before["password"] {
		t.Fatalf("AWSCURRENT is %s for %v", id, after["username"])
	}
	if after["engine"] != "postgres" || after["host"] != w.pg.Host() {
		t.Errorf("fields lost in rotation: %v", after)
	}
	if err := w.login(before); err == nil {
		t.Error("the old password still logs in")
	}
	if err := w.login(after); err != nil {
		t.Errorf("the new password: %v", err)
	}
	if p, _ := w.stage(rotate.StagePending); p != "" {
		t.Errorf("AWSPENDING left on %s after the rotation", p)
	}
	if prev, _ := w.stage(rotate.StagePrevious); prev == "" {
		t.Error("no AWSPREVIOUS")
	}
}

func TestAlternatingUsersCarriesPrivilegesOver(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	db := w.pg.DB()
	group, clone := w.user+"_owner", w.user+"_clone"
	schema := w.user + "_s"
	for _, q := range []string{
		"CREATE ROLE " + quote(group) + " NOLOGIN",
		"CREATE SCHEMA " + quote(schema),
		"CREATE TABLE " + quote(schema) + ".orders (id int)",
		"ALTER TABLE " + quote(schema) + ".orders OWNER TO " + quote(group),
		"GRANT USAGE ON SCHEMA " + quote(schema) + " TO " + quote(w.user),
		"GRANT " + quote(group) + " TO " + quote(w.user),
		"CREATE TABLE " + quote(schema) + ".audit (id int)",
		"CREATE ROLE " + quote(clone) + " LOGIN", // an older clone, without what came later
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	t.Cleanup(func() {
		db.Exec("DROP SCHEMA " + quote(schema) + " CASCADE")
		db.Exec("DROP ROLE " + quote(group))
	})
	// Gained after the clone was made: a grant, a membership (above), a
	// role setting.
	for _, q := range []string{
		"GRANT SELECT, INSERT ON " + quote(schema) + ".audit TO " + quote(w.user),
		"ALTER ROLE " + quote(w.user) + " SET search_path = " + quote(schema) + ", public",
		"ALTER ROLE " + quote(w.user) + " SET statement_timeout = '5s'",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	w.sm.CreateSecret(w.secretID+"-x", "{}") // unrelated secret: ignored
	w.changeCurrent(map[string]any{"masterarn": w.admin()})

	l := startLoad(t, w.driver(), 16)
	r := w.rotator(rotate.Options{Strategy: rotate.AlternatingUsers,
		Probes: []string{"SELECT 1 FROM orders LIMIT 1", "SELECT 1 FROM audit LIMIT 1"}})
	token := "21111111-2222-4333-8444-555555555555"
	runTwice(t, r, w.secretID, token)
	_, after := w.stage(rotate.StageCurrent)
	if after["username"] != clone {
		t.Fatalf("AWSCURRENT user %v, want %s", after["username"], clone)
	}
	var sp, timeout string
	var member, canInsert bool
	if err := db.QueryRowContext(ctx, `SELECT
			coalesce((SELECT c FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setrole = $1::regrole AND c LIKE 'search_path=%'), ''),
			coalesce((SELECT c FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setrole = $1::regrole AND c LIKE 'statement_timeout=%'), ''),
			pg_has_role($1, $2, 'MEMBER'), has_table_privilege($1, $3, 'INSERT')`,
		clone, group, schema+".audit").Scan(&sp, &timeout, &member, &canInsert); err != nil {
		t.Fatal(err)
	}
	if !member || !canInsert || !strings.Contains(sp, schema) || !strings.Contains(sp, "public") || timeout != "statement_timeout=5s" {
		t.Errorf("clone: member of group %v, INSERT on audit %v, %q, %q", member, canInsert, sp, timeout)
	}
	// The clone logs in acting as the original, and resolves unqualified
	// names like it.
	cs, err := sql.Open("postgres", w.pg.DSN(clone, after["password"].(string), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	var session, current string
	var n int
	if err := cs.QueryRowContext(ctx, "SELECT session_user, current_user, (SELECT count(*) FROM audit)").Scan(&session, &current, &n); err != nil {
		t.Fatal(err)
	}
	if session != clone || current != w.user {
		t.Errorf("a clone session: session_user %s, current_user %s; want %s, %s", session, current, clone, w.user)
	}

	// And back: the original gets the pending version, the clone's
	// password stays what it was (it keeps working until the next one).
	token2 := "31111111-2222-4333-8444-555555555555"
	runTwice(t, r, w.secretID, token2)
	_, back := w.stage(rotate.StageCurrent)
	if back["username"] != w.user {
		t.Errorf("second rotation: user %v, want %s", back["username"], w.user)
	}
	if err := w.login(after); err != nil {
		t.Errorf("the previous (clone) credentials stopped working: %v", err)
	}
	l.AssertNoFailures(t)
}

// The original user owns a table, which the clone uses through its
// membership. A DBA who revokes that membership after setSecret breaks the
// clone: testSecret names what it lacks and why; AWSCURRENT stays, the
// application is unaffected. Granted again, the rotation completes.
func TestAlternatingTestSecretFailsOnMissingPrivilege(t *testing.T) {
	w := newWorld(t, nil)
	db := w.pg.DB()
	table := w.user + "_owned"
	clone := w.user + "_clone"
	if _, err := db.Exec("CREATE TABLE " + quote(table) + " (id int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("ALTER TABLE " + quote(table) + " OWNER TO " + quote(w.user)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + quote(table)) })
	curID := w.changeCurrent(map[string]any{"masterarn": w.admin()})

	l := startLoad(t, w.driver(), 8)
	r := w.rotator(rotate.Options{Strategy: rotate.AlternatingUsers})
	token := "41111111-2222-4333-8444-555555555555"
	for _, step := range []rotate.Step{rotate.CreateSecret, rotate.SetSecret} {
		if _, err := r.Run(context.Background(), w.secretID, token, step); err != nil {
			t.Fatal(step, err)
		}
	}
	if _, err := db.Exec("REVOKE " + quote(w.user) + " FROM " + quote(clone)); err != nil {
		t.Fatal(err)
	}
	_, err := r.Run(context.Background(), w.secretID, token, rotate.TestSecret)
	if !errors.Is(err, rotate.ErrTestFailed) || !strings.Contains(err.Error(), "on table public."+table) ||
		!strings.Contains(err.Error(), clone+" is not a member of "+w.user) || strings.Contains(err.Error(), "group role") {
		t.Fatalf("testSecret: %v, want ErrTestFailed naming %s and the revoked membership", err, table)
	}
	t.Log(err)
	if id, _ := w.stage(rotate.StageCurrent); id != curID {
		t.Errorf("AWSCURRENT moved to %s", id)
	}
	if _, err := db.Exec("GRANT " + quote(w.user) + " TO " + quote(clone)); err != nil {
		t.Fatal(err)
	}
	for _, step := range []rotate.Step{rotate.TestSecret, rotate.FinishSecret} {
		if _, err := r.Run(context.Background(), w.secretID, token, step); err != nil {
			t.Fatal(step, err)
		}
	}
	l.AssertNoFailures(t)
}

// Passwords with quotes, backslashes and dollars round-trip through
// ALTER ROLE and a login.
func TestPasswordAlphabet(t *testing.T) {
	w := newWorld(t, nil)
	r := w.rotator(rotate.Options{ExcludeCharacters: "-", PasswordLength: 64})
	for i := 0; i < 3; i++ {
		if _, _, err := r.Rotate(context.Background(), w.secretID); err != nil {
			t.Fatal(err)
		}
		_, v := w.stage(rotate.StageCurrent)
		if err := w.login(v); err != nil {
			t.Fatalf("password %d does not log in: %v", i, err)
		}
	}
	// Local generation (GetRandomPassword denied) keeps the rules.
	w.sm.Inject("GetRandomPassword", smtest.Fault{Kind: smtest.Deny})
	_, res, err := r.Rotate(context.Background(), w.secretID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res[0].What, "crypto/rand") {
		t.Errorf("createSecret: %s", res[0].What)
	}
	_, v := w.stage(rotate.StageCurrent)
	if err := w.login(v); err != nil {
		t.Fatal(err)
	}
	if pw := v["password"].(string); len(pw) != 64 || !strings.ContainsAny(pw, `!"#$%&'()*+,-./:;<=>?@[\]^_{|}~`+"`") {
		t.Errorf("local password: %d characters", len(pw))
	}
}

// The contract checks a Lambda invocation needs.
func TestContract(t *testing.T) {
	w := newWorld(t, nil)
	r := w.rotator(rotate.Options{EnforceContract: true})
	token := "51111111-2222-4333-8444-555555555555"
	if _, err := r.Run(context.Background(), w.secretID, token, rotate.CreateSecret); !errors.Is(err, rotate.ErrContract) || !strings.Contains(err.Error(), "not enabled") {
		t.Errorf("rotation disabled: %v", err)
	}
	if err := w.sm.SetRotation(w.secretID, true, 30, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(context.Background(), w.secretID, token, rotate.CreateSecret); !errors.Is(err, rotate.ErrContract) || !strings.Contains(err.Error(), "not a version") {
		t.Errorf("unknown token: %v", err)
	}
	// Secrets Manager creates the pending version before invoking the
	// function; with it, the four steps run.
	if _, err := rotate.New(w.sm.Client(), rotate.Options{}).Run(context.Background(), w.secretID, token, rotate.CreateSecret); err != nil {
		t.Fatal(err)
	}
	runTwice(t, r, w.secretID, token)
	res, err := r.Run(context.Background(), w.secretID, token, rotate.SetSecret)
	if err != nil || res.Changed || !strings.Contains(res.What, "already AWSCURRENT") {
		t.Errorf("a step after the end: %+v, %v", res, err)
	}
}

// A rotation interrupted after setSecret: the driver keeps serving through
// AWSPENDING, and Resume completes it.
func TestResumeAfterSetSecret(t *testing.T) {
	w := newWorld(t, nil)
	l := startLoad(t, w.driver(), 16)
	r := w.rotator(rotate.Options{})
	token := "61111111-2222-4333-8444-555555555555"
	for _, step := range []rotate.Step{rotate.CreateSecret, rotate.SetSecret} {
		if _, err := r.Run(context.Background(), w.secretID, token, step); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // the application runs on the half-done rotation
	got, res, err := r.Resume(context.Background(), w.secretID)
	if err != nil || got != token {
		t.Fatalf("Resume: %s, %v", got, err)
	}
	for _, x := range res[:2] {
		if x.Changed {
			t.Errorf("%s redone on resume: %s", x.Step, x.What)
		}
	}
	l.AssertNoFailures(t)
	if id, _ := w.stage(rotate.StageCurrent); id != token {
		t.Errorf("AWSCURRENT on %s", id)
	}
	if _, _, err := r.Resume(context.Background(), w.secretID); err == nil || !strings.Contains(err.Error(), "no rotation in progress") {
		t.Errorf("Resume with nothing to do: %v", err)
	}
}

func getByID(secretID, versionID string) *secretsmanager.GetSecretValueInput {
	return &secretsmanager.GetSecretValueInput{SecretId: aws.String(secretID), VersionId: aws.String(versionID)}
}
