// Package rotate is the other half of pgsecrets: AWS Secrets Manager's
// four rotation steps for a PostgreSQL secret in the RDS JSON format, for a
// Lambda rotation function (module github.com/pgsecrets/pgsecrets/lambda),
// the `pgsecrets rotate` command, or your own code.
//
// Each step is idempotent, as AWS requires: run again with the same
// ClientRequestToken, it finds its work done and changes nothing, so a
// rotation can be resumed from any step.
//
//   - createSecret writes a new version under the token with the stage
//     AWSPENDING: the current secret with a new password (from
//     GetRandomPassword, or crypto/rand where that call is not allowed) and,
//     with alternating users, the other username (app ↔ app_clone).
//   - setSecret makes the database accept it: ALTER ROLE … PASSWORD as the
//     user itself, or as the admin whose secret the field masterarn names.
//     With alternating users it first sets up the pair, in either
//     direction (see below).
//     pgsecrets sends PostgreSQL a SCRAM-SHA-256 verifier computed here, never
//     the password, so not even log_statement = 'all' can record it.
//   - testSecret logs in with AWSPENDING over TLS and checks that it has
//     every privilege the current credential has (has_*_privilege on each
//     database, schema, table and sequence) and, with alternating users,
//     that the session acts as the owner's do, then runs the configured
//     probes in a read-only transaction: a rotation that would break the
//     application fails here, before finishSecret, saying what is missing
//     and why.
//   - finishSecret moves AWSCURRENT to the token (Secrets Manager moves
//     AWSPREVIOUS to the old version) and takes AWSPENDING off it.
//
// Alternating users are a pair: the owner (app, who typically owns the
// application's tables, schemas, even its database) and its clone
// (app_clone). The clone is a member of the owner (GRANT app TO
// app_clone, with INHERIT), so every privilege of the owner, owner rights
// and later grants included, reaches it at once; and it logs in acting as
// the owner (ALTER ROLE app_clone SET role = app), so what its sessions
// create belongs to the owner and both users can use it at once. Role
// settings, the connection limit and the default privileges the owner
// receives are synced; what the clone owns in the secret's database (left
// by AWS's MultiUser template, which stops at the membership) is given to
// the owner with REASSIGN OWNED, bounded so that the application's queries
// are never the ones a lock conflict cancels. Grants belong on the owner:
// nothing is copied to the clone any more. Check reports a pair whose
// users would not both work.
//
// The secret is input from whoever can write it, and the network may
// answer for the database (guard.go): before anything is done as the
// admin, AWSCURRENT must log in; the pending version may change only the
// password (and the user, to its alternate); the admin logs in only where
// its own secret or the operator's ConnParams say, over verify-full by
// default, and only for a secret that names that server; privileged roles
// and the admin itself are never targets without AllowPrivilegedRoles.
// Refusals wrap ErrRefused.
package rotate

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"
)

// Client is the part of *secretsmanager.Client that rotation uses.
type Client interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
	PutSecretValue(ctx context.Context, in *secretsmanager.PutSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.PutSecretValueOutput, error)
	UpdateSecretVersionStage(ctx context.Context, in *secretsmanager.UpdateSecretVersionStageInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.UpdateSecretVersionStageOutput, error)
	DescribeSecret(ctx context.Context, in *secretsmanager.DescribeSecretInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.DescribeSecretOutput, error)
	GetRandomPassword(ctx context.Context, in *secretsmanager.GetRandomPasswordInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetRandomPasswordOutput, error)
}

// Strategy is how a rotation changes the credentials.
type Strategy int

const (
	// SingleUser changes the password of the secret's user.
	SingleUser Strategy = iota
	// AlternatingUsers switches between the user and <user>_clone, so the
	// previous credentials keep working until the rotation after next.
	AlternatingUsers
)

func (s Strategy) String() string {
	if s == AlternatingUsers {
		return "alternating"
	}
	return "single"
}

// ParseStrategy reads "single" or "alternating".
func ParseStrategy(s string) (Strategy, error) {
	switch s {
	case "single", "":
		return SingleUser, nil
	case "alternating":
		return AlternatingUsers, nil
	}
	return 0, fmt.Errorf("rotate: strategy %q: use single or alternating", s)
}

// Step names one of AWS's four rotation steps, as the Lambda event spells
// it.
type Step string

// The four steps, in order.
const (
	CreateSecret Step = "createSecret"
	SetSecret    Step = "setSecret"
	TestSecret   Step = "testSecret"
	FinishSecret Step = "finishSecret"
)

// Steps lists the four steps in order.
var Steps = []Step{CreateSecret, SetSecret, TestSecret, FinishSecret}

// Stages of a rotation.
const (
	StageCurrent  = "AWSCURRENT"
	StagePending  = "AWSPENDING"
	StagePrevious = "AWSPREVIOUS"
)

// DefaultExcludeCharacters are left out of generated passwords, as AWS's
// templates do: they break URLs and shell quoting in other consumers of the
// secret. pgsecrets itself handles any character.
const DefaultExcludeCharacters = `/@"'\`

// Options configure a Rotator.
type Options struct {
	// Strategy is SingleUser (default) or AlternatingUsers.
	Strategy Strategy
	// ConnParams are the operator's settings for every login of the
	// rotation, in either DSN form (key=value or postgres:// URL), read by
	// the driver's own parser with lib/pq's PG* environment variables: a
	// host, port or dbname given here (or in PGHOST…) wins over the
	// secrets'; sslmode, sslrootcert. Unset, sslmode is verify-full and
	// sslrootcert the system's roots: name a bundle (RDS's global-bundle.pem)
	// with sslrootcert. A weaker sslmode is the operator's explicit choice
	// and is logged when the Rotator is made.
	//
	// The admin logs in where the admin secret (masterarn) says, or where
	// the host here says; never where only the application's secret says.
	// RDS-managed master secrets hold no host: pin it here.
	ConnParams string
	// DatabaseHosts are other names of the admin's database server that an
	// application secret may carry (a read replica, an instance endpoint,
	// a proxy). A secret naming any other host than the admin's is refused.
	DatabaseHosts []string
	// AllowPrivilegedRoles lets the rotation change roles with SUPERUSER,
	// CREATEROLE, REPLICATION or BYPASSRLS, members of such roles or of
	// powerful predefined roles, and the admin itself. Without it they are
	// refused (ErrRefused): a secret names its user, and whoever can write
	// the secret should not be able to have the admin reset another
	// role's password. It is an option, never a field of the secret.
	AllowPrivilegedRoles bool
	// RollbackMaySetPassword lets Rollback set AWSPREVIOUS's password back
	// as the admin when no stage's credentials log in. Off by default:
	// nothing then proves that AWSPREVIOUS was written by a rotation and not
	// by someone who wants the database to accept a password they chose.
	RollbackMaySetPassword bool
	// PasswordLength (default 32) and ExcludeCharacters (default
	// DefaultExcludeCharacters; set "-" for none) shape new passwords.
	PasswordLength    int
	ExcludeCharacters string
	// Probes are SQL statements the new credentials must be able to run
	// (in a read-only transaction that is rolled back), such as
	// "SELECT 1 FROM orders LIMIT 1".
	Probes []string
	// EnforceContract makes every step check AWS's rotation contract
	// first: rotation enabled on the secret, the token a version of it,
	// already AWSCURRENT means done, otherwise it must be AWSPENDING. The
	// Lambda entry point sets it; an operator's own rotation does not need
	// rotation enabled.
	EnforceContract bool
	// Logger gets one line per step (never a password); default
	// slog.Default().
	Logger *slog.Logger
}

// Rotator runs rotation steps for secrets through one Secrets Manager
// client.
type Rotator struct {
	sm      Client
	opt     Options
	log     *slog.Logger
	conn    connSettings
	connErr error // ConnParams that do not parse: every step returns it
}

// New returns a Rotator.
func New(client Client, opt Options) *Rotator {
	if opt.PasswordLength == 0 {
		opt.PasswordLength = 32
	}
	switch opt.ExcludeCharacters {
	case "":
		opt.ExcludeCharacters = DefaultExcludeCharacters
	case "-":
		opt.ExcludeCharacters = ""
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Rotator{sm: client, opt: opt, log: log}
	r.conn, r.connErr = parseConnSettings(opt.ConnParams)
	if r.connErr == nil {
		r.warnWeakTLS()
	}
	return r
}

// Result is what one step did.
type Result struct {
	Step Step
	// Changed is false when the step found its work already done.
	Changed bool
	// What says what the step did or found, never with a password.
	What string
	Took time.Duration
}

// ErrContract is wrapped by errors of the rotation contract's checks.
var ErrContract = errors.New("rotation contract violated")

// ErrTestFailed is wrapped by testSecret's errors: the pending credentials
// would break the application.
var ErrTestFailed = errors.New("pending credentials failed the test")

// Run runs one step for the version token of secretID.
func (r *Rotator) Run(ctx context.Context, secretID, token string, step Step) (Result, error) {
	start := time.Now()
	res := Result{Step: step}
	if r.connErr != nil {
		r.report(secretID, token, res, r.connErr)
		return res, r.connErr
	}
	var err error
	if r.opt.EnforceContract {
		var done bool
		if done, err = r.contract(ctx, secretID, token); err == nil && done {
			res.What = "the version is already AWSCURRENT: nothing to do"
		}
		if err != nil || done {
			res.Took = time.Since(start)
			r.report(secretID, token, res, err)
			return res, err
		}
	}
	switch step {
	case CreateSecret:
		res.Changed, res.What, err = r.createSecret(ctx, secretID, token)
	case SetSecret:
		res.Changed, res.What, err = r.setSecret(ctx, secretID, token)
	case TestSecret:
		res.What, err = r.testSecret(ctx, secretID, token)
	case FinishSecret:
		res.Changed, res.What, err = r.finishSecret(ctx, secretID, token)
	default:
		err = fmt.Errorf("rotate: unknown step %q", step)
	}
	res.Took = time.Since(start)
	r.report(secretID, token, res, err)
	return res, err
}

func (r *Rotator) report(secretID, token string, res Result, err error) {
	if err != nil {
		r.log.Warn("pgsecrets rotate: step failed", "secret_id", secretID, "version_id", token, "step", string(res.Step),
			"took", res.Took.Round(time.Millisecond), "error", err.Error())
		return
	}
	r.log.Info("pgsecrets rotate: step done", "secret_id", secretID, "version_id", token, "step", string(res.Step),
		"changed", res.Changed, "what", res.What, "took", res.Took.Round(time.Millisecond))
}

// Rotate runs the four steps with a new token and returns what each did.
// It stops at the first failure; Resume continues from there.
func (r *Rotator) Rotate(ctx context.Context, secretID string) (string, []Result, error) {
	token, err := newToken()
	if err != nil {
		return "", nil, err
	}
	res, err := r.runAll(ctx, secretID, token)
	return token, res, err
}

// Resume finds a rotation left half done (an AWSPENDING version other than
// AWSCURRENT) and runs every step again with its token: the steps already
// done find nothing to do.
func (r *Rotator) Resume(ctx context.Context, secretID string) (string, []Result, error) {
	vs, err := r.versions(ctx, secretID)
	if err != nil {
		return "", nil, err
	}
	if vs.pending == "" || vs.pending == vs.current {
		return "", nil, fmt.Errorf("rotate: secret %s has no rotation in progress (AWSPENDING is %s)", secretID, describePending(vs))
	}
	res, err := r.runAll(ctx, secretID, vs.pending)
	return vs.pending, res, err
}

func describePending(vs versionInfo) string {
	switch {
	case vs.pending == "":
		return "on no version"
	case vs.pending == vs.current:
		return "on the AWSCURRENT version, which is a finished rotation"
	}
	return "on version " + vs.pending
}

func (r *Rotator) runAll(ctx context.Context, secretID, token string) ([]Result, error) {
	var out []Result
	for _, s := range Steps {
		res, err := r.Run(ctx, secretID, token, s)
		out = append(out, res)
		if err != nil {
			return out, fmt.Errorf("rotate: %s of %s (version %s): %w", s, secretID, token, err)
		}
	}
	return out, nil
}

// versionInfo is where the stages are.
type versionInfo struct {
	enabled                    bool
	current, pending, previous string
	stages                     map[string][]string
	desc                       *secretsmanager.DescribeSecretOutput
}

func (r *Rotator) versions(ctx context.Context, secretID string) (versionInfo, error) {
	out, err := r.sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String(secretID)})
	if err != nil {
		return versionInfo{}, fmt.Errorf("rotate: describing %s: %w", secretID, err)
	}
	vs := versionInfo{enabled: aws.ToBool(out.RotationEnabled), stages: out.VersionIdsToStages, desc: out}
	for id, stages := range out.VersionIdsToStages {
		for _, s := range stages {
			switch s {
			case StageCurrent:
				vs.current = id
			case StagePending:
				vs.pending = id
			case StagePrevious:
				vs.previous = id
			}
		}
	}
	return vs, nil
}

// contract checks AWS's rules for a rotation function invocation; done
// reports that the token is already AWSCURRENT.
func (r *Rotator) contract(ctx context.Context, secretID, token string) (done bool, err error) {
	vs, err := r.versions(ctx, secretID)
	if err != nil {
		return false, err
	}
	if !vs.enabled {
		return false, fmt.Errorf("%w: rotation is not enabled on secret %s", ErrContract, secretID)
	}
	stages, ok := vs.stages[token]
	if !ok {
		return false, fmt.Errorf("%w: version %s is not a version of secret %s", ErrContract, token, secretID)
	}
	for _, s := range stages {
		if s == StageCurrent {
			return true, nil
		}
	}
	for _, s := range stages {
		if s == StagePending {
			return false, nil
		}
	}
	return false, fmt.Errorf("%w: version %s of secret %s is neither AWSCURRENT nor AWSPENDING", ErrContract, token, secretID)
}

// secret is a secret version: its JSON fields, kept whole so that fields
// pgsecrets does not know survive a rotation.
type secret struct {
	id      string
	version string
	fields  map[string]any
}

func (s *secret) str(k string) string {
	v, _ := s.fields[k].(string)
	return v
}

func (s *secret) user() string     { return s.str("username") }
func (s *secret) password() string { return s.str("password") }

func (r *Rotator) get(ctx context.Context, secretID, version, stage string) (*secret, error) {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(secretID)}
	if version != "" {
		in.VersionId = aws.String(version)
	}
	if stage != "" {
		in.VersionStage = aws.String(stage)
	}
	out, err := r.sm.GetSecretValue(ctx, in)
	if err != nil {
		return nil, err
	}
	if out.SecretString == nil {
		return nil, fmt.Errorf("rotate: secret %s has no SecretString", secretID)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(*out.SecretString), &m); err != nil || m == nil {
		return nil, fmt.Errorf("rotate: secret %s (version %s) is not a JSON object", secretID, aws.ToString(out.VersionId))
	}
	s := &secret{id: secretID, version: aws.ToString(out.VersionId), fields: m}
	if s.user() == "" || s.password() == "" {
		return nil, fmt.Errorf("rotate: secret %s (version %s) lacks username or password", secretID, s.version)
	}
	return s, nil
}

func notFound(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "ResourceNotFoundException"
}

func (r *Rotator) createSecret(ctx context.Context, secretID, token string) (bool, string, error) {
	if p, err := r.get(ctx, secretID, token, StagePending); err == nil {
		return false, fmt.Sprintf("AWSPENDING already holds version %s (user %s)", p.version, p.user()), nil
	} else if !notFound(err) {
		return false, "", err
	}
	cur, err := r.get(ctx, secretID, "", StageCurrent)
	if err != nil {
		return false, "", err
	}
	next := map[string]any{}
	for k, v := range cur.fields {
		next[k] = v
	}
	user := cur.user()
	if r.opt.Strategy == AlternatingUsers {
		user = otherUser(user)
		if len(user) > 63 {
			return false, "", fmt.Errorf("rotate: user name %q is longer than PostgreSQL's 63 bytes", user)
		}
		next["username"] = user
	}
	pw, source, err := r.password(ctx)
	if err != nil {
		return false, "", err
	}
	next["password"] = pw
	b, _ := json.Marshal(next)
	_, err = r.sm.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{
		SecretId: aws.String(secretID), ClientRequestToken: aws.String(token),
		SecretString: aws.String(string(b)), VersionStages: []string{StagePending},
	})
	if err != nil {
		return false, "", fmt.Errorf("rotate: writing the pending version: %w", err)
	}
	return true, fmt.Sprintf("wrote version %s as AWSPENDING for user %s (password from %s)", token, user, source), nil
}

// otherUser is the alternating partner of a user name.
func otherUser(u string) string {
	if strings.HasSuffix(u, "_clone") {
		return strings.TrimSuffix(u, "_clone")
	}
	return u + "_clone"
}

// password asks Secrets Manager for a password, or makes one here when the
// call is not allowed (no secretsmanager:GetRandomPassword, no endpoint).
func (r *Rotator) password(ctx context.Context) (string, string, error) {
	out, err := r.sm.GetRandomPassword(ctx, &secretsmanager.GetRandomPasswordInput{
		PasswordLength:    aws.Int64(int64(r.opt.PasswordLength)),
		ExcludeCharacters: aws.String(r.opt.ExcludeCharacters),
	})
	if err == nil && aws.ToString(out.RandomPassword) != "" {
		return aws.ToString(out.RandomPassword), "GetRandomPassword", nil
	}
	pw, lerr := localPassword(r.opt.PasswordLength, r.opt.ExcludeCharacters)
	if lerr != nil {
		return "", "", lerr
	}
	return pw, "crypto/rand (GetRandomPassword failed: " + errorCode(err) + ")", nil
}

func errorCode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	if err == nil {
		return "empty answer"
	}
	return "unreachable"
}

// localPassword draws n characters from printable ASCII less exclude,
// with at least one of each class left, as GetRandomPassword does.
func localPassword(n int, exclude string) (string, error) {
	classes := []string{"abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}
	var all []byte
	var kept []string
	for _, c := range classes {
		var k []byte
		for i := 0; i < len(c); i++ {
			if !strings.ContainsRune(exclude, rune(c[i])) {
				k = append(k, c[i])
			}
		}
		if len(k) > 0 {
			kept = append(kept, string(k))
			all = append(all, k...)
		}
	}
	if len(all) == 0 || n < len(kept) {
		return "", fmt.Errorf("rotate: no password of length %d possible with these exclusions", n)
	}
	pick := func(set string) (byte, error) {
		i, err := rand.Int(rand.Reader, big.NewInt(int64(len(set))))
		if err != nil {
			return 0, err
		}
		return set[i.Int64()], nil
	}
	for {
		b := make([]byte, n)
		for i := range b {
			c, err := pick(string(all))
			if err != nil {
				return "", err
			}
			b[i] = c
		}
		ok := true
		for _, k := range kept {
			if !strings.ContainsAny(string(b), k) {
				ok = false
			}
		}
		if ok {
			return string(b), nil
		}
	}
}

func (r *Rotator) finishSecret(ctx context.Context, secretID, token string) (bool, string, error) {
	vs, err := r.versions(ctx, secretID)
	if err != nil {
		return false, "", err
	}
	if _, ok := vs.stages[token]; !ok {
		return false, "", fmt.Errorf("rotate: version %s is not a version of secret %s", token, secretID)
	}
	changed := false
	what := "AWSCURRENT was already on version " + token
	if vs.current != token {
		in := &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String(secretID), VersionStage: aws.String(StageCurrent),
			MoveToVersionId: aws.String(token)}
		if vs.current != "" {
			in.RemoveFromVersionId = aws.String(vs.current)
		}
		if _, err := r.sm.UpdateSecretVersionStage(ctx, in); err != nil {
			return false, "", fmt.Errorf("rotate: moving AWSCURRENT: %w", err)
		}
		changed = true
		what = fmt.Sprintf("moved AWSCURRENT from version %s to %s (AWSPREVIOUS now on %s)", vs.current, token, vs.current)
	}
	// A finished rotation leaves no AWSPENDING behind (AWS's templates do,
	// and a monitor cannot tell that from a stuck rotation).
	if vs.pending == token {
		if _, err := r.sm.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String(secretID),
			VersionStage: aws.String(StagePending), RemoveFromVersionId: aws.String(token)}); err != nil {
			return changed, what, fmt.Errorf("rotate: removing AWSPENDING: %w", err)
		}
		what += "; removed AWSPENDING"
		changed = true
	}
	return changed, what, nil
}

// newToken is a version id as the SDK makes them.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}
