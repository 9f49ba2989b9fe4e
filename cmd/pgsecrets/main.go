// Command pgsecrets is the command-line companion of the pgsecrets driver.
//
//	pgsecrets demo            watch password rotations cost zero failed queries
//	pgsecrets check DSN       check a pgsecrets DSN end to end
//	pgsecrets rotate          rotate a secret now, resume or roll back a rotation
//	pgsecrets monitor ID...   report stuck, overdue or broken rotations
//
// Run "pgsecrets <command> --help" for details.
//
// Each command has its files: demo.go (the command; demo_env.go, demo_load.go,
// demo_scenarios.go, demo_report.go and demo_vault.go its parts), check.go
// (check_store.go for stores other than Secrets Manager, diagnose.go for
// what a failure means), rotate.go and monitor.go. This file holds the
// dispatch and what the commands share; format.go the output formatting.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	// Every provider and engine pgsecrets ships, so that check works with
	// each.
	_ "github.com/pgsecrets/pgsecrets/entra"
	_ "github.com/pgsecrets/pgsecrets/gcpiam"
	_ "github.com/pgsecrets/pgsecrets/pgxsecrets"
	_ "github.com/pgsecrets/pgsecrets/vault"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses.
const (
	exitOK          = 0
	exitFail        = 1
	exitUsage       = 2
	exitInterrupted = 130
)

const usageText = `pgsecrets — tools for the pgsecrets PostgreSQL driver

Usage:
  pgsecrets demo  [flags]         run a throwaway PostgreSQL and Secrets Manager,
                                  put load on them and rotate the password while
                                  it runs: every rotation should cost zero failed
                                  queries
  pgsecrets check [flags] DSN     check a pgsecrets DSN end to end: the secret,
                                  its rotation settings, the login and TLS
  pgsecrets rotate --secret-id ID rotate a secret now (four steps), --resume a
                                  half-done rotation, or --rollback a broken one
  pgsecrets monitor ID...         report stuck, overdue or broken rotations
  pgsecrets help [command]        show help

Run "pgsecrets <command> --help" for the command's flags.
`

// run is the whole program: main only adds os.Args, the standard streams
// and os.Exit, so tests call run in-process.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch cmd, rest := args[0], args[1:]; cmd {
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case fleetWorkerCmd: // hidden: one process of demo --processes (demo_fleet.go)
		return runDemoWorker(ctx, rest, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, stdout, stderr)
	case "rotate":
		return runRotate(ctx, rest, stdout, stderr)
	case "monitor":
		return runMonitor(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			switch rest[0] {
			case "demo":
				return runDemo(ctx, []string{"--help"}, stdout, stderr)
			case "check":
				return runCheck(ctx, []string{"--help"}, stdout, stderr)
			case "rotate":
				return runRotate(ctx, []string{"--help"}, stdout, stderr)
			case "monitor":
				return runMonitor(ctx, []string{"--help"}, stdout, stderr)
			}
			fmt.Fprintf(stderr, "pgsecrets: unknown command %q\n\n%s", rest[0], usageText)
			return exitUsage
		}
		fmt.Fprint(stdout, usageText)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pgsecrets: unknown command %q\n\n%s", cmd, usageText)
		return exitUsage
	}
}

// parseFlags parses flags that may come before or after the positional
// arguments (Go's flag package stops at the first positional one). It
// returns the positional arguments, or an exit status when parsing ended
// the program (help: 0, bad flags: 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, help string) ([]string, int, bool) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, help)
			return nil, exitOK, false
		}
		if err != nil {
			// The flag package's messages quote the flag, never a value
			// that could be a DSN with a password.
			fmt.Fprintf(stderr, "pgsecrets %s: %v\nRun \"pgsecrets %s --help\" for usage.\n", fs.Name(), err, fs.Name())
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// usageError prints a usage problem and returns the usage exit status.
func usageError(stderr io.Writer, cmd, format string, a ...any) int {
	fmt.Fprintf(stderr, "pgsecrets %s: %s\nRun \"pgsecrets %s --help\" for usage.\n", cmd, fmt.Sprintf(format, a...), cmd)
	return exitUsage
}

// multiFlag is a flag that may be given more than once.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, "; ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// smClient is the Secrets Manager client of the SDK's default chain.
func smClient(ctx context.Context) (*secretsmanager.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("no AWS region: set AWS_REGION or a profile's region")
	}
	return secretsmanager.NewFromConfig(cfg), nil
}
