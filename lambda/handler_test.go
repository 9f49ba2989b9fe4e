package lambda_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
		lambda.EnvConnParams: "sslmode=verify-full"}
	opt, err := lambda.OptionsFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if opt.Strategy != rotate.AlternatingUsers || len(opt.Probes) != 2 || opt.PasswordLength != 40 || !opt.EnforceContract || opt.ConnParams != "sslmode=verify-full" {
		t.Errorf("options %+v", opt)
	}
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
	h := lambda.Handler(rotate.New(sm.Client(), opt))
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
		{SecretID: id, ClientRequestToken: "91111111-2222-4333-8444-555555555555", Step: "setSecret"}} {
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
	h := lambda.Handler(rotate.New(sm.Client(), opt))
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
