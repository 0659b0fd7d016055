package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// TestConfigParse: every key is a serve flag with underscores, values are
// checked as the flag takes them, and each mistake is named with its line.
func TestConfigParse(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       map[string]string // flag → value, when accepted
		deadlines  map[string]time.Duration
		errs       []string // substrings of the error, when refused
	}{
		{name: "empty", file: "", want: map[string]string{}},
		{name: "every type", file: `
state_dir = "/srv/dimplugd"
max_conns = 100
first_message_timeout = "3s"
insecure_no_sandbox = false
socket_mode = 432
host_message_size = "8MiB"
receive_budget = 1048576
`, want: map[string]string{"state-dir": "/srv/dimplugd", "max-conns": "100", "first-message-timeout": "3s",
			"insecure-no-sandbox": "false", "socket-mode": "432", "host-message-size": "8MiB", "receive-budget": "1048576"}},
		{name: "deadlines", file: `
max_conns = 5
[deadlines]
"parental-controls/guard-media" = "150ms"
"media-badge/badge" = "1s"
`, want: map[string]string{"max-conns": "5"}, deadlines: map[string]time.Duration{"parental-controls/guard-media": 150 * time.Millisecond, "media-badge/badge": time.Second}},
		{name: "unknown key with a suggestion", file: "state_dir = \"/x\"\nmax_con = 3\n",
			errs: []string{"config.toml:2: max_con: unknown key (did you mean max_conns?)"}},
		{name: "unknown key", file: "\n\nfrobnicate = true\n", errs: []string{"config.toml:3: frobnicate: unknown key (the keys are serve's flags"}},
		{name: "dashes", file: "max-conns = 3\n", errs: []string{"config.toml:1: max-conns: write it max_conns (keys use underscores)"}},
		{name: "config itself", file: "config = \"/etc/x\"\n", errs: []string{"config.toml:1: config: unknown key"}},
		{name: "wrong types", file: "max_conns = \"many\"\ndebug = 1\nstate_dir = 3\nfirst_message_timeout = 5\n",
			errs: []string{
				"config.toml:1: max_conns: want an integer, got a string",
				"config.toml:2: debug: want true or false, got an integer",
				"config.toml:3: state_dir: want a string, got an integer",
				"config.toml:4: first_message_timeout: want a string, got an integer",
			}},
		{name: "bad duration", file: "message_timeout = \"soon\"\n", errs: []string{`config.toml:1: message_timeout: "soon"`}},
		{name: "negative uint", file: "socket_mode = -1\n", errs: []string{`config.toml:1: socket_mode: "-1" is not a valid uint32`}},
		{name: "bad deadlines", file: "[deadlines]\n\"nobody\" = \"1s\"\n\"a/b\" = 5\n\"a/c\" = \"2m\"\n",
			errs: []string{
				`config.toml:2: deadlines."nobody": want "<plugin>/<hook>"`,
				`config.toml:3: deadlines."a/b": want a duration string`,
				`config.toml:4: deadlines."a/c": want a duration from 1ms to 1m0s`,
			}},
		{name: "deadlines not a table", file: "deadlines = 3\n", errs: []string{"config.toml:1: deadlines: want a table"}},
		{name: "syntax", file: "max_conns = = 3\n", errs: []string{"config.toml:1:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig("config.toml", []byte(tc.file), serveCmd().Flags())
			if tc.errs != nil {
				if err == nil {
					t.Fatalf("accepted: %+v", c)
				}
				if errdefs.Class(err) != errdefs.ErrInvalid {
					t.Errorf("class %v, want invalid", errdefs.Class(err))
				}
				for _, w := range tc.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error:\n%v\nwant it to contain %q", err, w)
					}
				}
				if n := len(strings.Split(err.Error(), "\n")); n != len(tc.errs) && tc.name != "syntax" {
					t.Errorf("%d problems reported, want %d:\n%v", n, len(tc.errs), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.keys) != len(tc.want) {
				t.Errorf("keys %v, want %v", c.keys, tc.want)
			}
			for k, v := range tc.want {
				if c.keys[k] != v {
					t.Errorf("%s = %q, want %q", k, c.keys[k], v)
				}
			}
			for k, d := range tc.deadlines {
				if c.deadlines[k] != d {
					t.Errorf("deadline %s = %v, want %v", k, c.deadlines[k], d)
				}
			}
		})
	}
}

// TestConfigPrecedence: the file fills what the command line leaves unset;
// a flag given on the command line wins.
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte("max_conns = 7\nstate_dir = \"/from/file\"\nmessage_timeout = \"9s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	serve := withConfig(serveCmd())
	if err := serve.ParseFlags([]string{"--config", path, "--max-conns", "3"}); err != nil {
		t.Fatal(err)
	}
	if err := serve.PreRunE(serve, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"max-conns": "3", "state-dir": "/from/file", "message-timeout": "9s", "host-conns-per-uid": "0"} {
		if got := serve.Flags().Lookup(name).Value.String(); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
	}

	// A missing file named by --config is an error; a missing default is not.
	serve = withConfig(serveCmd())
	serve.ParseFlags([]string{"--config", filepath.Join(dir, "nope.toml")})
	if err := serve.PreRunE(serve, nil); errdefs.Class(err) != errdefs.ErrNotFound {
		t.Errorf("missing --config file: %v, want not found", err)
	}
	// Values the flags accept but serve does not are caught before start.
	os.WriteFile(path, []byte("console_listen = \"0.0.0.0:8377\"\nruntime = \"vm\"\nhost_message_size = \"lots\"\n"), 0o644)
	serve = withConfig(serveCmd())
	serve.ParseFlags([]string{"--config", path})
	err := serve.PreRunE(serve, nil)
	for _, w := range []string{"console-listen:", `runtime: "vm" is not a runtime`, "host-message-size:"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("serve with a bad config: %v, want %q", err, w)
		}
	}
}

// TestDefaultConfig: the default config lists every serve flag, parses,
// and is the file shipped for `make install`.
func TestDefaultConfig(t *testing.T) {
	flags := serveCmd().Flags()
	def := defaultConfig(flags)
	uncommented := strings.NewReplacer("\n#", "\n").Replace(def)
	// Uncommented, every key is valid at its default.
	var kept []string
	for _, l := range strings.Split(uncommented, "\n") {
		if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "dimplugd") || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.Contains(l, " = ") || strings.HasPrefix(l, "[") || strings.HasPrefix(l, `"`) {
			kept = append(kept, l)
		}
	}
	c, err := parseConfig("default.toml", []byte(strings.Join(kept, "\n")), flags)
	if err != nil {
		t.Fatalf("the default config, uncommented, does not parse: %v\n%s", err, strings.Join(kept, "\n"))
	}
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && f.Name != "help" {
			if _, ok := c.keys[f.Name]; !ok {
				t.Errorf("flag --%s has no key in the default config", f.Name)
			}
		}
	})
	shipped, err := os.ReadFile("systemd/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(shipped) != def {
		t.Errorf("cmd/dimplugd/systemd/config.toml is stale: run go run ./cmd/dimplugd config default > cmd/dimplugd/systemd/config.toml")
	}
}
