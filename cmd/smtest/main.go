// Command smtest serves the fake AWS Secrets Manager of package
// github.com/pgsecrets/pgsecrets/smtest over HTTP, for tests written in other
// languages, the AWS CLI, or a docker-compose setup.
//
//	smtest --addr 127.0.0.1:4566 --region eu-west-1 \
//		--seed 'prod/app/db={"username":"app","password":"pw"}'
//
// The first line of standard output is SMTEST_URL=<base URL>, so that a
// parent process that asked for port 0 learns the port; point the client's
// Secrets Manager endpoint (AWS_ENDPOINT_URL_SECRETS_MANAGER, or the CLI's
// --endpoint-url) at it, with any non-empty credentials. The server stops on
// SIGTERM or SIGINT and then exits with status 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pgsecrets/pgsecrets/smtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "smtest:", err)
		os.Exit(2)
	}
}

type seed struct{ name, value string }

// run is main without the process: it returns once ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("smtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "`host:port` to listen on; port 0 picks a free one")
	region := fs.String("region", smtest.DefaultRegion, "region the server pretends to be in (it appears in ARNs)")
	account := fs.String("account", smtest.DefaultAccountID, "12-digit account id used in ARNs")
	var seeds []seed
	fs.Func("seed", "create a secret, as `name=value` (value usually JSON); repeatable", func(v string) error {
		name, value, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return errors.New("want name=value")
		}
		seeds = append(seeds, seed{name, value})
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	s := smtest.NewServer(smtest.WithListener(l), smtest.WithRegion(*region), smtest.WithAccountID(*account))
	defer s.Close()
	for _, sd := range seeds {
		if _, err := s.Add(smtest.SecretSpec{Name: sd.name, String: sd.value}); err != nil {
			return fmt.Errorf("--seed %s: %w", sd.name, err)
		}
	}
	// Seeding first means that a client which has read the URL finds the
	// secrets in place.
	if _, err := fmt.Fprintf(stdout, "SMTEST_URL=%s\n", s.URL()); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "smtest: serving Secrets Manager (%s) at %s with %d seeded secret(s)\n", *region, s.URL(), len(seeds))
	<-ctx.Done()
	fmt.Fprintln(stderr, "smtest: shutting down")
	return nil
}
