package shares

import (
	"fmt"
	"slices"
	"strings"
)

// Flags are a share's generic mount flags: mount(2)'s MS_* flags, kept
// portable so that options mean the same on every platform the agent
// builds for; the Linux mounter translates them.
type Flags uint32

// The flags, in the order Flags.String lists them.
const (
	ReadOnly Flags = 1 << iota
	NoSuid
	NoDev
	NoExec
	Sync
	DirSync
	NoAtime
	NoDirAtime
	RelAtime
	StrictAtime
	LazyTime
)

// DefaultFlags apply to every share before its own options (suid and dev
// take them off). A share's files carry modes and owners set on another
// machine, by its users, with no check of the guest's: a set-user-ID root
// binary or a device node there must not grant anything in the VM. Sandboxes
// bind-mount from shares with nosuid,nodev already, so the two agree.
// noexec is not a default: the runtime's binaries run from
// /arcbox/runtime/bin, and builds run what they find in /Users. Neither
// flag stops Docker from bind-mounting a share's directories.
const DefaultFlags = NoSuid | NoDev

var flagNames = []struct {
	flag Flags
	name string
}{
	{ReadOnly, "ro"}, {NoSuid, "nosuid"}, {NoDev, "nodev"}, {NoExec, "noexec"},
	{Sync, "sync"}, {DirSync, "dirsync"}, {NoAtime, "noatime"}, {NoDirAtime, "nodiratime"},
	{RelAtime, "relatime"}, {StrictAtime, "strictatime"}, {LazyTime, "lazytime"},
}

// String lists the flags as mount(8) options, "ro" or "rw" first.
func (f Flags) String() string {
	parts := []string{"rw"}
	for _, fn := range flagNames {
		switch {
		case f&fn.flag == 0:
		case fn.flag == ReadOnly:
			parts[0] = "ro"
		default:
			parts = append(parts, fn.name)
		}
	}
	return strings.Join(parts, ",")
}

// flagOption is what a generic option does to the flags.
type flagOption struct {
	name       string
	set, clear Flags
}

const atimes = NoAtime | RelAtime | StrictAtime

// flagOptions are the generic options, in the order errors list them.
var flagOptions = []flagOption{
	{"ro", ReadOnly, 0}, {"rw", 0, ReadOnly},
	{"nosuid", NoSuid, 0}, {"suid", 0, NoSuid},
	{"nodev", NoDev, 0}, {"dev", 0, NoDev},
	{"noexec", NoExec, 0}, {"exec", 0, NoExec},
	{"noatime", NoAtime, atimes}, {"relatime", RelAtime, atimes}, {"strictatime", StrictAtime, atimes},
	{"nodiratime", NoDirAtime, 0},
	{"sync", Sync, 0}, {"dirsync", DirSync, 0}, {"lazytime", LazyTime, 0},
}

// The DAX modes of the virtiofs dax= option. "" is the kernel's default
// (per inode, as the host's file server decides, where there is a cache
// window).
const (
	daxAlways = "always"
	daxNever  = "never"
	daxInode  = "inode"
)

// daxOption returns the DAX mode an option sets: "dax" (the spelling of
// Linux 5.10 to 5.16, always since) or dax=always, dax=never, dax=inode.
func daxOption(o string) (mode string, ok bool) {
	switch o {
	case "dax":
		return daxAlways, true
	case "dax=" + daxAlways, "dax=" + daxNever, "dax=" + daxInode:
		return strings.TrimPrefix(o, "dax="), true
	}
	return "", false
}

// checkOption checks that o is a known option.
func checkOption(o string) error {
	if _, ok := daxOption(o); ok {
		return nil
	}
	if slices.ContainsFunc(flagOptions, func(f flagOption) bool { return f.name == o }) {
		return nil
	}
	return fmt.Errorf("unknown option %q; the options are %s", o, optionList())
}

// optionList names every option, for errors.
func optionList() string {
	names := make([]string, 0, len(flagOptions)+4)
	for _, f := range flagOptions {
		names = append(names, f.name)
	}
	names = append(names, "dax", "dax=always", "dax=never", "dax=inode")
	return strings.Join(names, ", ")
}

// resolve applies options, in order, to DefaultFlags, and returns the flags
// and the DAX mode they ask for (the last dax option wins).
func resolve(options []string) (Flags, string, error) {
	flags, dax := DefaultFlags, ""
	for _, o := range options {
		if mode, ok := daxOption(o); ok {
			dax = mode
			continue
		}
		i := slices.IndexFunc(flagOptions, func(f flagOption) bool { return f.name == o })
		if i < 0 {
			return 0, "", checkOption(o)
		}
		flags = flags&^flagOptions[i].clear | flagOptions[i].set
	}
	return flags, dax, nil
}

// daxData are the virtiofs data strings that ask for a DAX mode, to try in
// order: "always" is spelt dax=always since Linux 5.17 and plain dax
// before.
func daxData(mode string) []string {
	switch mode {
	case "":
		return nil
	case daxAlways:
		return []string{"dax=always", "dax"}
	default:
		return []string{"dax=" + mode}
	}
}

// mountedDAX is the DAX mode a virtiofs superblock's options show: Linux
// 5.17 and later write dax=always, dax=never or dax=inode (when not the
// default), earlier ones dax.
func mountedDAX(superOptions string) string {
	for _, o := range strings.Split(superOptions, ",") {
		if mode, ok := daxOption(o); ok {
			return mode
		}
	}
	return ""
}
