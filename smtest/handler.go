package smtest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	targetPrefix = "secretsmanager."
	jsonType     = "application/x-amz-json-1.1"
	maxBody      = 1 << 20
)

// epoch is a timestamp in the JSON form AWS JSON 1.1 uses: seconds since
// the Unix epoch as a number with millisecond precision.
type epoch time.Time

func (t epoch) MarshalJSON() ([]byte, error) {
	ms := time.Time(t).UnixMilli()
	return strconv.AppendFloat(nil, float64(ms)/1000, 'f', -1, 64), nil
}

func epochPtr(t time.Time) *epoch {
	if t.IsZero() {
		return nil
	}
	e := epoch(t)
	return &e
}

// ServeHTTP implements the Secrets Manager JSON 1.1 protocol. It is what the
// server's listener serves; it is exported so the server can also be mounted
// in another http.Server or httptest.Server.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, targetPrefix)
	if !ok {
		op = target
	}

	if r.Method != http.MethodPost {
		s.count(op, "")
		writeError(w, newError(http.StatusMethodNotAllowed, "MethodNotAllowedException",
			"Secrets Manager accepts only POST requests."))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		s.count(op, "")
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, newError(http.StatusRequestEntityTooLarge, "RequestEntityTooLargeException",
				"Request body too large."))
		}
		return // otherwise the client went away
	}
	var ids struct {
		SecretId string
		Name     string
	}
	parseErr := json.Unmarshal(body, &ids)
	secretID := ids.SecretId
	if op == "CreateSecret" {
		secretID = ids.Name
	}

	// Decide the answer's kind before counting the request, so that a
	// WaitCalls caller knows which fault, if any, this request got.
	reject := s.checkAuth(r)
	var faults []Fault
	switch {
	case reject != nil:
	case !ok || !knownOps[op]:
		reject = newError(400, "UnknownOperationException", "Unknown operation %s.", target)
	case parseErr != nil:
		reject = newError(400, "SerializationException", "Could not parse the request body: %v", parseErr)
	case !s.admit(op, accessKeyID(r)):
		reject = s.faultError(op, secretID, Fault{Kind: Throttle}) // the quota (quota.go)
	default:
		faults = s.takeFaults(op, secretID)
	}
	s.count(op, secretID)
	if reject != nil {
		writeError(w, reject)
		return
	}

	for _, f := range faults {
		if f.Kind == HangUntilCancel {
			s.hang(w, r)
			return
		}
		if f.Delay > 0 && !s.sleep(w, r, f.Delay) {
			return
		}
		if e := s.faultError(op, secretID, f); e != nil {
			writeError(w, e)
			return
		}
	}

	out, e := s.dispatch(r.Context(), op, body)
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

var knownOps = map[string]bool{
	"CreateSecret":             true,
	"GetSecretValue":           true,
	"PutSecretValue":           true,
	"UpdateSecretVersionStage": true,
	"DescribeSecret":           true,
	"ListSecrets":              true,
	"ListSecretVersionIds":     true,
	"GetRandomPassword":        true,
	"RotateSecret":             true,
	"CancelRotateSecret":       true,
	"DeleteSecret":             true,
	"RestoreSecret":            true,
}

// checkAuth requires a SigV4 Authorization header; the signature itself is
// not verified.
func (s *Server) checkAuth(r *http.Request) *Error {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		// What AWS answers an unsigned request, such as one from a client
		// that found no credentials.
		return newError(http.StatusForbidden, "MissingAuthenticationTokenException",
			"Missing Authentication Token")
	}
	if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 ") {
		return newError(400, "IncompleteSignatureException",
			"The request signature does not conform to AWS standards (expected AWS4-HMAC-SHA256).")
	}
	if s.strictKey {
		if accessKeyID(r) != s.akid {
			return newError(400, "UnrecognizedClientException",
				"The security token included in the request is invalid.")
		}
	}
	return nil
}

// sleep waits d; it reports false, having dealt with the response, if the
// client went away or the server is closing.
func (s *Server) sleep(w http.ResponseWriter, r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		panic(http.ErrAbortHandler) // drop the connection; nobody is listening
	case <-s.closing:
		writeClosing(w)
		return false
	}
}

// hang blocks until the client goes away or the server closes.
func (s *Server) hang(w http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
		panic(http.ErrAbortHandler)
	case <-s.closing:
		writeClosing(w)
	}
}

func writeClosing(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	writeError(w, newError(500, "InternalServiceError", "smtest: server closed"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = 500
		b = []byte(`{"__type":"InternalServiceError","message":"smtest: cannot encode response"}`)
	}
	h := w.Header()
	h.Set("Content-Type", jsonType)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Amzn-Requestid", newVersionID())
	w.WriteHeader(status)
	w.Write(b)
}

func writeError(w http.ResponseWriter, e *Error) {
	w.Header().Set("X-Amzn-Errortype", e.Code)
	writeJSON(w, e.Status, struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}{e.Code, e.Message})
}

func (s *Server) dispatch(ctx context.Context, op string, body []byte) (any, *Error) {
	switch op {
	case "CreateSecret":
		return s.httpCreateSecret(body)
	case "GetSecretValue":
		return s.httpGetSecretValue(body)
	case "PutSecretValue":
		return s.httpPutSecretValue(body)
	case "UpdateSecretVersionStage":
		return s.httpUpdateSecretVersionStage(body)
	case "DescribeSecret":
		return s.httpDescribeSecret(body)
	case "ListSecrets":
		return s.httpListSecrets(body)
	case "ListSecretVersionIds":
		return s.httpListSecretVersionIds(body)
	case "GetRandomPassword":
		return s.httpGetRandomPassword(body)
	case "RotateSecret":
		return s.httpRotateSecret(ctx, body)
	case "CancelRotateSecret":
		return s.httpCancelRotateSecret(body)
	case "DeleteSecret":
		return s.httpDeleteSecret(body)
	case "RestoreSecret":
		return s.httpRestoreSecret(body)
	}
	return nil, newError(400, "UnknownOperationException", "Unknown operation %s.", op)
}

func decode(body []byte, v any) *Error {
	if err := json.Unmarshal(body, v); err != nil {
		return newError(400, "SerializationException", "Could not parse the request body: %v", err)
	}
	return nil
}

func (s *Server) httpCreateSecret(body []byte) (any, *Error) {
	var in struct {
		Name               string
		SecretString       *string
		SecretBinary       []byte
		ClientRequestToken string
		Description        string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.SecretString != nil || in.SecretBinary != nil {
		if e := requireToken(in.ClientRequestToken); e != nil {
			return nil, e
		}
	}
	if e := checkTokenLength(in.ClientRequestToken); e != nil {
		return nil, e
	}
	r, e := s.createSecret(createReq{
		name: in.Name, description: in.Description, token: in.ClientRequestToken,
		str: in.SecretString, bin: in.SecretBinary,
	})
	if e != nil {
		return nil, e
	}
	return struct {
		ARN       string
		Name      string
		VersionId string `json:",omitempty"`
	}{r.arn, r.name, r.versionID}, nil
}

func (s *Server) httpGetSecretValue(body []byte) (any, *Error) {
	var in struct {
		SecretId     string
		VersionId    string
		VersionStage string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	r, e := s.getSecretValue(getReq{secretID: in.SecretId, versionID: in.VersionId, stage: in.VersionStage})
	if e != nil {
		return nil, e
	}
	out := struct {
		ARN           string
		Name          string
		VersionId     string
		VersionStages []string
		SecretString  *string `json:",omitempty"`
		SecretBinary  []byte  `json:",omitempty"`
		CreatedDate   epoch
	}{
		ARN: r.arn, Name: r.name, VersionId: r.versionID, VersionStages: r.stages,
		CreatedDate: epoch(r.created),
	}
	if r.bin != nil {
		out.SecretBinary = r.bin
	} else {
		str := r.str
		out.SecretString = &str
	}
	return out, nil
}

func (s *Server) httpPutSecretValue(body []byte) (any, *Error) {
	var in struct {
		SecretId           string
		ClientRequestToken string
		SecretString       *string
		SecretBinary       []byte
		VersionStages      []string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.SecretString == nil && in.SecretBinary == nil {
		return nil, newError(400, "InvalidRequestException",
			"You must provide either SecretString or SecretBinary.")
	}
	if e := requireToken(in.ClientRequestToken); e != nil {
		return nil, e
	}
	if e := checkTokenLength(in.ClientRequestToken); e != nil {
		return nil, e
	}
	r, e := s.putSecretValue(putReq{
		secretID: in.SecretId, token: in.ClientRequestToken,
		str: in.SecretString, bin: in.SecretBinary, stages: in.VersionStages,
	})
	if e != nil {
		return nil, e
	}
	return struct {
		ARN           string
		Name          string
		VersionId     string
		VersionStages []string
	}{r.arn, r.name, r.versionID, r.stages}, nil
}

func (s *Server) httpUpdateSecretVersionStage(body []byte) (any, *Error) {
	var in struct {
		SecretId            string
		VersionStage        string
		MoveToVersionId     string
		RemoveFromVersionId string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	arn, name, e := s.updateStage(in.SecretId, in.VersionStage, in.MoveToVersionId, in.RemoveFromVersionId, false)
	if e != nil {
		return nil, e
	}
	return struct {
		ARN  string
		Name string
	}{arn, name}, nil
}

type rotationRules struct {
	AutomaticallyAfterDays *int64  `json:",omitempty"`
	Duration               *string `json:",omitempty"`
	ScheduleExpression     *string `json:",omitempty"`
}

// secretMeta is what DescribeSecret returns and, with the version map under
// another name, what ListSecrets returns for each secret.
type secretMeta struct {
	ARN               string
	Name              string
	Description       string         `json:",omitempty"`
	RotationEnabled   *bool          `json:",omitempty"`
	RotationLambdaARN string         `json:",omitempty"`
	RotationRules     *rotationRules `json:",omitempty"`
	LastRotatedDate   *epoch         `json:",omitempty"`
	LastChangedDate   *epoch         `json:",omitempty"`
	LastAccessedDate  *epoch         `json:",omitempty"`
	DeletedDate       *epoch         `json:",omitempty"`
	NextRotationDate  *epoch         `json:",omitempty"`
	CreatedDate       *epoch         `json:",omitempty"`
}

// describeOutput and listEntry differ only in the name of the version map.
type describeOutput struct {
	secretMeta
	VersionIdsToStages map[string][]string
}

type listEntry struct {
	secretMeta
	SecretVersionsToStages map[string][]string
}

// metaLocked returns the fields DescribeSecret and ListSecrets share.
func (s *Server) metaLocked(sec *secret) secretMeta {
	out := secretMeta{
		ARN:              sec.arn,
		Name:             sec.name,
		Description:      sec.description,
		LastChangedDate:  epochPtr(sec.changed),
		LastAccessedDate: epochPtr(sec.accessed),
		DeletedDate:      epochPtr(sec.deleted),
		CreatedDate:      epochPtr(sec.created),
	}
	if !sec.rotConfigured {
		return out
	}
	enabled := sec.rotEnabled
	out.RotationEnabled = &enabled
	out.RotationLambdaARN = sec.rotLambda
	if sec.rotEnabled {
		// AWS reports no last rotation while rotation is off.
		out.LastRotatedDate = epochPtr(sec.rotLast)
	}
	var rules rotationRules
	if sec.rotDays > 0 {
		days := int64(sec.rotDays)
		rules.AutomaticallyAfterDays = &days
	}
	if sec.rotSchedule != "" {
		expr := sec.rotSchedule
		rules.ScheduleExpression = &expr
	}
	if sec.rotDuration != "" {
		d := sec.rotDuration
		rules.Duration = &d
	}
	if rules != (rotationRules{}) {
		out.RotationRules = &rules
	}
	if every := sec.rotInterval(); sec.rotEnabled && every > 0 {
		base := sec.rotLast
		if base.IsZero() {
			base = sec.created
		}
		out.NextRotationDate = epochPtr(base.Add(every))
	}
	return out
}

func (s *Server) httpDescribeSecret(body []byte) (any, *Error) {
	var in struct{ SecretId string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, e := s.findLocked(in.SecretId)
	if e != nil {
		return nil, e
	}
	return describeOutput{s.metaLocked(sec), sec.versionIDsToStages()}, nil
}
