package smtest

import (
	"encoding/base64"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Limits of the Secrets Manager API that the server enforces.
const (
	// MaxListResults is the largest MaxResults that ListSecrets and
	// ListSecretVersionIds accept, and the page size when none is given.
	MaxListResults = 100
	// MaxPasswordLength is the longest password GetRandomPassword makes.
	MaxPasswordLength = 4096

	defaultRecoveryDays = 30
)

// errValidation is what AWS's request validation answers when a parameter
// breaks a constraint of the API model (a length or a range), before the
// service itself looks at the request. The SDK has no type for it.
func errValidation(format string, args ...any) *Error {
	return newError(400, "ValidationException", "1 validation error detected: "+format, args...)
}

// requireToken enforces what AWS does for raw HTTP callers: the SDKs and the
// CLI always send a token, so only hand-made requests lack one.
func requireToken(token string) *Error {
	if token == "" {
		return newError(400, "InvalidRequestException",
			"You must provide a ClientRequestToken value. We recommend a UUID-type value.")
	}
	return nil
}

// checkTokenLength applies the API model's 32–64 character limit. The Go
// methods do not, so tests may keep using short, readable version ids there.
func checkTokenLength(token string) *Error {
	switch n := len(token); {
	case n == 0:
		return nil
	case n < 32:
		return errValidation("Value at 'clientRequestToken' failed to satisfy constraint: Member must have length greater than or equal to 32")
	case n > 64:
		return errValidation("Value at 'clientRequestToken' failed to satisfy constraint: Member must have length less than or equal to 64")
	}
	return nil
}

// pageToken and parsePageToken make NextToken opaque, as AWS's is, so that
// callers do not come to depend on it being an offset. The operation name is
// part of it so that a token from one listing is refused by another.
func pageToken(op string, offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(op + ":" + strconv.Itoa(offset)))
}

func parsePageToken(op, tok string) (int, *Error) {
	if tok == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	rest, ok := strings.CutPrefix(string(b), op+":")
	n, convErr := strconv.Atoi(rest)
	if err != nil || !ok || convErr != nil || n < 0 {
		return 0, newError(400, "InvalidNextTokenException", "The NextToken value is invalid.")
	}
	return n, nil
}

func pageSize(max *int) (int, *Error) {
	if max == nil {
		return MaxListResults, nil
	}
	if *max < 1 || *max > MaxListResults {
		return 0, errValidation("Value '%d' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and %d", *max, MaxListResults)
	}
	return *max, nil
}

// page cuts items[offset:offset+size] and returns the token for the rest.
func page[T any](op string, items []T, offset, size int) ([]T, string) {
	if offset > len(items) {
		offset = len(items)
	}
	end := min(offset+size, len(items))
	next := ""
	if end < len(items) {
		next = pageToken(op, end)
	}
	return items[offset:end], next
}

type filter struct {
	Key    string
	Values []string
}

var filterKeys = map[string]bool{
	"description": true, "name": true, "tag-key": true, "tag-value": true,
	"primary-region": true, "owning-service": true, "all": true,
}

// matches reports whether sec passes every filter (filters are ANDed, the
// values of one filter ORed; a value starting with ! negates). The server
// keeps no tags, replicas or owning services, so those keys match nothing.
func (f filter) matches(sec *secret) bool {
	for _, v := range f.Values {
		neg := strings.HasPrefix(v, "!")
		v = strings.TrimPrefix(v, "!")
		var hit bool
		switch f.Key {
		case "name":
			hit = strings.HasPrefix(sec.name, v)
		case "description":
			hit = wordsMatch(v, sec.description)
		case "all":
			hit = wordsMatch(v, sec.name) || wordsMatch(v, sec.description)
		}
		if hit != neg {
			return true
		}
	}
	return false
}

// wordsMatch is AWS's search without a filter key: both strings are broken
// into words, and every word of the query must begin some word of the text,
// ignoring case.
func wordsMatch(query, text string) bool {
	qs := searchWords(query)
	if len(qs) == 0 {
		return false
	}
	ts := searchWords(text)
	for _, q := range qs {
		found := false
		for _, t := range ts {
			if strings.HasPrefix(t, q) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// searchWords splits s where AWS's search does: at punctuation and spaces,
// between letters and digits, and before an upper-case letter that follows
// a lower-case one ("credsDatabase#892" is creds, database, 892).
func searchWords(s string) []string {
	var words []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	var prev rune
	for _, r := range s {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case len(cur) > 0 && (unicode.IsDigit(r) != unicode.IsDigit(prev) ||
			unicode.IsUpper(r) && unicode.IsLower(prev)):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
		prev = r
	}
	flush()
	return words
}

func (s *Server) httpListSecrets(body []byte) (any, *Error) {
	var in struct {
		Filters                []filter
		IncludePlannedDeletion bool
		MaxResults             *int
		NextToken              string
		SortBy                 string
		SortOrder              string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	size, e := pageSize(in.MaxResults)
	if e != nil {
		return nil, e
	}
	offset, e := parsePageToken("ListSecrets", in.NextToken)
	if e != nil {
		return nil, e
	}
	for i, f := range in.Filters {
		if !filterKeys[f.Key] {
			return nil, errValidation("Value '%s' at 'filters.%d.member.key' failed to satisfy constraint: Member must satisfy enum value set: [description, name, tag-key, tag-value, primary-region, owning-service, all]", f.Key, i+1)
		}
		if len(f.Values) == 0 {
			return nil, errInvalidParam("Invalid filter values for key: %s", f.Key)
		}
	}
	if in.SortOrder != "" && in.SortOrder != "asc" && in.SortOrder != "desc" {
		return nil, errValidation("Value '%s' at 'sortOrder' failed to satisfy constraint: Member must satisfy enum value set: [asc, desc]", in.SortOrder)
	}
	less, ok := secretOrders[in.SortBy]
	if !ok {
		return nil, errValidation("Value '%s' at 'sortBy' failed to satisfy constraint: Member must satisfy enum value set: [created-date, last-accessed-date, last-changed-date, name]", in.SortBy)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var list []*secret
outer:
	for _, sec := range s.secrets {
		if !sec.deleted.IsZero() && !in.IncludePlannedDeletion {
			continue
		}
		for _, f := range in.Filters {
			if !f.matches(sec) {
				continue outer
			}
		}
		list = append(list, sec)
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if in.SortOrder == "desc" {
			a, b = b, a
		}
		if less(a, b) != less(b, a) {
			return less(a, b)
		}
		return a.seq < b.seq
	})
	part, next := page("ListSecrets", list, offset, size)
	entries := make([]listEntry, 0, len(part))
	for _, sec := range part {
		entries = append(entries, listEntry{s.metaLocked(sec), sec.versionIDsToStages()})
	}
	return struct {
		SecretList []listEntry
		NextToken  string `json:",omitempty"`
	}{entries, next}, nil
}

// secretOrders are ListSecrets' SortBy values; ties keep creation order.
var secretOrders = map[string]func(a, b *secret) bool{
	"":                   func(a, b *secret) bool { return a.created.Before(b.created) },
	"created-date":       func(a, b *secret) bool { return a.created.Before(b.created) },
	"last-accessed-date": func(a, b *secret) bool { return a.accessed.Before(b.accessed) },
	"last-changed-date":  func(a, b *secret) bool { return a.changed.Before(b.changed) },
	"name":               func(a, b *secret) bool { return a.name < b.name },
}

func (s *Server) httpListSecretVersionIds(body []byte) (any, *Error) {
	var in struct {
		SecretId          string
		IncludeDeprecated bool
		MaxResults        *int
		NextToken         string
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	size, e := pageSize(in.MaxResults)
	if e != nil {
		return nil, e
	}
	offset, e := parsePageToken("ListSecretVersionIds", in.NextToken)
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, e := s.findLocked(in.SecretId)
	if e != nil {
		return nil, e
	}
	type entry struct {
		VersionId        string
		VersionStages    []string `json:",omitempty"`
		CreatedDate      *epoch   `json:",omitempty"`
		LastAccessedDate *epoch   `json:",omitempty"`
	}
	vs := make([]*version, 0, len(sec.versions))
	for _, v := range sec.versions {
		// Versions without labels are "deprecated": AWS hides them unless
		// asked, and deletes them eventually (this server never does).
		if in.IncludeDeprecated || len(sec.stagesOf(v.id)) > 0 {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].seq < vs[j].seq })
	part, next := page("ListSecretVersionIds", vs, offset, size)
	out := make([]entry, 0, len(part))
	for _, v := range part {
		out = append(out, entry{
			VersionId: v.id, VersionStages: sec.stagesOf(v.id),
			CreatedDate: epochPtr(v.created), LastAccessedDate: epochPtr(v.accessed),
		})
	}
	return struct {
		ARN       string
		Name      string
		Versions  []entry
		NextToken string `json:",omitempty"`
	}{sec.arn, sec.name, out, next}, nil
}

func (s *Server) httpDeleteSecret(body []byte) (any, *Error) {
	var in struct {
		SecretId                   string
		RecoveryWindowInDays       *int64
		ForceDeleteWithoutRecovery bool
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if in.RecoveryWindowInDays != nil && in.ForceDeleteWithoutRecovery {
		return nil, errInvalidParam("You can't use ForceDeleteWithoutRecovery in conjunction with RecoveryWindowInDays.")
	}
	days := int64(defaultRecoveryDays)
	if in.RecoveryWindowInDays != nil {
		days = *in.RecoveryWindowInDays
		if days < 7 || days > 30 {
			return nil, errInvalidParam("The RecoveryWindowInDays value must be between 7 and 30 days (inclusive).")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, e := s.findLocked(in.SecretId)
	if e != nil {
		return nil, e
	}
	now := s.timestamp()
	type resp struct {
		ARN          string
		Name         string
		DeletionDate epoch
	}
	if in.ForceDeleteWithoutRecovery {
		delete(s.secrets, sec.name)
		delete(s.byARN, sec.arn)
		delete(s.byPartial, sec.partialARN)
		return resp{sec.arn, sec.name, epoch(now)}, nil
	}
	if !sec.deleted.IsZero() {
		return nil, newError(400, "InvalidRequestException",
			"You can't delete secret %s because it's already scheduled for deletion.", sec.name)
	}
	sec.deleted = now
	sec.deletionDate = now.Add(time.Duration(days) * 24 * time.Hour)
	return resp{sec.arn, sec.name, epoch(sec.deletionDate)}, nil
}

func (s *Server) httpRestoreSecret(body []byte) (any, *Error) {
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
	sec.deleted = time.Time{}
	sec.deletionDate = time.Time{}
	return struct {
		ARN  string
		Name string
	}{sec.arn, sec.name}, nil
}

// DeletionDate returns when the scheduled deletion of secretID would take
// effect (AWS then deletes the secret; this server never does), and false if
// the secret does not exist or is not scheduled for deletion.
func (s *Server) DeletionDate(secretID string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.lookupLocked(secretID)
	if sec == nil || sec.deleted.IsZero() {
		return time.Time{}, false
	}
	return sec.deletionDate, true
}

func (s *Server) httpGetRandomPassword(body []byte) (any, *Error) {
	var in struct {
		PasswordLength          *int64
		ExcludeCharacters       string
		ExcludeNumbers          bool
		ExcludePunctuation      bool
		ExcludeUppercase        bool
		ExcludeLowercase        bool
		IncludeSpace            bool
		RequireEachIncludedType *bool
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	spec := passwordSpec{
		length:             32,
		excludeCharacters:  in.ExcludeCharacters,
		excludeNumbers:     in.ExcludeNumbers,
		excludePunctuation: in.ExcludePunctuation,
		excludeUppercase:   in.ExcludeUppercase,
		excludeLowercase:   in.ExcludeLowercase,
		includeSpace:       in.IncludeSpace,
		requireEach:        in.RequireEachIncludedType == nil || *in.RequireEachIncludedType,
	}
	if in.PasswordLength != nil {
		n := *in.PasswordLength
		if n < 1 || n > MaxPasswordLength {
			return nil, errValidation("Value '%d' at 'passwordLength' failed to satisfy constraint: Member must have value between 1 and %d", n, MaxPasswordLength)
		}
		spec.length = int(n)
	}
	if len(in.ExcludeCharacters) > MaxPasswordLength {
		return nil, errValidation("Value at 'excludeCharacters' failed to satisfy constraint: Member must have length less than or equal to %d", MaxPasswordLength)
	}
	pw, e := randomPassword(spec)
	if e != nil {
		return nil, e
	}
	return struct{ RandomPassword string }{pw}, nil
}
