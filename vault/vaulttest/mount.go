package vaulttest

import (
	"fmt"
	"strings"
)

type mountKind int

const (
	mountDatabase mountKind = iota + 1
	mountKV
)

func (k mountKind) String() string {
	if k == mountDatabase {
		return "database"
	}
	return "kv"
}

// mount is one secrets engine.
type mount struct {
	path        string
	kind        mountKind
	dbRoles     map[string]*dbRole
	staticRoles map[string]*staticRole
	kv          map[string]*kvSecret
}

// mountLocked returns the mount at path, creating it with kind if needed.
// It panics if the path holds a mount of another kind or would nest in (or
// around) another mount, which Vault refuses too.
func (s *Server) mountLocked(path string, kind mountKind) *mount {
	path = normalizeMount(path)
	if path == "" || path == "sys" || path == "auth" || strings.HasPrefix(path, "sys/") || strings.HasPrefix(path, "auth/") {
		panic(fmt.Sprintf("vaulttest: invalid mount path %q", path))
	}
	if m := s.mounts[path]; m != nil {
		if m.kind != kind {
			panic(fmt.Sprintf("vaulttest: mount %q is a %v mount, not %v", path, m.kind, kind))
		}
		return m
	}
	for other := range s.mounts {
		if strings.HasPrefix(path+"/", other+"/") || strings.HasPrefix(other+"/", path+"/") {
			panic(fmt.Sprintf("vaulttest: mount %q conflicts with mount %q", path, other))
		}
	}
	m := &mount{path: path, kind: kind}
	switch kind {
	case mountDatabase:
		m.dbRoles = make(map[string]*dbRole)
		m.staticRoles = make(map[string]*staticRole)
	case mountKV:
		m.kv = make(map[string]*kvSecret)
	}
	s.mounts[path] = m
	return m
}

// findMountLocked returns the mount a Vault path belongs to and the path
// inside it. Mounts cannot nest, so at most one matches.
func (s *Server) findMountLocked(p string) (*mount, string) {
	for i := len(p); i > 0; i = strings.LastIndexByte(p[:i], '/') {
		if m := s.mounts[p[:i]]; m != nil {
			if i == len(p) {
				return m, ""
			}
			return m, p[i+1:]
		}
	}
	return nil, ""
}
