package registry

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func writeAuthFile(t *testing.T, content string) *AuthFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadAuthFile(path)
	if err != nil {
		t.Fatalf("LoadAuthFile: %v", err)
	}
	return f
}

func authFor(t *testing.T, f *AuthFile, ref string) *authn.AuthConfig {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Resolve(r.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestLoadAuthFile(t *testing.T) {
	f := writeAuthFile(t, `{
		"psFormat": "table {{.ID}}",
		"auths": {
			"https://index.docker.io/v1/": {"auth": "`+b64("hubuser:hubpass")+`"},
			"ghcr.io": {"username": "gh", "password": "ghpass"},
			"127.0.0.1:5000": {"auth": "`+strings.TrimRight(b64("local:pa:ss"), "=")+`"},
			"https://quay.io": {"auth": "`+b64("qu:")+`", "identitytoken": "refresh"},
			"registry.example.com:5000/ignored/path": {"registrytoken": "bearer"},
			"empty.example.com": {"identitytoken": "only"}
		}
	}`)
	for _, tc := range []struct {
		ref  string
		want authn.AuthConfig
	}{
		{"busybox", authn.AuthConfig{Username: "hubuser", Password: "hubpass"}},
		{"docker.io/library/busybox", authn.AuthConfig{Username: "hubuser", Password: "hubpass"}},
		{"registry-1.docker.io/library/busybox", authn.AuthConfig{Username: "hubuser", Password: "hubpass"}},
		{"GHCR.io/org/x", authn.AuthConfig{Username: "gh", Password: "ghpass"}},
		{"127.0.0.1:5000/x", authn.AuthConfig{Username: "local", Password: "pa:ss"}},
		{"quay.io/x", authn.AuthConfig{Username: "qu", IdentityToken: "refresh"}},
		{"registry.example.com:5000/x", authn.AuthConfig{RegistryToken: "bearer"}},
		{"empty.example.com/x", authn.AuthConfig{IdentityToken: "only"}},
		{"registry.example.com/x", authn.AuthConfig{}}, // another port: anonymous
		{"other.example.com/x", authn.AuthConfig{}},
	} {
		if got := authFor(t, f, tc.ref); *got != tc.want {
			t.Errorf("credentials for %s: got %+v, want %+v", tc.ref, got, tc.want)
		}
	}
	if got, want := strings.Join(f.Registries(), " "), "127.0.0.1:5000 empty.example.com ghcr.io index.docker.io quay.io registry.example.com:5000"; got != want {
		t.Errorf("Registries() = %q, want %q", got, want)
	}
	var nilFile *AuthFile
	if got := authFor(t, nilFile, "ghcr.io/x"); *got != (authn.AuthConfig{}) {
		t.Errorf("a nil AuthFile gave %+v", got)
	}
}

// secret is in every malformed file below; no error may show it.
const secret = "Sup3rSecretValue"

func TestLoadAuthFileRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, want string }{
		{"not JSON", `{"auths": {"h": {"auth": "` + secret, "not valid JSON"},
		{"bad character", `{"auths": {"h": {"password": "` + secret + "\x01" + `"}}}`, "not valid JSON"},
		{"auths not an object", `{"auths": ["` + secret + `"]}`, `"auths": a JSON array where an object belongs`},
		{"a number", `{"auths": {"h": {"auth": 12, "password": "` + secret + `"}}}`, `auths["h"].auth: a JSON number where a string belongs`},
		{"no auths", `{"x": "` + secret + `"}`, `no "auths"`},
		{"creds store", `{"credsStore": "desktop", "auths": {"h": {"password": "` + secret + `"}}}`, "credential helpers are not supported"},
		{"cred helpers", `{"credHelpers": {"gcr.io": "gcr"}, "auths": {}}`, "credential helpers are not supported"},
		{"bad base64", `{"auths": {"h": {"auth": "` + secret + `!!"}}}`, `auths["h"]: "auth" is not base64`},
		{"no colon", `{"auths": {"h": {"auth": "` + b64(secret) + `"}}}`, "not base64 of USERNAME:PASSWORD"},
		{"auth and password", `{"auths": {"h": {"auth": "` + b64("u:"+secret) + `", "password": "` + secret + `"}}}`, `sets both "auth" and "username"/"password"`},
		{"password only", `{"auths": {"h": {"password": "` + secret + `"}}}`, `auths["h"]: "username": missing`},
		{"username only", `{"auths": {"h": {"username": "u"}}}`, `"password": missing`},
		{"empty entry", `{"auths": {"h": {}}}`, "no credentials given"},
		{"token with password", `{"auths": {"h": {"username": "u", "password": "` + secret + `", "registrytoken": "` + secret + `"}}}`, `"registrytoken": given with other credentials`},
		{"bad key", `{"auths": {"https://not a host/": {"password": "` + secret + `"}}}`, `auths["https://not a host/"]: not a registry`},
		{"duplicate", `{"auths": {"docker.io": {"auth": "` + b64("a:"+secret) + `"}, "https://index.docker.io/v1/": {"auth": "` + b64("a:"+secret) + `"}}}`, "names the same registry"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadAuthFile(path)
		if err == nil {
			t.Errorf("%s: loaded", tc.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.want) || !strings.Contains(msg, path) {
			t.Errorf("%s: %q, want an error naming the file and saying %q", tc.name, msg, tc.want)
		}
		if strings.Contains(msg, secret) || strings.Contains(msg, b64(secret)) {
			t.Errorf("%s: the error shows the secret: %q", tc.name, msg)
		}
	}

	// Readable or writable by group or others, or not a regular file.
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o602, 0o644} {
		path := filepath.Join(dir, fmt.Sprintf("mode-%o", mode))
		if err := os.WriteFile(path, []byte(`{"auths": {}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadAuthFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %o: %v, want a refusal saying chmod 600", mode, err)
		}
	}
	if _, err := LoadAuthFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v, want a refusal", err)
	}
	if _, err := LoadAuthFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v, want ErrNotExist", err)
	}
}

func TestCredentialsValidate(t *testing.T) {
	for _, c := range []Credentials{
		{Username: "u", Password: "p"},
		{IdentityToken: "t"},
		{Username: "u", IdentityToken: "t"},
		{RegistryToken: "t"},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%v: %v", c, err)
		}
	}
	for _, tc := range []struct {
		c     Credentials
		field string
	}{
		{Credentials{}, "username"},
		{Credentials{Username: "u"}, "password"},
		{Credentials{Password: secret}, "username"},
		{Credentials{Username: "u:v", Password: secret}, "username"},
		{Credentials{Username: "u", Password: secret + "\n"}, "password"},
		{Credentials{Username: "u", Password: secret, IdentityToken: secret}, "password"},
		{Credentials{RegistryToken: secret, IdentityToken: secret}, "registry_token"},
		{Credentials{RegistryToken: secret + "\r\nX-Evil: 1"}, "registry_token"},
	} {
		err := tc.c.Validate()
		var ce *CredentialsError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%v: %v, want an error naming %s", tc.c, err, tc.field)
			continue
		}
		if _, aerr := tc.c.Authenticator(); aerr == nil {
			t.Errorf("%v: Authenticator accepted it", tc.c)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%v: the error shows the secret: %q", tc.c, err)
		}
	}
}

// TestSecretsNeverPrinted prints the credential types every way a stray
// log line might, and checks the secrets are not there.
func TestSecretsNeverPrinted(t *testing.T) {
	c := Credentials{Username: "bob", Password: "pw-" + secret, IdentityToken: "it-" + secret, RegistryToken: "rt-" + secret}
	file := writeAuthFile(t, `{"auths": {"ghcr.io": {"auth": "`+b64("bob:"+secret)+`"}, "quay.io": {"identitytoken": "`+secret+`"}}}`)
	fileAuth, err := file.Resolve(name.MustParseReference("ghcr.io/x").Context())
	if err != nil {
		t.Fatal(err)
	}
	createAuth, err := Credentials{Username: "bob", Password: secret}.Authenticator()
	if err != nil {
		t.Fatal(err)
	}
	// Where a caller keeps them in unexported fields, fmt cannot call their
	// methods, and prints them raw: AuthFile and the authenticators keep
	// their secrets out of its reach. (Credentials cannot: keep it no
	// longer than a pull needs.)
	type holder struct {
		f    AuthFile
		fp   *AuthFile
		auth authn.Authenticator
		fa   authn.Authenticator
	}
	things := []any{
		c, &c, *file, file, fileAuth, createAuth,
		holder{*file, file, createAuth, fileAuth},
		[]Credentials{c}, map[string]*Credentials{"x": &c},
	}
	var out bytes.Buffer
	for _, v := range things {
		fmt.Fprintf(&out, "%v %+v %#v %s %q\n", v, v, v, v, v)
	}
	js, err := json.Marshal(map[string]any{"c": c, "cp": &c, "auth": createAuth})
	if err != nil {
		t.Fatal(err)
	}
	out.Write(js)
	for _, h := range []slog.Handler{slog.NewJSONHandler(&out, nil), slog.NewTextHandler(&out, nil)} {
		slog.New(h).Info("pull", "creds", c, "credsp", &c, "file", file, "auth", createAuth, "fileauth", fileAuth,
			"group", slog.GroupValue(slog.Any("c", c)))
	}
	if s := out.String(); strings.Contains(s, secret) || strings.Contains(s, b64("bob:"+secret)) {
		t.Errorf("a secret was printed:\n%s", s)
	}
	if s := out.String(); !strings.Contains(s, "bob") || !strings.Contains(s, "[redacted]") || !strings.Contains(s, "ghcr.io") {
		t.Errorf("the printed forms lost what they may show (the username, which secrets are set, the file's registries):\n%s", s)
	}
}
