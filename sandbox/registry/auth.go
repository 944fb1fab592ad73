package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials authenticate pulls from one registry: a username and
// password, or an identity (refresh) token (with an optional username), or
// a registry (bearer) token. It has the fields of sandbox.RegistryAuth, so
// one converts to the other. Printed, logged or marshalled, it shows the
// username and which secrets are set, never their values.
type Credentials struct {
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// CredentialsError is invalid credentials: Field is "username",
// "password", "identity_token" or "registry_token". It never holds a
// secret.
type CredentialsError struct {
	Field  string
	Reason string
}

func (e *CredentialsError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks that c is one of the accepted forms.
func (c Credentials) Validate() error {
	for _, f := range []struct{ name, value string }{
		{"username", c.Username}, {"password", c.Password},
		{"identity_token", c.IdentityToken}, {"registry_token", c.RegistryToken},
	} {
		if strings.ContainsFunc(f.value, unicode.IsControl) {
			return &CredentialsError{f.name, "contains control characters"}
		}
	}
	switch {
	case strings.Contains(c.Username, ":"):
		return &CredentialsError{"username", "contains ':', which basic authentication cannot carry"}
	case c.RegistryToken != "":
		if c.Username != "" || c.Password != "" || c.IdentityToken != "" {
			return &CredentialsError{"registry_token", "given with other credentials: a registry token stands alone"}
		}
	case c.IdentityToken != "":
		if c.Password != "" {
			return &CredentialsError{"password", "given with an identity token: give one or the other"}
		}
	case c.Username == "" && c.Password == "":
		return &CredentialsError{"username", "no credentials given: a username and password, an identity_token or a registry_token"}
	case c.Password == "":
		return &CredentialsError{"password", "missing: a username needs a password"}
	case c.Username == "":
		return &CredentialsError{"username", "missing: a password needs a username"}
	}
	return nil
}

// Authenticator validates c and returns it as go-containerregistry's
// authenticator (which prints as c does).
func (c Credentials) Authenticator() (authn.Authenticator, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return newAuthenticator(c), nil
}

// String shows the username and which secrets are set, never a secret.
func (c Credentials) String() string {
	var b strings.Builder
	b.WriteString("registry.Credentials{")
	fmt.Fprintf(&b, "Username:%q", c.Username)
	for _, f := range []struct {
		name string
		set  bool
	}{{"Password", c.Password != ""}, {"IdentityToken", c.IdentityToken != ""}, {"RegistryToken", c.RegistryToken != ""}} {
		if f.set {
			fmt.Fprintf(&b, ", %s:[redacted]", f.name)
		}
	}
	b.WriteString("}")
	return b.String()
}

// GoString is String, so %#v redacts too.
func (c Credentials) GoString() string { return c.String() }

// LogValue redacts the secrets in slog output.
func (c Credentials) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("username", c.Username)}
	if c.Password != "" {
		attrs = append(attrs, slog.String("password", "[redacted]"))
	}
	if c.IdentityToken != "" {
		attrs = append(attrs, slog.String("identity_token", "[redacted]"))
	}
	if c.RegistryToken != "" {
		attrs = append(attrs, slog.String("registry_token", "[redacted]"))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON redacts the secrets, so credentials are never written down.
func (c Credentials) MarshalJSON() ([]byte, error) {
	m := map[string]string{"username": c.Username}
	if c.Password != "" {
		m["password"] = "[redacted]"
	}
	if c.IdentityToken != "" {
		m["identity_token"] = "[redacted]"
	}
	if c.RegistryToken != "" {
		m["registry_token"] = "[redacted]"
	}
	return json.Marshal(m)
}

var (
	_ fmt.Stringer   = Credentials{}
	_ fmt.GoStringer = Credentials{}
	_ slog.LogValuer = Credentials{}
)

// authenticator gives go-containerregistry the credentials, and prints
// redacted. It keeps them in a closure, which fmt prints as an address
// even where it cannot call String (a field of an unexported type).
type authenticator struct{ creds func() Credentials }

func newAuthenticator(c Credentials) authenticator {
	return authenticator{func() Credentials { return c }}
}

func (a authenticator) Authorization() (*authn.AuthConfig, error) {
	c := a.creds()
	return &authn.AuthConfig{
		Username:      c.Username,
		Password:      c.Password,
		IdentityToken: c.IdentityToken,
		RegistryToken: c.RegistryToken,
	}, nil
}

func (a authenticator) String() string               { return a.creds().String() }
func (a authenticator) GoString() string             { return a.creds().String() }
func (a authenticator) LogValue() slog.Value         { return a.creds().LogValue() }
func (a authenticator) MarshalJSON() ([]byte, error) { return a.creds().MarshalJSON() }

// AuthFile is the credentials of a Docker config.json's "auths", by
// registry; it is an authn.Keychain. A nil *AuthFile has no credentials.
type AuthFile struct {
	path       string
	registries []string // canonical, sorted
	// lookup holds the credentials by canonical registry, in a closure
	// that fmt prints as an address even where it cannot call String.
	lookup func(reg string) (Credentials, bool)
}

var _ authn.Keychain = (*AuthFile)(nil)

// maxAuthFile bounds the file read: a config.json is a few kilobytes.
const maxAuthFile = 1 << 20

// LoadAuthFile reads a Docker config.json's "auths": per registry (HOST,
// HOST:PORT or a URL such as https://index.docker.io/v1/), "auth"
// (base64 of user:password) or "username" and "password", or
// "identitytoken", or "registrytoken". The file must be a regular file
// that group and others cannot access (chmod 600): it holds secrets.
// Credential helpers (credsStore, credHelpers) are not supported. Errors
// name the file and the entry, never a secret.
func LoadAuthFile(path string) (*AuthFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("registry auth file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("registry auth file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("registry auth file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("registry auth file %s: mode %04o lets group or others at its secrets: chmod 600 it", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxAuthFile+1))
	if err != nil {
		return nil, fmt.Errorf("registry auth file: %w", err)
	}
	if len(data) > maxAuthFile {
		return nil, fmt.Errorf("registry auth file %s: larger than %d bytes", path, maxAuthFile)
	}
	creds, err := parseAuths(data)
	if err != nil {
		return nil, fmt.Errorf("registry auth file %s: %w", path, err)
	}
	regs := make([]string, 0, len(creds))
	for r := range creds {
		regs = append(regs, r)
	}
	slices.Sort(regs)
	lookup := func(reg string) (Credentials, bool) {
		c, ok := creds[reg]
		return c, ok
	}
	return &AuthFile{path: path, registries: regs, lookup: lookup}, nil
}

// authEntry is one registry's entry in "auths".
type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// parseAuths parses a config.json's "auths". Its errors are built here,
// never from the JSON decoder's, which may quote the input.
func parseAuths(data []byte) (map[string]Credentials, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonError("the file", err)
	}
	for _, k := range []string{"credsStore", "credHelpers"} {
		if v, ok := top[k]; ok && string(v) != `""` && string(v) != "{}" && string(v) != "null" {
			return nil, fmt.Errorf("%q: credential helpers are not supported: put the credentials in \"auths\"", k)
		}
	}
	raw, ok := top["auths"]
	if !ok {
		return nil, errors.New(`no "auths": nothing to authenticate with`)
	}
	var auths map[string]json.RawMessage
	if err := json.Unmarshal(raw, &auths); err != nil {
		return nil, jsonError(`"auths"`, err)
	}
	creds := map[string]Credentials{}
	from := map[string]string{}
	keys := make([]string, 0, len(auths))
	for k := range auths {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		where := fmt.Sprintf("auths[%q]", k)
		reg, err := authKey(k)
		if err != nil {
			return nil, fmt.Errorf("%s: not a registry: %w", where, err)
		}
		if prev, ok := from[reg]; ok {
			return nil, fmt.Errorf("%s: names the same registry as auths[%q] (%s)", where, prev, reg)
		}
		var e authEntry
		if err := json.Unmarshal(auths[k], &e); err != nil {
			return nil, jsonError(where, err)
		}
		c, err := e.credentials()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		creds[reg], from[reg] = c, k
	}
	return creds, nil
}

// jsonError describes a decoding error by its kind and place only.
func jsonError(what string, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%s is not valid JSON (at byte %d)", what, syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return fmt.Errorf("%s: a JSON %s where %s belongs", what, typ.Value, jsonKind(typ.Type.Kind().String()))
		}
		return fmt.Errorf("%s.%s: a JSON %s where a string belongs", what, field, typ.Value)
	}
	return fmt.Errorf("%s is not valid JSON", what)
}

func jsonKind(goKind string) string {
	if goKind == "map" || goKind == "struct" {
		return "an object"
	}
	return "a " + goKind
}

// credentials checks an entry and decodes its "auth".
func (e authEntry) credentials() (Credentials, error) {
	c := Credentials{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
	}
	if e.Auth != "" {
		if e.Username != "" || e.Password != "" {
			return Credentials{}, errors.New(`sets both "auth" and "username"/"password": give one or the other`)
		}
		dec, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			dec, err = base64.RawStdEncoding.DecodeString(e.Auth)
		}
		if err != nil {
			return Credentials{}, errors.New(`"auth" is not base64`)
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return Credentials{}, errors.New(`"auth" is not base64 of USERNAME:PASSWORD`)
		}
		c.Username, c.Password = user, pass
	}
	if err := c.Validate(); err != nil {
		var ce *CredentialsError
		if errors.As(err, &ce) {
			return Credentials{}, fmt.Errorf("%q: %s", fileField(ce.Field), ce.Reason)
		}
		return Credentials{}, err
	}
	return c, nil
}

// fileField is a Credentials field's name in config.json.
func fileField(f string) string { return strings.ReplaceAll(f, "_", "") }

// authKey is the canonical registry of an "auths" key: a HOST[:PORT], or a
// URL of one (Docker Hub's is https://index.docker.io/v1/).
func authKey(k string) (string, error) {
	s := k
	for _, scheme := range []string{"https://", "http://"} {
		if len(s) >= len(scheme) && strings.EqualFold(s[:len(scheme)], scheme) {
			s = s[len(scheme):]
			break
		}
	}
	s, _, _ = strings.Cut(s, "/")
	hp, err := parseHostPort(s)
	if err != nil {
		return "", err
	}
	return hp.String(), nil
}

// Lookup returns the file's credentials for reg, a registry's HOST[:PORT]
// (Docker Hub's aliases are one registry).
func (f *AuthFile) Lookup(reg string) (Credentials, bool) {
	if f == nil || f.lookup == nil {
		return Credentials{}, false
	}
	hp, err := parseHostPort(reg)
	if err != nil {
		return Credentials{}, false
	}
	return f.lookup(hp.String())
}

// Resolve implements authn.Keychain: the file's credentials for the
// target's registry, else anonymous.
func (f *AuthFile) Resolve(target authn.Resource) (authn.Authenticator, error) {
	if c, ok := f.Lookup(target.RegistryStr()); ok {
		return newAuthenticator(c), nil
	}
	return authn.Anonymous, nil
}

// Registries lists the registries the file has credentials for.
func (f *AuthFile) Registries() []string {
	if f == nil {
		return nil
	}
	return slices.Clone(f.registries)
}

// String names the file and its registries, never a secret. (A value
// receiver, so that an AuthFile printed by value is redacted too.)
func (f AuthFile) String() string {
	return fmt.Sprintf("registry.AuthFile{path:%q, registries:%q}", f.path, f.Registries())
}

// GoString is String, so %#v redacts too.
func (f AuthFile) GoString() string { return f.String() }

// LogValue names the file and its registries in slog output.
func (f *AuthFile) LogValue() slog.Value {
	if f == nil || f.lookup == nil {
		return slog.StringValue("none")
	}
	return slog.GroupValue(slog.String("path", f.path), slog.Any("registries", f.Registries()))
}

// Authenticator is the authenticator of a pull from target's registry:
// the create's own credentials when given (validated), else the file's
// (file may be nil), else anonymous.
func Authenticator(target authn.Resource, create *Credentials, file *AuthFile) (authn.Authenticator, error) {
	if create != nil {
		return create.Authenticator()
	}
	return file.Resolve(target)
}
