package pgsecrets

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fileDefaultTTL replaces DefaultTTL for the file provider: a check is one
// stat per file, so polling often costs nothing and a rewritten file is in
// use within about a second.
const fileDefaultTTL = time.Second

// Test hooks, which do nothing unless file_export_test.go sets them: the
// provider read and parsed content (not the stats of an unchanged file), or
// a Fetch got past the lock.
var testHookFileRead, testHookFileFetch = func() {}, func() {}

func init() {
	RegisterProvider("file", newFileProvider)
}

// newFileProvider is the file factory (secret_provider=file). secret_id is
// the path of either a JSON file in the RDS secret format or a directory
// holding one file per field, as Kubernetes mounts a Secret: files named
// by secret_username_key and secret_password_key ("username" and
// "password" by default), and optionally "host", "port" and "dbname"; a
// single trailing newline of each is dropped. A directory's "..data"
// symlink, which Kubernetes swaps atomically on update, is watched too.
//
// Unless the DSN sets secret_ttl, it is 1s for this provider: changes are
// picked up within a second, and an authentication failure re-reads at
// once. Each check is a stat of the files; content is read and parsed
// again only when a file's size, modification time or inode (or the
// "..data" target) changed. Content that cannot be used (a file caught
// half written, invalid JSON, a missing password file) is never used:
// the previous credentials stay in use and EventFileUnusable is logged
// once. Writers should replace files atomically (write a temporary file,
// then rename it), as Kubernetes does; an in-place rewrite that keeps the
// size within the file system's timestamp granularity can go unnoticed.
//
// Only regular files are read (symbolic links to them are followed): a
// named pipe, a socket, a device or a directory where a file should be is
// unusable content, and is never waited on. Each file read is checked for
// who else may use it, and EventFileWritable or EventFileReadable logged
// once per connector (connectors that share a path share one provider and
// its cache, so one warning, through the first connector's logger).
// Writable by others always warns. Readable by every user warns except in a
// Kubernetes Secret volume: the kubelet writes those files with the
// volume's defaultMode, 0644 unless the Pod says otherwise, so the warning
// would fire for nearly every cluster while the usual reader there is a
// container of the Pod itself; the volume is recognised by its layout (the
// file lives in a "..<timestamp>" directory beside a "..data" symlink).
// The factory only makes the path absolute: a file that does not exist
// yet is reported by the first Connect, not by NewConnector.
func newFileProvider(ctx context.Context, cfg *Config) (Provider, error) {
	abs, err := filepath.Abs(cfg.SecretID)
	if err != nil {
		return nil, &DSNError{Key: keySecretID, Msg: "cannot make the secret file's path absolute", Err: err}
	}
	return &fileProvider{
		path:        filepath.Clean(abs),
		secretID:    cfg.SecretID,
		usernameKey: cfg.UsernameKey,
		passwordKey: cfg.PasswordKey,
		warn:        factoryWarner(ctx, cfg.SecretID),
		sem:         make(chan struct{}, 1),
	}, nil
}

// explicit reports whether the DSN set the secret_* key, as opposed to a
// default filling it in.
func (c *Config) explicit(key string) bool { return c.set[key] }

// DefaultTTL implements TTLDefaulter: a check is one stat, so a second
// keeps a rewritten file from waiting for the DSN's usual ten minutes.
func (p *fileProvider) DefaultTTL() time.Duration { return fileDefaultTTL }

// fileProvider reads credentials from a file or a Kubernetes-style
// directory (see newFileProvider).
type fileProvider struct {
	path        string // cleaned, absolute
	secretID    string // as configured, for errors and logs
	usernameKey string
	passwordKey string
	warn        func(msg string, attrs ...slog.Attr) // the connector's KindWarning

	// sem serialises Fetch: the state below is shared, and a channel
	// rather than a mutex lets a hedged second call give up with its ctx
	// while the first is stuck on a hung file system.
	sem chan struct{}

	good      *Credentials // last usable content
	goodStamp fileStamp
	bad       *fileStamp // last unusable content, not read again until it changes
	badErr    error

	warnedWritable, warnedReadable bool
}

// CacheKey implements CacheKeyer: connectors reading the same path share
// one cache.
func (p *fileProvider) CacheKey() string { return p.path }

// fileStat is what tells whether one file changed. It is comparable, so
// stamps compare with slices.Equal.
type fileStat struct {
	name    string
	present bool
	// mode has the permission bits too: a chmod is read again, so that
	// a file made writable by others is still warned about.
	mode     fs.FileMode
	size     int64
	mtime    int64 // unix nanoseconds
	dev, ino uint64
}

// fileStamp identifies one state of the secret's files.
type fileStamp struct {
	dir   bool
	data  string // a directory's ..data target, "" if none
	files []fileStat
}

func (a fileStamp) equal(b fileStamp) bool {
	return a.dir == b.dir && a.data == b.data && slices.Equal(a.files, b.files)
}

// maxReadAttempts bounds how often Fetch reads again when the files
// changed while it read them (a writer in the middle of an update).
const maxReadAttempts = 3

// Fetch returns the credentials the files hold: the previous result
// (the same *Credentials) without reading anything if no file changed.
func (p *fileProvider) Fetch(ctx context.Context, stage string) (*Credentials, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, &SecretError{Kind: ErrStoreUnavailable, SecretID: p.secretID, Stage: stage, Err: ctx.Err(),
			Detail: "gave up waiting for another read of " + p.path}
	}
	defer func() { <-p.sem }()
	// Once in, so that a test seeing it knows the previous call has
	// finished.
	testHookFileFetch()

	for attempt := 1; ; attempt++ {
		st, err := p.stat(stage)
		if err != nil {
			return nil, err
		}
		if p.good != nil && st.equal(p.goodStamp) {
			return p.good, nil
		}
		if p.bad != nil && st.equal(*p.bad) {
			if p.good != nil {
				return p.good, nil
			}
			return nil, p.badErr
		}
		creds, got, err := p.read(st, stage)
		changed := errors.Is(err, errChangedWhileRead)
		if !changed && st.dir {
			// Compare with a second stat: files read while a writer swapped
			// them may mix two versions, and must not be remembered under
			// either version's stamp. (A single file is stamped from the
			// descriptor it was read through, so a rename over it while
			// reading cannot mix anything.)
			after, serr := p.stat(stage)
			if serr != nil {
				return nil, serr
			}
			changed = !after.equal(st)
		}
		if changed {
			if attempt < maxReadAttempts {
				continue
			}
			return nil, &SecretError{Kind: ErrStoreUnavailable, SecretID: p.secretID, Stage: stage,
				Detail: fmt.Sprintf("%s kept changing while being read (%d attempts)", p.path, attempt),
				Hint:   "replace the files atomically (write a temporary file, then rename it over the old one)"}
		}
		var se *SecretError
		if err != nil && errors.As(err, &se) && se.Kind == ErrMalformedSecret {
			p.bad, p.badErr = &got, err
			if p.good == nil {
				return nil, err
			}
			p.warn(EventFileUnusable, slog.String("stage", stage), slog.String("version_id", p.good.VersionID),
				slog.String("reason", unusableReason(se)))
			return p.good, nil
		}
		if err != nil {
			return nil, err
		}
		p.good, p.goodStamp, p.bad, p.badErr = creds, got, nil, nil
		return creds, nil
	}
}

// unusableReason describes malformed content for a log line: the field
// and what is wrong, never a value.
func unusableReason(se *SecretError) string {
	if se.Field == "" {
		return se.Detail
	}
	return fmt.Sprintf("field %q: %s", se.Field, se.Detail)
}

// dirFields are the optional files of a directory, after the username and
// password files.
var dirFields = []string{"host", "port", "dbname"}

// stat stamps the secret's current files, following symlinks.
func (p *fileProvider) stat(stage string) (fileStamp, error) {
	fi, err := os.Stat(p.path)
	if err != nil {
		return fileStamp{}, p.ioError(stage, err)
	}
	if !fi.IsDir() {
		return fileStamp{files: []fileStat{statOf("", fi)}}, nil
	}
	st := fileStamp{dir: true}
	if li, err := os.Lstat(filepath.Join(p.path, "..data")); err == nil && li.Mode()&fs.ModeSymlink != 0 {
		// The target's name changes with every Kubernetes update, even when
		// the new files happen to match the old ones in size and time.
		if st.data, err = os.Readlink(filepath.Join(p.path, "..data")); err != nil {
			return fileStamp{}, p.ioError(stage, err)
		}
	}
	for _, name := range append([]string{p.usernameKey, p.passwordKey}, dirFields...) {
		fi, err := os.Stat(filepath.Join(p.path, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			st.files = append(st.files, fileStat{name: name})
		case err != nil:
			return fileStamp{}, p.ioError(stage, err)
		default:
			st.files = append(st.files, statOf(name, fi))
		}
	}
	return st, nil
}

func statOf(name string, fi fs.FileInfo) fileStat {
	s := fileStat{name: name, present: true, mode: fi.Mode(), size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	s.dev, s.ino = devIno(fi)
	return s
}

// devIno returns the device and inode numbers where the platform has them
// (the Dev and Ino fields of syscall.Stat_t), 0 elsewhere. Reflection
// keeps this file free of build tags: Stat_t does not exist on Windows,
// and its fields' types differ between Unix systems.
func devIno(fi fs.FileInfo) (dev, ino uint64) {
	v := reflect.ValueOf(fi.Sys())
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return 0, 0
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return 0, 0
	}
	num := func(name string) uint64 {
		f := v.FieldByName(name)
		switch {
		case !f.IsValid():
			return 0
		case f.CanUint():
			return f.Uint()
		case f.CanInt():
			return uint64(f.Int())
		}
		return 0
	}
	return num("Dev"), num("Ino")
}

// read reads and parses the files st stamps. It returns the stamp of what
// it read: for a single file, that of the descriptor it read through.
func (p *fileProvider) read(st fileStamp, stage string) (*Credentials, fileStamp, error) {
	testHookFileRead()
	var (
		creds   *Credentials
		version string
	)
	if !st.dir {
		f := st.files[0]
		if !f.mode.IsRegular() {
			return nil, st, p.malformed(stage, "", p.path+" is "+fileKind(f.mode)+", neither a regular file nor a directory", "")
		}
		data, fst, err := p.readFile(stage, "", p.path, f.size)
		if err != nil {
			if fst.present {
				// Remembered as bad under what was opened, not what the
				// stat before it saw.
				st = fileStamp{files: []fileStat{fst}}
			}
			return nil, st, err
		}
		st = fileStamp{files: []fileStat{fst}}
		creds, err = ParseSecret(p.secretID, string(data), p.usernameKey, p.passwordKey)
		if err != nil {
			var se *SecretError
			if errors.As(err, &se) {
				se.Stage = stage
				se.Detail = p.path + ": " + se.Detail
			}
			return nil, st, err
		}
		version = contentVersion(data)
	} else {
		var err error
		if creds, version, err = p.readDir(st, stage); err != nil {
			return nil, st, err
		}
	}
	newest := int64(0)
	for _, f := range st.files {
		if f.present {
			newest = max(newest, f.mtime)
		}
	}
	creds.VersionID, creds.Stage = version, stage
	if newest != 0 {
		creds.CreatedAt = time.Unix(0, newest)
	}
	return creds, st, nil
}

// readDir reads a directory's field files.
func (p *fileProvider) readDir(st fileStamp, stage string) (*Credentials, string, error) {
	h := hmac.New(sha256.New, versionKey)
	vals := map[string]string{}
	for _, f := range st.files {
		path := filepath.Join(p.path, f.name)
		required := f.name == p.usernameKey || f.name == p.passwordKey
		switch {
		case !f.present && required:
			return nil, "", p.malformed(stage, f.name, path+" is missing",
				fmt.Sprintf("the directory must hold files %q and %q", p.usernameKey, p.passwordKey))
		case !f.present:
			continue
		case !f.mode.IsRegular():
			return nil, "", p.malformed(stage, f.name, path+" is "+fileKind(f.mode)+", not a regular file", "")
		}
		data, _, err := p.readFile(stage, f.name, path, f.size) // the directory is re-stamped after reading
		if err != nil {
			return nil, "", err
		}
		data = trimNewline(data)
		if required && len(data) == 0 {
			return nil, "", p.malformed(stage, f.name, path+" is empty", "")
		}
		// Length-prefixed, so that moving bytes from one file to the next
		// changes the version.
		fmt.Fprintf(h, "%s\x00%d\x00", f.name, len(data))
		h.Write(data)
		vals[f.name] = string(data)
	}
	c := &Credentials{Username: vals[p.usernameKey], Password: NewSecret(vals[p.passwordKey]),
		Host: vals["host"], DBName: vals["dbname"]}
	if s, ok := vals["port"]; ok && s != "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return nil, "", p.malformed(stage, "port", filepath.Join(p.path, "port")+" must hold a whole number between 1 and 65535", "")
		}
		c.Port = uint16(n)
	}
	return c, hex.EncodeToString(h.Sum(nil))[:12], nil
}

// readFile reads one file, refusing more than Secrets Manager's limit so
// that a wrong path (a log file, a device) cannot exhaust memory.
// errChangedWhileRead is readFile's answer when the file changed in place
// while it was read (a truncate-and-write in progress).
var errChangedWhileRead = errors.New("pgsecrets: the file changed while it was read")

// readFile reads path and returns its content with the stamp of the
// descriptor it was read through. field names the file in a directory's
// errors.
func (p *fileProvider) readFile(stage, field, path string, size int64) ([]byte, fileStat, error) {
	tooBig := func() error {
		return p.malformed(stage, "", fmt.Sprintf("%s is over the limit of %d bytes", path, maxSecretSize), "")
	}
	if size > maxSecretSize {
		return nil, fileStat{}, tooBig()
	}
	// The stat that chose to read this file may be stale: a writer can put
	// a named pipe there in between, and opening a pipe waits for a writer,
	// forever if none comes (and Close waits for this Fetch). O_NONBLOCK
	// makes the open return at once; what was opened is then judged by the
	// descriptor. Reads of a regular file do not block either way.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fileStat{}, p.ioError(stage, err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fileStat{}, p.ioError(stage, err)
	}
	if !before.Mode().IsRegular() {
		return nil, statOf("", before), p.malformed(stage, field, path+" is "+fileKind(before.Mode())+", not a regular file", "")
	}
	p.checkAccess(path, before)
	data, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return nil, fileStat{}, p.ioError(stage, err)
	}
	after, err := f.Stat()
	if err != nil {
		return nil, fileStat{}, p.ioError(stage, err)
	}
	st := statOf("", after)
	if st != statOf("", before) {
		return nil, st, errChangedWhileRead
	}
	if len(data) > maxSecretSize {
		return nil, st, tooBig()
	}
	return data, st, nil
}

// fileKind names what a mode's type is, for errors.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "an irregular file"
}

// checkAccess warns, once per provider and kind, when users other than
// the owner can change or read the secret file at path; fi is the fstat of
// the descriptor it was read through. A directory that others can write
// lets them rename another file over it, so the file's own directory, and
// that of the name it was reached by, count too.
func (p *fileProvider) checkAccess(path string, fi fs.FileInfo) {
	// On Windows the mode bits are made up from the read-only attribute:
	// they say nothing about who can read or write.
	if runtime.GOOS == "windows" || (p.warnedWritable && p.warnedReadable) {
		return
	}
	perm := fi.Mode().Perm()
	if !p.warnedWritable {
		if perm&0o022 != 0 {
			p.warnedWritable = true
			p.warn(EventFileWritable, slog.String("path", path), slog.String("mode", octal(perm)))
		} else if dir, dmode := writableDir(path); dir != "" {
			p.warnedWritable = true
			p.warn(EventFileWritable, slog.String("path", path), slog.String("mode", octal(perm)),
				slog.String("dir", dir), slog.String("dir_mode", octal(dmode)))
		}
	}
	if !p.warnedReadable && perm&0o004 != 0 && !inKubernetesVolume(path) {
		p.warnedReadable = true
		p.warn(EventFileReadable, slog.String("path", path), slog.String("mode", octal(perm)))
	}
}

func octal(m fs.FileMode) string { return fmt.Sprintf("%04o", uint32(m.Perm())) }

// writableDir returns the first directory holding path, or the file it
// links to, that its group or every user can write and that lacks the
// sticky bit (which keeps others from renaming over or removing files
// they do not own).
func writableDir(path string) (string, fs.FileMode) {
	dirs := []string{filepath.Dir(path)}
	if real, err := filepath.EvalSymlinks(path); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err == nil && fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return d, fi.Mode().Perm()
		}
	}
	return "", 0
}

// inKubernetesVolume reports whether path is a file of a Kubernetes Secret
// (or ConfigMap) volume, whatever name it was reached by: the kubelet
// writes each version's files into a new directory named "..<timestamp>"
// and points the "..data" symlink beside it there.
func inKubernetesVolume(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false
	}
	dir := filepath.Dir(real)
	if !strings.HasPrefix(filepath.Base(dir), "..") {
		return false
	}
	li, err := os.Lstat(filepath.Join(filepath.Dir(dir), "..data"))
	return err == nil && li.Mode()&fs.ModeSymlink != 0
}

// trimNewline drops one trailing "\n" or "\r\n", which editors and
// `echo` add; anything else is part of the value.
func trimNewline(b []byte) []byte {
	if b, ok := bytes.CutSuffix(b, []byte("\r\n")); ok {
		return b
	}
	b, _ = bytes.CutSuffix(b, []byte("\n"))
	return b
}

func (p *fileProvider) malformed(stage, field, detail, hint string) error {
	if hint == "" {
		hint = fmt.Sprintf("secret_id must name a JSON file in the RDS secret format or a directory with files %q and %q",
			p.usernameKey, p.passwordKey)
	}
	return &SecretError{Kind: ErrMalformedSecret, SecretID: p.secretID, Stage: stage, Field: field, Detail: detail, Hint: hint}
}

// ioError classifies a file system error. *fs.PathError names the path
// and the system's reason, never content.
func (p *fileProvider) ioError(stage string, err error) error {
	se := &SecretError{SecretID: p.secretID, Stage: stage, Err: err}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		se.Kind = ErrSecretNotFound
		se.Hint = fmt.Sprintf("secret_id must name an existing file or directory (resolved to %s); with a Kubernetes Secret volume, check the mount path", p.path)
	case errors.Is(err, fs.ErrPermission):
		se.Kind = ErrAccessDenied
		se.Hint = fmt.Sprintf("this process (uid %d) needs read permission on the files and search permission on their directories", os.Getuid())
	default:
		se.Kind = ErrStoreUnavailable
		se.Hint = "the file system could not be read; cached credentials are used meanwhile where available"
	}
	return se
}

// versionKey keys the hash that makes version ids. A plain hash of a
// password file would let anyone holding the logs test password guesses
// offline; keyed per process, ids still change with the content, which is
// all the logs need.
var versionKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}()

// contentVersion is the version id of a secret's content: 12 hex digits
// of a keyed SHA-256.
func contentVersion(data []byte) string {
	h := hmac.New(sha256.New, versionKey)
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// Describe implements Describer, for pgsecrets check: the path, its form,
// and when its content last changed.
func (p *fileProvider) Describe(ctx context.Context) ([]Fact, error) {
	st, err := p.stat("")
	if err != nil {
		return nil, err
	}
	form := "JSON file"
	if st.dir {
		form = "directory of files (Kubernetes Secret volume)"
		if st.data != "" {
			form += ", ..data -> " + st.data
		}
	}
	var newest int64
	for _, f := range st.files {
		newest = max(newest, f.mtime)
	}
	facts := []Fact{{"file", p.path + " (" + form + ")"}}
	if newest > 0 {
		m := time.Unix(0, newest)
		facts = append(facts, Fact{"modified", fmt.Sprintf("%s (%s ago)", m.UTC().Format(time.RFC3339), time.Since(m).Round(time.Second))})
	}
	return facts, nil
}
