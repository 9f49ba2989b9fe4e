package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// checkRig is one check test's world: a role with a random password in the
// shared PostgreSQL, and a Secrets Manager of its own holding its secret.
type checkRig struct {
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	secretID string
	planted  []string // every password the test made up
}

var roleSeq atomic.Int64

func newCheckRig(t *testing.T) *checkRig {
	t.Helper()
	r := &checkRig{pg: testdb.Shared(t), sm: smtest.Start(t)}
	r.role = fmt.Sprintf("chk_%d", roleSeq.Add(1))
	r.password = randomPassword()
	r.planted = append(r.planted, r.password)
	r.secretID = "test/" + r.role
	if err := r.pg.CreateRole(context.Background(), r.role, r.password); err != nil {
		t.Fatal(err)
	}
	r.sm.CreateSecret(r.secretID, secretJSON(r.role, r.password))
	return r
}

func secretJSON(user, password string) string {
	b, _ := json.Marshal(map[string]any{"username": user, "password": password, "engine": "postgres"})
	return string(b)
}

// dsn reaches the shared cluster over verified TLS with the rig's secret;
// extra is appended (later keys win).
func (r *checkRig) dsn(extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), r.secretID, r.sm.URL(), extra)
}

// check runs "check" in both forms, asserts that neither leaks a password
// and that they agree, and returns the human run and the JSON report.
func (r *checkRig) check(t *testing.T, dsn string) (result, map[string]any) {
	t.Helper()
	human := runCmd("check", "--timeout", "60s", dsn)
	t.Logf("check, human form:\n%s", human)
	asJSON := runCmd("check", "--json", dsn)
	t.Logf("check --json:\n%s", asJSON.stdout)
	assertNoSecret(t, human, r.planted...)
	assertNoSecret(t, asJSON, r.planted...)
	var rep map[string]any
	if err := json.Unmarshal([]byte(asJSON.stdout), &rep); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, asJSON)
	}
	if asJSON.code != human.code {
		t.Errorf("--json exits %d, the human form %d", asJSON.code, human.code)
	}
	if asJSON.stderr != "" {
		t.Errorf("--json wrote to stderr: %s", asJSON.stderr)
	}
	ok, _ := rep["ok"].(bool)
	if ok != (human.code == 0) {
		t.Errorf("json ok=%v but exit %d", ok, human.code)
	}
	if !ok && "FAIL: "+str(rep, "reason") != human.lastLine() {
		t.Errorf("json reason %q differs from the human verdict %q", str(rep, "reason"), human.lastLine())
	}
	return human, rep
}

// str reads a string at a dotted path of a decoded JSON object.
func str(m map[string]any, path string) string {
	v := get(m, path)
	s, _ := v.(string)
	return s
}

func get(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = obj[k]
	}
	return v
}

func TestCheckOK(t *testing.T) {
	r := newCheckRig(t)
	if err := r.sm.SetRotation(r.secretID, true, 30, time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	human, rep := r.check(t, r.dsn(""))
	if human.code != 0 {
		t.Fatalf("exit %d", human.code)
	}
	for _, want := range []string{
		"user       " + r.role,
		"database   postgres",
		"password   present",
		"tls        encrypted, TLSv1.",
		"db.SetConnMaxLifetime(10 * time.Minute)",
		"rotation   enabled, every 30 days",
		"last       2025-01-02T03:04:05Z",
		"no AWSPENDING version",
		"aws creds  from EnvConfigCredentials",
	} {
		if !strings.Contains(human.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`^OK: logged in as ` + r.role + ` to postgres over TLSv1\.[23] in `).MatchString(human.lastLine()) {
		t.Errorf("last line %q", human.lastLine())
	}
	if strings.Contains(human.stdout, "WARNING") {
		t.Errorf("unexpected warning")
	}

	for path, want := range map[string]any{
		"ok":                                       true,
		"server.current_user":                      r.role,
		"server.current_database":                  "postgres",
		"tls.encrypted":                            true,
		"tls.sslmode":                              "verify-full",
		"secret.id":                                r.secretID,
		"secret.username":                          r.role,
		"secret.password":                          "present",
		"secret.region":                            "us-east-1",
		"secret.endpoint":                          r.sm.URL(),
		"rotation.known":                           true,
		"rotation.enabled":                         true,
		"rotation.automatically_after_days":        float64(30),
		"rotation.pending_version":                 false,
		"recommendation.conn_max_lifetime":         "10m0s",
		"recommendation.code":                      "db.SetConnMaxLifetime(10 * time.Minute)",
		"driver.auth_failures":                     float64(0),
		"recommendation.conn_max_lifetime_seconds": float64(600),
	} {
		if got := get(rep, path); got != want {
			t.Errorf("json %s = %v, want %v", path, got, want)
		}
	}
	if v, _ := get(rep, "tls.version").(string); !strings.HasPrefix(v, "TLSv1.") {
		t.Errorf("json tls.version = %q", v)
	}
	for _, k := range []string{"parse_dsn", "aws_client", "aws_credentials", "get_secret_value", "describe_secret", "login", "queries", "total"} {
		if _, ok := get(rep, "timings_ms."+k).(float64); !ok {
			t.Errorf("json timings_ms.%s missing", k)
		}
	}
}

// A rotation stuck between setSecret and finishSecret: AWSCURRENT is
// rejected, the driver logs in with AWSPENDING, and check says so.
func TestCheckPendingRotation(t *testing.T) {
	r := newCheckRig(t)
	pw := randomPassword()
	r.planted = append(r.planted, pw)
	v, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, pw), "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	human, rep := r.check(t, r.dsn(""))
	if human.code != 0 {
		t.Fatalf("exit %d", human.code)
	}
	for _, want := range []string{"AWSPENDING on version " + v, "recovered with the AWSPENDING version"} {
		if !strings.Contains(human.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if get(rep, "rotation.pending_version") != true || str(rep, "rotation.pending_version_id") != v {
		t.Errorf("json rotation: %v", rep["rotation"])
	}
}

func TestCheckFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := l.Addr().(*net.TCPAddr).Port
	l.Close()

	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, r *checkRig) (dsn string)
		code    int
		failure string // the JSON failure code; "" when the check passes
		want    string // in the human output (the FAIL line for failures)
	}{
		{
			name:    "secret not found",
			setup:   func(t *testing.T, r *checkRig) string { return r.dsn("secret_id=no/such/secret") },
			code:    1,
			failure: "secret_not_found",
			want:    `FAIL: secret not found: check secret_id ("no/such/secret") and the region (us-east-1)`,
		},
		{
			name: "access denied",
			setup: func(t *testing.T, r *checkRig) string {
				r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Deny})
				return r.dsn("")
			},
			code:    1,
			failure: "access_denied",
			want:    "FAIL: access denied: the role needs secretsmanager:GetSecretValue on test/chk_",
		},
		{
			name: "KMS decryption failure",
			setup: func(t *testing.T, r *checkRig) string {
				r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.DecryptionFailure})
				return r.dsn("")
			},
			code:    1,
			failure: "access_denied",
			want:    "FAIL: access denied: KMS would not decrypt the secret: the role needs kms:Decrypt",
		},
		{
			name: "secret scheduled for deletion",
			setup: func(t *testing.T, r *checkRig) string {
				if err := r.sm.DeleteSecret(r.secretID, false); err != nil {
					t.Fatal(err)
				}
				return r.dsn("")
			},
			code:    1,
			failure: "secret_not_readable",
			want:    "InvalidRequestException): it is probably scheduled for deletion",
		},
		{
			name: "store down",
			setup: func(t *testing.T, r *checkRig) string {
				r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
				return r.dsn("")
			},
			code:    1,
			failure: "store_unavailable",
			want:    "FAIL: secret store unavailable: Secrets Manager answered InternalServiceError",
		},
		{
			name: "DescribeSecret denied",
			setup: func(t *testing.T, r *checkRig) string {
				r.sm.Inject("DescribeSecret", smtest.Fault{Kind: smtest.Deny})
				return r.dsn("")
			},
			code: 0,
			want: "DescribeSecret not allowed (needs secretsmanager:DescribeSecret); rotation settings unknown",
		},
		{
			name: "password field missing",
			setup: func(t *testing.T, r *checkRig) string {
				if _, err := r.sm.PutSecretValue(r.secretID, `{"username":"`+r.role+`","engine":"postgres"}`); err != nil {
					t.Fatal(err)
				}
				return r.dsn("")
			},
			code:    1,
			failure: "malformed_secret",
			want:    `FAIL: malformed secret: field "password" missing`,
		},
		{
			name: "binary secret",
			setup: func(t *testing.T, r *checkRig) string {
				r.sm.CreateBinarySecret(r.secretID+"-bin", []byte(secretJSON(r.role, r.password)))
				return r.dsn("secret_id=" + r.secretID + "-bin")
			},
			code:    1,
			failure: "malformed_secret",
			want:    "FAIL: malformed secret: the secret has no SecretString (binary secrets are not supported)",
		},
		{
			name: "wrong password",
			setup: func(t *testing.T, r *checkRig) string {
				wrong := "pw-wrong-" + randomPassword()
				r.planted = append(r.planted, wrong)
				if _, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, wrong)); err != nil {
					t.Fatal(err)
				}
				return r.dsn("")
			},
			code:    1,
			failure: "auth_failed",
			want:    `FAIL: database rejected the credentials (SQLSTATE 28P01): the secret's password does not match the role's (role "chk_`,
		},
		{
			name:    "database unreachable",
			setup:   func(t *testing.T, r *checkRig) string { return r.dsn(fmt.Sprintf("port=%d", deadPort)) },
			code:    1,
			failure: "database_unreachable",
			want:    fmt.Sprintf("FAIL: cannot reach the database at 127.0.0.1:%d: connect: connection refused", deadPort),
		},
		{
			name:    "unknown database",
			setup:   func(t *testing.T, r *checkRig) string { return r.dsn("dbname=no_such_db") },
			code:    1,
			failure: "database_error",
			want:    `FAIL: database error (SQLSTATE 3D000): database "no_such_db" does not exist: check dbname`,
		},
		{
			name: "untrusted server certificate",
			setup: func(t *testing.T, r *checkRig) string {
				return r.dsn("sslrootcert=system")
			},
			code:    1,
			failure: "tls",
			want:    "FAIL: TLS verification failed: the server's certificate is not signed by a CA in sslrootcert (system)",
		},
		{
			name: "unencrypted against a TLS-only server",
			setup: func(t *testing.T, r *checkRig) string {
				if err := r.pg.SetHostSSLOnly(context.Background(), true); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := r.pg.SetHostSSLOnly(context.Background(), false); err != nil {
						t.Error(err)
					}
				})
				return r.dsn("sslmode=disable")
			},
			code:    1,
			failure: "auth_failed",
			want:    "FAIL: database refused the login (SQLSTATE 28000): the session is unencrypted (sslmode=disable) and pg_hba.conf admits this role only over TLS",
		},
		{
			name:  "unencrypted session allowed",
			setup: func(t *testing.T, r *checkRig) string { return r.dsn("sslmode=disable") },
			code:  0,
			want:  "WARNING: the session is not encrypted",
		},
		{
			name: "bad DSN value",
			setup: func(t *testing.T, r *checkRig) string {
				return r.dsn("password=" + r.password + " secret_ttl=soon")
			},
			code:    1,
			failure: "invalid_dsn",
			want:    `FAIL: invalid DSN: key secret_ttl: "soon" is not a Go duration`,
		},
		{
			name: "DSN without secret_id",
			setup: func(t *testing.T, r *checkRig) string {
				return fmt.Sprintf("host=%s password=%s", r.pg.Host(), r.password)
			},
			code:    1,
			failure: "invalid_dsn",
			want:    "FAIL: invalid DSN: key secret_id: is required",
		},
		{
			name: "malformed DSN with a password",
			setup: func(t *testing.T, r *checkRig) string {
				return "host=x " + r.password + " secret_id=a"
			},
			code:    1,
			failure: "invalid_dsn",
			want:    `FAIL: invalid DSN: missing "=" after the key at byte 8`,
		},
		{
			name:    "DSN lib/pq rejects",
			setup:   func(t *testing.T, r *checkRig) string { return r.dsn("sslmode=bogus") },
			code:    1,
			failure: "invalid_dsn",
			want:    `FAIL: invalid DSN: lib/pq rejected the DSN: pq: `,
		},
		{
			name: "no AWS region",
			setup: func(t *testing.T, r *checkRig) string {
				t.Setenv("AWS_REGION", "")
				t.Setenv("AWS_DEFAULT_REGION", "")
				return r.dsn("")
			},
			code:    1,
			failure: "no_region",
			want:    "FAIL: no AWS region: set secret_region=<region> in the DSN",
		},
		{
			name: "no AWS credentials",
			setup: func(t *testing.T, r *checkRig) string {
				t.Setenv("AWS_ACCESS_KEY_ID", "")
				t.Setenv("AWS_SECRET_ACCESS_KEY", "")
				return r.dsn("")
			},
			code:    1,
			failure: "aws_credentials",
			want:    "FAIL: no usable AWS credentials: ",
		},
		{
			name: "AWS credentials refused",
			setup: func(t *testing.T, r *checkRig) string {
				// A store that knows only another access key answers
				// UnrecognizedClientException, as AWS does for a revoked key.
				other := smtest.Start(t, smtest.WithAccessKeyID("AKIDSOMEONEELSE"))
				other.CreateSecret(r.secretID, secretJSON(r.role, r.password))
				return strings.Replace(r.dsn(""), r.sm.URL(), other.URL(), 1)
			},
			code:    1,
			failure: "aws_credentials",
			want:    "FAIL: the AWS credentials were refused (UnrecognizedClientException)",
		},
		{
			name: "region from the secret's ARN",
			setup: func(t *testing.T, r *checkRig) string {
				t.Setenv("AWS_REGION", "")
				return r.dsn("secret_id=" + r.sm.ARN(r.secretID))
			},
			code: 0,
			want: "region     us-east-1 (from the secret's ARN)",
		},
		{
			name: "secret_region over the ARN's",
			setup: func(t *testing.T, r *checkRig) string {
				return r.dsn("secret_id=" + r.sm.ARN(r.secretID) + " secret_region=us-west-2")
			},
			code: 0,
			want: "region     us-west-2 (secret_region)",
		},
		{
			name: "DSN password ignored",
			setup: func(t *testing.T, r *checkRig) string {
				return r.dsn("password=" + r.password)
			},
			code: 0,
			want: "WARNING: the DSN carries a password, which pgsecrets ignores",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newCheckRig(t)
			dsn := tc.setup(t, r)
			human, rep := r.check(t, dsn)
			if human.code != tc.code {
				t.Errorf("exit %d, want %d", human.code, tc.code)
			}
			if !strings.Contains(human.stdout, tc.want) {
				t.Errorf("output lacks %q", tc.want)
			}
			if tc.failure != "" {
				if !strings.HasPrefix(human.lastLine(), "FAIL: ") {
					t.Errorf("last line %q is not a FAIL line", human.lastLine())
				}
				if got := str(rep, "failure"); got != tc.failure {
					t.Errorf("json failure %q, want %q", got, tc.failure)
				}
			}
		})
	}
}

func TestCheckTimeout(t *testing.T) {
	r := newCheckRig(t)
	r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel})
	res := runCmd("check", "--timeout", "300ms", r.dsn(""))
	t.Logf("%s", res)
	assertNoSecret(t, res, r.planted...)
	if res.code != 1 || res.lastLine() != "FAIL: timed out after 300ms while fetching the secret: raise --timeout, or check that this machine can reach it" {
		t.Errorf("got %s", res)
	}
}

// An inline private key (and its passphrase) never shows in check's
// output, human or JSON: not in the DSN line, nor in lib/pq's error when it
// takes the key for a file path and names it.
func TestCheckInlineKeyNeverPrinted(t *testing.T) {
	r := newCheckRig(t)
	key, body := testkit.PrivateKeyPEM(t)
	r.planted = append(append(r.planted, "PRIVATE KEY", "pass-never-printed"), body...)
	cert := filepath.Join(t.TempDir(), "client.crt")
	if err := os.WriteFile(cert, []byte("lib/pq only checks that it exists before the key"), 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := "'" + key + "'"                                                                          // PEM has no quote or backslash to escape
	human, rep := r.check(t, r.dsn("sslinline=true sslkey="+quoted+" sslpassword=pass-never-printed")) // fails the test if output holds any of r.planted
	if !strings.Contains(human.stdout, "sslkey=[REDACTED]") || !strings.Contains(str(rep, "dsn"), "sslkey=[REDACTED]") {
		t.Errorf("the DSN line does not show sslkey=[REDACTED]:\n%s", human)
	}
	// Without sslinline the key would be taken for a path: the DSN is
	// refused, without the key.
	human, _ = r.check(t, r.dsn("sslcert="+cert+" sslkey="+quoted))
	if !strings.Contains(human.stdout, "sslinline is not true") {
		t.Errorf("a PEM sslkey without sslinline was not refused:\n%s", human)
	}
}

// A secret for a role that logs in acting as another (the alternating
// rotation's clone) checks out: TLS is read as the login role, and both
// roles are shown.
func TestCheckActingRole(t *testing.T) {
	r := newCheckRig(t)
	ctx := context.Background()
	clone, pw := r.role+"_clone", randomPassword()
	r.planted = append(r.planted, pw)
	if err := r.pg.CreateRole(ctx, clone, pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.pg.DropRole(ctx, clone) })
	for _, q := range []string{`GRANT "` + r.role + `" TO "` + clone + `"`, `ALTER ROLE "` + clone + `" SET role = '` + r.role + `'`} {
		if _, err := r.pg.DB().Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	r.sm.CreateSecret(r.secretID+"/clone", secretJSON(clone, pw))
	human, rep := r.check(t, strings.Replace(r.dsn(""), "secret_id="+r.secretID, "secret_id="+r.secretID+"/clone", 1))
	if human.code != 0 || !strings.Contains(human.stdout, "acting as "+r.role) || !strings.Contains(human.stdout, "encrypted, TLS") {
		t.Errorf("check of a clone's secret:\n%s", human)
	}
	if srv, _ := rep["server"].(map[string]any); srv["session_user"] != clone || srv["current_user"] != r.role {
		t.Errorf("report: %v", rep["server"])
	}
}
