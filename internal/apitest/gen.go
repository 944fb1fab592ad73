package apitest

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"
)

// Gen makes values from the contract's schemas for contract tests,
// deterministically from its PRNG: values a schema most likely accepts
// (Valid), and changes that make it most likely refuse them (Mutate).
// "Most likely": a test asks the contract (ValidateJSON, ValidateRequest)
// what a value is, and counts on Gen only to make both kinds often.
type Gen struct {
	R *rand.Rand
}

// NewGen returns a Gen seeded with seed.
func NewGen(seed uint64) *Gen {
	return &Gen{R: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Valid returns a value for s: an object with its required properties and
// some optional ones, numbers within the bounds (often at them), strings
// that match the pattern and fit the lengths.
func (g *Gen) Valid(s *openapi3.Schema) any {
	return g.valid(s, 0)
}

func (g *Gen) valid(s *openapi3.Schema, depth int) any {
	if s == nil {
		return "x"
	}
	switch {
	case len(s.Enum) > 0:
		return s.Enum[g.R.IntN(len(s.Enum))]
	case s.Type.Is("object"):
		out := map[string]any{}
		for _, name := range sortedKeys(s.Properties) {
			if slices.Contains(s.Required, name) || (depth < 4 && g.R.IntN(2) == 0) {
				out[name] = g.valid(s.Properties[name].Value, depth+1)
			}
		}
		for _, name := range sortedKeys(s.Properties) {
			if _, ok := out[name]; !ok && uint64(len(out)) < s.MinProps {
				out[name] = g.valid(s.Properties[name].Value, depth+1)
			}
		}
		g.dependents(s, out, depth)
		if ap := s.AdditionalProperties.Schema; ap != nil && len(s.Properties) == 0 {
			var names *openapi3.Schema
			if s.PropertyNames != nil {
				names = s.PropertyNames.Value
			}
			for range g.R.IntN(3) {
				out[g.str(names)] = g.valid(ap.Value, depth+1)
			}
		}
		return out
	case s.Type.Is("array"):
		n := int(s.MinItems) + g.R.IntN(3)
		out := make([]any, n)
		for i := range out {
			var item *openapi3.Schema
			if s.Items != nil {
				item = s.Items.Value
			}
			out[i] = g.valid(item, depth+1)
			if i < len(s.PrefixItems) && out[i] == "" {
				out[i] = "x" // prefixItems here only ask for a non-empty first item
			}
		}
		return out
	case s.Type.Is("integer"):
		return g.integer(s)
	case s.Type.Is("number"):
		return g.R.Float64() * 100
	case s.Type.Is("boolean"):
		return g.R.IntN(2) == 0
	}
	return g.str(s)
}

// dependents applies s's rules between fields to out: a field's
// dependentRequired fields are added, and a field whose dependentSchemas
// entry has a maxProperties (one that stands alone, say) has the other
// optional fields dropped to fit it. Other dependent rules are left for
// the contract to judge.
func (g *Gen) dependents(s *openapi3.Schema, out map[string]any, depth int) {
	for _, name := range sortedKeys(s.DependentRequired) {
		if _, ok := out[name]; !ok {
			continue
		}
		for _, req := range s.DependentRequired[name] {
			if _, ok := out[req]; !ok && s.Properties[req] != nil {
				out[req] = g.valid(s.Properties[req].Value, depth+1)
			}
		}
	}
	for _, name := range sortedKeys(s.DependentSchemas) {
		d := s.DependentSchemas[name].Value
		if _, ok := out[name]; !ok || d == nil || d.MaxProps == nil {
			continue
		}
		for _, other := range sortedKeys(out) {
			if uint64(len(out)) > *d.MaxProps && other != name && !slices.Contains(s.Required, other) {
				delete(out, other)
			}
		}
	}
}

// integer picks an integer within s's bounds, half the time at one of them.
func (g *Gen) integer(s *openapi3.Schema) json.Number {
	lo, hi := intBounds(s)
	var v int64
	switch g.R.IntN(4) {
	case 0:
		v = lo
	case 1:
		v = hi
	default:
		span := uint64(hi - lo)
		if span > 1<<20 {
			span = 1 << 20
		}
		v = lo + int64(g.R.Uint64N(span+1))
	}
	return json.Number(strconv.FormatInt(v, 10))
}

// intBounds are s's bounds, or its format's, or a modest range.
func intBounds(s *openapi3.Schema) (lo, hi int64) {
	lo, hi = 0, 1000
	switch s.Format {
	case "int32":
		lo, hi = math.MinInt32, math.MaxInt32
	case "int64":
		lo, hi = math.MinInt64, math.MaxInt64
	}
	if s.Min != nil {
		lo = int64(*s.Min)
	}
	if s.Max != nil && *s.Max < math.MaxInt64 {
		hi = int64(*s.Max)
	}
	return lo, hi
}

// str makes a string for s (nil: any string): matching its pattern, from
// its lengths, sometimes with characters outside ASCII.
func (g *Gen) str(s *openapi3.Schema) string {
	if s == nil {
		return g.word(1, 8)
	}
	if s.Pattern != "" {
		for range 20 {
			v := g.Match(s.Pattern)
			n := uint64(utf8.RuneCountInString(v))
			if n >= s.MinLength && (s.MaxLength == nil || n <= *s.MaxLength) {
				return v
			}
		}
	}
	lo, hi := int(s.MinLength), int(s.MinLength)+12
	if s.MaxLength != nil {
		hi = int(*s.MaxLength)
		if g.R.IntN(3) == 0 {
			lo = hi // at the bound
		}
	}
	return g.word(lo, hi)
}

// word is lo to hi characters, letters mostly, sometimes two-byte ones.
func (g *Gen) word(lo, hi int) string {
	n := lo
	if hi > lo {
		n += g.R.IntN(hi - lo + 1)
	}
	var b strings.Builder
	for range n {
		if g.R.IntN(8) == 0 {
			b.WriteRune(rune(0xe0 + g.R.IntN(0x20))) // à..ÿ: two bytes in UTF-8
		} else {
			b.WriteByte(byte('a' + g.R.IntN(26)))
		}
	}
	return b.String()
}

// Match returns a string that pattern (a regexp in the syntax Go and
// ECMA-262 share) matches, made by walking its syntax tree.
func (g *Gen) Match(pattern string) string {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		panic(fmt.Sprintf("pattern %q: %v", pattern, err))
	}
	var b strings.Builder
	g.match(&b, re)
	return b.String()
}

func (g *Gen) match(b *strings.Builder, re *syntax.Regexp) {
	switch re.Op {
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			b.WriteRune(r)
		}
	case syntax.OpCharClass:
		b.WriteRune(g.classRune(re.Rune))
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		b.WriteByte(byte('a' + g.R.IntN(26)))
	case syntax.OpCapture:
		g.match(b, re.Sub[0])
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			g.match(b, sub)
		}
	case syntax.OpAlternate:
		g.match(b, re.Sub[g.R.IntN(len(re.Sub))])
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		lo, hi := 0, 3
		switch re.Op {
		case syntax.OpPlus:
			lo = 1
		case syntax.OpQuest:
			hi = 1
		case syntax.OpRepeat:
			lo, hi = re.Min, re.Max
			if hi < 0 {
				hi = lo + 3
			}
			hi = min(hi, lo+12)
		}
		for range lo + g.R.IntN(hi-lo+1) {
			g.match(b, re.Sub[0])
		}
	}
}

// classRune picks a rune of a character class (pairs of bounds): printable
// ASCII when the class has some, now and then a two-byte one.
func (g *Gen) classRune(pairs []rune) rune {
	type span struct{ lo, hi rune }
	var ascii, other []span
	for i := 0; i+1 < len(pairs); i += 2 {
		lo, hi := pairs[i], pairs[i+1]
		if a, z := max(lo, 0x21), min(hi, 0x7e); a <= z {
			ascii = append(ascii, span{a, z})
		}
		if a, z := max(lo, 0xe0), min(hi, 0xff); a <= z {
			other = append(other, span{a, z})
		}
	}
	pick := ascii
	if len(other) > 0 && (len(ascii) == 0 || g.R.IntN(10) == 0) {
		pick = other
	}
	if len(pick) == 0 {
		return pairs[0]
	}
	s := pick[g.R.IntN(len(pick))]
	return s.lo + rune(g.R.IntN(int(s.hi-s.lo)+1))
}

// badStrings are tried against a pattern or length for a string it
// refuses.
var badStrings = []string{
	"", "\x00", "a\x00b", "=", "x=y", "=v", "..", "/", "/..", "/a/../b", "//", "/.",
	"relative/path", "-leading-dash", ".hidden", "a b", "a:b:c", ":x", "a,b", `a\b`,
	"not base64!", "abc", "é", strings.Repeat("a", 65), strings.Repeat("é", 257),
}

// Mutate changes one thing in v, a value for s, so that s most likely
// refuses it, and says what it changed. Values it makes that JSON cannot
// carry (a duplicated key) are not its business: see the contract test.
func (g *Gen) Mutate(s *openapi3.Schema, v any) (any, string) {
	all := spots(s, v, "", nil)
	sp := all[g.R.IntN(len(all))]
	if sp.remove != nil && sp.required && g.R.IntN(3) == 0 {
		sp.remove()
		return v, "left out required field " + sp.path
	}
	bad, what := g.badValue(sp.schema, sp.get())
	if sp.set == nil {
		return bad, what
	}
	sp.set(bad)
	return v, what + " at " + sp.path
}

// badValue returns what s most likely refuses in place of v.
func (g *Gen) badValue(s *openapi3.Schema, v any) (any, string) {
	var choices []func() (any, string)
	wrongType := func() (any, string) {
		for _, w := range []any{"a string", json.Number("7"), true, []any{1}, map[string]any{"k": 1}} {
			if !sameJSONType(s, w) {
				return w, fmt.Sprintf("%T instead", w)
			}
		}
		return nil, "null instead"
	}
	choices = append(choices, wrongType, func() (any, string) { return nil, "null instead" })
	switch {
	case s.Type.Is("integer"):
		lo, hi := intBounds(s)
		choices = append(choices,
			func() (any, string) { return json.Number("1.5"), "a fraction" },
			func() (any, string) { return json.Number("18446744074"), "18446744074 seconds" },
			func() (any, string) { return json.Number("1e30"), "1e30" })
		if s.Max != nil && hi < 1<<53 {
			choices = append(choices, func() (any, string) { return json.Number(strconv.FormatInt(hi+1, 10)), "maximum + 1" })
		}
		if s.Min != nil {
			choices = append(choices, func() (any, string) { return json.Number(strconv.FormatInt(lo-1, 10)), "minimum - 1" })
		}
		if s.Not != nil && s.Not.Value.Min != nil {
			choices = append(choices, func() (any, string) {
				return json.Number(strconv.FormatInt(int64(*s.Not.Value.Min), 10)), "a value it rules out"
			})
		}
	case s.Type.Is("string") && len(s.Enum) == 0:
		choices = append(choices, func() (any, string) {
			for range 10 {
				c := badStrings[g.R.IntN(len(badStrings))]
				if !stringFits(s, c) {
					return c, fmt.Sprintf("string %q", c)
				}
			}
			return 42, "a number instead"
		})
	case len(s.Enum) > 0:
		choices = append(choices, func() (any, string) { return "no-such-value", "a value not in the enum" })
	case s.Type.Is("array"):
		if s.MinItems > 0 {
			choices = append(choices, func() (any, string) { return []any{}, "an empty array" })
		}
		if len(s.PrefixItems) > 0 {
			choices = append(choices, func() (any, string) { return []any{""}, "an empty first item" })
		}
	case s.Type.Is("object"):
		obj, _ := v.(map[string]any)
		choices = append(choices, func() (any, string) {
			out := cloneMap(obj)
			out["bogus_field"] = 1
			return out, "an unknown field"
		})
		for _, name := range sortedKeys(obj) {
			if s.Properties[name] != nil {
				choices = append(choices, func() (any, string) {
					out := cloneMap(obj)
					out[strings.ToUpper(name)] = out[name]
					delete(out, name)
					return out, fmt.Sprintf("field %q spelled %q", name, strings.ToUpper(name))
				})
			}
		}
		if s.PropertyNames != nil {
			choices = append(choices, func() (any, string) {
				out := cloneMap(obj)
				for _, c := range badStrings {
					if !stringFits(s.PropertyNames.Value, c) {
						out[c] = "v"
						return out, fmt.Sprintf("key %q", c)
					}
				}
				return out, "no bad key found"
			})
		}
		if s.MaxProps != nil {
			choices = append(choices, func() (any, string) {
				out := cloneMap(obj)
				for _, name := range sortedKeys(s.Properties) {
					if _, ok := out[name]; !ok {
						out[name] = g.valid(s.Properties[name].Value, 4)
					}
				}
				return out, "every field at once"
			})
		}
	}
	return choices[g.R.IntN(len(choices))]()
}

// stringFits reports whether s accepts the string v.
func stringFits(s *openapi3.Schema, v string) bool {
	n := uint64(utf8.RuneCountInString(v))
	if n < s.MinLength || (s.MaxLength != nil && n > *s.MaxLength) {
		return false
	}
	return s.Pattern == "" || regexp.MustCompile(s.Pattern).MatchString(v)
}

func sameJSONType(s *openapi3.Schema, v any) bool {
	switch v.(type) {
	case string:
		return s.Type.Is("string")
	case json.Number:
		return s.Type.Is("integer") || s.Type.Is("number")
	case bool:
		return s.Type.Is("boolean")
	case []any:
		return s.Type.Is("array")
	case map[string]any:
		return s.Type.Is("object")
	}
	return false
}

// sortedKeys keeps Gen deterministic: map order is random.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// spot is a place in a value: its schema, and how to read, replace or
// remove (for an object's fields) what is there. The root has no set.
type spot struct {
	path     string
	schema   *openapi3.Schema
	required bool
	get      func() any
	set      func(any)
	remove   func()
}

// spots lists the places in v, a value for s at path, the first being v
// itself (whose get and set are at's, nil for the root).
func spots(s *openapi3.Schema, v any, path string, at *spot) []spot {
	self := spot{path: path, schema: s, get: func() any { return v }}
	if at != nil {
		self.get, self.set, self.remove, self.required = at.get, at.set, at.remove, at.required
	}
	out := []spot{self}
	switch v := v.(type) {
	case map[string]any:
		for _, name := range sortedKeys(v) {
			sub := v[name]
			var ss *openapi3.Schema
			if p := s.Properties[name]; p != nil {
				ss = p.Value
			} else if ap := s.AdditionalProperties.Schema; ap != nil {
				ss = ap.Value
			}
			if ss == nil {
				continue
			}
			out = append(out, spots(ss, sub, path+"/"+name, &spot{
				required: slices.Contains(s.Required, name),
				get:      func() any { return v[name] },
				set:      func(x any) { v[name] = x },
				remove:   func() { delete(v, name) },
			})...)
		}
	case []any:
		if s.Items == nil {
			break
		}
		for i := range v {
			out = append(out, spots(s.Items.Value, v[i], fmt.Sprintf("%s/%d", path, i), &spot{
				get: func() any { return v[i] },
				set: func(x any) { v[i] = x },
			})...)
		}
	}
	return out
}
