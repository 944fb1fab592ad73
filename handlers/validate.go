package handlers

import (
	"fmt"
	"math"
	"regexp"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// The contract's bounds on numbers and lengths. openapi.yaml states each as
// a maximum, minimum or maxLength, with the reason; TestContractBounds
// checks the two agree.
const (
	// maxTTLSeconds is 30 days: a sandbox meant to outlive that has no TTL.
	maxTTLSeconds = 30 * 24 * 60 * 60
	// maxRunTimeoutSeconds is 7 days: a workload meant to outlive that
	// has no timeout.
	maxRunTimeoutSeconds = 7 * 24 * 60 * 60
	// maxStopTimeoutSeconds is an hour: the stop holds the sandbox while
	// it waits.
	maxStopTimeoutSeconds = 60 * 60
	// maxVCPUs and maxMemoryMiB (1 TiB) are more than any VM this agent
	// runs in has.
	maxVCPUs     = 1024
	maxMemoryMiB = 1 << 20
	// minMemoryMiB is the least memory a sandbox may be given (its init
	// alone needs a few MiB): the sandbox package's.
	minMemoryMiB = sandbox.MinMemoryMiB
	// minPids is the least pids limit a sandbox may be given: a shell and
	// a few children. maxPids is the kernel's own (PID_MAX_LIMIT).
	minPids = sandbox.MinPids
	maxPids = 1 << 22
	// maxCredential is the longest registry credential, in characters:
	// longer than any real token, short enough to keep a request small.
	maxCredential = 4096
	// maxTTYSide is the largest terminal side: a winsize is 16 bits.
	maxTTYSide = math.MaxUint16
	// maxSnapshotName is in characters (Unicode code points), as JSON
	// Schema's maxLength counts.
	maxSnapshotName = 256
	// maxLogTail is the most lines a log tail asks for; lifecycle.Tail
	// also stops at 4 MiB.
	maxLogTail = 1_000_000
	// maxTimestampSecs is the last whole second Unix nanoseconds in an
	// int64 hold (2262-04-11), so timestamp_secs and timestamp_nanos span
	// the same times.
	maxTimestampSecs = math.MaxInt64 / int64(time.Second)
)

// rule is one of the contract's string patterns, with what a value that
// matches it is, for the error. The patterns are written exactly as in
// openapi.yaml (TestContractBounds checks), in the syntax that Go's regexp
// and ECMA-262, JSON Schema's, read alike. A rule is compiled on its first
// check, not at package init: compiling them all cost every start of the
// agent about 130 KB and 1,500 allocations, for requests that may never
// come. The rules are pointers to composite literals of constants, which
// the linker lays out in the binary: declaring one runs no code at all.
type rule struct {
	pattern string
	what    string

	once     sync.Once
	compiled *regexp.Regexp
}

// re returns the rule's compiled pattern, compiling it on the first call.
func (r *rule) re() *regexp.Regexp {
	r.once.Do(func() { r.compiled = regexp.MustCompile(r.pattern) })
	return r.compiled
}

var (
	idRule = &rule{pattern: sandbox.IDPattern,
		what: "an id: 1 to 64 letters, digits, '_', '.' or '-', the first a letter or digit"}
	userRule = &rule{pattern: `^(?:[a-zA-Z0-9_][a-zA-Z0-9_.-]*(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]*)?)?$`,
		what: "uid[:gid] or name[:group]"}
	dirRule = &rule{pattern: `^(?:/[^\x00]*)?$`,
		what: "an absolute path without NUL"}
	rootfsRule = &rule{pattern: `^(?:/[^,:\\\x00]*)?$`,
		what: `an absolute path without ',', ':', '\' or NUL (overlayfs options cannot hold them)`}
	mountSourceRule = &rule{pattern: `^/[^\x00]*$`,
		what: "an absolute path without NUL"}
	mountTargetRule = &rule{pattern: `^(?:/(?:|\.|\.\.[^/\x00]+|\.[^./\x00][^/\x00]*|[^./\x00][^/\x00]*))*/(?:\.\.[^/\x00]+|\.[^./\x00][^/\x00]*|[^./\x00][^/\x00]*)(?:/(?:|\.|\.\.[^/\x00]+|\.[^./\x00][^/\x00]*|[^./\x00][^/\x00]*))*$`,
		what: `an absolute path without a ".." element or NUL, and not the root`}
	noNULRule = &rule{pattern: `^[^\x00]*$`,
		what: "a string without NUL"}
	envNameRule = &rule{pattern: `^[^=\x00]+$`,
		what: "a variable name: not empty, without '=' or NUL"}
	labelFilterRule = &rule{pattern: `^[^=]+=`,
		what: "key=value with a key"}
)

// check returns an ErrBadRequest naming where (`field "x"`, `path
// parameter "id"`) when v does not match.
func (r *rule) check(where, v string) error {
	if r.re().MatchString(v) {
		return nil
	}
	return badRequest("%s: %s is not %s", where, quoteShort(v), r.what)
}

// checkRange returns an ErrBadRequest naming where when v is outside
// [lo, hi]; why says what the maximum is for.
func checkRange(where string, v, lo, hi int64, why string) error {
	switch {
	case v < lo && lo == 0:
		return badRequest("%s must not be negative, got %d", where, v)
	case v < lo:
		return badRequest("%s must be at least %d, got %d", where, lo, v)
	case v > hi:
		return badRequest("%s must be at most %d (%s), got %d", where, hi, why, v)
	}
	return nil
}

// checkSeconds checks a *_seconds field against [0, hi] and makes it a
// duration, which cannot overflow within the bound.
func checkSeconds(where string, v, hi int64, why string) (time.Duration, error) {
	if err := checkRange(where, v, 0, hi, why); err != nil {
		return 0, err
	}
	return time.Duration(v) * time.Second, nil
}

// checkLabels refuses an empty key, as the contract's propertyNames does.
func checkLabels(where string, labels map[string]string) error {
	if _, ok := labels[""]; ok {
		return badRequest("%s: a key is empty", where)
	}
	return nil
}

// checkEnv checks variable names and values.
func checkEnv(field string, env map[string]string) error {
	for k, v := range env {
		if err := envNameRule.check(fieldName(field), k); err != nil {
			return err
		}
		if err := noNULRule.check(fieldName(field+"."+k), v); err != nil {
			return err
		}
	}
	return nil
}

// checkCmd checks a command: its program not empty, no argument holding
// NUL; required says whether it must be given.
func checkCmd(field string, cmd []string, required bool) error {
	if len(cmd) == 0 {
		if required {
			return badRequest(`field %q is required: the program and its arguments, such as ["echo", "hi"]`, field)
		}
		return nil
	}
	if cmd[0] == "" {
		return badRequest("field %q: the program (%s[0]) is empty", field, field)
	}
	for i, arg := range cmd {
		if err := noNULRule.check(fieldName(fmt.Sprintf("%s[%d]", field, i)), arg); err != nil {
			return err
		}
	}
	return nil
}

// checkName refuses a name longer than max characters.
func checkName(field, name string, maxChars int) error {
	if n := utf8.RuneCountInString(name); n > maxChars {
		return badRequest("field %q is %d characters long; at most %d", field, n, maxChars)
	}
	return nil
}

func fieldName(f string) string { return fmt.Sprintf("field %q", f) }

// quoteShort quotes v for an error, cut to a readable length.
func quoteShort(v string) string {
	const max = 80
	if len(v) > max {
		return fmt.Sprintf("%q (%d bytes)", v[:max]+"...", len(v))
	}
	return fmt.Sprintf("%q", v)
}
