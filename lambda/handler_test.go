package lambda_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/lambda"
	"github.com/pgsecrets/pgsecrets/rotate"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

func TestOptionsFromEnv(t *testing.T) {
	env := map[string]string{lambda.EnvStrategy: "alternating", lambda.EnvProbes: "SELECT 1\n\n SELECT 2 ", lambda.EnvPasswordLength: "40",
		lambda.EnvConnParams: "sslmode=verify-full", lambda.EnvDatabaseHosts: "replica-1.internal,\n replica-2.internal\n"}
	opt, err := lambda.OptionsFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if opt.Strategy != rotate.AlternatingUsers || len(opt.Probes) != 2 || opt.PasswordLength != 40 || !opt.EnforceContract || opt.ConnParams != "sslmode=verify-full" {
		t.Errorf("options %+v", opt)
	}
	if len(opt.DatabaseHosts) != 2 || opt.DatabaseHosts[1] != "replica-2.internal" || opt.AllowPrivilegedRoles {
		t.Errorf("database hosts %q, privileged %v", opt.DatabaseHosts, opt.AllowPrivilegedRoles)
	}
	env[lambda.EnvAllowPrivileged] = "true"
	if opt, err := lambda.OptionsFromEnv(func(k string) string { return env[k] }); err != nil || !opt.AllowPrivilegedRoles {
		t.Errorf("%s=true: %v, %v", lambda.EnvAllowPrivileged, opt.AllowPrivilegedRoles, err)
	}
	env[lambda.EnvAllowPrivileged] = "sure"
	if _, err := lambda.OptionsFromEnv(func(k string) string { return env[k] }); err == nil {
		t.Error("a malformed boolean was accepted")
	}
	delete(env, lambda.EnvAllowPrivileged)
	env[lambda.EnvPasswordLength] = "4"
	if _, err := lambda.OptionsFromEnv(func(k string) string { return env[k] }); err == nil {
		t.Error("a 4-character password was accepted")
	}
	env[lambda.EnvPasswordLength], env[lambda.EnvStrategy] = "", "sometimes"
	if _, err := lambda.OptionsFromEnv(func(k string) string { return env[k] }); err == nil {
		t.Error("an unknown strategy was accepted")
	}
}

// The four invocations Secrets Manager makes, each twice, as Lambda may
// retry them.
func TestHandlerFourSteps(t *testing.T) {
	pg := testdb.Shared(t)
	sm := smtest.Start(t)
	b := make([]byte, 8)
	rand.Read(b)
	user, pw := "lam_"+hex.EncodeToString(b[:4]), "pw-"+hex.EncodeToString(b)
	if err := pg.CreateRole(context.Background(), user, pw); err != nil {
		t.Fatal(err)
	}
	defer pg.DropRole(context.Background(), user)
	v, _ := json.Marshal(map[string]any{"username": user, "password": pw, "host": pg.Host(), "port": pg.Port(), "dbname": "postgres", "engine": "postgres"})
	id := "prod/" + user
	sm.CreateSecret(id, string(v))
	if err := sm.SetRotation(id, true, 30, time.Time{}); err != nil {
		t.Fatal(err)
	}
	opt, _ := lambda.OptionsFromEnv(func(k string) string {
		return map[string]string{lambda.EnvConnParams: "sslmode=verify-full sslrootcert=" + pg.CAFile()}[k]
	})
	allowed, err := lambda.ParseAllowlist(id) // a name, as a hand-made invocation sends
	if err != nil {
		t.Fatal(err)
	}
	h := lambda.Handler(rotate.New(sm.Client(), opt), allowed, nil)
	token := "81111111-2222-4333-8444-555555555555"
	// Secrets Manager's RotateSecret labels the new version AWSPENDING
	// before the first invocation; createSecret fills it.
	if _, err := rotate.New(sm.Client(), rotate.Options{ConnParams: opt.ConnParams}).Run(context.Background(), id, token, rotate.CreateSecret); err != nil {
		t.Fatal(err)
	}
	for _, step := range rotate.Steps {
		for i := 0; i < 2; i++ {
			if err := h(context.Background(), lambda.Event{SecretID: id, ClientRequestToken: token, Step: string(step)}); err != nil {
				t.Fatalf("%s (run %d): %v", step, i+1, err)
			}
		}
	}
	if cur, value, _ := sm.Version(id, "AWSCURRENT"); cur != token || strings.Contains(value, pw) {
		t.Errorf("AWSCURRENT on %s", cur)
	}
	for _, bad := range []lambda.Event{{SecretID: id, ClientRequestToken: token, Step: "dropTable"}, {Step: "createSecret"},
		{SecretID: id, ClientRequestToken: "91111111-2222-4333-8444-555555555555", Step: "setSecret"},
		{SecretID: id, ClientRequestToken: token + "\n", Step: "setSecret"}, {SecretID: id, ClientRequestToken: "a/b", Step: "setSecret"},
		{SecretID: id, ClientRequestToken: strings.Repeat("a", 65), Step: "setSecret"}, {SecretID: id, Step: "setSecret"},
		{SecretID: strings.Repeat("a", 2049), ClientRequestToken: token, Step: "setSecret"}} {
		if err := h(context.Background(), bad); err == nil {
			t.Errorf("event %+v accepted", bad)
		} else {
			t.Log(err)
		}
	}
}

// Secrets Manager's RotateSecret invoking the function (in process, through
// smtest's hook) with the contract enforced: it labels the new version
// AWSPENDING first, then each step runs.
func TestRotateSecretInvokesHandler(t *testing.T) {
	pg := testdb.Shared(t)
	sm := smtest.Start(t)
	b := make([]byte, 8)
	rand.Read(b)
	user, pw := "lam_"+hex.EncodeToString(b[:4]), "pw-"+hex.EncodeToString(b)
	if err := pg.CreateRole(context.Background(), user, pw); err != nil {
		t.Fatal(err)
	}
	defer pg.DropRole(context.Background(), user)
	v, _ := json.Marshal(map[string]any{"username": user, "password": pw, "host": pg.Host(), "port": pg.Port(), "dbname": "postgres"})
	id := "prod/" + user
	arn := sm.CreateSecret(id, string(v))
	opt, _ := lambda.OptionsFromEnv(func(k string) string {
		return map[string]string{lambda.EnvConnParams: "sslmode=verify-full sslrootcert=" + pg.CAFile()}[k]
	})
	// Secrets Manager sends the ARN: a prefix entry covers it.
	allowed, err := lambda.ParseAllowlist(arn[:strings.Index(arn, ":secret:")] + ":secret:prod/lam_*")
	if err != nil {
		t.Fatal(err)
	}
	h := lambda.Handler(rotate.New(sm.Client(), opt), allowed, nil)
	sm.OnRotate(func(ctx context.Context, secretID, token string) error {
		for _, step := range rotate.Steps {
			if err := h(ctx, lambda.Event{SecretID: secretID, ClientRequestToken: token, Step: string(step)}); err != nil {
				return err
			}
		}
		return nil
	})
	out, err := sm.Client().RotateSecret(context.Background(), &secretsmanager.RotateSecretInput{SecretId: &arn,
		RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:pgsecrets-rotation"),
		RotationRules:     &types.RotationRulesType{AutomaticallyAfterDays: aws.Int64(30)}})
	if err != nil {
		t.Fatal(err)
	}
	cur, value, _ := sm.Version(id, "AWSCURRENT")
	if cur != aws.ToString(out.VersionId) || strings.Contains(value, pw) {
		t.Errorf("AWSCURRENT on %s after RotateSecret returned %s", cur, aws.ToString(out.VersionId))
	}
	st := rotate.New(sm.Client(), opt).Check(context.Background(), id, time.Now())
	if !st.Healthy() || st.LastRotated == nil {
		t.Errorf("after the rotation: %+v", st)
	}
}

const arnBase = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:"

func TestParseAllowlist(t *testing.T) {
	for _, v := range []string{
		arnBase + "prod/app/db-AbCdEf",
		arnBase + "prod/app/*, " + arnBase + "prod/jobs/db-XyZ123",
		"\n  " + arnBase + "prod/app/*\r\n" + arnBase + "prod/jobs/*\n", // a YAML block, CRLF or not
		"prod/app/db",
		"arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:p*",
	} {
		if _, err := lambda.ParseAllowlist(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{
		"", " \n , ,", // nothing listed
		"*", arnBase + "prod/app/*, *", " * ",
		arnBase + "*", // every secret of the account
		"arn:aws:secretsmanager:eu-west-1:123456789012:*", "arn:aws:secretsmanager:*", "arn:*",
		arnBase + "prod/*/db", arnBase + "prod/app/db-??????", "*prod/app",
		"prod/app/*", // a name prefix
		"arn:aws:secretsmanager:*:123456789012:secret:prod/app/*",
		"arn:aws:secretsmanager:eu-west-1:*:secret:prod/app/*",
		"arn:aws:ssm:eu-west-1:123456789012:parameter/prod/app",
		"arn:aws:secretsmanager:eu-west-1:1234:secret:prod/app/*",
		"arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod app",
		"prod app", "prod/app;drop",
	} {
		_, err := lambda.ParseAllowlist(v)
		if err == nil {
			t.Errorf("%q accepted", v)
		} else if !strings.Contains(err.Error(), lambda.EnvAllowedSecrets) {
			t.Errorf("%q: the error does not name the variable: %v", v, err)
		}
	}
}

func TestAllowlistMatching(t *testing.T) {
	for _, c := range []struct {
		list, secretID string
		want           bool
	}{
		{arnBase + "prod/app/*", arnBase + "prod/app/x-AbCdEf", true},
		{arnBase + "prod/app/*", arnBase + "prod/app/x", true}, // a partial ARN under the prefix
		{arnBase + "prod/app/*", arnBase + "prod/app/deep/er-AbCdEf", true},
		// The secret prod/app itself is prod/app-AbCdEf: not under prod/app/.
		{arnBase + "prod/app/*", arnBase + "prod/app-AbCdEf", false},
		{arnBase + "prod/app/*", arnBase + "prod/application-AbCdEf", false},
		{arnBase + "prod/app/*", arnBase + "prod/ap", false},
		{arnBase + "prod/app/*", "arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/app/x-AbCdEf", false},
		{arnBase + "prod/app/*", "arn:aws:secretsmanager:eu-west-1:210987654321:secret:prod/app/x-AbCdEf", false},
		{arnBase + "prod/app/*", "arn:aws-cn:secretsmanager:eu-west-1:123456789012:secret:prod/app/x-AbCdEf", false},
		{arnBase + "prod/app/*", arnBase + "PROD/app/x-AbCdEf", false},
		// A name resolves in the function's own account and region, which
		// the prefix does not pin: names match only when listed.
		{arnBase + "prod/app/*", "prod/app/x", false},
		{arnBase + "prod/app-AbCdEf", arnBase + "prod/app-AbCdEf", true},
		{arnBase + "prod/app-AbCdEf", arnBase + "prod/application-AbCdEf", false},
		{arnBase + "prod/app-AbCdEf", arnBase + "prod/app-AbCdEf-x", false},
		{arnBase + "prod/app-AbCdEf", arnBase + "prod/app", false}, // exact means exact
		{arnBase + "prod/app-AbCdEf", "prod/app", false},
		{"prod/app", "prod/app", true},
		{"prod/app", "prod/application", false},
		{"prod/app", "prod/app/x", false},
		{"prod/app", arnBase + "prod/app-AbCdEf", false},
		{"prod/app", "", false},
		{arnBase + "prod/app/*, prod/jobs", "prod/jobs", true},
		{arnBase + "prod/app/*, prod/jobs", arnBase + "prod/app/y-AbCdEf", true},
	} {
		a, err := lambda.ParseAllowlist(c.list)
		if err != nil {
			t.Fatalf("%q: %v", c.list, err)
		}
		if got := a.Allows(c.secretID); got != c.want {
			t.Errorf("list %q, SecretId %q: allowed %v, want %v", c.list, c.secretID, got, c.want)
		}
	}
	var none *lambda.Allowlist
	if none.Allows(arnBase + "prod/app-AbCdEf") {
		t.Error("a nil allowlist allowed a secret")
	}
}

// A secret outside the allowlist is refused before any request reaches
// Secrets Manager, whatever the step, with one log line per event; one
// inside it gets as far as the rotation contract's first request.
func TestHandlerRefusesBeforeAnyCall(t *testing.T) {
	sm := smtest.Start(t)
	const password = "do-not-log-this-password"
	outside := sm.CreateSecret("prod/other/db", `{"username":"other","password":"`+password+`"}`)
	inside := sm.CreateSecret("prod/app/x", `{"username":"app","password":"`+password+`"}`)
	for _, id := range []string{"prod/other/db", "prod/app/x"} {
		if err := sm.SetRotation(id, true, 30, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	prefix := outside[:strings.Index(outside, ":secret:")] + ":secret:prod/app/*"
	allowed, err := lambda.ParseAllowlist(prefix)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	r := rotate.New(sm.Client(smtest.NoRetries), rotate.Options{EnforceContract: true})
	h := lambda.Handler(r, allowed, slog.New(slog.NewJSONHandler(&logs, nil)))
	token := "81111111-2222-4333-8444-555555555555"
	sm.ResetCalls()

	refused := []string{outside, "prod/other/db", "prod/app/x", inside[:strings.Index(inside, ":secret:")] + ":secret:prod/app-AbCdEf"}
	for _, id := range refused {
		for _, step := range rotate.Steps {
			err := h(context.Background(), lambda.Event{SecretID: id, ClientRequestToken: token, Step: string(step)})
			if !errors.Is(err, lambda.ErrNotAllowed) {
				t.Fatalf("%s %s: %v, want ErrNotAllowed", id, step, err)
			}
			if msg := err.Error(); !strings.Contains(msg, id) || !strings.Contains(msg, lambda.EnvAllowedSecrets) {
				t.Errorf("the error does not name the secret and the variable: %v", err)
			}
		}
	}
	if n := sm.TotalCalls(); n != 0 {
		t.Errorf("refused events made %d Secrets Manager requests: %v", n, sm.CallCounts())
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != len(refused)*len(rotate.Steps) {
		t.Errorf("%d log lines for %d refusals:\n%s", len(lines), len(refused)*len(rotate.Steps), logs.String())
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if rec["level"] != "WARN" || rec["secret_id"] == "" || rec["allowlist"] != lambda.EnvAllowedSecrets {
			t.Errorf("log line %s", l)
		}
	}
	if strings.Contains(logs.String(), password) {
		t.Error("a password reached the log")
	}

	// The prefix lets prod/app/x through to the contract's checks, which
	// read the secret: the refusal above was the allowlist's.
	err = h(context.Background(), lambda.Event{SecretID: inside, ClientRequestToken: token, Step: string(rotate.CreateSecret)})
	if errors.Is(err, lambda.ErrNotAllowed) {
		t.Fatalf("%s refused: %v", inside, err)
	}
	if sm.TotalCalls() == 0 {
		t.Errorf("an allowed secret made no request (%v)", err)
	}

	sm.ResetCalls()
	if err := lambda.Handler(r, nil, slog.New(slog.NewJSONHandler(&logs, nil)))(context.Background(),
		lambda.Event{SecretID: inside, ClientRequestToken: token, Step: string(rotate.CreateSecret)}); !errors.Is(err, lambda.ErrNotAllowed) {
		t.Errorf("no allowlist: %v, want ErrNotAllowed", err)
	}
	if n := sm.TotalCalls(); n != 0 {
		t.Errorf("a handler without allowlist made %d requests", n)
	}
}

// The deployed function does not start without a usable allowlist, and the
// one it starts with is enforced.
func TestNewHandlerNeedsAllowlist(t *testing.T) {
	sm := smtest.Start(t)
	sm.SetEnv(t)
	for _, v := range []string{"", " ,\n", "*", "prod/*"} {
		t.Setenv(lambda.EnvAllowedSecrets, v)
		if _, err := lambda.NewHandler(context.Background()); err == nil || !strings.Contains(err.Error(), lambda.EnvAllowedSecrets) {
			t.Errorf("%s=%q: %v, want an error naming the variable", lambda.EnvAllowedSecrets, v, err)
		}
	}
	os.Unsetenv(lambda.EnvAllowedSecrets)
	if _, err := lambda.NewHandler(context.Background()); err == nil || !strings.Contains(err.Error(), lambda.EnvAllowedSecrets) {
		t.Errorf("%s unset: %v, want an error naming the variable", lambda.EnvAllowedSecrets, err)
	}

	outside := sm.CreateSecret("prod/other/db", `{"username":"other","password":"x"}`)
	inside := sm.CreateSecret("prod/app/x", `{"username":"app","password":"x"}`)
	t.Setenv(lambda.EnvAllowedSecrets, outside[:strings.Index(outside, ":secret:")]+":secret:prod/app/*")
	h, err := lambda.NewHandler(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sm.ResetCalls()
	token := "81111111-2222-4333-8444-555555555555"
	if err := h(context.Background(), lambda.Event{SecretID: outside, ClientRequestToken: token, Step: "createSecret"}); !errors.Is(err, lambda.ErrNotAllowed) {
		t.Errorf("%s: %v, want ErrNotAllowed", outside, err)
	}
	if n := sm.TotalCalls(); n != 0 {
		t.Errorf("a refused event made %d requests", n)
	}
	if err := h(context.Background(), lambda.Event{SecretID: inside, ClientRequestToken: token, Step: "createSecret"}); errors.Is(err, lambda.ErrNotAllowed) {
		t.Errorf("%s refused: %v", inside, err)
	}
	if sm.TotalCalls() == 0 {
		t.Error("the allowed secret made no request: the handler does not reach the SDK's configuration")
	}
}
