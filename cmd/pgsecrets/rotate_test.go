package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/rotate"
)

// rotSecret gives the rig's secret the database location, as RDS secrets
// have it, so that rotate finds the database there.
func (r *checkRig) rotSecret(t *testing.T) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"engine": "postgres", "username": r.role, "password": r.password,
		"host": r.pg.Host(), "port": r.pg.Port(), "dbname": "postgres"})
	if _, err := r.sm.PutSecretValue(r.secretID, string(b)); err != nil {
		t.Fatal(err)
	}
	r.sm.SetEnv(t)
}

// appLoad runs SELECT 1 through the driver from 8 workers until stop;
// it returns the failure count.
func (r *checkRig) appLoad(t *testing.T) (stop func() int64) {
	t.Helper()
	db, err := sql.Open("pgsecrets", fmt.Sprintf("sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=1h",
		r.pg.CAFile(), r.secretID, r.sm.URL()))
	if err != nil {
		t.Fatal(err)
	}
	db.SetConnMaxLifetime(250 * time.Millisecond)
	var failed atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() {
			defer func() { finished <- struct{}{} }()
			for {
				select {
				case <-done:
					return
				default:
				}
				var one int
				if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	return func() int64 {
		close(done)
		for i := 0; i < 8; i++ {
			<-finished
		}
		db.Close()
		return failed.Load()
	}
}

func (r *checkRig) dsnFlag() string { return "sslmode=verify-full sslrootcert=" + r.pg.CAFile() }

func TestRotateCommand(t *testing.T) {
	r := newCheckRig(t)
	r.rotSecret(t)
	stop := r.appLoad(t)
	res := runCmd("rotate", "--secret-id", r.secretID, "--dsn", r.dsnFlag(), "--probe", "SELECT 1")
	t.Logf("%s", res)
	if res.code != 0 {
		t.Fatalf("exit %d", res.code)
	}
	for _, want := range []string{"createSecret", "setSecret", "testSecret", "finishSecret", "SCRAM verifier", "OK: AWSCURRENT is version"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if n := stop(); n != 0 {
		t.Errorf("%d failed queries during the rotation", n)
	}
	_, v, _ := r.sm.Version(r.secretID, "AWSCURRENT")
	r.planted = append(r.planted, v)
	assertNoSecret(t, res, r.planted...)
}

// An interrupted rotation: monitor reports it, --resume completes it;
// in a second run --rollback instead restores a working AWSCURRENT.
func TestRotateInterruptedResumeAndRollback(t *testing.T) {
	for _, fix := range []string{"--resume", "--rollback"} {
		t.Run(fix, func(t *testing.T) {
			r := newCheckRig(t)
			r.rotSecret(t)
			stop := r.appLoad(t)
			rot := rotate.New(r.sm.Client(), rotate.Options{ConnParams: r.dsnFlag()})
			token := "71111111-2222-4333-8444-55555555555" + fmt.Sprint(len(fix)%10)
			for _, step := range []rotate.Step{rotate.CreateSecret, rotate.SetSecret} {
				if _, err := rot.Run(context.Background(), r.secretID, token, step); err != nil {
					t.Fatal(err)
				}
			}
			mon := runCmd("monitor", "--dsn", r.dsnFlag(), r.secretID)
			t.Logf("%s", mon)
			if mon.code != 1 || !strings.Contains(mon.stdout, "AWSPENDING is on version "+token) || !strings.Contains(mon.stdout, "does not log in") {
				t.Errorf("monitor: exit %d", mon.code)
			}
			res := runCmd("rotate", "--secret-id", r.secretID, "--dsn", r.dsnFlag(), fix)
			t.Logf("%s", res)
			if res.code != 0 {
				t.Fatalf("exit %d", res.code)
			}
			if fix == "--rollback" && !strings.Contains(res.stdout, "promoted AWSPENDING") {
				t.Errorf("rollback did not promote the pending version")
			}
			if id, _, _ := r.sm.Version(r.secretID, "AWSCURRENT"); id != token {
				t.Errorf("AWSCURRENT on %s, want %s", id, token)
			}
			if n := stop(); n != 0 {
				t.Errorf("%d failed queries", n)
			}
			mon = runCmd("monitor", "--json", "--dsn", r.dsnFlag(), r.secretID)
			var rep struct {
				OK      bool
				Secrets []rotate.Status
			}
			if err := json.Unmarshal([]byte(mon.stdout), &rep); err != nil {
				t.Fatal(err, mon.stdout)
			}
			// Rotation is not enabled on the test secret: that problem stays.
			if len(rep.Secrets) != 1 || !rep.Secrets[0].CurrentLogsIn || rep.Secrets[0].StuckPending != "" {
				t.Errorf("monitor after the fix: %+v", rep.Secrets)
			}
			_, v, _ := r.sm.Version(r.secretID, "AWSCURRENT")
			r.planted = append(r.planted, v)
			assertNoSecret(t, res, r.planted...)
			assertNoSecret(t, mon, r.planted...)
		})
	}
}

// --dry-run shows the state and the plan and changes nothing.
func TestRotateDryRun(t *testing.T) {
	r := newCheckRig(t)
	r.rotSecret(t)
	before, _, _ := r.sm.Version(r.secretID, "AWSCURRENT")
	res := runCmd("rotate", "--secret-id", r.secretID, "--dsn", r.dsnFlag(), "--dry-run", "--strategy", "alternating")
	t.Logf("%s", res)
	if res.code != 0 || !strings.Contains(res.stdout, "would run createSecret") || !strings.Contains(res.stdout, "dry run: nothing changed") {
		t.Errorf("exit %d", res.code)
	}
	if after, _, _ := r.sm.Version(r.secretID, "AWSCURRENT"); after != before || len(r.sm.Stages(r.secretID)) != 2 {
		t.Errorf("the dry run changed the secret: %v", r.sm.Stages(r.secretID))
	}
	if res := runCmd("rotate", "--secret-id", r.secretID, "--resume", "--rollback"); res.code != 2 {
		t.Errorf("--resume --rollback: exit %d", res.code)
	}
	if res := runCmd("rotate"); res.code != 2 || !strings.Contains(res.stderr, "--secret-id is required") {
		t.Errorf("no secret id: exit %d, %s", res.code, res.stderr)
	}
}

// monitor --prefix finds the secrets by name.
func TestMonitorPrefix(t *testing.T) {
	r := newCheckRig(t)
	r.rotSecret(t)
	r.sm.CreateSecret("other/x", `{"username":"x","password":"y"}`)
	res := runCmd("monitor", "--json", "--dsn", r.dsnFlag(), "--prefix", "test/")
	var rep struct {
		OK      bool
		Secrets []rotate.Status
	}
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatal(err, res)
	}
	if len(rep.Secrets) != 1 || !strings.Contains(rep.Secrets[0].SecretID, r.secretID) || !rep.Secrets[0].CurrentLogsIn || rep.OK || res.code != 1 {
		t.Errorf("monitor --prefix: exit %d, %+v", res.code, rep)
	}
}
