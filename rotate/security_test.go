package rotate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/rotate"
)

// These tests play whoever can write the application's secret
// (PutSecretValue) but knows no database password, and whoever answers on
// the network path: the admin's password reaches nothing but the real
// database, and no role other than the rotated user and its alternate
// changes.

// role is a database role with a password the test knows.
type role struct{ name, password string }

// makeRole creates a role with attributes ("SUPERUSER", "CREATEROLE"…).
func (w *world) makeRole(suffix, attrs string) role {
	w.t.Helper()
	r := role{name: w.user + "_" + suffix, password: testkit.RandomPassword()}
	if _, err := w.pg.DB().Exec(fmt.Sprintf("CREATE ROLE %s LOGIN %s PASSWORD '%s'", quote(r.name), attrs, r.password)); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		for _, n := range []string{r.name, r.name + "_clone"} {
			_, _ = w.pg.DB().Exec("DROP OWNED BY " + quote(n))
			_ = w.pg.DropRole(context.Background(), n)
		}
	})
	return r
}

// adminSecret stores r as an admin secret; without host it looks like an
// RDS-managed master secret (username and password only).
func (w *world) adminSecret(r role, fields map[string]any) string {
	m := map[string]any{"username": r.name, "password": r.password}
	for k, v := range fields {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return w.sm.CreateSecret("test/admin/"+r.name, string(b))
}

func (w *world) logsIn(r role) bool {
	return w.login(map[string]any{"username": r.name, "password": r.password}) == nil
}

func (w *world) roleExists(name string) bool {
	var ok bool
	if err := w.pg.DB().QueryRow("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&ok); err != nil {
		w.t.Fatal(err)
	}
	return ok
}

func (w *world) caParams() string { return "sslrootcert=" + w.pg.CAFile() }

// A secret pointed at the attacker's server, with a master secret that
// names no host (as RDS-managed ones): the admin's password never leaves
// for the host the application's secret names, whatever TLS the attacker
// offers.
func TestTamperedHostGetsNoAdminPassword(t *testing.T) {
	for _, tlsOn := range []bool{true, false} {
		t.Run(fmt.Sprintf("impostor TLS %v", tlsOn), func(t *testing.T) {
			w := newWorld(t, nil)
			imp := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: tlsOn})
			admin := w.makeRole("admin", "SUPERUSER")
			arn := w.adminSecret(admin, nil)
			w.changeCurrent(map[string]any{"host": imp.Host(), "port": imp.Port(), "password": "attacker-guess", "masterarn": arn})

			// Nothing pins the admin's location: refused before any login.
			r := w.rotator(rotate.Options{ConnParams: w.caParams()})
			_, _, err := r.Rotate(context.Background(), w.secretID)
			if !errors.Is(err, rotate.ErrRefused) || !strings.Contains(err.Error(), "names no host") {
				t.Fatalf("rotation: %v, want ErrRefused (the admin secret names no host)", err)
			}
			// The operator pins the real server: the secret's other port is
			// refused, and the admin still logs in nowhere else.
			r = w.rotator(rotate.Options{ConnParams: fmt.Sprintf("host=%s port=%d %s", w.pg.Host(), w.pg.Port(), w.caParams())})
			_, _, err = r.Rotate(context.Background(), w.secretID)
			if !errors.Is(err, rotate.ErrRefused) || !strings.Contains(err.Error(), fmt.Sprint(imp.Port())) {
				t.Fatalf("rotation with a pinned host: %v, want ErrRefused naming the secret's port", err)
			}
			imp.Settle(t)
			if imp.Saw(admin.password) {
				t.Error("the admin's password reached the impostor")
			}
			for _, u := range imp.Users() {
				if u == admin.name {
					t.Error("the impostor saw a login as the admin")
				}
			}
			if !w.logsIn(admin) {
				t.Error("the admin's password changed")
			}
		})
	}
}

// The network path to the admin's server answers with a server of its
// own: the admin's login verifies the certificate by default, so the
// password is not sent; only an explicit sslmode=require sends it, and
// that choice is logged.
func TestAdminLoginVerifiesTheServer(t *testing.T) {
	w := newWorld(t, nil)
	imp := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	admin := w.makeRole("admin", "SUPERUSER")
	// The application's secret names the server as "localhost"; the
	// admin's says 127.0.0.1 at a port an attacker answers on.
	arn := w.adminSecret(admin, map[string]any{"host": imp.Host(), "port": imp.Port()})
	w.changeCurrent(map[string]any{"host": "localhost", "masterarn": arn})
	opt := rotate.Options{ConnParams: w.caParams(), DatabaseHosts: []string{"localhost"}}
	_, _, err := w.rotator(opt).Rotate(context.Background(), w.secretID)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("rotation: %v, want a certificate error from the admin's login", err)
	}
	imp.Settle(t)
	if imp.Saw(admin.password) || len(imp.Passwords()) != 0 {
		t.Fatal("the admin's password reached a server whose certificate did not verify")
	}
	if strings.Contains(w.logs.String(), "do not verify the database server") {
		t.Error("a weak-TLS warning without a weak sslmode")
	}
	// The explicit, logged opt-out.
	opt.ConnParams = "sslmode=require"
	_, _, _ = w.rotator(opt).Rotate(context.Background(), w.secretID)
	imp.Settle(t)
	if !imp.Saw(admin.password) {
		t.Error("with sslmode=require the impostor should have received the password (the listener proves nothing otherwise)")
	}
	if !strings.Contains(w.logs.String(), "do not verify the database server") {
		t.Error("sslmode=require was not logged as a weaker choice")
	}
}

// The secret rewritten to name another role: the superuser, another
// application's role. AWSCURRENT does not log in (the writer does not know
// that role's password), so nothing is done as the admin: no password
// changes, no clone is created.
func TestTamperedUserChangesNoRole(t *testing.T) {
	for _, st := range []rotate.Strategy{rotate.SingleUser, rotate.AlternatingUsers} {
		for _, victimAttrs := range []string{"SUPERUSER", ""} {
			t.Run(fmt.Sprintf("%s %q", st, victimAttrs), func(t *testing.T) {
				w := newWorld(t, nil)
				admin := w.makeRole("admin", "SUPERUSER")
				victim := w.makeRole("victim", victimAttrs)
				arn := w.adminSecret(admin, map[string]any{"host": w.pg.Host(), "port": w.pg.Port()})
				w.changeCurrent(map[string]any{"username": victim.name, "password": "attacker-guess", "masterarn": arn})
				_, _, err := w.rotator(rotate.Options{Strategy: st}).Rotate(context.Background(), w.secretID)
				if !errors.Is(err, rotate.ErrRefused) || !strings.Contains(err.Error(), "does not log in") {
					t.Fatalf("rotation: %v, want ErrRefused (AWSCURRENT does not log in)", err)
				}
				if !w.logsIn(victim) || !w.logsIn(admin) {
					t.Error("a password changed")
				}
				if w.roleExists(victim.name + "_clone") {
					t.Error("a clone of the victim was created")
				}
			})
		}
	}
}

// A pending version written by someone else, naming another user or
// another host, is refused before it is used.
func TestTamperedPendingRefused(t *testing.T) {
	w := newWorld(t, nil)
	imp := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	admin := w.makeRole("admin", "SUPERUSER")
	victim := w.makeRole("victim", "")
	arn := w.adminSecret(admin, map[string]any{"host": w.pg.Host(), "port": w.pg.Port()})
	w.changeCurrent(map[string]any{"masterarn": arn})
	_, cur := w.stage(rotate.StageCurrent)
	r := w.rotator(rotate.Options{ConnParams: "sslmode=require " + w.caParams()})
	for name, change := range map[string]map[string]any{
		"user": {"username": victim.name},
		"host": {"host": imp.Host(), "port": imp.Port()},
	} {
		t.Run(name, func(t *testing.T) {
			pend := map[string]any{}
			for k, v := range cur {
				pend[k] = v
			}
			pend["password"] = "chosen-by-the-attacker"
			for k, v := range change {
				pend[k] = v
			}
			b, _ := json.Marshal(pend)
			token := fmt.Sprintf("a%07x-2222-4333-8444-555555555555", name[0])
			if _, err := w.sm.Client().PutSecretValue(context.Background(), &secretsmanager.PutSecretValueInput{SecretId: aws.String(w.secretID),
				ClientRequestToken: aws.String(token), SecretString: aws.String(string(b)), VersionStages: []string{rotate.StagePending}}); err != nil {
				t.Fatal(err)
			}
			for _, step := range []rotate.Step{rotate.SetSecret, rotate.TestSecret} {
				if _, err := r.Run(context.Background(), w.secretID, token, step); !errors.Is(err, rotate.ErrRefused) {
					t.Errorf("%s: %v, want ErrRefused", step, err)
				}
			}
		})
	}
	imp.Settle(t)
	if imp.Conns() != 0 {
		t.Errorf("the impostor named by a pending version was dialled %d times", imp.Conns())
	}
	if !w.logsIn(victim) || !w.logsIn(admin) {
		t.Error("a password changed")
	}
}

// Roles with power beyond the application's are never targets unless the
// operator opts in, even when the secret's own credentials log in.
func TestPrivilegedTargetsRefused(t *testing.T) {
	cases := map[string]func(w *world) role{
		"CREATEROLE": func(w *world) role { return w.makeRole("cr", "CREATEROLE") },
		"BYPASSRLS":  func(w *world) role { return w.makeRole("rls", "BYPASSRLS") },
		"member of a superuser role": func(w *world) role {
			g := w.makeRole("grp", "SUPERUSER")
			r := w.makeRole("member", "")
			if _, err := w.pg.DB().Exec("GRANT " + quote(g.name) + " TO " + quote(r.name)); err != nil {
				w.t.Fatal(err)
			}
			return r
		},
		"member of pg_read_server_files": func(w *world) role {
			r := w.makeRole("files", "")
			if _, err := w.pg.DB().Exec("GRANT pg_read_server_files TO " + quote(r.name)); err != nil {
				w.t.Fatal(err)
			}
			return r
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, nil)
			admin := w.makeRole("admin", "SUPERUSER")
			target := mk(w)
			arn := w.adminSecret(admin, map[string]any{"host": w.pg.Host(), "port": w.pg.Port()})
			w.changeCurrent(map[string]any{"username": target.name, "password": target.password, "masterarn": arn})
			_, _, err := w.rotator(rotate.Options{}).Rotate(context.Background(), w.secretID)
			if !errors.Is(err, rotate.ErrRefused) || !strings.Contains(err.Error(), "privileged") {
				t.Fatalf("rotation: %v, want ErrRefused (privileged)", err)
			}
			if !w.logsIn(target) {
				t.Fatal("the privileged role's password changed")
			}
			// The operator's explicit opt-in.
			r := w.rotator(rotate.Options{AllowPrivilegedRoles: true})
			if _, _, err := r.Resume(context.Background(), w.secretID); err != nil {
				t.Fatalf("with AllowPrivilegedRoles: %v", err)
			}
			if w.logsIn(target) {
				t.Error("the opted-in rotation did not change the password")
			}
		})
	}
	t.Run("the admin itself", func(t *testing.T) {
		w := newWorld(t, nil)
		admin := w.makeRole("admin", "SUPERUSER")
		arn := w.adminSecret(admin, map[string]any{"host": w.pg.Host(), "port": w.pg.Port()})
		w.changeCurrent(map[string]any{"username": admin.name, "password": admin.password, "masterarn": arn})
		_, _, err := w.rotator(rotate.Options{}).Rotate(context.Background(), w.secretID)
		if !errors.Is(err, rotate.ErrRefused) {
			t.Fatalf("rotation: %v, want ErrRefused", err)
		}
		if !w.logsIn(admin) {
			t.Error("the admin's password changed")
		}
	})
}
