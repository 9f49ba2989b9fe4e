package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// build compiles the command into a directory of the test's own.
func build(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH to build the command with")
	}
	bin := filepath.Join(t.TempDir(), "smtest")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// start runs the binary and returns it with the URL from its first line.
func start(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the URL line: %v", err)
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "SMTEST_URL=")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("first line = %q", line)
	}
	return cmd, url
}

func client(url, region string) *secretsmanager.Client {
	return secretsmanager.New(secretsmanager.Options{
		Region:       region,
		BaseEndpoint: aws.String(url),
		HTTPClient:   smtest.HTTPClient(),
		Retryer:      aws.NopRetryer{},
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "any", SecretAccessKey: "any"}, nil
		}),
	})
}

func TestCommand(t *testing.T) {
	bin := build(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, url := start(t, bin, "--region", "eu-west-1",
				"--seed", `prod/app/db={"username":"app","password":"pw"}`, "--seed", "plain=text=with=equals")
			c := client(url, "eu-west-1")
			ctx := t.Context()
			out, err := c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("prod/app/db")})
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToString(out.SecretString) != `{"username":"app","password":"pw"}` ||
				!strings.HasPrefix(aws.ToString(out.ARN), "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-") {
				t.Fatalf("seeded secret = %+v", out)
			}
			out, err = c.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("plain")})
			if err != nil || aws.ToString(out.SecretString) != "text=with=equals" {
				t.Fatalf("second seed = %+v, %v", out, err)
			}
			if _, err := c.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("new"), SecretString: aws.String("x")}); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit after %v: %v", sig, err)
			}
			if cmd.ProcessState.ExitCode() != 0 {
				t.Fatalf("exit code %d", cmd.ProcessState.ExitCode())
			}
		})
	}
}

func TestCommandErrors(t *testing.T) {
	bin := build(t)
	for _, args := range [][]string{
		{"--seed", "no-equals-sign"},
		{"--seed", "bad name!=x"},
		{"--addr", "not-an-address"},
		{"stray"},
	} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || len(out) != 0 {
			t.Errorf("%q: err %v, stdout %q; want exit 2 and no URL", args, err, out)
		}
	}
}
