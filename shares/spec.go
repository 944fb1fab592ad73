// Package shares mounts the VM's VirtioFS shares, the host directories the
// VM was started with, at startup, and unmounts the ones it mounted at
// shutdown.
package shares

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Spec is one share to mount: a VirtioFS tag and where it goes.
type Spec struct {
	Tag  string // the tag the host gave the share, such as "users"
	Path string // the mount point: absolute and clean
	// Options are the mount options as given, such as "dax=always" or
	// "ro"; they apply on top of DefaultFlags, in order.
	Options []string
}

// String is the spec as Parse reads it: TAG=PATH[:OPTION,...].
func (s Spec) String() string {
	if len(s.Options) == 0 {
		return s.Tag + "=" + s.Path
	}
	return s.Tag + "=" + s.Path + ":" + strings.Join(s.Options, ",")
}

// Format writes specs as one list Parse reads back: the form of the
// --share default and of ARCBOX_SHARE.
func Format(specs []Spec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = s.String()
	}
	return strings.Join(parts, ",")
}

// Defaults are the standard shares: the agent's own directory (its runtime
// binaries, logs) with DAX where the host offers a cache window, the
// user's home directories, and /private, where macOS keeps /tmp and /var,
// so that paths from the host resolve the same inside the VM.
func Defaults() []Spec {
	return []Spec{
		{Tag: "arcbox", Path: "/arcbox", Options: []string{"dax=always"}},
		{Tag: "users", Path: "/Users"},
		{Tag: "private", Path: "/private"},
	}
}

// MaxTagLen is the size of a virtio-fs device's tag field (the virtio
// specification's virtio_fs_config.tag): a longer tag can never match.
const MaxTagLen = 36

// none is the value that configures no share at all, for the kernel command
// line and the environment, where an empty value counts as unset.
const none = "none"

// Parse reads shares from one setting: TAG=PATH[:OPTIONS], OPTIONS being
// mount options separated by commas. The environment and the kernel command
// line give a repeatable setting as one comma-separated list, so the value
// may hold several shares: an item TAG=/absolute/path starts a share and
// any other item is one more option of the share before it, so
// "arcbox=/arcbox:dax=always,ro,users=/Users" is two shares. Empty items are
// skipped; an empty value, or "none", is no share. Errors name the item.
func Parse(s string) ([]Spec, error) {
	specs := []Spec{}
	if strings.TrimSpace(s) == none {
		return specs, nil
	}
	for _, raw := range strings.Split(s, ",") {
		item := strings.TrimSpace(raw)
		if item == "" {
			continue
		}
		if startsShare(item) {
			spec, err := parseShare(item)
			if err != nil {
				return nil, err
			}
			specs = append(specs, spec)
			continue
		}
		if len(specs) == 0 {
			return nil, fmt.Errorf("%q comes before any share: want TAG=PATH[:OPTIONS], such as users=/Users:ro", item)
		}
		last := &specs[len(specs)-1]
		if err := checkOption(item); err != nil {
			return nil, fmt.Errorf("share %s: %w", last.Tag, err)
		}
		last.Options = append(last.Options, item)
	}
	if err := Validate(specs); err != nil {
		return nil, err
	}
	return specs, nil
}

// startsShare reports whether a list item starts a share rather than
// continuing the previous one's options: NAME=VALUE where the value is a
// path, or where NAME is no option that takes a value (so users=Users is a
// share with a bad path, not an unknown option).
func startsShare(item string) bool {
	name, value, ok := strings.Cut(item, "=")
	return ok && (strings.HasPrefix(value, "/") || name != "dax")
}

// parseShare parses TAG=PATH[:OPTION]; the options after the first come
// as items of their own.
func parseShare(item string) (Spec, error) {
	tag, rest, _ := strings.Cut(item, "=")
	path, opt, hasOpt := strings.Cut(rest, ":")
	if !strings.HasPrefix(path, "/") && tag != "" {
		return Spec{}, fmt.Errorf("%q is neither a share (its path %q is not absolute) nor a known option (%s)", item, path, optionList())
	}
	spec := Spec{Tag: tag, Path: path}
	if opt = strings.TrimSpace(opt); hasOpt && opt != "" {
		spec.Options = []string{opt}
	}
	if err := checkSpec(spec); err != nil {
		return Spec{}, fmt.Errorf("%q: %w", item, err)
	}
	return spec, nil
}

// Validate checks every spec and that no two share a tag or a path.
func Validate(specs []Spec) error {
	tags := map[string]bool{}
	paths := map[string]string{}
	for _, s := range specs {
		if err := checkSpec(s); err != nil {
			return fmt.Errorf("share %q: %w", s.String(), err)
		}
		if tags[s.Tag] {
			return fmt.Errorf("share %q: tag %s is given twice", s.String(), s.Tag)
		}
		if other, ok := paths[s.Path]; ok {
			return fmt.Errorf("share %q: path %s is already share %s's", s.String(), s.Path, other)
		}
		tags[s.Tag], paths[s.Path] = true, s.Tag
	}
	return nil
}

// checkSpec checks one spec's tag, path and options.
func checkSpec(s Spec) error {
	if err := checkTag(s.Tag); err != nil {
		return err
	}
	if err := checkPath(s.Path); err != nil {
		return err
	}
	for _, o := range s.Options {
		if err := checkOption(o); err != nil {
			return err
		}
	}
	return nil
}

// checkTag checks a VirtioFS tag: 1 to MaxTagLen bytes of UTF-8 (as the
// virtio specification has it), without white space or control
// characters (which the kernel command line, mount(8) and the kernel's
// own sysfs listing cannot carry) or the ',' and '=' of this package's
// list syntax.
func checkTag(tag string) error {
	switch {
	case tag == "":
		return errors.New("the tag is empty")
	case len(tag) > MaxTagLen:
		return fmt.Errorf("tag %q is %d bytes long; a VirtioFS tag has at most %d", tag, len(tag), MaxTagLen)
	case !utf8.ValidString(tag):
		return fmt.Errorf("tag %q is not UTF-8", tag)
	case strings.ContainsFunc(tag, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == ',' || r == '='
	}):
		return fmt.Errorf("tag %q has white space, a control character, ',' or '='", tag)
	}
	return nil
}

// checkPath checks a mount point: absolute, clean, not the root (which a
// share must not cover), free of the ',' and ':' the list syntax uses and
// of NUL, which mount(2) cannot take, and not ending in white space, which
// the list syntax trims.
func checkPath(path string) error {
	switch {
	case !filepath.IsAbs(path):
		return fmt.Errorf("path %q is not absolute", path)
	case filepath.Clean(path) != path:
		return fmt.Errorf("path %q is not clean (it would be %s)", path, filepath.Clean(path))
	case path == "/":
		return errors.New("a share cannot be mounted on /")
	case strings.ContainsAny(path, ",:\x00"):
		return fmt.Errorf("path %q has a ',', ':' or NUL", path)
	case strings.TrimRightFunc(path, unicode.IsSpace) != path:
		return fmt.Errorf("path %q ends in white space", path)
	}
	return nil
}
