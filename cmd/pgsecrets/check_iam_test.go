package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// frontEnd is a token front end before the rig's cluster that logs in as
// user with password.
func (r *checkRig) frontEnd(t *testing.T, opts iamtest.Options, user, password string) *iamtest.Server {
	opts.Upstream = func(u string) (string, error) {
		if u != user {
			return "", fmt.Errorf("no role %q", u)
		}
		return fmt.Sprintf("host=%s port=%d user='%s' password='%s' dbname=postgres sslmode=verify-full sslrootcert='%s'",
			r.pg.Host(), r.pg.Port(), user, password, r.pg.CAFile()), nil
	}
	return iamtest.Start(t, opts)
}

// tokenDSN is a DSN of a token provider on srv.
func tokenDSN(srv *iamtest.Server, user, provider, extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user='%s' dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=%s %s",
		srv.Port(), user, srv.CAFile(), provider, extra)
}

// checkToken runs check on a token DSN and asserts that the report says
// it is a token for provider:user and until when, with the provider's
// own facts, and shows no token, key or secret.
func (r *checkRig) checkToken(t *testing.T, dsn, id string, facts ...string) {
	t.Helper()
	human, rep := r.check(t, dsn)
	if human.code != 0 {
		t.Fatalf("check failed:\n%s", human)
	}
	for _, want := range append([]string{id, "token valid until", "new logins only"}, facts...) {
		if !strings.Contains(human.stdout, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if !strings.Contains(fmt.Sprint(rep["facts"]), "token valid until") {
		t.Errorf("the JSON report's facts do not say the token's end: %v", rep["facts"])
	}
}

// check on an RDS IAM DSN: the token is signed and logs in through the
// front end.
func TestCheckRDSIAM(t *testing.T) {
	r := newCheckRig(t)
	srv := r.frontEnd(t, iamtest.Options{
		Credentials: map[string]iamtest.Credential{demoAWSKey: {SecretKey: demoAWSSecret}},
		Region:      smtest.DefaultRegion,
	}, r.role, r.password)
	restore, err := setDemoAWSEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	r.planted = append(r.planted, demoAWSSecret, "X-Amz-Signature")
	r.checkToken(t, tokenDSN(srv, r.role, "rds-iam", "secret_region="+smtest.DefaultRegion),
		"rds-iam:"+r.role+"@127.0.0.1", "signed by")
}

// check on an Entra DSN: azidentity's DefaultAzureCredential gets the
// token from the managed identity endpoint.
func TestCheckEntra(t *testing.T) {
	r := newCheckRig(t)
	const clientID = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"
	issuer := iamtest.StartEntra(t, iamtest.EntraOptions{UserAssigned: []iamtest.EntraIdentity{{ClientID: clientID, Principal: r.role}}})
	issuer.SetEnv(t)
	t.Setenv("AZURE_CLIENT_ID", clientID)
	var opts iamtest.Options
	issuer.Configure(&opts)
	srv := r.frontEnd(t, opts, r.role, r.password)
	r.planted = append(r.planted, issuer.HeaderSecret(), "eyJ")
	r.checkToken(t, tokenDSN(srv, r.role, "entra", ""), "entra:"+r.role+"@127.0.0.1", "DefaultAzureCredential")
}

// check on a Google DSN: Application Default Credentials (a service
// account key) get the token from the OAuth2 token endpoint.
func TestCheckGCPIAM(t *testing.T) {
	r := newCheckRig(t)
	issuer := iamtest.StartGoogle(t, iamtest.GoogleOptions{})
	email := fmt.Sprintf("chk-%d@%s.iam.gserviceaccount.com", roleSeq.Add(1), issuer.ProjectID())
	user := iamtest.DatabaseUser(email)
	if err := r.pg.CreateRole(context.Background(), user, r.password); err != nil {
		t.Fatal(err)
	}
	key, err := issuer.ServiceAccountKey(email)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(path, key, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
	srv := r.frontEnd(t, iamtest.Options{Verifier: issuer.Verifier(), RefusedMessage: issuer.RefusedMessage}, user, r.password)
	r.planted = append(r.planted, "ya29.", "PRIVATE KEY")
	r.checkToken(t, tokenDSN(srv, user, "gcp-iam", ""), "gcp-iam:"+user+"@127.0.0.1", "sqlservice.login")
}
