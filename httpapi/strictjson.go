package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// maxJSONDepth bounds how deep a body may nest. No request of the contract
// nests past 4 levels, so a deeper body is invalid anyway; the bound keeps
// a body of a million brackets from costing a million stack frames.
const maxJSONDepth = 32

// scanJSON walks body, a JSON document about to be decoded into a value of
// type t, for what encoding/json would let through but the contract does
// not: a key given twice (encoding/json keeps the last), null (no field of
// the contract is nullable), a key that names a field only when case is
// ignored (encoding/json matches it; the contract's names are
// case-sensitive), and base64 that is not padded standard base64. It also
// rewrites an integer written as 1.0 or 1e3, which JSON Schema counts as an
// integer and encoding/json refuses, as 1 or 1000. It returns the body to
// decode; malformed JSON is an ErrBadRequest saying where.
func scanJSON(body []byte, t reflect.Type) ([]byte, error) {
	s := &jsonScan{dec: json.NewDecoder(bytes.NewReader(body)), body: body}
	s.dec.UseNumber()
	if err := s.value(t, "", 0); err != nil {
		return nil, err
	}
	if _, err := s.dec.Token(); !errors.Is(err, io.EOF) {
		return nil, Errorf(ErrBadRequest, "the body has data after the JSON value")
	}
	if len(s.edits) == 0 {
		return body, nil
	}
	out := make([]byte, 0, len(body))
	last := 0
	for _, e := range s.edits {
		out = append(out, body[last:e.start]...)
		out = append(out, e.text...)
		last = e.end
	}
	return append(out, body[last:]...), nil
}

type jsonScan struct {
	dec   *json.Decoder
	body  []byte
	edits []numberEdit
}

// numberEdit replaces body[start:end], a number, with text.
type numberEdit struct {
	start, end int
	text       string
}

// value scans one JSON value that is to be decoded into t (nil: unknown,
// so only the checks that need no type apply) at path.
func (s *jsonScan) value(t reflect.Type, path string, depth int) error {
	tok, err := s.dec.Token()
	if err != nil {
		return malformed(err)
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch tok := tok.(type) {
	case json.Delim:
		if depth >= maxJSONDepth {
			return Errorf(ErrBadRequest, "the body nests deeper than %d levels", maxJSONDepth)
		}
		if tok == '{' {
			return s.object(t, path, depth+1)
		}
		return s.array(t, path, depth+1)
	case nil:
		if path == "" {
			return errNullBody
		}
		return Errorf(ErrBadRequest, "field %q is null; leave it out instead", path)
	case json.Number:
		if t != nil && isInteger(t.Kind()) {
			s.integer(int(s.dec.InputOffset()), string(tok))
		}
	case string:
		if t != nil && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 && !isPaddedBase64(tok) {
			return Errorf(ErrBadRequest, "field %q is not base64 (the standard alphabet, padded with =)", path)
		}
	}
	return nil
}

// object scans an object's members, the '{' read.
func (s *jsonScan) object(t reflect.Type, path string, depth int) error {
	var fields map[string]reflect.Type
	var elem reflect.Type
	switch {
	case t == nil:
	case t.Kind() == reflect.Struct:
		fields = jsonFields(t)
	case t.Kind() == reflect.Map:
		elem = t.Elem()
	}
	seen := map[string]bool{}
	for s.dec.More() {
		tok, err := s.dec.Token()
		if err != nil {
			return malformed(err)
		}
		key, _ := tok.(string)
		if seen[key] {
			if path == "" {
				return Errorf(ErrBadRequest, "key %q is given twice", key)
			}
			return Errorf(ErrBadRequest, "field %q: key %q is given twice", path, key)
		}
		seen[key] = true
		sub := key
		if path != "" {
			sub = path + "." + key
		}
		ft := elem
		if fields != nil {
			var ok bool
			if ft, ok = fields[key]; !ok {
				return unknownField(sub, key, fields)
			}
		}
		if err := s.value(ft, sub, depth); err != nil {
			return err
		}
	}
	if _, err := s.dec.Token(); err != nil {
		return malformed(err)
	}
	return nil
}

// array scans an array's elements, the '[' read.
func (s *jsonScan) array(t reflect.Type, path string, depth int) error {
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	for i := 0; s.dec.More(); i++ {
		if err := s.value(elem, fmt.Sprintf("%s[%d]", path, i), depth); err != nil {
			return err
		}
	}
	if _, err := s.dec.Token(); err != nil {
		return malformed(err)
	}
	return nil
}

// integer notes a rewrite of the number lit, which ends at end, when it
// is an integer written with a fraction or an exponent.
func (s *jsonScan) integer(end int, lit string) {
	if text, ok := integralLiteral(lit); ok {
		s.edits = append(s.edits, numberEdit{start: end - len(lit), end: end, text: text})
	}
}

// integralLiteral returns lit, a JSON number with a fraction or an
// exponent, as a plain integer when its value is an integer that may fit
// an int64; otherwise false, and encoding/json refuses lit as before.
func integralLiteral(lit string) (string, bool) {
	if !strings.ContainsAny(lit, ".eE") {
		return "", false
	}
	neg := strings.HasPrefix(lit, "-")
	lit = strings.TrimPrefix(lit, "-")
	mant, expText, hasExp := strings.Cut(strings.ToLower(lit), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := strings.TrimLeft(intPart+frac, "0")
	trimmed := strings.TrimRight(digits, "0")
	if trimmed == "" {
		return "0", true
	}
	exp := 0
	if hasExp {
		e, err := strconv.Atoi(strings.TrimPrefix(expText, "+"))
		if err != nil {
			return "", false // an exponent past int: far out of any range
		}
		exp = e
	}
	// value = digits × 10^(exp - len(frac)) = trimmed × 10^scale
	scale := exp - len(frac) + (len(digits) - len(trimmed))
	if scale < 0 || len(trimmed)+scale > 20 {
		return "", false // a fraction, or past any int64
	}
	text := trimmed + strings.Repeat("0", scale)
	if neg {
		text = "-" + text
	}
	return text, true
}

func isInteger(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// isPaddedBase64 reports whether s is standard base64 with padding, as the
// contract's pattern for bytes says; encoding/json would also skip
// newlines in it.
func isPaddedBase64(s string) bool {
	if len(s)%4 != 0 {
		return false
	}
	pad := len(s) - len(strings.TrimRight(s, "="))
	if pad > 2 {
		return false
	}
	for i := range len(s) - pad {
		if !base64Alphabet[s[i]] {
			return false
		}
	}
	return true
}

// base64Alphabet marks the bytes of standard base64's alphabet: a table,
// since every stdin message of an exec passes through isPaddedBase64.
var base64Alphabet = func() (t [256]bool) {
	for _, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" {
		t[c] = true
	}
	return t
}()

func unknownField(path, key string, fields map[string]reflect.Type) error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return Errorf(ErrBadRequest, "unknown field %q (names are case-sensitive: did you mean %q?)", path, name)
		}
	}
	return Errorf(ErrBadRequest, "unknown field %q", path)
}

func malformed(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return Errorf(ErrBadRequest, "%s", describeJSONError(err))
}

// jsonFields maps the JSON names of a struct's fields, exactly as spelled,
// to their types; made once per type.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := structFields(t)
	fieldCache.Store(t, m)
	return m
}

// fieldCache holds jsonFields' maps, by type. The types are the
// contract's, a fixed few.
var fieldCache sync.Map

func structFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}
