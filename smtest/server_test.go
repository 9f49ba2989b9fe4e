package smtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	// Nothing in these tests may reach the EC2 metadata service.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(m.Run())
}

// setup starts a server and returns it with an SDK client that does not
// retry, so that every SDK call is exactly one request.
func setup(t *testing.T, opts ...smtest.Option) (*smtest.Server, *secretsmanager.Client) {
	t.Helper()
	s := smtest.Start(t, opts...)
	return s, s.Client(smtest.NoRetries)
}

func get(ctx context.Context, c *secretsmanager.Client, id string) (*secretsmanager.GetSecretValueOutput, error) {
	return c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)})
}

func mustGet(t *testing.T, c *secretsmanager.Client, in *secretsmanager.GetSecretValueInput) *secretsmanager.GetSecretValueOutput {
	t.Helper()
	out, err := c.GetSecretValue(t.Context(), in)
	if err != nil {
		t.Fatalf("GetSecretValue(%s): %v", aws.ToString(in.SecretId), err)
	}
	return out
}

// wantAs fails unless err is, or wraps, a T.
func wantAs[T error](t *testing.T, err error) T {
	t.Helper()
	var target T
	if !errors.As(err, &target) {
		t.Fatalf("error = %v (%T), want %T", err, err, target)
	}
	return target
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v (%T), want an API error %s", err, err, code)
	}
	if ae.ErrorCode() != code {
		t.Fatalf("error code = %q (%v), want %q", ae.ErrorCode(), err, code)
	}
}

func TestCreateAndGetByNameAndARN(t *testing.T) {
	s, c := setup(t)
	ctx := t.Context()
	out, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
		Name:         aws.String("prod/app/db"),
		SecretString: aws.String(`{"username":"app","password":"pw1"}`),
		Description:  aws.String("app database"),
	})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(out.ARN)
	prefix := "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-"
	if !strings.HasPrefix(arn, prefix) || len(arn) != len(prefix)+6 {
		t.Fatalf("ARN = %q, want %q + 6 characters", arn, prefix)
	}
	if aws.ToString(out.Name) != "prod/app/db" || aws.ToString(out.VersionId) == "" {
		t.Fatalf("CreateSecret output = %+v", out)
	}
	partial := strings.TrimSuffix(arn, arn[len(arn)-7:])
	for _, id := range []string{"prod/app/db", arn, partial} {
		got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)})
		if aws.ToString(got.SecretString) != `{"username":"app","password":"pw1"}` ||
			aws.ToString(got.ARN) != arn || aws.ToString(got.Name) != "prod/app/db" ||
			aws.ToString(got.VersionId) != aws.ToString(out.VersionId) ||
			!slices.Equal(got.VersionStages, []string{"AWSCURRENT"}) || got.SecretBinary != nil {
			t.Errorf("GetSecretValue(%q) = %+v", id, got)
		}
		if got.CreatedDate == nil || got.CreatedDate.IsZero() {
			t.Errorf("GetSecretValue(%q): no CreatedDate", id)
		}
	}
	if s.ARN("prod/app/db") != arn || s.ARN(partial) != arn || s.ARN("nope") != "" {
		t.Errorf("Server.ARN disagrees with %q", arn)
	}
	// A wrong suffix is not a partial ARN.
	_, err = get(ctx, c, partial+"-zzzzzz")
	wantAs[*types.ResourceNotFoundException](t, err)
}

func TestGoSideCreate(t *testing.T) {
	s, c := setup(t, smtest.WithRegion("eu-west-1"), smtest.WithAccountID("210987654321"))
	arn := s.CreateSecret("db", "v1")
	if !strings.HasPrefix(arn, "arn:aws:secretsmanager:eu-west-1:210987654321:secret:db-") {
		t.Fatalf("ARN = %q", arn)
	}
	if s.Region() != "eu-west-1" {
		t.Fatalf("Region() = %q", s.Region())
	}
	got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String(arn)})
	if aws.ToString(got.SecretString) != "v1" {
		t.Fatalf("value = %q", aws.ToString(got.SecretString))
	}

	if _, err := s.Add(smtest.SecretSpec{Name: "db", String: "x"}); wantAs[*smtest.Error](t, err).Code != "ResourceExistsException" {
		t.Fatalf("duplicate Add: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("CreateSecret of a duplicate name did not panic")
			}
		}()
		s.CreateSecret("db", "again")
	}()

	barn, err := s.Add(smtest.SecretSpec{Name: "tls/key", Binary: []byte{0, 1, 2, 255}, Description: "d", VersionID: "first-version"})
	if err != nil {
		t.Fatal(err)
	}
	bin := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String(barn)})
	if !slices.Equal(bin.SecretBinary, []byte{0, 1, 2, 255}) || bin.SecretString != nil || aws.ToString(bin.VersionId) != "first-version" {
		t.Fatalf("binary secret = %+v", bin)
	}
	s.CreateBinarySecret("empty-bin", nil)
	if _, v, ok := s.Version("empty-bin", ""); !ok || v != "" {
		t.Fatalf("Version(empty-bin) = %q, %v", v, ok)
	}
}

func TestBinaryViaSDK(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	if _, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
		Name: aws.String("bin"), SecretBinary: []byte("\x00\xffhello"),
	}); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("bin")})
	if string(got.SecretBinary) != "\x00\xffhello" || got.SecretString != nil {
		t.Fatalf("got %+v", got)
	}
	_, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
		Name: aws.String("both"), SecretBinary: []byte("x"), SecretString: aws.String("y"),
	})
	wantAs[*types.InvalidParameterException](t, err)
}

func TestGetByStageAndVersionID(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	v1, _, _ := s.Version("db", "AWSCURRENT")
	v2, err := s.PutSecretValue("db", "v2", "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		in         secretsmanager.GetSecretValueInput
		value, vid string
		stages     []string
	}{
		{secretsmanager.GetSecretValueInput{}, "v1", v1, []string{"AWSCURRENT"}},
		{secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSCURRENT")}, "v1", v1, []string{"AWSCURRENT"}},
		{secretsmanager.GetSecretValueInput{VersionStage: aws.String("AWSPENDING")}, "v2", v2, []string{"AWSPENDING"}},
		{secretsmanager.GetSecretValueInput{VersionId: aws.String(v1)}, "v1", v1, []string{"AWSCURRENT"}},
		{secretsmanager.GetSecretValueInput{VersionId: aws.String(v2)}, "v2", v2, []string{"AWSPENDING"}},
		{secretsmanager.GetSecretValueInput{VersionId: aws.String(v2), VersionStage: aws.String("AWSPENDING")}, "v2", v2, []string{"AWSPENDING"}},
	}
	for _, tc := range cases {
		in := tc.in
		in.SecretId = aws.String("db")
		got := mustGet(t, c, &in)
		if aws.ToString(got.SecretString) != tc.value || aws.ToString(got.VersionId) != tc.vid || !slices.Equal(got.VersionStages, tc.stages) {
			t.Errorf("GetSecretValue(stage %q, version %q) = %q %q %v, want %q %q %v",
				aws.ToString(tc.in.VersionStage), aws.ToString(tc.in.VersionId),
				aws.ToString(got.SecretString), aws.ToString(got.VersionId), got.VersionStages,
				tc.value, tc.vid, tc.stages)
		}
	}

	notFound := []struct {
		in  secretsmanager.GetSecretValueInput
		msg string
	}{
		{secretsmanager.GetSecretValueInput{SecretId: aws.String("nope")}, "Secrets Manager can't find the specified secret."},
		{secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionStage: aws.String("AWSPREVIOUS")},
			"Secrets Manager can't find the specified secret value for staging label: AWSPREVIOUS"},
		{secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionId: aws.String("no-such-version")},
			"Secrets Manager can't find the specified secret value for VersionId: no-such-version"},
	}
	for _, tc := range notFound {
		_, err := c.GetSecretValue(t.Context(), &tc.in)
		e := wantAs[*types.ResourceNotFoundException](t, err)
		if tc.msg != "" && e.ErrorMessage() != tc.msg {
			t.Errorf("message = %q, want %q", e.ErrorMessage(), tc.msg)
		}
	}
	// A VersionId and a VersionStage that name different versions are a
	// contradictory request, not a missing version.
	_, err = c.GetSecretValue(t.Context(), &secretsmanager.GetSecretValueInput{
		SecretId: aws.String("db"), VersionId: aws.String(v1), VersionStage: aws.String("AWSPENDING"),
	})
	wantAs[*types.InvalidRequestException](t, err)
}

// labelsUnique checks that every label is on at most one version and
// AWSCURRENT on exactly one.
func labelsUnique(t *testing.T, m map[string][]string) {
	t.Helper()
	seen := map[string]string{}
	for id, stages := range m {
		for _, st := range stages {
			if other, dup := seen[st]; dup {
				t.Errorf("label %s on both %s and %s", st, other, id)
			}
			seen[st] = id
		}
	}
	if _, ok := seen["AWSCURRENT"]; !ok {
		t.Errorf("no version has AWSCURRENT: %v", m)
	}
}

func describe(t *testing.T, c *secretsmanager.Client, id string) *secretsmanager.DescribeSecretOutput {
	t.Helper()
	out, err := c.DescribeSecret(t.Context(), &secretsmanager.DescribeSecretInput{SecretId: aws.String(id)})
	if err != nil {
		t.Fatalf("DescribeSecret(%s): %v", id, err)
	}
	return out
}

func TestRotationStagesViaSDK(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	cr, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("db"), SecretString: aws.String("v1")})
	if err != nil {
		t.Fatal(err)
	}
	v1 := aws.ToString(cr.VersionId)

	rotate := func(value, token, from string) {
		t.Helper()
		put, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
			SecretId: aws.String("db"), ClientRequestToken: aws.String(token),
			SecretString: aws.String(value), VersionStages: []string{"AWSPENDING"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(put.VersionId) != token || !slices.Equal(put.VersionStages, []string{"AWSPENDING"}) {
			t.Fatalf("PutSecretValue = %+v", put)
		}
		// AWSCURRENT has not moved yet.
		if got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")}); aws.ToString(got.VersionId) != from {
			t.Fatalf("AWSCURRENT moved early to %s", aws.ToString(got.VersionId))
		}
		// Moving a label that is elsewhere needs RemoveFromVersionId.
		_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
			SecretId: aws.String("db"), VersionStage: aws.String("AWSCURRENT"), MoveToVersionId: aws.String(token),
		})
		e := wantAs[*types.InvalidParameterException](t, err)
		if !strings.Contains(e.ErrorMessage(), from) {
			t.Errorf("message %q does not name version %s", e.ErrorMessage(), from)
		}
		up, err := c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
			SecretId: aws.String("db"), VersionStage: aws.String("AWSCURRENT"),
			MoveToVersionId: aws.String(token), RemoveFromVersionId: aws.String(from),
		})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(up.Name) != "db" || aws.ToString(up.ARN) == "" {
			t.Fatalf("UpdateSecretVersionStage = %+v", up)
		}
	}

	rotate("v2", "token-0000000000000000000000000002", v1)
	d := describe(t, c, "db")
	want := map[string][]string{
		"token-0000000000000000000000000002": {"AWSCURRENT", "AWSPENDING"},
		v1:                                   {"AWSPREVIOUS"},
	}
	if fmt.Sprint(d.VersionIdsToStages) != fmt.Sprint(want) {
		t.Fatalf("after first rotation: %v, want %v", d.VersionIdsToStages, want)
	}
	labelsUnique(t, d.VersionIdsToStages)

	rotate("v3", "token-0000000000000000000000000003", "token-0000000000000000000000000002")
	d = describe(t, c, "db")
	// v1 has no label left; the other labels each moved.
	want = map[string][]string{
		"token-0000000000000000000000000003": {"AWSCURRENT", "AWSPENDING"},
		"token-0000000000000000000000000002": {"AWSPREVIOUS"},
	}
	if fmt.Sprint(d.VersionIdsToStages) != fmt.Sprint(want) {
		t.Fatalf("after second rotation: %v, want %v", d.VersionIdsToStages, want)
	}
	labelsUnique(t, d.VersionIdsToStages)

	// The unlabelled old version is still readable by id.
	if got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionId: aws.String(v1)}); aws.ToString(got.SecretString) != "v1" || len(got.VersionStages) != 0 {
		t.Fatalf("old version = %+v", got)
	}
	if got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionStage: aws.String("AWSPREVIOUS")}); aws.ToString(got.SecretString) != "v2" {
		t.Fatalf("AWSPREVIOUS = %q", aws.ToString(got.SecretString))
	}

	// AWSPENDING can be removed, AWSCURRENT cannot.
	if _, err := c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: aws.String("db"), VersionStage: aws.String("AWSPENDING"),
		RemoveFromVersionId: aws.String("token-0000000000000000000000000003"),
	}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: aws.String("db"), VersionStage: aws.String("AWSCURRENT"),
		RemoveFromVersionId: aws.String("token-0000000000000000000000000003"),
	})
	wantAs[*types.InvalidParameterException](t, err)
	// RemoveFromVersionId must be where the label is.
	_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: aws.String("db"), VersionStage: aws.String("AWSCURRENT"),
		MoveToVersionId: aws.String(v1), RemoveFromVersionId: aws.String("token-0000000000000000000000000002"),
	})
	wantAs[*types.InvalidParameterException](t, err)
	// Unknown version ids and secrets are not found.
	_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: aws.String("db"), VersionStage: aws.String("X"), MoveToVersionId: aws.String("nope"),
	})
	wantAs[*types.ResourceNotFoundException](t, err)
	_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId: aws.String("nope"), VersionStage: aws.String("X"), MoveToVersionId: aws.String(v1),
	})
	wantAs[*types.ResourceNotFoundException](t, err)

	d = describe(t, c, "db")
	want = map[string][]string{
		"token-0000000000000000000000000003": {"AWSCURRENT"},
		"token-0000000000000000000000000002": {"AWSPREVIOUS"},
	}
	if fmt.Sprint(d.VersionIdsToStages) != fmt.Sprint(want) {
		t.Fatalf("at the end: %v, want %v", d.VersionIdsToStages, want)
	}
}

func TestPutDefaultsToCurrent(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	v1, _, _ := s.Version("db", "")
	out, err := c.PutSecretValue(t.Context(), &secretsmanager.PutSecretValueInput{
		SecretId: aws.String("db"), SecretString: aws.String("v2"),
	})
	if err != nil {
		t.Fatal(err)
	}
	v2 := aws.ToString(out.VersionId)
	if len(v2) != 36 || !slices.Equal(out.VersionStages, []string{"AWSCURRENT"}) {
		t.Fatalf("PutSecretValue = %+v (the SDK fills in a UUID token)", out)
	}
	want := map[string][]string{v2: {"AWSCURRENT"}, v1: {"AWSPREVIOUS"}}
	if got := s.Stages("db"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Stages = %v, want %v", got, want)
	}
	// A secret created without a value gets AWSCURRENT on its first version,
	// whatever labels the put asks for.
	if _, err := c.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String("empty")}); err != nil {
		t.Fatal(err)
	}
	_, err = get(t.Context(), c, "empty")
	e := wantAs[*types.ResourceNotFoundException](t, err)
	if e.ErrorMessage() != "Secrets Manager can't find the specified secret value for staging label: AWSCURRENT" {
		t.Errorf("message = %q", e.ErrorMessage())
	}
	first, err := s.PutSecretValue("empty", "x", "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Stages("empty")[first]; !slices.Equal(got, []string{"AWSCURRENT", "AWSPENDING"}) {
		t.Fatalf("first version labels = %v", got)
	}
}

func TestPutIdempotentToken(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	ctx := t.Context()
	put := func(value string) (*secretsmanager.PutSecretValueOutput, error) {
		return c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
			SecretId: aws.String("db"), ClientRequestToken: aws.String("same-token-000000000000000000000000"),
			SecretString: aws.String(value), VersionStages: []string{"AWSPENDING"},
		})
	}
	if _, err := put("v2"); err != nil {
		t.Fatal(err)
	}
	before := s.Stages("db")
	again, err := put("v2")
	if err != nil {
		t.Fatalf("same token, same value: %v", err)
	}
	if aws.ToString(again.VersionId) != "same-token-000000000000000000000000" || !slices.Equal(again.VersionStages, []string{"AWSPENDING"}) {
		t.Fatalf("repeat = %+v", again)
	}
	if after := s.Stages("db"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("repeat changed labels: %v -> %v", before, after)
	}
	_, err = put("v3")
	wantAs[*types.ResourceExistsException](t, err)
	if _, v, _ := s.Version("db", "AWSPENDING"); v != "v2" {
		t.Fatalf("AWSPENDING = %q after a rejected put", v)
	}

	// The Go side behaves the same.
	if err := s.PutSecretVersion("db", "go-token", "g1", "AWSPENDING"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecretVersion("db", "go-token", "g1", "AWSPENDING"); err != nil {
		t.Fatalf("idempotent PutSecretVersion: %v", err)
	}
	err = s.PutSecretVersion("db", "go-token", "g2")
	if wantAs[*smtest.Error](t, err).Code != "ResourceExistsException" {
		t.Fatalf("PutSecretVersion with a new value: %v", err)
	}

	// CreateSecret is idempotent too, for the SDK's own retries.
	create := func(value string) error {
		_, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
			Name: aws.String("new"), ClientRequestToken: aws.String("create-token-0000000000000000000000"),
			SecretString: aws.String(value),
		})
		return err
	}
	if err := create("a"); err != nil {
		t.Fatal(err)
	}
	if err := create("a"); err != nil {
		t.Fatalf("repeated CreateSecret: %v", err)
	}
	wantAs[*types.ResourceExistsException](t, create("b"))
}

func TestGoSideStages(t *testing.T) {
	s, _ := setup(t)
	s.CreateSecret("db", "v1")
	v1, _, _ := s.Version("db", "AWSCURRENT")
	v2, err := s.PutSecretValue("db", "v2", "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	// The Go side accepts an empty removeFrom.
	if err := s.UpdateStage("db", "AWSCURRENT", v2, ""); err != nil {
		t.Fatal(err)
	}
	if id, v, ok := s.Version("db", "AWSCURRENT"); !ok || id != v2 || v != "v2" {
		t.Fatalf("AWSCURRENT = %s %q %v", id, v, ok)
	}
	if id, _, _ := s.Version("db", "AWSPREVIOUS"); id != v1 {
		t.Fatalf("AWSPREVIOUS = %s, want %s", id, v1)
	}
	if err := s.UpdateStage("db", "AWSPENDING", "", v2); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := s.Version("db", "AWSPENDING"); ok {
		t.Fatal("AWSPENDING still there")
	}
	if err := s.UpdateStage("db", "AWSCURRENT", "", v2); err == nil {
		t.Fatal("removing AWSCURRENT succeeded")
	}
	if _, err := s.PutSecretValue("nope", "x"); wantAs[*smtest.Error](t, err).Code != "ResourceNotFoundException" {
		t.Fatal(err)
	}
	if _, _, ok := s.Version("nope", ""); ok {
		t.Fatal("Version of a missing secret is ok")
	}
	if s.Stages("nope") != nil {
		t.Fatal("Stages of a missing secret is not nil")
	}
}

func TestSizeLimit(t *testing.T) {
	s, c := setup(t)
	ctx := t.Context()
	max := strings.Repeat("x", smtest.MaxSecretSize)
	if _, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("big"), SecretString: aws.String(max)}); err != nil {
		t.Fatalf("a 64 KiB secret: %v", err)
	}
	if got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("big")}); len(aws.ToString(got.SecretString)) != smtest.MaxSecretSize {
		t.Fatalf("read back %d bytes", len(aws.ToString(got.SecretString)))
	}
	_, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("bigger"), SecretString: aws.String(max + "x")})
	wantAs[*types.InvalidParameterException](t, err)
	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("big"), SecretString: aws.String(max + "x")})
	wantAs[*types.InvalidParameterException](t, err)
	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("big"), SecretBinary: []byte(max + "x")})
	wantAs[*types.InvalidParameterException](t, err)
	if _, err := s.PutSecretValue("big", max+"x"); wantAs[*smtest.Error](t, err).Code != "InvalidParameterException" {
		t.Fatal(err)
	}
	if _, err := s.Add(smtest.SecretSpec{Name: "bigger", String: max + "x"}); err == nil {
		t.Fatal("Add accepted 64 KiB + 1")
	}
}

// Large responses come in several reads; with Server.Client they never fail
// spuriously (see smtest.HTTPClient), so a client without retries is safe.
func TestLargeResponses(t *testing.T) {
	s, c := setup(t)
	big := strings.Repeat("y", smtest.MaxSecretSize)
	s.CreateSecret("big", big)
	for i := range 300 {
		out, err := get(t.Context(), c, "big")
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		if aws.ToString(out.SecretString) != big {
			t.Fatalf("get %d: wrong value", i)
		}
	}
	if s.Calls("GetSecretValue") != 300 {
		t.Fatalf("Calls = %d, want 300", s.Calls("GetSecretValue"))
	}
}

func TestErrorTypes(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	s.CreateSecret("gone", "v1")
	ctx := t.Context()

	_, err := get(ctx, c, "nope")
	wantAs[*types.ResourceNotFoundException](t, err)

	_, err = c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("db"), SecretString: aws.String("x")})
	wantAs[*types.ResourceExistsException](t, err)

	_, err = c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("bad name!"), SecretString: aws.String("x")})
	wantAs[*types.InvalidParameterException](t, err)

	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("db")})
	wantAs[*types.InvalidRequestException](t, err)

	// A secret marked for deletion: InvalidRequestException, but DescribeSecret works.
	if err := s.DeleteSecret("gone", false); err != nil {
		t.Fatal(err)
	}
	_, err = get(ctx, c, "gone")
	wantAs[*types.InvalidRequestException](t, err)
	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("gone"), SecretString: aws.String("x")})
	wantAs[*types.InvalidRequestException](t, err)
	_, err = c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("gone"), SecretString: aws.String("x")})
	wantAs[*types.InvalidRequestException](t, err)
	if d := describe(t, c, "gone"); d.DeletedDate == nil {
		t.Fatal("no DeletedDate")
	}
	if err := s.RestoreSecret("gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := get(ctx, c, "gone"); err != nil {
		t.Fatalf("after RestoreSecret: %v", err)
	}
	if err := s.DeleteSecret("gone", true); err != nil {
		t.Fatal(err)
	}
	_, err = get(ctx, c, "gone")
	wantAs[*types.ResourceNotFoundException](t, err)
	s.CreateSecret("gone", "reborn") // the name is free again

	faults := []struct {
		kind  smtest.FaultKind
		check func(error)
	}{
		{smtest.Fail, func(err error) { wantAs[*types.InternalServiceError](t, err) }},
		{smtest.NotFound, func(err error) { wantAs[*types.ResourceNotFoundException](t, err) }},
		{smtest.DecryptionFailure, func(err error) { wantAs[*types.DecryptionFailure](t, err) }},
		{smtest.Throttle, func(err error) { wantCode(t, err, "ThrottlingException") }},
		{smtest.Deny, func(err error) {
			wantCode(t, err, "AccessDeniedException")
			if !strings.Contains(err.Error(), "secretsmanager:GetSecretValue") {
				t.Errorf("AccessDenied message: %v", err)
			}
		}},
	}
	for _, f := range faults {
		remove := s.Inject("GetSecretValue", smtest.Fault{Kind: f.kind})
		_, err := get(ctx, c, "db")
		f.check(err)
		remove()
	}
	remove := s.Inject("", smtest.Fault{Kind: smtest.CustomError, Code: "InvalidRequestException", Message: "custom"})
	_, err = get(ctx, c, "db")
	if e := wantAs[*types.InvalidRequestException](t, err); e.ErrorMessage() != "custom" {
		t.Errorf("message = %q", e.ErrorMessage())
	}
	remove()
	remove() // harmless
	if _, err := get(ctx, c, "db"); err != nil {
		t.Fatalf("after removing faults: %v", err)
	}
}

func TestAuthAndProtocolErrors(t *testing.T) {
	s, _ := setup(t)
	post := func(target, auth, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+"/", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		req.Header.Set("X-Amz-Target", target)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	const sig = "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=00"
	for _, tc := range []struct {
		target, auth, body string
		status             int
		code               string
	}{
		{"secretsmanager.GetSecretValue", "", `{"SecretId":"x"}`, 403, "MissingAuthenticationTokenException"},
		{"secretsmanager.GetSecretValue", "Basic Zm9vOmJhcg==", `{"SecretId":"x"}`, 400, "IncompleteSignatureException"},
		{"secretsmanager.TagResource", sig, `{}`, 400, "UnknownOperationException"},
		{"kms.Decrypt", sig, `{}`, 400, "UnknownOperationException"},
		{"secretsmanager.GetSecretValue", sig, `{not json`, 400, "SerializationException"},
		{"secretsmanager.GetSecretValue", sig, `{"SecretId":"x"}`, 400, "ResourceNotFoundException"},
	} {
		resp, body := post(tc.target, tc.auth, tc.body)
		if resp.StatusCode != tc.status || resp.Header.Get("X-Amzn-ErrorType") != tc.code ||
			!strings.Contains(body, `"__type":"`+tc.code+`"`) || !strings.Contains(body, `"message":`) ||
			resp.Header.Get("Content-Type") != "application/x-amz-json-1.1" {
			t.Errorf("%s auth=%q: %d %s %s", tc.target, tc.auth, resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), body)
		}
	}
	if s.Calls("GetSecretValue") != 4 || s.Calls("TagResource") != 1 || s.Calls("kms.Decrypt") != 1 || s.TotalCalls() != 6 {
		t.Errorf("counters = %v, total %d", s.CallCounts(), s.TotalCalls())
	}
}

func TestAccessKeyEnforced(t *testing.T) {
	s, c := setup(t, smtest.WithAccessKeyID("AKIDRIGHT"))
	s.CreateSecret("db", "v1")
	if _, err := get(t.Context(), c, "db"); err != nil {
		t.Fatalf("with the right key: %v", err)
	}
	wrong := s.Client(smtest.NoRetries, func(o *secretsmanager.Options) {
		o.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDWRONG", SecretAccessKey: "x"}, nil
		})
	})
	_, err := get(t.Context(), wrong, "db")
	wantCode(t, err, "UnrecognizedClientException")
}

func TestCounters(t *testing.T) {
	s, c := setup(t)
	ctx := t.Context()
	s.CreateSecret("db", "v1") // Go-side calls are not requests
	if s.TotalCalls() != 0 {
		t.Fatalf("TotalCalls = %d before any request", s.TotalCalls())
	}
	for range 3 {
		mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})
	}
	get(ctx, c, "missing") // failed requests count too
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail, Times: 1})
	get(ctx, c, "db") // and faulted ones
	describe(t, c, "db")
	if got := s.Calls("GetSecretValue"); got != 5 {
		t.Errorf("Calls(GetSecretValue) = %d, want 5", got)
	}
	if got := s.Calls("DescribeSecret"); got != 1 {
		t.Errorf("Calls(DescribeSecret) = %d, want 1", got)
	}
	if s.TotalCalls() != 6 || s.Calls("") != 6 || s.Calls("*") != 6 {
		t.Errorf("TotalCalls = %d", s.TotalCalls())
	}
	if m := s.CallCounts(); m["GetSecretValue"] != 5 || m["DescribeSecret"] != 1 || len(m) != 2 {
		t.Errorf("CallCounts = %v", m)
	}
	if err := s.WaitCalls(ctx, "GetSecretValue", 5); err != nil {
		t.Errorf("WaitCalls for a reached count: %v", err)
	}
	s.ResetCalls()
	if s.TotalCalls() != 0 || s.Calls("GetSecretValue") != 0 {
		t.Errorf("after ResetCalls: %v", s.CallCounts())
	}

	// WaitCalls returns when the count is reached...
	done := make(chan error, 1)
	go func() { done <- s.WaitCalls(ctx, "GetSecretValue", 2) }()
	mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})
	mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})
	if err := <-done; err != nil {
		t.Fatalf("WaitCalls: %v", err)
	}
	// ...or when its context ends...
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.WaitCalls(cctx, "GetSecretValue", 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitCalls with a cancelled context = %v", err)
	}
	// ...or when the server closes.
	go func() { done <- s.WaitCalls(ctx, "DescribeSecret", 1) }()
	s.Close()
	if err := <-done; !errors.Is(err, smtest.ErrClosed) {
		t.Fatalf("WaitCalls across Close = %v", err)
	}
}

func TestOnRequest(t *testing.T) {
	s, c := setup(t)
	arn := s.CreateSecret("db", "v1")
	var mu sync.Mutex
	var seen []string
	s.OnRequest(func(op, id string) {
		mu.Lock()
		seen = append(seen, op+" "+id)
		mu.Unlock()
	})
	mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String(arn)})
	describe(t, c, "db")
	c.CreateSecret(t.Context(), &secretsmanager.CreateSecretInput{Name: aws.String("new"), SecretString: aws.String("x")})
	s.OnRequest(nil)
	describe(t, c, "db")
	want := []string{"GetSecretValue " + arn, "DescribeSecret db", "CreateSecret new"}
	if !slices.Equal(seen, want) {
		t.Fatalf("seen %q, want %q", seen, want)
	}
}

func TestFaultTimesAndScope(t *testing.T) {
	s, c := setup(t)
	arnA := s.CreateSecret("a", "A")
	s.CreateSecret("b", "B")
	ctx := t.Context()

	// Times limits the fault to the next N matching requests.
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Throttle, Times: 2})
	for range 2 {
		_, err := get(ctx, c, "a")
		wantCode(t, err, "ThrottlingException")
	}
	if _, err := get(ctx, c, "a"); err != nil {
		t.Fatalf("third call: %v", err)
	}

	// SecretID limits it to one secret, named in any form.
	partialA := arnA[:len(arnA)-7]
	s.Inject("DescribeSecret", smtest.Fault{Kind: smtest.Deny, SecretID: partialA})
	for _, id := range []string{"a", arnA, partialA} {
		_, err := c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(id)})
		wantCode(t, err, "AccessDeniedException")
		if !strings.Contains(err.Error(), arnA) {
			t.Errorf("denial does not name the ARN: %v", err)
		}
	}
	describe(t, c, "b")
	if _, err := get(ctx, c, "a"); err != nil { // other operations are unaffected
		t.Fatal(err)
	}

	// Other operations are unaffected by an op-specific fault; "*" hits all.
	remove := s.Inject("*", smtest.Fault{Kind: smtest.Fail, SecretID: "b"})
	_, err := get(ctx, c, "b")
	wantAs[*types.InternalServiceError](t, err)
	_, err = c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String("b"), SecretString: aws.String("x")})
	wantAs[*types.InternalServiceError](t, err)
	if _, v, _ := s.Version("b", ""); v != "B" {
		t.Fatalf("a faulted put changed the value to %q", v)
	}
	remove()
	if _, err := get(ctx, c, "b"); err != nil {
		t.Fatal(err)
	}

	// The first matching fault wins; ClearFaults removes all.
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.NotFound, Times: 1})
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	_, err = get(ctx, c, "a")
	wantAs[*types.ResourceNotFoundException](t, err)
	_, err = get(ctx, c, "a")
	wantAs[*types.InternalServiceError](t, err)
	s.ClearFaults()
	if _, err := get(ctx, c, "a"); err != nil {
		t.Fatal(err)
	}

	// A fault on CreateSecret matches the new secret's Name.
	s.Inject("CreateSecret", smtest.Fault{Kind: smtest.Deny, SecretID: "c", Times: 1})
	_, err = c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("c"), SecretString: aws.String("x")})
	wantCode(t, err, "AccessDeniedException")

	func() {
		defer func() {
			if recover() == nil {
				t.Error("Inject of an invalid kind did not panic")
			}
		}()
		s.Inject("", smtest.Fault{})
	}()
}

func TestDelayFault(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	ctx := t.Context()

	// A short delay, then the request is served normally.
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Delay, Delay: 10 * time.Millisecond, Times: 1})
	if got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")}); aws.ToString(got.SecretString) != "v1" {
		t.Fatal("wrong value after a delay")
	}
	// A Delay followed by another fault: both apply.
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Delay, Delay: time.Millisecond, Times: 1})
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Throttle, Times: 1})
	_, err := get(ctx, c, "db")
	wantCode(t, err, "ThrottlingException")

	// A long delay honours the client's context.
	s.ResetCalls()
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Delay, Delay: time.Hour})
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := get(cctx, c, "db")
		done <- err
	}()
	if err := s.WaitCalls(ctx, "GetSecretValue", 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("delayed call after cancel = %v, want context.Canceled", err)
	}
}

func TestHangUntilCancel(t *testing.T) {
	s, c := setup(t)
	s.CreateSecret("db", "v1")
	ctx := t.Context()
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel, Times: 1})

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := get(cctx, c, "db")
		done <- err
	}()
	// The server has the request: cancel it and the call must return.
	if err := s.WaitCalls(ctx, "GetSecretValue", 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	err := <-done
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("hung call after cancel = %v, want context.Canceled", err)
	}
	// Times: 1 used the fault up.
	if _, err := get(ctx, c, "db"); err != nil {
		t.Fatalf("next call: %v", err)
	}
}

func TestCloseReleasesHungRequests(t *testing.T) {
	s := smtest.NewServer()
	s.CreateSecret("db", "v1")
	c := s.Client(smtest.NoRetries)
	s.Inject("", smtest.Fault{Kind: smtest.HangUntilCancel})
	s.Inject("", smtest.Fault{Kind: smtest.Delay, Delay: time.Hour}) // never reached

	const n = 5
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := get(context.Background(), c, "db")
			errs <- err
		}()
	}
	if err := s.WaitCalls(t.Context(), "GetSecretValue", n); err != nil {
		t.Fatal(err)
	}
	s.Close() // must not wait for the hung requests' clients
	s.Close() // idempotent
	for range n {
		if err := <-errs; err == nil {
			t.Fatal("a hung call succeeded across Close")
		}
	}
	// The Go side still works after Close.
	if _, v, ok := s.Version("db", ""); !ok || v != "v1" {
		t.Fatal("secret lost after Close")
	}
}

func TestCloseReleasesDelayedRequests(t *testing.T) {
	s := smtest.NewServer()
	s.CreateSecret("db", "v1")
	c := s.Client(smtest.NoRetries)
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Delay, Delay: time.Hour})
	done := make(chan error, 1)
	go func() {
		_, err := get(context.Background(), c, "db")
		done <- err
	}()
	if err := s.WaitCalls(t.Context(), "GetSecretValue", 1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := <-done; err == nil {
		t.Fatal("delayed call succeeded across Close")
	}
}

func TestSDKRetries(t *testing.T) {
	s := smtest.Start(t)
	s.CreateSecret("db", "v1")
	c := s.Client(smtest.FastRetries(3))
	ctx := t.Context()
	for _, kind := range []smtest.FaultKind{smtest.Fail, smtest.Throttle} {
		s.ResetCalls()
		s.Inject("GetSecretValue", smtest.Fault{Kind: kind, Times: 2})
		if _, err := get(ctx, c, "db"); err != nil {
			t.Fatalf("%v twice, then success: %v", kind, err)
		}
		if got := s.Calls("GetSecretValue"); got != 3 {
			t.Errorf("%v: %d requests for one SDK call, want 3", kind, got)
		}
	}
	// Three failures exhaust the attempts.
	s.ResetCalls()
	s.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail, Times: 3})
	_, err := get(ctx, c, "db")
	wantAs[*types.InternalServiceError](t, err)
	if got := s.Calls("GetSecretValue"); got != 3 {
		t.Errorf("%d requests, want 3", got)
	}
	// Client errors are not retried.
	for _, kind := range []smtest.FaultKind{smtest.Deny, smtest.NotFound, smtest.DecryptionFailure} {
		s.ResetCalls()
		s.Inject("GetSecretValue", smtest.Fault{Kind: kind, Times: 1})
		if _, err := get(ctx, c, "db"); err == nil {
			t.Fatalf("%v: no error", kind)
		}
		if got := s.Calls("GetSecretValue"); got != 1 {
			t.Errorf("%v: %d requests, want 1 (not retried)", kind, got)
		}
	}
}

func TestDescribeSecret(t *testing.T) {
	start := time.Date(2025, 3, 1, 12, 30, 0, 123_000_000, time.UTC)
	var mu sync.Mutex
	now := start
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	s, c := setup(t, smtest.WithClock(clock))
	arn, err := s.Add(smtest.SecretSpec{Name: "db", String: "v1", Description: "app db"})
	if err != nil {
		t.Fatal(err)
	}
	d := describe(t, c, "db")
	if aws.ToString(d.ARN) != arn || aws.ToString(d.Name) != "db" || aws.ToString(d.Description) != "app db" {
		t.Fatalf("DescribeSecret = %+v", d)
	}
	if !d.CreatedDate.Equal(start) || !d.LastChangedDate.Equal(start) {
		t.Errorf("CreatedDate %v LastChangedDate %v, want %v", d.CreatedDate, d.LastChangedDate, start)
	}
	if d.RotationEnabled != nil || d.RotationRules != nil || d.LastRotatedDate != nil || d.NextRotationDate != nil ||
		d.LastAccessedDate != nil || d.DeletedDate != nil || d.RotationLambdaARN != nil {
		t.Errorf("unset fields present: %+v", d)
	}
	v1, _, _ := s.Version("db", "")
	if fmt.Sprint(d.VersionIdsToStages) != fmt.Sprint(map[string][]string{v1: {"AWSCURRENT"}}) {
		t.Errorf("VersionIdsToStages = %v", d.VersionIdsToStages)
	}

	advance(time.Hour)
	got := mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})
	if !got.CreatedDate.Equal(start) {
		t.Errorf("version CreatedDate = %v, want %v", got.CreatedDate, start)
	}
	v2, _ := s.PutSecretValue("db", "v2")
	got = mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})
	if !got.CreatedDate.Equal(start.Add(time.Hour)) || aws.ToString(got.VersionId) != v2 {
		t.Errorf("new version CreatedDate = %v", got.CreatedDate)
	}

	lastRotated := start.Add(-24 * time.Hour)
	if err := s.SetRotation("db", true, 30, lastRotated); err != nil {
		t.Fatal(err)
	}
	d = describe(t, c, arn)
	if !aws.ToBool(d.RotationEnabled) || d.RotationRules == nil || aws.ToInt64(d.RotationRules.AutomaticallyAfterDays) != 30 ||
		!d.LastRotatedDate.Equal(lastRotated) || !d.NextRotationDate.Equal(lastRotated.Add(30*24*time.Hour)) ||
		!strings.HasPrefix(aws.ToString(d.RotationLambdaARN), "arn:aws:lambda:us-east-1:123456789012:function:") {
		t.Errorf("rotation fields: enabled %v rules %+v last %v next %v lambda %v",
			d.RotationEnabled, d.RotationRules, d.LastRotatedDate, d.NextRotationDate, aws.ToString(d.RotationLambdaARN))
	}
	if !d.LastChangedDate.Equal(start.Add(time.Hour)) {
		t.Errorf("LastChangedDate = %v", d.LastChangedDate)
	}
	if want := start.Truncate(24 * time.Hour); d.LastAccessedDate == nil || !d.LastAccessedDate.Equal(want) {
		t.Errorf("LastAccessedDate = %v, want %v", d.LastAccessedDate, want)
	}
	if fmt.Sprint(d.VersionIdsToStages) != fmt.Sprint(map[string][]string{v1: {"AWSPREVIOUS"}, v2: {"AWSCURRENT"}}) {
		t.Errorf("VersionIdsToStages = %v", d.VersionIdsToStages)
	}

	if err := s.SetRotation("db", false, 30, lastRotated); err != nil {
		t.Fatal(err)
	}
	d = describe(t, c, "db")
	if d.RotationEnabled == nil || *d.RotationEnabled || d.NextRotationDate != nil || d.RotationRules == nil {
		t.Errorf("disabled rotation: enabled %v next %v rules %v", d.RotationEnabled, d.NextRotationDate, d.RotationRules)
	}
	if err := s.SetRotationSchedule("db", "rate(4 hours)"); err != nil {
		t.Fatal(err)
	}
	d = describe(t, c, "db")
	if d.RotationRules == nil || aws.ToString(d.RotationRules.ScheduleExpression) != "rate(4 hours)" || d.RotationRules.AutomaticallyAfterDays != nil ||
		!d.NextRotationDate.Equal(lastRotated.Add(4*time.Hour)) {
		t.Errorf("schedule: rules %+v next %v", d.RotationRules, d.NextRotationDate)
	}
	if err := s.SetRotation("nope", true, 1, time.Time{}); wantAs[*smtest.Error](t, err).Code != "ResourceNotFoundException" {
		t.Fatal(err)
	}
	_, err = c.DescribeSecret(t.Context(), &secretsmanager.DescribeSecretInput{SecretId: aws.String("nope")})
	wantAs[*types.ResourceNotFoundException](t, err)
}

func TestConcurrentGets(t *testing.T) {
	s := smtest.Start(t)
	c := s.Client() // the SDK's default retryer
	ctx := t.Context()
	const secrets, goroutines = 10, 200
	for i := range secrets {
		s.CreateSecret(fmt.Sprintf("db/%d", i), fmt.Sprintf(`{"password":"p%d"}`, i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			id := fmt.Sprintf("db/%d", g%secrets)
			out, err := get(ctx, c, id)
			if err != nil {
				errs <- err
				return
			}
			if want := fmt.Sprintf(`{"password":"p%d"}`, g%secrets); aws.ToString(out.SecretString) != want {
				errs <- fmt.Errorf("%s = %q, want %q", id, aws.ToString(out.SecretString), want)
			}
		})
	}
	// Rotations, Go-side reads and fault changes race with the requests.
	s.CreateSecret("db/rot", "start")
	wg.Go(func() {
		for i := range 20 {
			if _, err := s.PutSecretValue("db/rot", fmt.Sprint(i)); err != nil {
				errs <- err
			}
			s.Version("db/0", "")
			s.Stages("db/1")
			s.Inject("DescribeSecret", smtest.Fault{Kind: smtest.Fail, Times: 1})()
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.Calls("GetSecretValue"); got != goroutines {
		t.Errorf("Calls = %d, want %d", got, goroutines)
	}
	if err := s.WaitCalls(ctx, "GetSecretValue", goroutines); err != nil {
		t.Error(err)
	}
}

func TestSetEnvLoadDefaultConfig(t *testing.T) {
	s := smtest.Start(t, smtest.WithRegion("ap-southeast-2"))
	s.CreateSecret("db", "from-env")
	t.Setenv("AWS_PROFILE", "does-not-exist") // would break LoadDefaultConfig
	t.Setenv("AWS_SESSION_TOKEN", "stale")
	s.SetEnv(t)
	if _, ok := os.LookupEnv("AWS_PROFILE"); ok {
		t.Fatal("AWS_PROFILE still set")
	}
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "ap-southeast-2" {
		t.Fatalf("region = %q", cfg.Region)
	}
	c := secretsmanager.NewFromConfig(cfg)
	out, err := get(t.Context(), c, "db")
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.SecretString) != "from-env" || !strings.Contains(aws.ToString(out.ARN), ":ap-southeast-2:") {
		t.Fatalf("got %+v", out)
	}
	if s.Calls("GetSecretValue") != 1 {
		t.Fatalf("Calls = %d", s.Calls("GetSecretValue"))
	}
	env := strings.Join(s.Environ(), "\n")
	for _, want := range []string{"AWS_ENDPOINT_URL_SECRETS_MANAGER=" + s.URL(), "AWS_REGION=ap-southeast-2", "AWS_EC2_METADATA_DISABLED=true", "AWS_PROFILE="} {
		if !strings.Contains(env, want) {
			t.Errorf("Environ lacks %q", want)
		}
	}
}

func TestAWSConfig(t *testing.T) {
	s := smtest.Start(t)
	s.CreateSecret("db", "v")
	c := secretsmanager.NewFromConfig(s.AWSConfig())
	if _, err := get(t.Context(), c, "db"); err != nil {
		t.Fatal(err)
	}
}

func TestFinishRotation(t *testing.T) {
	s := smtest.Start(t)
	s.CreateSecret("rot", "v1")
	old, _, _ := s.Version("rot", smtest.StageCurrent)
	v2, err := s.PutSecretValue("rot", "v2", smtest.StagePending)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.FinishRotation("rot", v2); err != nil {
		t.Fatal(err)
	}
	stages := s.Stages("rot")
	if got := stages[v2]; len(got) != 1 || got[0] != smtest.StageCurrent {
		t.Errorf("new version stages %v, want only AWSCURRENT", got)
	}
	if got := stages[old]; len(got) != 1 || got[0] != smtest.StagePrevious {
		t.Errorf("old version stages %v, want AWSPREVIOUS", got)
	}
	if err := s.FinishRotation("nope", v2); err == nil {
		t.Error("no error for a missing secret")
	}
}
