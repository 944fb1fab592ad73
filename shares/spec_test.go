package shares

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Spec
	}{
		{"", []Spec{}},
		{"none", []Spec{}},
		{" none ", []Spec{}},
		{"users=/Users", []Spec{{Tag: "users", Path: "/Users"}}},
		{"arcbox=/arcbox:dax=always", []Spec{{Tag: "arcbox", Path: "/arcbox", Options: []string{"dax=always"}}}},
		{"arcbox=/arcbox:dax=always,ro,users=/Users", []Spec{
			{Tag: "arcbox", Path: "/arcbox", Options: []string{"dax=always", "ro"}},
			{Tag: "users", Path: "/Users"},
		}},
		{" users=/Users:ro , noexec,, private=/private: ", []Spec{
			{Tag: "users", Path: "/Users", Options: []string{"ro", "noexec"}},
			{Tag: "private", Path: "/private"},
		}},
		{"dax=/dax:dax", []Spec{{Tag: "dax", Path: "/dax", Options: []string{"dax"}}}}, // a tag named like an option
		{"a:b=/mnt/a b:dax=inode,dax=never", []Spec{{Tag: "a:b", Path: "/mnt/a b", Options: []string{"dax=inode", "dax=never"}}}},
		{"données=/données", []Spec{{Tag: "données", Path: "/données"}}},
		{strings.Repeat("t", MaxTagLen) + "=/t", []Spec{{Tag: strings.Repeat("t", MaxTagLen), Path: "/t"}}},
		{Format(Defaults()), Defaults()},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"users", `"users" comes before any share`},
		{"ro,users=/Users", `"ro" comes before any share`},
		{"dax=always", `"dax=always" comes before any share`},
		{"users=Users", `"users=Users" is neither a share (its path "Users" is not absolute) nor a known option (ro, rw,`},
		{"users=", `path "" is not absolute`},
		{"cache=auto", `"cache=auto" is neither a share`},
		{"=/Users", `"=/Users": the tag is empty`},
		{"users=/Users/", `path "/Users/" is not clean (it would be /Users)`},
		{"users=/Users/../x", `not clean (it would be /x)`},
		{"users=/", "cannot be mounted on /"},
		{"users=/a\x00b", "has a ',', ':' or NUL"},
		{"us\ters=/Users", "white space, a control character"},
		{"us\u00a0ers=/Users", "white space, a control character"},
		{"us\x01ers=/Users", "white space, a control character"},
		{"us\xffers=/Users", "is not UTF-8"},
		{strings.Repeat("t", MaxTagLen+1) + "=/t", "is 37 bytes long; a VirtioFS tag has at most 36"},
		{"users=/Users:rx", `unknown option "rx"; the options are ro, rw, nosuid, suid, nodev, dev, noexec, exec, noatime, relatime, strictatime, nodiratime, sync, dirsync, lazytime, dax, dax=always, dax=never, dax=inode`},
		{"users=/Users:ro,nouser", `share users: unknown option "nouser"`},
		{"users=/Users:dax=sometimes", `unknown option "dax=sometimes"`},
		{"users=/Users:ro:noexec", `unknown option "ro:noexec"`},
		{"users=/Users,users=/home", "tag users is given twice"},
		{"users=/Users,home=/Users", "path /Users is already share users's"},
	} {
		got, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", tc.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error %q, want it to say %q", tc.in, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(Defaults()); err != nil {
		t.Errorf("the defaults: %v", err)
	}
	for _, tc := range []struct {
		specs []Spec
		want  string
	}{
		{[]Spec{{Tag: "a", Path: "/a", Options: []string{"bogus"}}}, `share "a=/a:bogus": unknown option "bogus"`},
		{[]Spec{{Tag: "a", Path: "/a,b"}}, "has a ',', ':' or NUL"},
		{[]Spec{{Tag: "a", Path: "/a:b"}}, "has a ',', ':' or NUL"},
		{[]Spec{{Tag: "a", Path: "/a "}}, "ends in white space"},
		{[]Spec{{Tag: "a=b", Path: "/a"}}, "white space, a control character, ',' or '='"},
		{[]Spec{{Tag: "a", Path: "/a"}, {Tag: "b", Path: "/b"}, {Tag: "a", Path: "/c"}}, "tag a is given twice"},
	} {
		err := Validate(tc.specs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want it to say %q", tc.specs, err, tc.want)
		}
	}
}

func TestFormat(t *testing.T) {
	if got, want := Format(Defaults()), "arcbox=/arcbox:dax=always,users=/Users,private=/private"; got != want {
		t.Errorf("Format(Defaults()) = %q, want %q", got, want)
	}
	if got := Format(nil); got != "" {
		t.Errorf("Format(nil) = %q", got)
	}
}

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		opts      []string
		wantFlags string
		wantDAX   string
	}{
		{nil, "rw,nosuid,nodev", ""},
		{[]string{"dax=always"}, "rw,nosuid,nodev", "always"},
		{[]string{"dax"}, "rw,nosuid,nodev", "always"},
		{[]string{"dax", "dax=never"}, "rw,nosuid,nodev", "never"},
		{[]string{"ro", "rw"}, "rw,nosuid,nodev", ""},
		{[]string{"suid", "dev", "noexec", "exec", "ro"}, "ro", ""},
		{[]string{"noatime", "relatime"}, "rw,nosuid,nodev,relatime", ""},
		{[]string{"relatime", "strictatime", "nodiratime"}, "rw,nosuid,nodev,nodiratime,strictatime", ""},
		{[]string{"strictatime", "noatime"}, "rw,nosuid,nodev,noatime", ""},
		{[]string{"sync", "dirsync", "lazytime", "dax=inode"}, "rw,nosuid,nodev,sync,dirsync,lazytime", "inode"},
	} {
		flags, dax, err := resolve(tc.opts)
		if err != nil {
			t.Errorf("resolve(%q): %v", tc.opts, err)
			continue
		}
		if flags.String() != tc.wantFlags || dax != tc.wantDAX {
			t.Errorf("resolve(%q) = %s, dax %q; want %s, dax %q", tc.opts, flags, dax, tc.wantFlags, tc.wantDAX)
		}
	}
	if _, _, err := resolve([]string{"ro", "bogus"}); err == nil || !strings.Contains(err.Error(), `unknown option "bogus"`) {
		t.Errorf("resolve(bogus) = %v", err)
	}
}

func TestMountedDAX(t *testing.T) {
	for super, want := range map[string]string{
		"rw":                          "",
		"rw,dax=always":               "always",
		"rw,dax":                      "always",
		"rw,dax=inode":                "inode",
		"rw,dax=never":                "never",
		"rw,user_id=0,daxx,dax=bogus": "",
	} {
		if got := mountedDAX(super); got != want {
			t.Errorf("mountedDAX(%q) = %q, want %q", super, got, want)
		}
	}
}

func TestMergeOptions(t *testing.T) {
	for _, tc := range []struct{ mount, super, want string }{
		{"rw,nosuid,nodev,relatime", "rw,dax=always", "rw,nosuid,nodev,relatime,dax=always"},
		{"ro,relatime", "ro", "ro,relatime"},
		{"rw,relatime", "", "rw,relatime"},
	} {
		if got := mergeOptions(tc.mount, tc.super); got != tc.want {
			t.Errorf("mergeOptions(%q, %q) = %q, want %q", tc.mount, tc.super, got, tc.want)
		}
	}
}
