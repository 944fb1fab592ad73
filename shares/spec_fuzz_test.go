package shares

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParse parses arbitrary settings. It checks Parse never panics; that
// what it accepts passes Validate, holds only absolute clean paths, valid
// tags and known options, and comes back the same through Format; and that
// an error names something.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "none", Format(Defaults()),
		"arcbox=/arcbox:dax=always,ro,users=/Users",
		"users=/Users:ro , noexec,, private=/private: ",
		"dax=/dax:dax,dax=always", "a:b=/mnt/a b:dax=inode",
		"users", "users=Users", "=/x", "users=/Users/", "users=/", "x=/a,y=/a", "x=/a,x=/b",
		"users=/Users:ro:noexec", "us\x00ers=/x", "u=/x\x00", "u=/x:dax=sometimes", "u=/x,=", "u=/x,dax=/y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		specs, err := Parse(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("Parse(%q): an empty error", s)
			}
			return
		}
		if err := Validate(specs); err != nil {
			t.Fatalf("Parse(%q) = %+v, which Validate refuses: %v", s, specs, err)
		}
		for _, sp := range specs {
			if !strings.HasPrefix(sp.Path, "/") || sp.Path == "/" || checkTag(sp.Tag) != nil {
				t.Fatalf("Parse(%q) took %+v", s, sp)
			}
			if _, _, err := resolve(sp.Options); err != nil {
				t.Fatalf("Parse(%q) took options %q: %v", s, sp.Options, err)
			}
		}
		again, err := Parse(Format(specs))
		if err != nil {
			t.Fatalf("Parse(Format(%+v)) = %q: %v", specs, Format(specs), err)
		}
		if len(specs) == 0 {
			return // "" and "none" both mean none
		}
		if !reflect.DeepEqual(again, specs) {
			t.Fatalf("Parse(%q) = %+v, but Parse(Format(that)) = %+v", s, specs, again)
		}
	})
}
