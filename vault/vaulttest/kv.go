package vaulttest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type kvSecret struct {
	versions []kvVersion // versions[i] is version i+1
}

type kvVersion struct {
	data    []byte // JSON, so callers' maps are never shared
	created time.Time
}

// EnableKV enables a KV version 2 secrets engine at mount (such as "secret";
// it may contain slashes) if it is not there yet. [Server.PutKV] does it
// implicitly. It panics if mount is used by a database engine.
func (s *Server) EnableKV(mount string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mountLocked(mount, mountKV)
}

// PutKV writes a new version of the secret at path in the KV version 2
// engine at mount, enabling the engine if needed, and returns the version
// number (1 for a new secret). data is copied; it must be encodable as
// JSON, or PutKV panics.
func (s *Server) PutKV(mount, path string, data map[string]any) (version int) {
	b, err := json.Marshal(data)
	if err != nil {
		panic(fmt.Sprintf("vaulttest: PutKV: data is not JSON: %v", err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mountLocked(mount, mountKV)
	v, _ := s.putKVLocked(m, strings.Trim(path, "/"), b, -1)
	return v
}

// putKVLocked appends a version; cas >= 0 requires the current version to
// be cas (0: the secret must not exist).
func (s *Server) putKVLocked(m *mount, path string, data []byte, cas int) (int, time.Time) {
	sec := m.kv[path]
	if sec == nil {
		sec = &kvSecret{}
		m.kv[path] = sec
	}
	if cas >= 0 && cas != len(sec.versions) {
		return 0, time.Time{}
	}
	now := time.Now()
	sec.versions = append(sec.versions, kvVersion{data: data, created: now})
	s.broadcastLocked()
	return len(sec.versions), now
}

func kvMetadata(version int, created time.Time) map[string]any {
	return map[string]any{
		"created_time":    created.UTC().Format(time.RFC3339Nano),
		"custom_metadata": nil,
		"deletion_time":   "",
		"destroyed":       false,
		"version":         version,
	}
}

func (s *Server) handleKVRead(_ context.Context, w http.ResponseWriter, q *request) {
	want := 0
	if v := q.query.Get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid version")
			return
		}
		want = n
	}
	s.mu.Lock()
	sec := q.mount.kv[q.rest]
	if sec == nil || len(sec.versions) == 0 || want > len(sec.versions) {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound)
		return
	}
	if want == 0 {
		want = len(sec.versions)
	}
	ver := sec.versions[want-1]
	s.mu.Unlock()
	var data map[string]any
	if err := json.Unmarshal(ver.data, &data); err != nil {
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	writeJSON(w, http.StatusOK, &secretResponse{
		RequestID: newUUID(),
		Data:      map[string]any{"data": data, "metadata": kvMetadata(want, ver.created)},
		MountType: "kv",
	})
}

func (s *Server) handleKVWrite(_ context.Context, w http.ResponseWriter, q *request) {
	raw, ok := q.body["data"]
	data, isMap := raw.(map[string]any)
	if !ok || !isMap {
		writeError(w, http.StatusBadRequest, "no data provided")
		return
	}
	cas := -1
	if opts, ok := q.body["options"].(map[string]any); ok {
		if c, ok := opts["cas"]; ok {
			d, err := durationParam(c) // a plain non-negative number
			if err != nil {
				writeError(w, http.StatusBadRequest, "invalid cas")
				return
			}
			cas = int(d / time.Second)
		}
	}
	b, err := json.Marshal(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "failed to parse JSON input")
		return
	}
	s.mu.Lock()
	version, created := s.putKVLocked(q.mount, q.rest, b, cas)
	s.mu.Unlock()
	if version == 0 {
		writeError(w, http.StatusBadRequest, "check-and-set parameter did not match the current version")
		return
	}
	writeJSON(w, http.StatusOK, &secretResponse{RequestID: newUUID(), Data: kvMetadata(version, created), MountType: "kv"})
}
