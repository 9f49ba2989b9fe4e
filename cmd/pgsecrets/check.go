package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/rotate"
)

const checkHelp = `Usage: pgsecrets check [--json] [--timeout 30s] DSN

Checks a pgsecrets DSN end to end, the way the driver will use it, and says
what to fix when something is wrong. Each step is timed:

  1. DSN        parse it; show it with any password redacted, and the secret
                settings (secret id, region, endpoint, stage, ttl)
  2. secret     build the Secrets Manager client from the SDK's usual chain
                (environment, shared files, SSO, web identity, ECS, EC2),
                resolve the AWS credentials and fetch the secret; show the
                username, the version id and which of host/port/dbname the
                secret holds. The password is never shown, only "present".
  3. rotation   DescribeSecret: rotation enabled, schedule, last and next
                rotation, whether an AWSPENDING version exists. Needs
                secretsmanager:DescribeSecret; without it the check goes on.
  4. database   log in through the driver (timed), then run
                SELECT version(), current_user, current_database() and read
                pg_stat_ssl for the session: TLS version and cipher, or a
                warning when the session is not encrypted.
  5. advice     the db.SetConnMaxLifetime to use, and why.

A login the database rejects is reported after one recovery round
(the secret and its AWSPENDING version fetched again), as the driver does
for credentials that have never logged in: in milliseconds, not after the
DSN's retry window.

Exit status: 0 when a query ran; 1 when a step failed (the last line says
"FAIL: <reason>"); 2 for usage errors.

Flags:
  --json          print one JSON object instead of text: ok, reason, failure
                  (a stable code such as "access_denied"), timings_ms, secret,
                  rotation, server, tls, recommendation, warnings
  --timeout DUR   give up after this long in total (default 30s)

The DSN may also be given as the environment variable PGSECRETS_DSN.
`

// checkReport is what check found; --json prints it as is.
type checkReport struct {
	OK             bool               `json:"ok"`
	Reason         string             `json:"reason,omitempty"`
	Failure        string             `json:"failure,omitempty"`
	FailedStep     string             `json:"failed_step,omitempty"`
	Error          string             `json:"error,omitempty"`
	DSN            string             `json:"dsn,omitempty"`
	TimingsMS      map[string]float64 `json:"timings_ms"`
	Secret         *secretInfo        `json:"secret,omitempty"`
	Rotation       *rotationInfo      `json:"rotation,omitempty"`
	Server         *serverInfo        `json:"server,omitempty"`
	TLS            *tlsInfo           `json:"tls,omitempty"`
	Driver         *driverInfo        `json:"driver,omitempty"`
	Recommendation *recommendation    `json:"recommendation,omitempty"`
	Facts          []fact             `json:"facts,omitempty"`
	Warnings       []string           `json:"warnings,omitempty"`
}

type secretInfo struct {
	ID                string `json:"id"`
	Region            string `json:"region,omitempty"`
	Endpoint          string `json:"endpoint,omitempty"`
	Stage             string `json:"stage"`
	TTL               string `json:"ttl"`
	RetryWindow       string `json:"retry_window"`
	CredentialsSource string `json:"aws_credentials_source,omitempty"`
	Fetched           bool   `json:"fetched"`
	Username          string `json:"username,omitempty"`
	Password          string `json:"password,omitempty"` // "present", never the value
	VersionID         string `json:"version_id,omitempty"`
	HostInSecret      bool   `json:"host_in_secret"`
	PortInSecret      bool   `json:"port_in_secret"`
	DBNameInSecret    bool   `json:"dbname_in_secret"`
	Host              string `json:"host,omitempty"`
	Port              int    `json:"port,omitempty"`
	DBName            string `json:"dbname,omitempty"`
}

type rotationInfo struct {
	Known                  bool       `json:"known"`
	Notice                 string     `json:"notice,omitempty"`
	ARN                    string     `json:"arn,omitempty"`
	Enabled                bool       `json:"enabled"`
	AutomaticallyAfterDays int64      `json:"automatically_after_days,omitempty"`
	ScheduleExpression     string     `json:"schedule_expression,omitempty"`
	Window                 string     `json:"window,omitempty"`
	LastRotated            *time.Time `json:"last_rotated,omitempty"`
	NextRotation           *time.Time `json:"next_rotation,omitempty"`
	LastChanged            *time.Time `json:"last_changed,omitempty"`
	DeletedDate            *time.Time `json:"deleted_date,omitempty"`
	CurrentVersionID       string     `json:"current_version_id,omitempty"`
	PendingVersion         bool       `json:"pending_version"`
	PendingVersionID       string     `json:"pending_version_id,omitempty"`
}

type serverInfo struct {
	Version         string `json:"version"`
	CurrentUser     string `json:"current_user"`
	SessionUser     string `json:"session_user"`
	CurrentDatabase string `json:"current_database"`
}

// tlsInfo is the session's TLS (encrypted, version, cipher) and the
// sslmode it was opened with.
type tlsInfo struct {
	rotate.SessionTLS
	SSLMode string `json:"sslmode"`
}

type driverInfo struct {
	StoreCalls    int64  `json:"store_calls"`
	AuthFailures  int64  `json:"auth_failures"`
	AuthRecovered int64  `json:"auth_recovered"`
	PendingUses   int64  `json:"pending_uses"`
	VersionID     string `json:"version_id,omitempty"`
	Stage         string `json:"stage,omitempty"`
}

type recommendation struct {
	ConnMaxLifetime        string  `json:"conn_max_lifetime"`
	ConnMaxLifetimeSeconds float64 `json:"conn_max_lifetime_seconds"`
	Code                   string  `json:"code"`
	Why                    string  `json:"why"`
}

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	jsonOut := fs.Bool("json", false, "")
	timeout := fs.Duration("timeout", 30*time.Second, "")
	pos, code, ok := parseFlags(fs, args, stdout, stderr, checkHelp)
	if !ok {
		return code
	}
	var dsn string
	switch {
	case len(pos) == 1:
		dsn = pos[0]
	case len(pos) == 0 && os.Getenv("PGSECRETS_DSN") != "":
		dsn = os.Getenv("PGSECRETS_DSN")
	case len(pos) == 0:
		return usageError(stderr, "check", "a DSN is required (as the argument, or in PGSECRETS_DSN)")
	default:
		// Not echoed: an argument may hold a password.
		return usageError(stderr, "check", "expects one DSN argument, got %d (quote a key=value DSN: 'host=… secret_id=…')", len(pos))
	}
	if *timeout <= 0 {
		return usageError(stderr, "check", "--timeout must be positive")
	}

	c := &checker{out: stdout, human: !*jsonOut, timeout: *timeout,
		rep: &checkReport{TimingsMS: map[string]float64{}}}
	c.run(ctx, dsn)
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(c.rep); err != nil {
			fmt.Fprintf(stderr, "pgsecrets check: %v\n", err)
			return exitFail
		}
	}
	if !c.rep.OK {
		return exitFail
	}
	return exitOK
}

// checker runs the steps of check and fills its report.
type checker struct {
	out     io.Writer
	human   bool
	timeout time.Duration
	rep     *checkReport
	diag    diagContext
	hide    []string // DSN values no output may show (see hiddenValues)
}

const stepCount = 5

func (c *checker) printf(format string, a ...any) {
	if c.human {
		fmt.Fprintf(c.out, format, a...)
	}
}

// step prints a step's heading.
func (c *checker) step(n int, title, detail string) {
	c.printf("[%d/%d] %s", n, stepCount, title)
	if detail != "" {
		c.printf(" (%s)", detail)
	}
	c.printf("\n")
}

// kv prints one labelled line under a step.
func (c *checker) kv(label, format string, a ...any) {
	c.printf("      %-10s %s\n", label, fmt.Sprintf(format, a...))
}

// timed records a timing and returns it.
func (c *checker) timed(name string, since time.Time) time.Duration {
	d := time.Since(since)
	c.rep.TimingsMS[name] = msFloat(d)
	return d
}

func (c *checker) warn(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	c.rep.Warnings = append(c.rep.Warnings, msg)
	c.printf("      WARNING: %s\n", msg)
}

// fail records the failure of a step; the caller returns.
func (c *checker) fail(stepName string, err error) {
	kind, reason := diagnose(err, c.diag)
	reason = c.scrub(reason)
	c.rep.OK = false
	c.rep.Failure, c.rep.Reason, c.rep.FailedStep = kind, reason, stepName
	c.rep.Error = c.scrub(err.Error())
	c.printf("      error: %s\n", c.rep.Error)
	c.printf("FAIL: %s\n", reason)
}

func (c *checker) run(parent context.Context, dsn string) {
	ctx, cancel := context.WithTimeout(parent, c.timeout)
	defer cancel()
	began := time.Now()
	defer func() { c.rep.TimingsMS["total"] = msFloat(time.Since(began)) }()
	c.diag.timeout = c.timeout
	c.diag.parent = parent

	c.printf("pgsecrets check (timeout %s)\n", c.timeout)

	// 1. The DSN.
	c.diag.step = "parsing the DSN"
	t := time.Now()
	cfg, err := pgsecrets.ParseDSN(dsn)
	took := c.timed("parse_dsn", t)
	if err != nil {
		c.step(1, "DSN", "invalid")
		c.fail("dsn", err)
		return
	}
	c.rep.DSN = cfg.String()
	c.hide = hiddenValues(cfg)
	sslMode, sslRootCert := sslSettings(cfg)
	c.diag.secretID, c.diag.stage, c.diag.endpoint = cfg.SecretID, cfg.VersionStage, cfg.Endpoint
	c.diag.sslMode, c.diag.sslRootCert = sslMode, sslRootCert
	c.diag.usernameKey, c.diag.passwordKey = cfg.UsernameKey, cfg.PasswordKey
	sec := &secretInfo{ID: cfg.SecretID, Stage: cfg.VersionStage, TTL: cfg.TTL.String(),
		RetryWindow: cfg.RetryWindow.String(), Region: cfg.Region, Endpoint: cfg.Endpoint}
	c.rep.Secret = sec
	c.step(1, "DSN", ms(took))
	c.kv("dsn", "%s", c.rep.DSN)
	c.kv("secret", "%s", cfg.SecretID)
	if cfg.Provider != pgsecrets.DefaultProvider {
		c.kv("provider", "%s", cfg.Provider)
		c.store(ctx, cfg, sslMode, began)
		return
	}
	switch {
	case cfg.Region == "":
		c.kv("region", "not in the DSN: the SDK's (AWS_REGION or the profile), see step 2")
	case cfg.Region == regionFromARN(cfg.SecretID):
		c.kv("region", "%s (from the secret's ARN)", cfg.Region)
	default:
		c.kv("region", "%s (secret_region)", cfg.Region)
	}
	if cfg.Endpoint != "" {
		c.kv("endpoint", "%s (secret_endpoint)", cfg.Endpoint)
	} else {
		c.kv("endpoint", "not in the DSN: the SDK's, see step 2")
	}
	c.kv("stage", "%s", cfg.VersionStage)
	c.kv("ttl", "%s (how long a fetched password is reused; a rejected login refetches at once)", cfg.TTL)
	if !cfg.Password.IsZero() {
		c.warn("the DSN carries a password, which pgsecrets ignores (the secret's password is used): remove it")
	}
	switch sslMode {
	case "disable", "allow", "prefer":
		c.warn("sslmode=%s may send queries and data unencrypted: use sslmode=verify-full with sslrootcert", sslMode)
	case "require":
		c.warn("sslmode=require encrypts but does not check who the server is: use sslmode=verify-full with sslrootcert")
	}

	// 2. The client, the AWS credentials and the secret.
	c.diag.step = "loading the AWS configuration"
	t = time.Now()
	client, err := pgsecrets.NewSecretsManagerClient(ctx, cfg)
	tookClient := c.timed("aws_client", t)
	if err != nil {
		c.step(2, "secret", "no client: "+ms(tookClient))
		c.fail("aws_client", err)
		return
	}
	opts := client.Options()
	sec.Region = opts.Region
	c.diag.region = opts.Region
	if opts.BaseEndpoint != nil {
		sec.Endpoint = *opts.BaseEndpoint
		c.diag.endpoint = sec.Endpoint
	}
	endpoint := sec.Endpoint
	if endpoint == "" {
		endpoint = "AWS default for the region (secretsmanager." + opts.Region + ".amazonaws.com)"
	}

	c.diag.step = "resolving the AWS credentials"
	t = time.Now()
	var awsCreds aws.Credentials
	if opts.Credentials == nil {
		err = errors.New("no credentials provider configured")
	} else {
		awsCreds, err = opts.Credentials.Retrieve(ctx)
	}
	tookCreds := c.timed("aws_credentials", t)
	if err != nil {
		c.step(2, "secret", fmt.Sprintf("client %s, AWS credentials FAILED %s", ms(tookClient), ms(tookCreds)))
		c.kv("region", "%s", sec.Region)
		c.kv("endpoint", "%s", endpoint)
		c.fail("aws_credentials", &credentialsError{err: err})
		return
	}
	sec.CredentialsSource = awsCreds.Source

	// The connector the check logs in with: the same DSN. It has never
	// logged in, so a rejected login gets one recovery round, not the
	// retry window.
	c.diag.step = "checking the DSN with lib/pq"
	connector := c.connector(cfg, pgsecrets.WithSecretsManagerClient(client))
	if connector == nil {
		return
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	life := connector.ConnMaxLifetime()
	c.rep.Recommendation = recommend(life, fmt.Sprintf("PostgreSQL checks a password only at login, so this bounds how long a session opened with an old password keeps running after a rotation (every session uses the current one within ttl + lifetime = %s); pgsecrets.Open sets it for you",
		cfg.TTL+life))

	c.diag.step = "fetching the secret"
	t = time.Now()
	creds, err := pgsecrets.NewSecretsManagerProvider(client, cfg).Fetch(ctx, cfg.VersionStage)
	tookFetch := c.timed("get_secret_value", t)
	timing := fmt.Sprintf("client %s, AWS credentials %s, GetSecretValue %s", ms(tookClient), ms(tookCreds), ms(tookFetch))
	if err != nil {
		c.step(2, "secret", "FAILED: "+timing)
	} else {
		c.step(2, "secret", timing)
	}
	c.kv("region", "%s", sec.Region)
	c.kv("endpoint", "%s", endpoint)
	c.kv("aws creds", "from %s", awsCreds.Source)
	if err != nil {
		c.fail("get_secret_value", err)
		return
	}
	sec.Fetched = true
	sec.Username, sec.Password, sec.VersionID = creds.Username, "present", creds.VersionID
	sec.HostInSecret, sec.PortInSecret, sec.DBNameInSecret = creds.Host != "", creds.Port != 0, creds.DBName != ""
	sec.Host, sec.Port, sec.DBName = creds.Host, int(creds.Port), creds.DBName
	c.diag.username = creds.Username
	c.kv("username", "%s", creds.Username)
	c.kv("password", "present")
	c.kv("version", "%s", creds.VersionID)
	var in, out []string
	for _, f := range []struct {
		name string
		val  string
	}{{"host", creds.Host}, {"port", portString(creds.Port)}, {"dbname", creds.DBName}} {
		if f.val != "" {
			in = append(in, f.name+" "+f.val)
		} else {
			out = append(out, f.name)
		}
	}
	if len(in) > 0 {
		c.kv("in secret", "%s (used only where the DSN leaves them out)", strings.Join(in, ", "))
	}
	if len(out) > 0 {
		c.kv("not in it", "%s (the DSN or lib/pq's defaults apply)", strings.Join(out, ", "))
	}

	// 3. Rotation settings.
	c.diag.step = "describing the secret"
	c.describe(ctx, client, cfg)

	c.database(ctx, db, connector, sslMode, began)
}

// database runs steps 4 and 5: a login through the driver, the session's
// identity and TLS, and the advice.
func (c *checker) database(ctx context.Context, db *sql.DB, connector *pgsecrets.Connector, sslMode string, began time.Time) {
	// 4. The database.
	c.diag.step = "logging in to the database"
	t := time.Now()
	conn, err := db.Conn(ctx)
	tookLogin := c.timed("login", t)
	c.addDriverStats(connector)
	if err != nil {
		c.step(4, "database", "login FAILED after "+ms(tookLogin))
		c.fail("login", err)
		return
	}
	defer conn.Close()
	c.diag.step = "querying the database"
	t = time.Now()
	srv := &serverInfo{}
	err = conn.QueryRowContext(ctx, "SELECT version(), current_user, session_user, current_database()").
		Scan(&srv.Version, &srv.CurrentUser, &srv.SessionUser, &srv.CurrentDatabase)
	tl := tlsInfo{SSLMode: sslMode}
	if err == nil {
		tl.SessionTLS, err = rotate.ReadSessionTLS(ctx, conn)
	}
	tookQuery := c.timed("queries", t)
	if err != nil {
		c.step(4, "database", fmt.Sprintf("login %s, queries FAILED after %s", ms(tookLogin), ms(tookQuery)))
		c.fail("query", err)
		return
	}
	c.addDriverStats(connector)
	c.rep.Server, c.rep.TLS = srv, &tl
	c.step(4, "database", fmt.Sprintf("login %s, queries %s", ms(tookLogin), ms(tookQuery)))
	c.kv("server", "%s", srv.Version)
	if srv.SessionUser != srv.CurrentUser {
		c.kv("user", "%s (logged in as %s, acting as %s through its role setting)", srv.SessionUser, srv.SessionUser, srv.CurrentUser)
	} else {
		c.kv("user", "%s", srv.CurrentUser)
	}
	c.kv("database", "%s", srv.CurrentDatabase)
	if tl.Encrypted {
		c.kv("tls", "encrypted, %s, %s (sslmode=%s)", tl.Version, tl.Cipher, sslMode)
	} else {
		c.kv("tls", "NOT ENCRYPTED (sslmode=%s)", sslMode)
		c.warn("the session is not encrypted: queries and results cross the network in clear text; use sslmode=verify-full with sslrootcert")
	}
	if d := c.rep.Driver; d != nil && d.AuthFailures > 0 {
		c.warn("the database rejected %d login(s) before the driver recovered with the %s version (%s): a rotation is probably in progress",
			d.AuthFailures, d.Stage, d.VersionID)
	}

	// 5. Advice.
	r := c.rep.Recommendation
	c.step(5, "recommendation", "")
	c.kv("lifetime", "%s", r.Code)
	c.kv("why", "%s", r.Why)

	c.rep.OK = true
	enc := "an unencrypted connection"
	if tl.Encrypted {
		enc = tl.Version
	}
	c.printf("OK: logged in as %s to %s over %s in %s\n", srv.CurrentUser, srv.CurrentDatabase, enc,
		ms(time.Since(began)))
}

// describe runs step 3. It never fails the check.
func (c *checker) describe(ctx context.Context, client *secretsmanager.Client, cfg *pgsecrets.Config) {
	rot := &rotationInfo{}
	c.rep.Rotation = rot
	t := time.Now()
	out, err := client.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(cfg.SecretID)})
	took := c.timed("describe_secret", t)
	if err != nil {
		c.step(3, "rotation settings", "DescribeSecret "+ms(took))
		var api smithy.APIError
		if errors.As(err, &api) && api.ErrorCode() == "AccessDeniedException" {
			rot.Notice = "DescribeSecret not allowed (needs secretsmanager:DescribeSecret); rotation settings unknown"
		} else {
			rot.Notice = "DescribeSecret failed; rotation settings unknown: " + err.Error()
		}
		c.kv("notice", "%s", rot.Notice)
		return
	}
	c.step(3, "rotation settings", "DescribeSecret "+ms(took))
	rot.Known = true
	rot.ARN = aws.ToString(out.ARN)
	rot.Enabled = aws.ToBool(out.RotationEnabled)
	if rr := out.RotationRules; rr != nil {
		rot.AutomaticallyAfterDays = aws.ToInt64(rr.AutomaticallyAfterDays)
		rot.ScheduleExpression = aws.ToString(rr.ScheduleExpression)
		rot.Window = aws.ToString(rr.Duration)
	}
	rot.LastRotated, rot.NextRotation, rot.LastChanged, rot.DeletedDate =
		out.LastRotatedDate, out.NextRotationDate, out.LastChangedDate, out.DeletedDate
	ids := make([]string, 0, len(out.VersionIdsToStages))
	for id := range out.VersionIdsToStages {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		stages := out.VersionIdsToStages[id]
		if slices.Contains(stages, "AWSCURRENT") {
			rot.CurrentVersionID = id
		}
		if slices.Contains(stages, "AWSPENDING") {
			rot.PendingVersion, rot.PendingVersionID = true, id
		}
	}

	c.kv("arn", "%s", rot.ARN)
	switch {
	case !rot.Enabled:
		c.kv("rotation", "not enabled")
	case rot.ScheduleExpression != "":
		c.kv("rotation", "enabled, schedule %s", rot.ScheduleExpression)
	case rot.AutomaticallyAfterDays > 0:
		c.kv("rotation", "enabled, every %d days", rot.AutomaticallyAfterDays)
	default:
		c.kv("rotation", "enabled")
	}
	if rot.Window != "" {
		c.kv("window", "%s", rot.Window)
	}
	c.kv("last", "%s", dateOr(rot.LastRotated, "never rotated"))
	if rot.Enabled {
		c.kv("next", "%s", dateOr(rot.NextRotation, "not scheduled"))
	}
	switch {
	case !rot.PendingVersion:
		c.kv("pending", "no AWSPENDING version (no rotation in progress)")
	case rot.PendingVersionID == rot.CurrentVersionID:
		c.kv("pending", "AWSPENDING is on the current version (the last rotation finished)")
	default:
		c.kv("pending", "AWSPENDING on version %s: a rotation is in progress or failed; the driver logs in with it if AWSCURRENT is rejected", rot.PendingVersionID)
	}
	if rot.DeletedDate != nil {
		c.warn("the secret is scheduled for deletion on %s", rot.DeletedDate.UTC().Format(time.RFC3339))
	}
}

// recommend is the SetConnMaxLifetime advice for life, and why.
func recommend(life time.Duration, why string) *recommendation {
	return &recommendation{ConnMaxLifetime: life.String(), ConnMaxLifetimeSeconds: life.Seconds(),
		Code: "db.SetConnMaxLifetime(" + goDuration(life) + ")", Why: why}
}

func (c *checker) addDriverStats(connector *pgsecrets.Connector) {
	st := connector.Stats()
	c.rep.Driver = &driverInfo{StoreCalls: st.StoreCalls, AuthFailures: st.AuthFailures,
		AuthRecovered: st.AuthRecovered, PendingUses: st.PendingUses, VersionID: st.VersionID, Stage: st.Stage}
}

// connector builds the connector check logs in with: cfg's DSN without a
// password= (the driver ignores it, and FormatDSN would write it as
// [REDACTED]), with opts and no log. When the driver rejects the DSN it
// fails step 2 and returns nil.
func (c *checker) connector(cfg *pgsecrets.Config, opts ...pgsecrets.Option) *pgsecrets.Connector {
	dsn := *cfg
	dsn.Password = pgsecrets.Secret{}
	connector, err := pgsecrets.NewConnector(dsn.FormatDSN(), append(opts, pgsecrets.WithLogger(slog.New(slog.DiscardHandler)))...)
	if err != nil {
		c.step(2, "secret", "the driver rejected the DSN")
		c.fail("dsn", err)
		return nil
	}
	return connector
}

// hiddenValues are the DSN's values that cfg.String() redacts (an inline
// private key, sslpassword). Errors are scrubbed of them too: lib/pq names
// a key it takes for a file path by its value.
func hiddenValues(cfg *pgsecrets.Config) []string {
	var out []string
	shown, err := pgsecrets.ParseDSN(cfg.String())
	for i, p := range cfg.Params {
		if p.Value == "" {
			continue
		}
		if err != nil || len(shown.Params) != len(cfg.Params) {
			if p.Key == "sslkey" || p.Key == "sslpassword" {
				out = append(out, p.Value)
			}
		} else if shown.Params[i].Value != p.Value {
			out = append(out, p.Value)
		}
	}
	return out
}

func (c *checker) scrub(s string) string {
	for _, v := range c.hide {
		s = strings.ReplaceAll(s, v, "[REDACTED]")
		// An error may quote it (%q), which escapes a PEM's newlines.
		if q := strconv.Quote(v); q[1:len(q)-1] != v {
			s = strings.ReplaceAll(s, q[1:len(q)-1], "[REDACTED]")
		}
	}
	return s
}

// sslSettings returns the sslmode the engine connects with (the core's
// rule, Config.SSLMode) and the sslrootcert lib/pq reads: the DSN's, else
// PGSSLROOTCERT.
func sslSettings(cfg *pgsecrets.Config) (mode, rootCert string) {
	for _, p := range cfg.Params {
		if p.Key == "sslrootcert" {
			rootCert = p.Value
		}
	}
	if rootCert == "" {
		rootCert = os.Getenv("PGSSLROOTCERT")
	}
	return cfg.SSLMode(), rootCert
}

func portString(p uint16) string {
	if p == 0 {
		return ""
	}
	return fmt.Sprint(p)
}

// regionFromARN is the region the driver takes from secret_id when the DSN
// names none: ParseDSN's own reading of a DSN that holds only the id ("" for
// a name, or when it does not parse).
func regionFromARN(secretID string) string {
	cfg, err := pgsecrets.ParseDSN("postgres://?secret_id=" + url.QueryEscape(secretID))
	if err != nil {
		return ""
	}
	return cfg.Region
}
