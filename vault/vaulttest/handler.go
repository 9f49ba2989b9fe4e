package vaulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxBody bounds request bodies; Vault's default is 32 MiB, but nothing this
// server accepts comes close to 1 MiB.
const maxBody = 1 << 20

// request is one parsed API request.
type request struct {
	path  string // Vault path, such as "database/creds/app"
	rest  string // path inside the mount, such as "app" for creds/app
	query url.Values
	body  map[string]any
	token *token
	mount *mount
	auth  *authMount
}

type handlerFunc func(ctx context.Context, w http.ResponseWriter, q *request)

// route is what a request resolves to.
type route struct {
	op     string
	handle handlerFunc // nil: no handler (404)
	login  bool        // needs no token
	method bool        // false: the path exists, but not for this method
}

// secretResponse is Vault's response envelope.
type secretResponse struct {
	RequestID     string   `json:"request_id"`
	LeaseID       string   `json:"lease_id"`
	Renewable     bool     `json:"renewable"`
	LeaseDuration int      `json:"lease_duration"`
	Data          any      `json:"data"`
	WrapInfo      any      `json:"wrap_info"`
	Warnings      []string `json:"warnings"`
	Auth          any      `json:"auth"`
	MountType     string   `json:"mount_type"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers with Vault's error body. No message may contain a
// secret.
func writeError(w http.ResponseWriter, status int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	b, _ := json.Marshal(map[string][]string{"errors": msgs})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func permissionDenied(w http.ResponseWriter) {
	writeError(w, http.StatusForbidden, "permission denied")
}

// statusWriter remembers the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ServeHTTP serves the Vault API. It is what [Server.URL] listens with; it
// is exported only so that the server is an http.Handler.
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w := &statusWriter{ResponseWriter: rw}
	start := time.Now()
	var op, vpath string
	defer func() {
		// Only the operation, method, path and status: paths name mounts,
		// roles and lease ids, never tokens or passwords.
		s.log.LogAttrs(r.Context(), slog.LevelDebug, "vaulttest request",
			slog.String("op", op), slog.String("method", r.Method), slog.String("path", vpath),
			slog.Int("status", w.status), slog.Duration("elapsed", time.Since(start)))
	}()

	if !strings.HasPrefix(r.URL.Path, "/v1/") {
		op = ""
		vpath = r.URL.Path
		s.count("", vpath, normalizeNamespace(r.Header.Get("X-Vault-Namespace")))
		writeError(w, http.StatusNotFound)
		return
	}
	vpath = strings.Trim(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	ns := normalizeNamespace(r.Header.Get("X-Vault-Namespace"))
	body, bodyErr := readBody(r)

	q := &request{path: vpath, query: r.URL.Query(), body: body}
	rt := s.route(r.Method, q)
	op = rt.op
	s.count(op, vpath, ns)
	if s.applyFaults(w, r, s.takeFaults(op)) {
		return
	}
	if s.namespace != "" && ns != s.namespace {
		permissionDenied(w)
		return
	}
	if !rt.login {
		q.token = s.authenticate(r)
		if q.token == nil {
			permissionDenied(w)
			return
		}
		s.mu.Lock()
		ok := s.allowedLocked(q.token, vpath)
		s.mu.Unlock()
		if !ok {
			permissionDenied(w)
			return
		}
	}
	if rt.handle == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no handler for route %q. route entry not found.", vpath))
		return
	}
	if !rt.method {
		writeError(w, http.StatusMethodNotAllowed, "unsupported operation")
		return
	}
	if bodyErr != nil {
		writeError(w, http.StatusBadRequest, bodyErr.Error())
		return
	}
	// Statements sent to PostgreSQL end with the request or with Close,
	// whichever comes first.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	rt.handle(ctx, w, q)
}

// readBody parses a JSON object body; an empty body is an empty object.
func readBody(r *http.Request) (map[string]any, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, errors.New("failed to read request body")
	}
	if len(b) > maxBody {
		return nil, errors.New("request body too large")
	}
	m := map[string]any{}
	if len(bytes.TrimSpace(b)) == 0 {
		return m, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		// Not the decoder's message: it could quote parts of the body.
		return nil, errors.New("failed to parse JSON input")
	}
	return m, nil
}

func isRead(method string) bool { return method == http.MethodGet }

func isWrite(method string) bool { return method == http.MethodPut || method == http.MethodPost }

// route resolves a request to its operation and handler, filling q.rest,
// q.mount and q.auth.
func (s *Server) route(method string, q *request) route {
	p := q.path
	switch p {
	case "auth/token/lookup-self":
		return route{op: OpTokenLookup, handle: s.handleTokenLookupSelf, method: isRead(method) || isWrite(method)}
	case "auth/token/renew-self":
		return route{op: OpTokenRenew, handle: s.handleTokenRenewSelf, method: isWrite(method)}
	case "auth/token/revoke-self":
		return route{op: OpTokenRevoke, handle: s.handleTokenRevokeSelf, method: isWrite(method)}
	}
	for _, pre := range []string{"sys/leases/renew", "sys/renew"} {
		if id, ok := cutSegment(p, pre); ok {
			q.rest = id
			return route{op: OpRenew, handle: s.handleRenew, method: isWrite(method)}
		}
	}
	for _, pre := range []string{"sys/leases/revoke", "sys/revoke"} {
		if id, ok := cutSegment(p, pre); ok {
			q.rest = id
			return route{op: OpRevoke, handle: s.handleRevoke, method: isWrite(method)}
		}
	}
	if id, ok := cutSegment(p, "sys/leases/lookup"); ok && id == "" {
		return route{op: OpLookup, handle: s.handleLookup, method: isWrite(method)}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if rest, ok := strings.CutPrefix(p, "auth/"); ok && strings.HasSuffix(rest, "/login") {
		mount := strings.TrimSuffix(rest, "/login")
		if m := s.authMounts[mount]; m != nil {
			q.auth = m
			return route{op: OpLogin, handle: s.handleLogin, login: true, method: isWrite(method)}
		}
		return route{op: OpLogin}
	}

	m, rest := s.findMountLocked(p)
	if m == nil {
		return route{}
	}
	q.mount = m
	switch m.kind {
	case mountDatabase:
		if name, ok := strings.CutPrefix(rest, "creds/"); ok {
			q.rest = name
			return route{op: OpCreds, handle: s.handleCreds, method: isRead(method)}
		}
		if name, ok := strings.CutPrefix(rest, "static-creds/"); ok {
			q.rest = name
			return route{op: OpStaticCreds, handle: s.handleStaticCreds, method: isRead(method)}
		}
		if name, ok := strings.CutPrefix(rest, "rotate-role/"); ok {
			q.rest = name
			return route{op: OpRotateRole, handle: s.handleRotateRole, method: isWrite(method)}
		}
	case mountKV:
		if path, ok := strings.CutPrefix(rest, "data/"); ok {
			q.rest = path
			if isRead(method) {
				return route{op: OpKVRead, handle: s.handleKVRead, method: true}
			}
			return route{op: OpKVWrite, handle: s.handleKVWrite, method: isWrite(method)}
		}
	}
	return route{}
}

// cutSegment reports whether p is prefix or prefix/<rest>, returning rest.
func cutSegment(p, prefix string) (string, bool) {
	if p == prefix {
		return "", true
	}
	if rest, ok := strings.CutPrefix(p, prefix+"/"); ok {
		return rest, true
	}
	return "", false
}

// durationParam parses a TTL parameter the way Vault does: a number of
// seconds (JSON number or numeric string) or a Go duration string such as
// "30s" or "1h". Missing means 0.
func durationParam(v any) (time.Duration, error) {
	bad := errors.New("invalid increment: must be a number of seconds or a duration such as \"30s\"")
	switch x := v.(type) {
	case nil:
		return 0, nil
	case json.Number:
		f, err := x.Float64()
		if err != nil || f < 0 || f > math.MaxInt64/float64(time.Second) {
			return 0, bad
		}
		return time.Duration(f * float64(time.Second)), nil
	case float64:
		if x < 0 || x > math.MaxInt64/float64(time.Second) {
			return 0, bad
		}
		return time.Duration(x * float64(time.Second)), nil
	case string:
		x = strings.TrimSpace(x)
		if x == "" {
			return 0, nil
		}
		if n, err := strconv.ParseInt(x, 10, 64); err == nil {
			if n < 0 || n > math.MaxInt64/int64(time.Second) {
				return 0, bad
			}
			return time.Duration(n) * time.Second, nil
		}
		d, err := time.ParseDuration(x)
		if err != nil || d < 0 {
			return 0, bad
		}
		return d, nil
	default:
		return 0, bad
	}
}
