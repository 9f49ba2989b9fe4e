package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// check on an RDS IAM DSN: the token is signed and logs in through the
// front end; the report says it is a token and until when, and shows no
// token or key.
func TestCheckRDSIAM(t *testing.T) {
	r := newCheckRig(t)
	srv := iamtest.Start(t, iamtest.Options{
		Credentials: map[string]iamtest.Credential{demoAWSKey: {SecretKey: demoAWSSecret}},
		Region:      smtest.DefaultRegion,
		Upstream: func(user string) (string, error) {
			return fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=postgres sslmode=verify-full sslrootcert='%s'",
				r.pg.Host(), r.pg.Port(), r.role, r.password, r.pg.CAFile()), nil
		},
	})
	restore, err := setDemoAWSEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	r.planted = append(r.planted, demoAWSSecret, "X-Amz-Signature")
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=rds-iam secret_region=%s",
		srv.Port(), r.role, srv.CAFile(), smtest.DefaultRegion)
	human, rep := r.check(t, dsn)
	if human.code != 0 {
		t.Fatalf("check failed:\n%s", human)
	}
	for _, want := range []string{"rds-iam:" + r.role + "@127.0.0.1", "token valid until", "new logins only", "signed by"} {
		if !strings.Contains(human.stdout, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if !strings.Contains(fmt.Sprint(rep["facts"]), "token valid until") {
		t.Errorf("the JSON report's facts do not say the token's end: %v", rep["facts"])
	}
}
