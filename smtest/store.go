package smtest

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Staging labels with a meaning to Secrets Manager.
const (
	StageCurrent  = "AWSCURRENT"
	StagePending  = "AWSPENDING"
	StagePrevious = "AWSPREVIOUS"
)

// MaxSecretSize is the largest SecretString or SecretBinary, in bytes, that
// Secrets Manager (and this server) accepts.
const MaxSecretSize = 65536

// Error is an error in the form Secrets Manager reports it. The Go methods of
// [Server] return *Error values with the code the HTTP API would send, so
// tests can check them with errors.As.
type Error struct {
	Status  int    // HTTP status code, such as 400
	Code    string // error code, such as "ResourceNotFoundException"
	Message string
}

// Error returns the AWS error code and message.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

func newError(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func errNoSecret() *Error {
	return newError(400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
}

func errInvalidParam(format string, args ...any) *Error {
	return newError(400, "InvalidParameterException", format, args...)
}

func errDeleted() *Error {
	return newError(400, "InvalidRequestException",
		"You can't perform this operation on the secret because it was marked for deletion.")
}

type version struct {
	id       string
	str      string
	bin      []byte // non-nil for binary secrets
	created  time.Time
	accessed time.Time // day of the last GetSecretValue of this version
	seq      uint64    // creation order, to list versions stably within one millisecond
	// placeholder marks the version RotateSecret labels AWSPENDING before
	// the rotation function runs: listed with its stage, but without a
	// value until the function's createSecret puts one.
	placeholder bool
}

func (v *version) value() string {
	if v.bin != nil {
		return string(v.bin)
	}
	return v.str
}

func (v *version) sameValue(str *string, bin []byte) bool {
	if bin != nil || v.bin != nil {
		return bin != nil && v.bin != nil && bytes.Equal(bin, v.bin)
	}
	return str != nil && *str == v.str
}

type secret struct {
	name, arn, partialARN string
	description           string
	createToken           string // ClientRequestToken of CreateSecret, for idempotent retries
	created, changed      time.Time
	accessed              time.Time // zero until the first GetSecretValue
	deleted               time.Time // zero unless marked for deletion
	versions              map[string]*version
	labels                map[string]string // stage -> version id

	seq           uint64    // creation order among all secrets
	deletionDate  time.Time // when a scheduled deletion would take effect
	versionSeq    uint64
	rotConfigured bool
	rotEnabled    bool
	rotDays       int
	rotLast       time.Time
	rotSchedule   string
	rotDuration   string
	rotLambda     string
}

// addVersion stores v, numbering it so that listings keep creation order.
func (sec *secret) addVersion(v *version) {
	sec.versionSeq++
	v.seq = sec.versionSeq
	sec.versions[v.id] = v
}

// rotInterval returns the time between rotations, or 0 if unknown.
func (sec *secret) rotInterval() time.Duration {
	if sec.rotDays > 0 {
		return time.Duration(sec.rotDays) * 24 * time.Hour
	}
	var n int
	var unit string
	if _, err := fmt.Sscanf(sec.rotSchedule, "rate(%d %s", &n, &unit); err != nil || n <= 0 {
		return 0
	}
	switch strings.TrimSuffix(unit, ")") {
	case "day", "days":
		return time.Duration(n) * 24 * time.Hour
	case "hour", "hours":
		return time.Duration(n) * time.Hour
	}
	return 0
}

// stagesOf returns the labels on version id, sorted.
func (sec *secret) stagesOf(id string) []string {
	var st []string
	for label, vid := range sec.labels {
		if vid == id {
			st = append(st, label)
		}
	}
	sort.Strings(st)
	return st
}

// move attaches label to version to, removing it from the version that had
// it; moving AWSCURRENT puts AWSPREVIOUS on the version that had AWSCURRENT.
// AWSCURRENT arriving on the AWSPENDING version is how a rotation's
// finishSecret step completes, which is when AWS records LastRotatedDate.
func (sec *secret) move(label, to string, now time.Time) {
	old := sec.labels[label]
	sec.labels[label] = to
	if label == StageCurrent && old != "" && old != to {
		sec.labels[StagePrevious] = old
		if sec.labels[StagePending] == to {
			sec.rotLast = now
		}
	}
}

// timestamp returns the current time as AWS reports it: UTC, milliseconds.
func (s *Server) timestamp() time.Time {
	return time.UnixMilli(s.now().UnixMilli()).UTC()
}

// lookupLocked finds a secret by name, full ARN or partial ARN.
func (s *Server) lookupLocked(id string) *secret {
	if sec := s.secrets[id]; sec != nil {
		return sec
	}
	if sec := s.byARN[id]; sec != nil {
		return sec
	}
	return s.byPartial[id]
}

func (s *Server) findLocked(id string) (*secret, *Error) {
	if id == "" {
		return nil, errInvalidParam("You must specify a SecretId.")
	}
	sec := s.lookupLocked(id)
	if sec == nil {
		return nil, errNoSecret()
	}
	return sec, nil
}

func (s *Server) findLiveLocked(id string) (*secret, *Error) {
	sec, err := s.findLocked(id)
	if err == nil && !sec.deleted.IsZero() {
		return nil, errDeleted()
	}
	return sec, err
}

const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func randomSuffix() string {
	b := make([]byte, 6)
	rand.Read(b)
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return string(b)
}

// newVersionID returns a random UUID (version 4), the form AWS uses.
func newVersionID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func validName(name string) *Error {
	if name == "" || len(name) > 512 {
		return errInvalidParam("The secret name must be between 1 and 512 characters long.")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/_+=.@-", r)) {
			return errInvalidParam("Invalid name. Must be a valid name containing alphanumeric characters, or any of the following: -/_+=.@!")
		}
	}
	if strings.HasPrefix(name, "arn:") {
		return errInvalidParam("Invalid name. The secret name can't start with arn:.")
	}
	return nil
}

func validValue(str *string, bin []byte, required bool) *Error {
	switch {
	case str != nil && bin != nil:
		return errInvalidParam("You can't specify both a binary secret value and a string secret value in the same secret.")
	case str == nil && bin == nil && required:
		return errInvalidParam("You must provide either SecretString or SecretBinary.")
	case str != nil && len(*str) > MaxSecretSize:
		return errInvalidParam("SecretString exceeds the maximum size of %d bytes.", MaxSecretSize)
	case bin != nil && len(bin) > MaxSecretSize:
		return errInvalidParam("SecretBinary exceeds the maximum size of %d bytes.", MaxSecretSize)
	}
	return nil
}

func validToken(token string) *Error {
	if len(token) > 64 {
		return errInvalidParam("ClientRequestToken must be at most 64 characters long.")
	}
	return nil
}

func copyBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// createReq is the input of CreateSecret, shared by the Go and HTTP paths.
type createReq struct {
	name, description, token string
	str                      *string
	bin                      []byte
}

type createResp struct {
	arn, name, versionID string
}

func (s *Server) createSecret(in createReq) (createResp, *Error) {
	if err := validName(in.name); err != nil {
		return createResp{}, err
	}
	if err := validValue(in.str, in.bin, false); err != nil {
		return createResp{}, err
	}
	if err := validToken(in.token); err != nil {
		return createResp{}, err
	}
	hasValue := in.str != nil || in.bin != nil
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.secrets[in.name]; old != nil {
		if !old.deleted.IsZero() {
			return createResp{}, newError(400, "InvalidRequestException",
				"You can't create this secret because a secret with this name is already scheduled for deletion.")
		}
		// A retried CreateSecret (same token, same value) succeeds again.
		if in.token != "" && old.createToken == in.token {
			v := old.versions[in.token]
			if (v == nil && !hasValue) || (v != nil && v.sameValue(in.str, in.bin)) {
				r := createResp{arn: old.arn, name: old.name}
				if v != nil {
					r.versionID = v.id
				}
				return r, nil
			}
		}
		return createResp{}, newError(400, "ResourceExistsException",
			"The operation failed because the secret %s already exists.", in.name)
	}
	now := s.timestamp()
	partial := fmt.Sprintf("arn:%s:secretsmanager:%s:%s:secret:%s", s.partition, s.region, s.account, in.name)
	sec := &secret{
		name:        in.name,
		partialARN:  partial,
		arn:         partial + "-" + randomSuffix(),
		description: in.description,
		createToken: in.token,
		created:     now,
		changed:     now,
		versions:    make(map[string]*version),
		labels:      make(map[string]string),
	}
	r := createResp{arn: sec.arn, name: sec.name}
	if hasValue {
		id := in.token
		if id == "" {
			id = newVersionID()
		}
		v := &version{id: id, bin: copyBytes(in.bin), created: now}
		if in.str != nil {
			v.str = *in.str
		}
		sec.addVersion(v)
		sec.labels[StageCurrent] = id
		r.versionID = id
	}
	s.secretSeq++
	sec.seq = s.secretSeq
	s.secrets[sec.name] = sec
	s.byARN[sec.arn] = sec
	s.byPartial[sec.partialARN] = sec
	return r, nil
}

// putReq is the input of PutSecretValue.
type putReq struct {
	secretID, token string
	str             *string
	bin             []byte
	stages          []string
}

type putResp struct {
	arn, name, versionID string
	stages               []string
}

func (s *Server) putSecretValue(in putReq) (putResp, *Error) {
	if err := validValue(in.str, in.bin, true); err != nil {
		return putResp{}, err
	}
	if err := validToken(in.token); err != nil {
		return putResp{}, err
	}
	for _, st := range in.stages {
		if st == "" || len(st) > 256 {
			return putResp{}, errInvalidParam("A staging label must be between 1 and 256 characters long.")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLiveLocked(in.secretID)
	if err != nil {
		return putResp{}, err
	}
	id := in.token
	if id == "" {
		id = newVersionID()
	}
	if v := sec.versions[id]; v != nil && v.placeholder {
		// The rotation function fills the version RotateSecret made.
		v.placeholder, v.bin = false, copyBytes(in.bin)
		if in.str != nil {
			v.str = *in.str
		}
		now := s.timestamp()
		for _, st := range in.stages {
			sec.move(st, id, now)
		}
		sec.changed = now
		return putResp{arn: sec.arn, name: sec.name, versionID: id, stages: sec.stagesOf(id)}, nil
	}
	if v := sec.versions[id]; v != nil {
		if !v.sameValue(in.str, in.bin) {
			return putResp{}, newError(400, "ResourceExistsException",
				"You can't modify an existing version, you can only create a new version.")
		}
		return putResp{arn: sec.arn, name: sec.name, versionID: id, stages: sec.stagesOf(id)}, nil
	}
	now := s.timestamp()
	v := &version{id: id, bin: copyBytes(in.bin), created: now}
	if in.str != nil {
		v.str = *in.str
	}
	sec.addVersion(v)
	stages := in.stages
	if len(stages) == 0 {
		stages = []string{StageCurrent}
	}
	if sec.labels[StageCurrent] == "" {
		// The first version of a secret is always AWSCURRENT.
		sec.labels[StageCurrent] = id
	}
	for _, st := range stages {
		sec.move(st, id, now)
	}
	sec.changed = now
	return putResp{arn: sec.arn, name: sec.name, versionID: id, stages: sec.stagesOf(id)}, nil
}

// updateStage implements UpdateSecretVersionStage. With lenient set, an
// empty removeFrom means "from whichever version has the label".
func (s *Server) updateStage(secretID, stage, moveTo, removeFrom string, lenient bool) (arn, name string, err *Error) {
	if stage == "" {
		return "", "", errInvalidParam("You must specify a VersionStage.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLiveLocked(secretID)
	if err != nil {
		return "", "", err
	}
	for _, id := range []string{moveTo, removeFrom} {
		if id != "" && sec.versions[id] == nil {
			return "", "", newError(400, "ResourceNotFoundException",
				"Secrets Manager can't find the specified secret version: %s", id)
		}
	}
	cur := sec.labels[stage]
	if removeFrom != "" && cur != removeFrom {
		return "", "", errInvalidParam("The staging label %s isn't attached to version %s.", stage, removeFrom)
	}
	switch {
	case moveTo == "" && removeFrom == "":
		return "", "", errInvalidParam("You must specify MoveToVersionId or RemoveFromVersionId.")
	case moveTo == "":
		if stage == StageCurrent {
			return "", "", errInvalidParam("You can only move staging label AWSCURRENT to a different secret version. It can't be completely removed.")
		}
		delete(sec.labels, stage)
	case cur == moveTo:
		return sec.arn, sec.name, nil // already there
	default:
		if cur != "" && removeFrom == "" && !lenient {
			return "", "", errInvalidParam("The parameter RemoveFromVersionId can't be empty. Staging label %s is currently attached to version %s, so you must explicitly reference that version in RemoveFromVersionId.", stage, cur)
		}
		sec.move(stage, moveTo, s.timestamp())
	}
	sec.changed = s.timestamp()
	return sec.arn, sec.name, nil
}

// getReq is the input of GetSecretValue.
type getReq struct {
	secretID, versionID, stage string
}

type getResp struct {
	arn, name, versionID string
	str                  string
	bin                  []byte
	created              time.Time
	stages               []string
}

func (s *Server) getSecretValue(in getReq) (getResp, *Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLiveLocked(in.secretID)
	if err != nil {
		return getResp{}, err
	}
	var v *version
	switch {
	case in.versionID != "":
		v = sec.versions[in.versionID]
		if v == nil || v.placeholder {
			return getResp{}, newError(400, "ResourceNotFoundException",
				"Secrets Manager can't find the specified secret value for VersionId: %s", in.versionID)
		}
		if in.stage != "" && sec.labels[in.stage] != in.versionID {
			return getResp{}, newError(400, "InvalidRequestException",
				"You provided a VersionStage that is not associated to the provided VersionId.")
		}
	default:
		stage := in.stage
		if stage == "" {
			stage = StageCurrent
		}
		v = sec.versions[sec.labels[stage]]
		if v == nil || v.placeholder {
			return getResp{}, newError(400, "ResourceNotFoundException",
				"Secrets Manager can't find the specified secret value for staging label: %s", stage)
		}
	}
	// AWS records the day of the last access, not the moment.
	sec.accessed = s.timestamp().Truncate(24 * time.Hour)
	v.accessed = sec.accessed
	return getResp{
		arn: sec.arn, name: sec.name, versionID: v.id,
		str: v.str, bin: v.bin, created: v.created, stages: sec.stagesOf(v.id),
	}, nil
}

// SecretSpec describes a secret for [Server.Add].
type SecretSpec struct {
	// Name is the secret's name, such as "prod/app/db". Required.
	Name string
	// String is the value of the first version, unless Binary is set.
	String string
	// Binary, if not nil, makes this a binary secret with this value.
	Binary []byte
	// Description is shown by DescribeSecret.
	Description string
	// VersionID is the id of the first version; a random UUID if empty.
	VersionID string
}

// Add creates a secret whose first version, labelled AWSCURRENT, holds
// spec's value. It returns the new secret's ARN, or an [*Error] with the code
// CreateSecret would return (ResourceExistsException,
// InvalidParameterException, ...).
func (s *Server) Add(spec SecretSpec) (arn string, err error) {
	in := createReq{name: spec.Name, description: spec.Description, token: spec.VersionID}
	if spec.Binary != nil {
		in.bin = spec.Binary
	} else {
		str := spec.String
		in.str = &str
	}
	r, e := s.createSecret(in)
	if e != nil {
		return "", e
	}
	return r.arn, nil
}

// CreateSecret creates a secret named name whose first version, labelled
// AWSCURRENT, holds secretString, and returns its ARN. It panics if the
// secret cannot be created (the name is taken or invalid, or the value is
// larger than [MaxSecretSize]); use [Server.Add] to get an error instead.
func (s *Server) CreateSecret(name, secretString string) (arn string) {
	arn, err := s.Add(SecretSpec{Name: name, String: secretString})
	if err != nil {
		panic(fmt.Sprintf("smtest: CreateSecret(%q): %v", name, err))
	}
	return arn
}

// CreateBinarySecret is like [Server.CreateSecret] for a binary secret.
func (s *Server) CreateBinarySecret(name string, b []byte) (arn string) {
	if b == nil {
		b = []byte{}
	}
	arn, err := s.Add(SecretSpec{Name: name, Binary: b})
	if err != nil {
		panic(fmt.Sprintf("smtest: CreateBinarySecret(%q): %v", name, err))
	}
	return arn
}

// PutSecretValue adds a new version holding value to the secret secretID
// (a name, full ARN or partial ARN) and returns its random version id. The
// new version gets the given staging labels, each moved from the version
// that had it; with none it gets AWSCURRENT. Moving AWSCURRENT puts
// AWSPREVIOUS on the version that had it, as in AWS.
func (s *Server) PutSecretValue(secretID, value string, stages ...string) (versionID string, err error) {
	r, e := s.putSecretValue(putReq{secretID: secretID, str: &value, stages: stages})
	if e != nil {
		return "", e
	}
	return r.versionID, nil
}

// PutSecretVersion is [Server.PutSecretValue] with a chosen version id, as
// a rotation function does with its ClientRequestToken. Putting the same
// value under an existing id does nothing; a different value under an
// existing id is a ResourceExistsException.
func (s *Server) PutSecretVersion(secretID, versionID, value string, stages ...string) error {
	if versionID == "" {
		return errInvalidParam("versionID must not be empty.")
	}
	_, e := s.putSecretValue(putReq{secretID: secretID, token: versionID, str: &value, stages: stages})
	if e != nil {
		return e
	}
	return nil
}

// UpdateStage moves the staging label stage to version moveTo and/or removes
// it from version removeFrom, like UpdateSecretVersionStage. Unlike the
// HTTP API, it allows an empty removeFrom when moving a label that is on
// another version: the label is then taken from wherever it is. Moving
// AWSCURRENT puts AWSPREVIOUS on the version that had it. AWSCURRENT can be
// moved but not removed.
func (s *Server) UpdateStage(secretID, stage, moveTo, removeFrom string) error {
	if _, _, e := s.updateStage(secretID, stage, moveTo, removeFrom, true); e != nil {
		return e
	}
	return nil
}

// FinishRotation does what the finishSecret step of AWS's rotation
// function does: it moves AWSCURRENT to versionID (AWSPREVIOUS goes to the
// version that had it) and removes AWSPENDING from versionID.
func (s *Server) FinishRotation(secretID, versionID string) error {
	if err := s.UpdateStage(secretID, StageCurrent, versionID, ""); err != nil {
		return err
	}
	if id, _, ok := s.Version(secretID, StagePending); ok && id == versionID {
		return s.UpdateStage(secretID, StagePending, "", versionID)
	}
	return nil
}

// Version returns the id and value of the version of secretID that carries
// the staging label stage (AWSCURRENT if stage is empty). The value of a
// binary secret is returned as a string of its bytes. ok is false if there
// is no such secret or version. Version does not count as an access.
func (s *Server) Version(secretID, stage string) (versionID, value string, ok bool) {
	if stage == "" {
		stage = StageCurrent
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookupLocked(secretID)
	if sec == nil {
		return "", "", false
	}
	v := sec.versions[sec.labels[stage]]
	if v == nil {
		return "", "", false
	}
	return v.id, v.value(), true
}

// Stages returns the staging labels of every version of secretID that has
// any, keyed by version id (what DescribeSecret calls VersionIdsToStages),
// or nil if there is no such secret.
func (s *Server) Stages(secretID string) map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookupLocked(secretID)
	if sec == nil {
		return nil
	}
	return sec.versionIDsToStages()
}

func (s *Server) defaultLambdaARN() string {
	return "arn:" + s.partition + ":lambda:" + s.region + ":" + s.account + ":function:smtest-rotation"
}

func (sec *secret) versionIDsToStages() map[string][]string {
	m := make(map[string][]string)
	for label, id := range sec.labels {
		m[id] = append(m[id], label)
	}
	for _, st := range m {
		sort.Strings(st)
	}
	return m
}

// SetRotation configures what DescribeSecret reports about rotation:
// RotationEnabled, RotationRules.AutomaticallyAfterDays (omitted if
// everyDays <= 0), RotationLambdaARN (a made-up function unless RotateSecret
// named one), LastRotatedDate (omitted if lastRotated is zero or rotation is
// disabled, as AWS does) and NextRotationDate (lastRotated, or the creation
// date, plus everyDays, when enabled). No rotation is run; see
// [Server.OnRotate] for that.
func (s *Server) SetRotation(secretID string, enabled bool, everyDays int, lastRotated time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLocked(secretID)
	if err != nil {
		return err
	}
	sec.rotConfigured = true
	sec.rotEnabled = enabled
	sec.rotDays = everyDays
	sec.rotSchedule = ""
	sec.rotDuration = ""
	if sec.rotLambda == "" {
		sec.rotLambda = s.defaultLambdaARN()
	}
	sec.rotLast = time.Time{}
	if !lastRotated.IsZero() {
		sec.rotLast = time.UnixMilli(lastRotated.UnixMilli()).UTC()
	}
	sec.changed = s.timestamp()
	return nil
}

// SetRotationSchedule turns rotation on with a schedule expression, such as
// "rate(4 hours)" or "cron(0 8 1 * ? *)", which DescribeSecret reports as
// RotationRules.ScheduleExpression instead of AutomaticallyAfterDays. For
// rate() expressions NextRotationDate is computed as in [Server.SetRotation];
// the last rotation date set there is kept.
func (s *Server) SetRotationSchedule(secretID, expression string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLocked(secretID)
	if err != nil {
		return err
	}
	sec.rotConfigured = true
	sec.rotEnabled = true
	sec.rotDays = 0
	sec.rotSchedule = expression
	if sec.rotLambda == "" {
		sec.rotLambda = s.defaultLambdaARN()
	}
	sec.changed = s.timestamp()
	return nil
}

// DeleteSecret deletes the secret secretID. With force, the secret is gone at
// once, as with ForceDeleteWithoutRecovery, and its name can be reused.
// Otherwise it is only marked for deletion, as during AWS's recovery window:
// GetSecretValue, PutSecretValue and UpdateSecretVersionStage then fail with
// InvalidRequestException, DescribeSecret shows DeletedDate, and
// [Server.RestoreSecret] undoes it.
func (s *Server) DeleteSecret(secretID string, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLocked(secretID)
	if err != nil {
		return err
	}
	if !force {
		if sec.deleted.IsZero() {
			sec.deleted = s.timestamp()
			sec.deletionDate = sec.deleted.Add(defaultRecoveryDays * 24 * time.Hour)
		}
		return nil
	}
	delete(s.secrets, sec.name)
	delete(s.byARN, sec.arn)
	delete(s.byPartial, sec.partialARN)
	return nil
}

// RestoreSecret cancels the scheduled deletion of secretID.
func (s *Server) RestoreSecret(secretID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, err := s.findLocked(secretID)
	if err != nil {
		return err
	}
	sec.deleted = time.Time{}
	sec.deletionDate = time.Time{}
	return nil
}

// ARN returns the full ARN of secretID (a name, full ARN or partial ARN), or
// "" if there is no such secret.
func (s *Server) ARN(secretID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec := s.lookupLocked(secretID); sec != nil {
		return sec.arn
	}
	return ""
}
