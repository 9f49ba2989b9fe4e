package smtest_test

// TestConformanceWithMoto runs one script through the real SDK against
// smtest and against moto_server (a widely used Python fake of AWS), and
// compares the normalised results step by step. It is skipped when
// moto_server is not on PATH. moto listens on 127.0.0.1 only; nothing else
// is contacted.
//
// Where moto is known to differ from AWS, smtest follows AWS and the step is
// listed below and in knownMotoDifferences: its results are logged, not
// compared. Checked against moto 5.2.
//
//	step                             AWS (and smtest)                        moto
//	-------------------------------  --------------------------------------  ------------------------------------------
//	get-default-after-move           GetSecretValue without VersionStage     returns the version AWSCURRENT was on
//	                                 returns the AWSCURRENT version          before UpdateSecretVersionStage moved it
//	stages-after-put-following-move  PutSecretValue moves AWSCURRENT from    moves it from that stale version: two
//	                                 the version that has it, AWSPREVIOUS    versions end up AWSCURRENT, AWSPREVIOUS
//	                                 to that version                         stays where it was
//	put-same-token-other-value       ResourceExistsException: a version's    overwrites the version's value
//	                                 value cannot change
//	get-after-conflicting-put        the first value                         the overwritten value
//	describe-after-deprecation       VersionIdsToStages lists only versions  also lists unlabelled versions, with []
//	                                 that have a staging label
//	list-after-deprecation           ListSecretVersionIds hides unlabelled   lists them (IncludeDeprecated is ignored)
//	                                 versions unless IncludeDeprecated
//	password-too-long                ValidationException (model constraint   InvalidParameterValue (moto's own code)
//	                                 PasswordLength <= 4096)
//	token-too-short                  ValidationException (model constraint   InvalidParameterException
//	                                 ClientRequestToken length 32–64)
//
// Differences the script avoids rather than skips, because the SDK hides
// them or they are not about behaviour: moto answers ResourceNotFoundException
// with HTTP 404 (AWS: 400), says "can't find the specified secret" for a
// missing staging label (the code is the same), fills in a missing
// ClientRequestToken (AWS refuses raw requests without one; the SDK always
// sends one), and on RotateSecret without a Lambda moves AWSCURRENT to a new,
// empty version itself.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/pgsecrets/pgsecrets/smtest"
)

var knownMotoDifferences = map[string]string{
	"get-default-after-move":          "moto's GetSecretValue without a stage returns the version AWSCURRENT was on before UpdateSecretVersionStage moved it",
	"stages-after-put-following-move": "moto's PutSecretValue takes AWSCURRENT from that stale version, leaving AWSCURRENT on two versions",
	"put-same-token-other-value":      "moto overwrites the version instead of answering ResourceExistsException",
	"get-after-conflicting-put":       "moto returns the overwritten value",
	"describe-after-deprecation":      "moto lists versions without staging labels in VersionIdsToStages",
	"list-after-deprecation":          "moto lists deprecated versions although IncludeDeprecated is not set",
	"password-too-long":               "moto answers InvalidParameterValue; AWS's request validation answers ValidationException",
	"token-too-short":                 "moto answers InvalidParameterException; AWS's request validation answers ValidationException",
}

func TestConformanceWithMoto(t *testing.T) {
	moto, err := exec.LookPath("moto_server")
	if err != nil {
		t.Skip("moto_server is not on PATH; install moto[server] to compare smtest with it")
	}
	motoURL := startMoto(t, moto)
	s := smtest.Start(t)

	motoClient := secretsmanager.New(secretsmanager.Options{
		Region:       smtest.DefaultRegion,
		BaseEndpoint: aws.String(motoURL),
		HTTPClient:   smtest.HTTPClient(),
		Retryer:      aws.NopRetryer{},
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "test", SecretAccessKey: "test"}, nil
		}),
	})
	ours := conformanceScript(t, s.Client(smtest.NoRetries))
	theirs := conformanceScript(t, motoClient)
	if len(ours) != len(theirs) {
		t.Fatalf("the script ran %d steps against smtest, %d against moto", len(ours), len(theirs))
	}
	for i := range ours {
		step := ours[i].name
		if reason, known := knownMotoDifferences[step]; known {
			if ours[i].result == theirs[i].result {
				t.Logf("%s: listed as a known difference (%s), but both gave %s", step, reason, ours[i].result)
			} else {
				t.Logf("%s: known difference skipped (%s): smtest %s, moto %s", step, reason, ours[i].result, theirs[i].result)
			}
			continue
		}
		if ours[i].result != theirs[i].result {
			t.Errorf("%s: smtest gave %s, moto gave %s", step, ours[i].result, theirs[i].result)
		}
	}
}

// startMoto runs moto_server on a free loopback port until the test ends
// and returns its URL once it reports that it is listening.
func startMoto(t *testing.T, moto string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close() // moto binds it itself; another process taking it meanwhile is unlikely
	cmd := exec.Command(moto, "-H", "127.0.0.1", "-p", port)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Werkzeug prints "Running on http://127.0.0.1:PORT" once the socket
	// is bound: that is the signal to wait for.
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "Running on http://127.0.0.1:"+port) {
				ready <- true
				signalled = true
			}
		}
		if !signalled {
			ready <- false // moto exited without listening
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("moto_server exited before it was listening")
		}
	case <-time.After(2 * time.Minute): // only against a hung start, not a measurement
		t.Fatal("moto_server did not start listening")
	}
	return "http://127.0.0.1:" + port
}

type stepResult struct{ name, result string }

// conformanceScript runs the same calls against any endpoint and describes
// each result in a form without ARNs, dates or random values.
func conformanceScript(t *testing.T, c *secretsmanager.Client) []stepResult {
	ctx := t.Context()
	const name = "conformance/db"
	t1, t2, t3 := tokenN(1), tokenN(2), tokenN(3)
	var out []stepResult
	record := func(step string, result string) { out = append(out, stepResult{step, result}) }
	id := aws.String(name)
	get := func(in secretsmanager.GetSecretValueInput) string {
		in.SecretId = id
		r, err := c.GetSecretValue(ctx, &in)
		if err != nil {
			return errCode(err)
		}
		return fmt.Sprintf("%s %s %v", aws.ToString(r.SecretString), aws.ToString(r.VersionId), sorted(r.VersionStages))
	}
	put := func(token, value string, stages ...string) string {
		r, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
			SecretId: id, ClientRequestToken: aws.String(token), SecretString: aws.String(value), VersionStages: stages,
		})
		if err != nil {
			return errCode(err)
		}
		return fmt.Sprintf("%s %v", aws.ToString(r.VersionId), sorted(r.VersionStages))
	}
	describeStages := func(dropEmpty bool) string {
		r, err := c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: id})
		if err != nil {
			return errCode(err)
		}
		return stageMap(r.VersionIdsToStages, dropEmpty)
	}
	listVersions := func(dropEmpty bool) string {
		r, err := c.ListSecretVersionIds(ctx, &secretsmanager.ListSecretVersionIdsInput{SecretId: id})
		if err != nil {
			return errCode(err)
		}
		m := map[string][]string{}
		for _, v := range r.Versions {
			m[aws.ToString(v.VersionId)] = v.VersionStages
		}
		return stageMap(m, dropEmpty)
	}
	move := func(stage, to, from string) string {
		in := &secretsmanager.UpdateSecretVersionStageInput{SecretId: id, VersionStage: aws.String(stage), MoveToVersionId: aws.String(to)}
		if from != "" {
			in.RemoveFromVersionId = aws.String(from)
		}
		r, err := c.UpdateSecretVersionStage(ctx, in)
		if err != nil {
			return errCode(err)
		}
		return "ok " + aws.ToString(r.Name)
	}

	create := func(step, secret, token string) {
		cr, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String(secret), SecretString: aws.String("v1"), ClientRequestToken: aws.String(token)})
		if err != nil {
			record(step, errCode(err))
			return
		}
		record(step, fmt.Sprintf("%s %s", aws.ToString(cr.Name), aws.ToString(cr.VersionId)))
	}

	// A rotation's label moves on one secret.
	create("create", name, t1)
	record("get-current", get(secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSCURRENT")}))
	record("put-pending", put(t2, "v2", "AWSPENDING"))
	record("put-same-token-same-value", put(t2, "v2", "AWSPENDING"))
	record("get-pending", get(secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSPENDING")}))
	record("get-by-version-id", get(secretsmanager.GetSecretValueInput{VersionId: aws.String(t2)}))
	record("move-current-without-remove-from", move("AWSCURRENT", t2, ""))
	record("move-current", move("AWSCURRENT", t2, t1))
	record("describe-stages", describeStages(false))
	record("get-previous", get(secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSPREVIOUS")}))
	record("get-current-by-stage-after-move", get(secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSCURRENT")}))
	record("get-default-after-move", get(secretsmanager.GetSecretValueInput{}))
	record("list-versions", listVersions(false))
	record("put-current-after-move", put(t3, "v3"))
	record("stages-after-put-following-move", describeStages(true))

	// Versions losing their last label, on a secret whose AWSCURRENT only
	// ever moved through PutSecretValue.
	id = aws.String("conformance/deprecation")
	create("deprecation-create", *id, t1)
	record("deprecation-put-2", put(t2, "v2"))
	record("deprecation-put-3", put(t3, "v3"))
	record("describe-after-deprecation", describeStages(false))
	record("describe-after-deprecation-labelled-only", describeStages(true))
	record("list-after-deprecation", listVersions(false))
	record("list-after-deprecation-labelled-only", listVersions(true))
	if r, err := c.ListSecretVersionIds(ctx, &secretsmanager.ListSecretVersionIdsInput{SecretId: id, IncludeDeprecated: aws.Bool(true)}); err != nil {
		record("list-include-deprecated", errCode(err))
	} else {
		m := map[string][]string{}
		for _, v := range r.Versions {
			m[aws.ToString(v.VersionId)] = v.VersionStages
		}
		record("list-include-deprecated", stageMap(m, false))
	}

	// A token reused with another value, on a secret of its own.
	id = aws.String("conformance/conflict")
	create("conflict-create", *id, t1)
	record("conflict-put", put(t2, "v2", "AWSPENDING"))
	record("put-same-token-other-value", put(t2, "v2-other", "AWSPENDING"))
	record("get-after-conflicting-put", get(secretsmanager.GetSecretValueInput{VersionId: aws.String(t2)}))
	id = aws.String(name)

	password := func(step string, in secretsmanager.GetRandomPasswordInput, excluded string) {
		r, err := c.GetRandomPassword(ctx, &in)
		if err != nil {
			record(step, errCode(err))
			return
		}
		pw := aws.ToString(r.RandomPassword)
		record(step, fmt.Sprintf("len=%d lower=%v upper=%v digit=%v punct=%v space=%v excluded-present=%v",
			len(pw), strings.ContainsAny(pw, "abcdefghijklmnopqrstuvwxyz"), strings.ContainsAny(pw, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
			strings.ContainsAny(pw, "0123456789"), strings.ContainsAny(pw, smtest.Punctuation), strings.Contains(pw, " "),
			excluded != "" && strings.ContainsAny(pw, excluded)))
	}
	password("password-default", secretsmanager.GetRandomPasswordInput{}, "")
	password("password-exclusions", secretsmanager.GetRandomPasswordInput{
		PasswordLength: aws.Int64(50), ExcludePunctuation: aws.Bool(true), ExcludeCharacters: aws.String("aeiouAEIOU01"),
	}, "aeiouAEIOU01"+smtest.Punctuation)
	password("password-upper-digits-space", secretsmanager.GetRandomPasswordInput{
		PasswordLength: aws.Int64(20), ExcludeLowercase: aws.Bool(true), ExcludePunctuation: aws.Bool(true), IncludeSpace: aws.Bool(true),
	}, "abcdefghijklmnopqrstuvwxyz")
	password("password-too-long", secretsmanager.GetRandomPasswordInput{PasswordLength: aws.Int64(5000)}, "")

	_, err := c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("conformance/missing")})
	record("get-missing-secret", errCode(err))
	_, err = c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("conformance/missing")})
	record("describe-missing-secret", errCode(err))
	record("get-missing-stage", get(secretsmanager.GetSecretValueInput{VersionStage: aws.String("NOSUCHSTAGE")}))
	record("get-version-and-stage-disagree", get(secretsmanager.GetSecretValueInput{VersionId: aws.String(t3), VersionStage: aws.String("AWSPREVIOUS")}))
	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: id})
	record("put-empty-value", errCode(err))
	record("token-too-short", put("short-token", "v4"))
	return out
}

func tokenN(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return s
}

// stageMap prints a version → labels map in a fixed order.
func stageMap(m map[string][]string, dropEmpty bool) string {
	var keys []string
	for k, v := range m {
		if !dropEmpty || len(v) > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s%v ", k, sorted(m[k]))
	}
	return b.String()
}

func errCode(err error) string {
	if err == nil {
		return "no error"
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return "error " + ae.ErrorCode()
	}
	return "error " + err.Error()
}
