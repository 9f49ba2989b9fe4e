package smtest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 3, 1, 12, 30, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func tok(n int) string { return fmt.Sprintf("%032d", n) }

func TestGetRandomPassword(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	gen := func(in secretsmanager.GetRandomPasswordInput) (string, error) {
		out, err := c.GetRandomPassword(ctx, &in)
		if err != nil {
			return "", err
		}
		return aws.ToString(out.RandomPassword), nil
	}
	has := func(pw, set string) bool { return strings.ContainsAny(pw, set) }
	const lower, upper, digits = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
	if smtest.Punctuation != "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" || len(smtest.Punctuation) != 32 {
		t.Fatalf("Punctuation = %q", smtest.Punctuation)
	}

	// Defaults: 32 characters, every type present (RequireEachIncludedType
	// defaults to true), no space. Repeated, since one success by chance
	// would prove little.
	for range 50 {
		pw, err := gen(secretsmanager.GetRandomPasswordInput{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != 32 || !has(pw, lower) || !has(pw, upper) || !has(pw, digits) || !has(pw, smtest.Punctuation) || has(pw, " ") {
			t.Fatalf("default password %q", pw)
		}
	}
	pw, err := gen(secretsmanager.GetRandomPasswordInput{
		PasswordLength: aws.Int64(200), ExcludePunctuation: aws.Bool(true), ExcludeCharacters: aws.String("abcXYZ019"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) != 200 || has(pw, smtest.Punctuation) || has(pw, "abcXYZ019") || !has(pw, lower) || !has(pw, upper) || !has(pw, digits) {
		t.Fatalf("password with exclusions %q", pw)
	}
	pw, err = gen(secretsmanager.GetRandomPasswordInput{
		PasswordLength: aws.Int64(4096), IncludeSpace: aws.Bool(true), ExcludeLowercase: aws.Bool(true),
		ExcludeUppercase: aws.Bool(true), ExcludeNumbers: aws.Bool(true),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) != 4096 || !has(pw, " ") || has(pw, lower+upper+digits) {
		t.Fatalf("punctuation and space only: %q...", pw[:40])
	}
	// One character of four types is fine when not every type is required.
	if pw, err = gen(secretsmanager.GetRandomPasswordInput{PasswordLength: aws.Int64(1), RequireEachIncludedType: aws.Bool(false)}); err != nil || len(pw) != 1 {
		t.Fatalf("length 1 = %q, %v", pw, err)
	}
	// A type whose every character is excluded is not required.
	if pw, err = gen(secretsmanager.GetRandomPasswordInput{
		PasswordLength: aws.Int64(3), ExcludeCharacters: aws.String(digits), ExcludePunctuation: aws.Bool(true),
	}); err != nil || len(pw) != 3 || has(pw, digits) {
		t.Fatalf("digits excluded one by one: %q, %v", pw, err)
	}

	for _, tc := range []struct {
		in   secretsmanager.GetRandomPasswordInput
		code string
	}{
		{secretsmanager.GetRandomPasswordInput{PasswordLength: aws.Int64(0)}, "ValidationException"},
		{secretsmanager.GetRandomPasswordInput{PasswordLength: aws.Int64(4097)}, "ValidationException"},
		{secretsmanager.GetRandomPasswordInput{PasswordLength: aws.Int64(3)}, "InvalidParameterException"}, // four types required
		{secretsmanager.GetRandomPasswordInput{
			ExcludeLowercase: aws.Bool(true), ExcludeUppercase: aws.Bool(true), ExcludeNumbers: aws.Bool(true), ExcludePunctuation: aws.Bool(true),
		}, "InvalidParameterException"},
		{secretsmanager.GetRandomPasswordInput{
			ExcludeCharacters: aws.String(lower + upper + digits + smtest.Punctuation),
		}, "InvalidParameterException"},
	} {
		_, err := gen(tc.in)
		wantCode(t, err, tc.code)
	}
}

func TestRotateSecretWithHook(t *testing.T) {
	clock := newClock()
	s, c := setup(t, smtest.WithClock(clock.Now))
	ctx := t.Context()
	arn := s.CreateSecret("db", "v1")
	oldID, _, _ := s.Version("db", "")

	// The hook plays a rotation Lambda: the four steps, through the SDK.
	var gotID, gotToken string
	s.OnRotate(func(ctx context.Context, secretID, token string) error {
		gotID, gotToken = secretID, token
		cur, err := c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(secretID), VersionStage: aws.String("AWSCURRENT")})
		if err != nil {
			return err
		}
		if _, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
			SecretId: aws.String(secretID), ClientRequestToken: aws.String(token),
			SecretString: aws.String(aws.ToString(cur.SecretString) + "+1"), VersionStages: []string{"AWSPENDING"},
		}); err != nil {
			return err
		}
		clock.Advance(time.Minute) // the rotation takes a while
		_, err = c.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
			SecretId: aws.String(secretID), VersionStage: aws.String("AWSCURRENT"),
			MoveToVersionId: aws.String(token), RemoveFromVersionId: cur.VersionId,
		})
		return err
	})
	out, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId:          aws.String("db"),
		RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:rot"),
		RotationRules:     &types.RotationRulesType{AutomaticallyAfterDays: aws.Int64(7), Duration: aws.String("2h")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if gotID != arn || len(gotToken) != 36 || aws.ToString(out.VersionId) != gotToken || aws.ToString(out.ARN) != arn || aws.ToString(out.Name) != "db" {
		t.Fatalf("hook got (%q, %q); RotateSecret = %+v", gotID, gotToken, out)
	}
	if id, v, _ := s.Version("db", ""); id != gotToken || v != "v1+1" {
		t.Fatalf("AWSCURRENT = %s %q after rotation", id, v)
	}
	if id, _, _ := s.Version("db", "AWSPREVIOUS"); id != oldID {
		t.Fatalf("AWSPREVIOUS = %s, want %s", id, oldID)
	}
	finished := clock.Now()
	d := describe(t, c, "db")
	if !aws.ToBool(d.RotationEnabled) || aws.ToString(d.RotationLambdaARN) != "arn:aws:lambda:us-east-1:123456789012:function:rot" ||
		d.RotationRules == nil || aws.ToInt64(d.RotationRules.AutomaticallyAfterDays) != 7 || aws.ToString(d.RotationRules.Duration) != "2h" ||
		d.LastRotatedDate == nil || !d.LastRotatedDate.Equal(finished) || !d.NextRotationDate.Equal(finished.Add(7*24*time.Hour)) {
		t.Fatalf("after rotation: enabled %v lambda %v rules %+v last %v next %v",
			d.RotationEnabled, aws.ToString(d.RotationLambdaARN), d.RotationRules, d.LastRotatedDate, d.NextRotationDate)
	}

	// A second rotation keeps the configured Lambda and rules.
	if _, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db")}); err != nil {
		t.Fatal(err)
	}
	if _, v, _ := s.Version("db", ""); v != "v1+1+1" {
		t.Fatalf("second rotation: AWSCURRENT = %q", v)
	}
	finished = clock.Now()

	// A failing hook fails the call: a plain error as InvalidRequestException,
	// an *smtest.Error as itself.
	s.OnRotate(func(context.Context, string, string) error { return errors.New("db unreachable") })
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db")})
	if e := wantAs[*types.InvalidRequestException](t, err); !strings.Contains(e.ErrorMessage(), "db unreachable") {
		t.Errorf("message = %q", e.ErrorMessage())
	}
	clearPending := func() {
		// A failed rotation leaves its version labelled AWSPENDING, which
		// blocks the next RotateSecret as in AWS; clear it by hand.
		for id, stages := range s.Stages("db") {
			if fmt.Sprint(stages) == "[AWSPENDING]" {
				if err := s.UpdateStage("db", "AWSPENDING", "", id); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	clearPending()
	s.OnRotate(func(context.Context, string, string) error {
		return &smtest.Error{Status: 400, Code: "AccessDeniedException", Message: "lambda denied"}
	})
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db")})
	wantCode(t, err, "AccessDeniedException")
	clearPending()

	// RotateImmediately=false only stores the schedule.
	called := false
	s.OnRotate(func(context.Context, string, string) error { called = true; return nil })
	out, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId: aws.String("db"), RotateImmediately: aws.Bool(false),
		RotationRules: &types.RotationRulesType{ScheduleExpression: aws.String("rate(6 hours)")},
	})
	if err != nil || called || out.VersionId != nil {
		t.Fatalf("RotateImmediately=false: %+v, %v, hook called %v", out, err, called)
	}
	d = describe(t, c, "db")
	if d.RotationRules == nil || aws.ToString(d.RotationRules.ScheduleExpression) != "rate(6 hours)" ||
		d.RotationRules.AutomaticallyAfterDays != nil || !d.NextRotationDate.Equal(finished.Add(6*time.Hour)) {
		t.Fatalf("schedule: rules %+v next %v", d.RotationRules, d.NextRotationDate)
	}
	if _, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId: aws.String("db"), RotateImmediately: aws.Bool(false),
		RotationRules: &types.RotationRulesType{ScheduleExpression: aws.String("cron(0 8 1 * ? *)")},
	}); err != nil {
		t.Fatal(err)
	}
	if d = describe(t, c, "db"); d.NextRotationDate != nil {
		t.Errorf("NextRotationDate for a cron schedule = %v, want none", d.NextRotationDate)
	}
}

func TestRotateSecretWithoutHookAndErrors(t *testing.T) {
	s, c := setup(t)
	ctx := t.Context()
	s.CreateSecret("db", "v1")
	before := s.Stages("db")
	lambda := aws.String("arn:aws:lambda:us-east-1:123456789012:function:rot")

	// No Lambda given or configured.
	_, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db")})
	wantAs[*types.InvalidRequestException](t, err)
	_, err = c.CancelRotateSecret(ctx, &secretsmanager.CancelRotateSecretInput{SecretId: aws.String("db")})
	wantAs[*types.InvalidRequestException](t, err)

	// Without a hook: the configuration is stored, the token comes back,
	// and the new version exists labelled AWSPENDING, without a value yet,
	// as AWS leaves it for the rotation function's createSecret.
	out, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{
		SecretId: aws.String("db"), RotationLambdaARN: lambda, ClientRequestToken: aws.String(tok(1)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.VersionId) != tok(1) || fmt.Sprint(s.Stages("db")[tok(1)]) != "[AWSPENDING]" || len(s.Stages("db")) != len(before)+1 {
		t.Fatalf("RotateSecret without hook = %+v, stages %v -> %v", out, before, s.Stages("db"))
	}
	_, err = c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionId: aws.String(tok(1)), VersionStage: aws.String("AWSPENDING")})
	wantAs[*types.ResourceNotFoundException](t, err)
	if d := describe(t, c, "db"); !aws.ToBool(d.RotationEnabled) {
		t.Fatal("rotation not enabled")
	}

	// An unfinished rotation blocks the next one, and CancelRotateSecret
	// names it but leaves AWSPENDING in place.
	pending, err := s.PutSecretValue("db", "v2", "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db")})
	if e := wantAs[*types.InvalidRequestException](t, err); !strings.Contains(e.ErrorMessage(), "previous rotation") {
		t.Errorf("message = %q", e.ErrorMessage())
	}
	cr, err := c.CancelRotateSecret(ctx, &secretsmanager.CancelRotateSecretInput{SecretId: aws.String("db")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(cr.VersionId) != pending || aws.ToString(cr.Name) != "db" {
		t.Fatalf("CancelRotateSecret = %+v, want VersionId %s", cr, pending)
	}
	if id, _, ok := s.Version("db", "AWSPENDING"); !ok || id != pending {
		t.Fatal("CancelRotateSecret removed AWSPENDING")
	}
	d := describe(t, c, "db")
	if d.RotationEnabled == nil || *d.RotationEnabled || d.NextRotationDate != nil || aws.ToString(d.RotationLambdaARN) != aws.ToString(lambda) {
		t.Fatalf("after cancel: enabled %v next %v lambda %v", d.RotationEnabled, d.NextRotationDate, d.RotationLambdaARN)
	}
	// Retrying the interrupted rotation with its own token is allowed.
	if _, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db"), ClientRequestToken: aws.String(pending)}); err != nil {
		t.Fatalf("retry of the pending rotation: %v", err)
	}

	for _, tc := range []struct {
		rules *types.RotationRulesType
		code  string
	}{
		{&types.RotationRulesType{AutomaticallyAfterDays: aws.Int64(0)}, "ValidationException"},
		{&types.RotationRulesType{AutomaticallyAfterDays: aws.Int64(1001)}, "ValidationException"},
		{&types.RotationRulesType{AutomaticallyAfterDays: aws.Int64(3), ScheduleExpression: aws.String("rate(3 days)")}, "InvalidParameterException"},
		{&types.RotationRulesType{ScheduleExpression: aws.String("rate(2 hours)")}, "InvalidParameterException"},
		{&types.RotationRulesType{ScheduleExpression: aws.String("every day")}, "InvalidParameterException"},
		{&types.RotationRulesType{ScheduleExpression: aws.String("rate(1 day)"), Duration: aws.String("25h")}, "InvalidParameterException"},
	} {
		_, err := c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db"), RotationRules: tc.rules, RotateImmediately: aws.Bool(false)})
		wantCode(t, err, tc.code)
	}
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("db"), ClientRequestToken: aws.String("short")})
	wantCode(t, err, "ValidationException")
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("nope"), RotationLambdaARN: lambda})
	wantAs[*types.ResourceNotFoundException](t, err)
	s.CreateSecret("gone", "x")
	s.DeleteSecret("gone", false)
	_, err = c.RotateSecret(ctx, &secretsmanager.RotateSecretInput{SecretId: aws.String("gone"), RotationLambdaARN: lambda})
	wantAs[*types.InvalidRequestException](t, err)
}

// The hook's context ends when the server closes, so a hook stuck on
// something never makes Close hang.
func TestRotateHookCancelledByClose(t *testing.T) {
	s := smtest.NewServer()
	s.CreateSecret("db", "v1")
	entered := make(chan struct{})
	s.OnRotate(func(ctx context.Context, _, _ string) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	})
	done := make(chan error, 1)
	go func() {
		_, err := s.Client(smtest.NoRetries).RotateSecret(context.Background(), &secretsmanager.RotateSecretInput{
			SecretId: aws.String("db"), RotationLambdaARN: aws.String("arn:aws:lambda:us-east-1:123456789012:function:f"),
		})
		done <- err
	}()
	<-entered
	s.Close()
	if err := <-done; err == nil {
		t.Fatal("RotateSecret succeeded although its hook was cancelled")
	}
}

func TestLastRotatedDateOnFinish(t *testing.T) {
	clock := newClock()
	s, c := setup(t, smtest.WithClock(clock.Now))
	s.CreateSecret("db", "v1")
	v1, _, _ := s.Version("db", "")
	if err := s.SetRotation("db", true, 30, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// AWSCURRENT moving to a version without AWSPENDING is no rotation.
	other, _ := s.PutSecretValue("db", "v2", "LABEL")
	move := func(to, from string) {
		t.Helper()
		if _, err := c.UpdateSecretVersionStage(t.Context(), &secretsmanager.UpdateSecretVersionStageInput{
			SecretId: aws.String("db"), VersionStage: aws.String("AWSCURRENT"),
			MoveToVersionId: aws.String(to), RemoveFromVersionId: aws.String(from),
		}); err != nil {
			t.Fatal(err)
		}
	}
	move(other, v1)
	if d := describe(t, c, "db"); d.LastRotatedDate != nil {
		t.Fatalf("LastRotatedDate = %v after a plain stage move", d.LastRotatedDate)
	}
	clock.Advance(time.Hour)
	pending, _ := s.PutSecretValue("db", "v3", "AWSPENDING")
	move(pending, other)
	d := describe(t, c, "db")
	if d.LastRotatedDate == nil || !d.LastRotatedDate.Equal(clock.Now()) || !d.NextRotationDate.Equal(clock.Now().Add(30*24*time.Hour)) {
		t.Fatalf("LastRotatedDate %v NextRotationDate %v, want %v + 30 days", d.LastRotatedDate, d.NextRotationDate, clock.Now())
	}
	if got := d.VersionIdsToStages[other]; !slices.Equal(got, []string{"AWSPREVIOUS", "LABEL"}) {
		t.Errorf("old current = %v, want AWSPREVIOUS moved to it", got)
	}
}

func TestListSecrets(t *testing.T) {
	clock := newClock()
	s, c := setup(t, smtest.WithClock(clock.Now))
	ctx := t.Context()
	names := []string{"prod/app/db", "prod/app/cache", "prod/web", "dev/app/db", "Prod/x", "legacyDatabase892"}
	for _, n := range names {
		if _, err := s.Add(smtest.SecretSpec{Name: n, String: "v", Description: "secret " + strings.ReplaceAll(n, "/", " ")}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
	}
	list := func(in secretsmanager.ListSecretsInput) []string {
		t.Helper()
		var got []string
		p := secretsmanager.NewListSecretsPaginator(c, &in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range out.SecretList {
				got = append(got, aws.ToString(e.Name))
			}
		}
		return got
	}
	f := func(key types.FilterNameStringType, values ...string) []types.Filter {
		return []types.Filter{{Key: key, Values: values}}
	}
	for _, tc := range []struct {
		name string
		in   secretsmanager.ListSecretsInput
		want []string
	}{
		{"all, by creation date", secretsmanager.ListSecretsInput{}, names},
		{"pages of 2", secretsmanager.ListSecretsInput{MaxResults: aws.Int32(2)}, names},
		{"name prefix is case-sensitive", secretsmanager.ListSecretsInput{Filters: f("name", "prod/")}, []string{"prod/app/db", "prod/app/cache", "prod/web"}},
		{"name is a prefix, not a word", secretsmanager.ListSecretsInput{Filters: f("name", "app")}, nil},
		{"name values are ORed", secretsmanager.ListSecretsInput{Filters: f("name", "prod/web", "dev/")}, []string{"prod/web", "dev/app/db"}},
		{"negated name", secretsmanager.ListSecretsInput{Filters: f("name", "!prod")}, []string{"dev/app/db", "Prod/x", "legacyDatabase892"}},
		{"filters are ANDed", secretsmanager.ListSecretsInput{Filters: append(f("name", "prod/"), f("all", "db")...)}, []string{"prod/app/db"}},
		{"all splits words, ignores case", secretsmanager.ListSecretsInput{Filters: f("all", "APP")}, []string{"prod/app/db", "prod/app/cache", "dev/app/db"}},
		{"all splits camel case and digits", secretsmanager.ListSecretsInput{Filters: f("all", "database 892")}, []string{"legacyDatabase892"}},
		{"description words", secretsmanager.ListSecretsInput{Filters: f("description", "Secret Web")}, []string{"prod/web"}},
		{"tags are never set", secretsmanager.ListSecretsInput{Filters: f("tag-key", "env")}, nil},
		{"sort by name, descending", secretsmanager.ListSecretsInput{SortBy: types.SortByTypeName, SortOrder: types.SortOrderTypeDesc, MaxResults: aws.Int32(4)},
			[]string{"prod/web", "prod/app/db", "prod/app/cache", "legacyDatabase892", "dev/app/db", "Prod/x"}},
	} {
		if got := list(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}

	// Entries carry the same fields as DescribeSecret.
	s.SetRotation("prod/web", true, 10, time.Time{})
	out, err := c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{Filters: f("name", "prod/web")})
	if err != nil {
		t.Fatal(err)
	}
	e := out.SecretList[0]
	vid, _, _ := s.Version("prod/web", "")
	if aws.ToString(e.ARN) != s.ARN("prod/web") || !aws.ToBool(e.RotationEnabled) || aws.ToInt64(e.RotationRules.AutomaticallyAfterDays) != 10 ||
		e.NextRotationDate == nil || e.CreatedDate == nil || e.LastChangedDate == nil || aws.ToString(e.Description) != "secret prod web" ||
		fmt.Sprint(e.SecretVersionsToStages) != fmt.Sprint(map[string][]string{vid: {"AWSCURRENT"}}) || out.NextToken != nil {
		t.Fatalf("entry = %+v, NextToken %v", e, out.NextToken)
	}

	// Secrets scheduled for deletion only with IncludePlannedDeletion.
	if err := s.DeleteSecret("prod/web", false); err != nil {
		t.Fatal(err)
	}
	if got := list(secretsmanager.ListSecretsInput{Filters: f("name", "prod/")}); slices.Contains(got, "prod/web") {
		t.Errorf("deleted secret listed: %q", got)
	}
	out, err = c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{Filters: f("name", "prod/web"), IncludePlannedDeletion: aws.Bool(true)})
	if err != nil || len(out.SecretList) != 1 || out.SecretList[0].DeletedDate == nil {
		t.Fatalf("IncludePlannedDeletion: %+v, %v", out, err)
	}

	_, err = c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{NextToken: aws.String("bogus")})
	wantAs[*types.InvalidNextTokenException](t, err)
	_, err = c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{MaxResults: aws.Int32(101)})
	wantCode(t, err, "ValidationException")
	_, err = c.ListSecrets(ctx, &secretsmanager.ListSecretsInput{Filters: f("colour", "red")})
	wantCode(t, err, "ValidationException")
}

func TestListSecretVersionIds(t *testing.T) {
	clock := newClock()
	s, c := setup(t, smtest.WithClock(clock.Now))
	ctx := t.Context()
	s.CreateSecret("db", "v1")
	ids := []string{}
	v1, _, _ := s.Version("db", "")
	ids = append(ids, v1)
	for i := 2; i <= 4; i++ {
		clock.Advance(time.Hour)
		id, err := s.PutSecretValue("db", fmt.Sprint("v", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	clock.Advance(48 * time.Hour)
	mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db"), VersionId: aws.String(ids[1])})

	list := func(in secretsmanager.ListSecretVersionIdsInput) []types.SecretVersionsListEntry {
		t.Helper()
		in.SecretId = aws.String("db")
		var got []types.SecretVersionsListEntry
		p := secretsmanager.NewListSecretVersionIdsPaginator(c, &in)
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToString(out.Name) != "db" || aws.ToString(out.ARN) != s.ARN("db") {
				t.Fatalf("ARN/Name = %v %v", out.ARN, out.Name)
			}
			got = append(got, out.Versions...)
		}
		return got
	}
	summary := func(vs []types.SecretVersionsListEntry) string {
		var b strings.Builder
		for _, v := range vs {
			fmt.Fprintf(&b, "%s%v ", aws.ToString(v.VersionId), v.VersionStages)
		}
		return b.String()
	}
	// v1 and v2 have lost their labels: deprecated, hidden by default.
	want := fmt.Sprintf("%s[AWSPREVIOUS] %s[AWSCURRENT] ", ids[2], ids[3])
	if got := summary(list(secretsmanager.ListSecretVersionIdsInput{})); got != want {
		t.Errorf("default: %s, want %s", got, want)
	}
	all := list(secretsmanager.ListSecretVersionIdsInput{IncludeDeprecated: aws.Bool(true), MaxResults: aws.Int32(1)})
	want = fmt.Sprintf("%s[] %s[] %s", ids[0], ids[1], want)
	if got := summary(all); got != want {
		t.Fatalf("IncludeDeprecated, pages of 1: %s, want %s", got, want)
	}
	start := time.Date(2025, 3, 1, 12, 30, 0, 0, time.UTC)
	for i, v := range all {
		if !v.CreatedDate.Equal(start.Add(time.Duration(i) * time.Hour)) {
			t.Errorf("version %d CreatedDate = %v", i, v.CreatedDate)
		}
		if wantAccess := i == 1; (v.LastAccessedDate != nil) != wantAccess {
			t.Errorf("version %d LastAccessedDate = %v", i, v.LastAccessedDate)
		}
	}
	if got, want := all[1].LastAccessedDate, clock.Now().Truncate(24*time.Hour); got == nil || !got.Equal(want) {
		t.Errorf("LastAccessedDate = %v, want %v", got, want)
	}
	_, err := c.ListSecretVersionIds(ctx, &secretsmanager.ListSecretVersionIdsInput{SecretId: aws.String("nope")})
	wantAs[*types.ResourceNotFoundException](t, err)
	_, err = c.ListSecretVersionIds(ctx, &secretsmanager.ListSecretVersionIdsInput{SecretId: aws.String("db"), NextToken: aws.String("bogus")})
	wantAs[*types.InvalidNextTokenException](t, err)
}

func TestDeleteAndRestoreViaSDK(t *testing.T) {
	clock := newClock()
	s, c := setup(t, smtest.WithClock(clock.Now))
	ctx := t.Context()
	arn := s.CreateSecret("db", "v1")
	del := func(in secretsmanager.DeleteSecretInput) (*secretsmanager.DeleteSecretOutput, error) {
		in.SecretId = aws.String("db")
		return c.DeleteSecret(ctx, &in)
	}
	_, err := del(secretsmanager.DeleteSecretInput{RecoveryWindowInDays: aws.Int64(6)})
	wantAs[*types.InvalidParameterException](t, err)
	_, err = del(secretsmanager.DeleteSecretInput{RecoveryWindowInDays: aws.Int64(31)})
	wantAs[*types.InvalidParameterException](t, err)
	_, err = del(secretsmanager.DeleteSecretInput{RecoveryWindowInDays: aws.Int64(7), ForceDeleteWithoutRecovery: aws.Bool(true)})
	wantAs[*types.InvalidParameterException](t, err)

	out, err := del(secretsmanager.DeleteSecretInput{})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.ARN) != arn || !out.DeletionDate.Equal(clock.Now().Add(30*24*time.Hour)) {
		t.Fatalf("DeleteSecret = %+v", out)
	}
	if at, ok := s.DeletionDate("db"); !ok || !at.Equal(*out.DeletionDate) {
		t.Fatalf("DeletionDate = %v %v", at, ok)
	}
	_, err = get(ctx, c, "db")
	wantAs[*types.InvalidRequestException](t, err)
	_, err = del(secretsmanager.DeleteSecretInput{})
	wantAs[*types.InvalidRequestException](t, err)

	rs, err := c.RestoreSecret(ctx, &secretsmanager.RestoreSecretInput{SecretId: aws.String("db")})
	if err != nil || aws.ToString(rs.ARN) != arn || aws.ToString(rs.Name) != "db" {
		t.Fatalf("RestoreSecret = %+v, %v", rs, err)
	}
	if _, ok := s.DeletionDate("db"); ok {
		t.Fatal("still scheduled for deletion")
	}
	if d := describe(t, c, "db"); d.DeletedDate != nil {
		t.Fatalf("DeletedDate = %v after restore", d.DeletedDate)
	}
	mustGet(t, c, &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")})

	out, err = del(secretsmanager.DeleteSecretInput{RecoveryWindowInDays: aws.Int64(7)})
	if err != nil || !out.DeletionDate.Equal(clock.Now().Add(7*24*time.Hour)) {
		t.Fatalf("7-day window: %+v, %v", out, err)
	}
	// Forcing works on a secret already scheduled for deletion, and frees the name.
	if out, err = del(secretsmanager.DeleteSecretInput{ForceDeleteWithoutRecovery: aws.Bool(true)}); err != nil || !out.DeletionDate.Equal(clock.Now()) {
		t.Fatalf("forced: %+v, %v", out, err)
	}
	_, err = c.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("db")})
	wantAs[*types.ResourceNotFoundException](t, err)
	_, err = c.RestoreSecret(ctx, &secretsmanager.RestoreSecretInput{SecretId: aws.String("db")})
	wantAs[*types.ResourceNotFoundException](t, err)
	s.CreateSecret("db", "again")
}

func TestClientRequestTokenRules(t *testing.T) {
	s, c := setup(t)
	ctx := t.Context()
	s.CreateSecret("db", "v1")
	put := func(token string) error {
		_, err := c.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
			SecretId: aws.String("db"), ClientRequestToken: aws.String(token), SecretString: aws.String(token),
		})
		return err
	}
	wantCode(t, put(strings.Repeat("a", 31)), "ValidationException")
	wantCode(t, put(strings.Repeat("a", 65)), "ValidationException")
	for _, n := range []int{32, 64} {
		if err := put(strings.Repeat("b", n)); err != nil {
			t.Fatalf("token of %d characters: %v", n, err)
		}
	}
	_, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{
		Name: aws.String("new"), SecretString: aws.String("x"), ClientRequestToken: aws.String("too-short"),
	})
	wantCode(t, err, "ValidationException")
	// The Go side takes any version id.
	if err := s.PutSecretVersion("db", "v-short", "x"); err != nil {
		t.Fatal(err)
	}

	// Only raw HTTP requests can lack a token; AWS refuses them.
	const sig = "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=00"
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL(), strings.NewReader(`{"SecretId":"db","SecretString":"x"}`))
	req.Header.Set("X-Amz-Target", "secretsmanager.PutSecretValue")
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("Authorization", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("X-Amzn-Errortype") != "InvalidRequestException" {
		t.Fatalf("PutSecretValue without a token: %d %s", resp.StatusCode, resp.Header.Get("X-Amzn-Errortype"))
	}
}

func TestWithListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtest.Start(t, smtest.WithListener(l))
	if s.URL() != "http://"+l.Addr().String() {
		t.Fatalf("URL = %s, listener %s", s.URL(), l.Addr())
	}
	s.CreateSecret("db", "v")
	if _, err := get(t.Context(), s.Client(smtest.NoRetries), "db"); err != nil {
		t.Fatal(err)
	}
}
