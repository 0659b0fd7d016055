package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dimplugd/dimplugd/daemon"
	"github.com/dimplugd/dimplugd/daemon/console"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// The config file (TOML) holds `dimplugd serve`'s settings: every flag has
// a key, the flag's name with underscores ("max_conns" for --max-conns),
// and flags given on the command line override the file. One table sits
// beside the keys: [deadlines], hook deadline overrides by
// "<plugin>/<hook>" (as `dimplugctl deadline` sets them). Anything else is
// an error naming its line.

// DefaultConfigPath is read when it exists and --config is not given.
const DefaultConfigPath = "/etc/dimplugd/config.toml"

// configEnv names the config file, like --config.
const configEnv = "DIMPLUGD_CONFIG"

// maxConfigSize bounds the file: it is read whole.
const maxConfigSize = 1 << 20

// config is a parsed config file.
type config struct {
	path string
	// keys are the flags the file sets, by flag name, with the value as
	// the flag's Set takes it.
	keys map[string]string
	// deadlines are the [deadlines] overrides, by "<plugin>/<hook>".
	deadlines map[string]time.Duration
}

// configPath is the file to read: --config, else $DIMPLUGD_CONFIG, else
// the default path if it exists ("" for none). must says whether a missing
// file is an error.
func configPath(flag string) (path string, must bool) {
	if flag != "" {
		return flag, true
	}
	if p := os.Getenv(configEnv); p != "" {
		return p, true
	}
	if _, err := os.Stat(DefaultConfigPath); err == nil {
		return DefaultConfigPath, true
	}
	return "", false
}

// loadConfig reads and checks the config file at path against flags (the
// serve command's): every key must name a flag (not "config" itself) and
// hold a value that flag takes. Errors name the file and line, all of them
// at once.
func loadConfig(path string, flags *pflag.FlagSet) (*config, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.WithClass(fmt.Errorf("config file %s does not exist", path), errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(&limitedReader{f, maxConfigSize + 1}); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if buf.Len() > maxConfigSize {
		return nil, errdefs.WithClass(fmt.Errorf("config file %s: larger than %d bytes", path, maxConfigSize), errdefs.ErrInvalid)
	}
	return parseConfig(path, buf.Bytes(), flags)
}

type limitedReader struct {
	f *os.File
	n int64
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("too large")
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	n, err := r.f.Read(p)
	r.n -= int64(n)
	return n, err
}

// parseConfig is loadConfig on the file's contents.
func parseConfig(path string, data []byte, flags *pflag.FlagSet) (*config, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, errdefs.WithClass(fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message), errdefs.ErrInvalid)
		}
		return nil, errdefs.WithClass(fmt.Errorf("%s: %w", path, err), errdefs.ErrInvalid)
	}
	c := &config{path: path, keys: map[string]string{}, deadlines: map[string]time.Duration{}}
	type problem struct {
		line int
		text string
	}
	var problems []problem
	bad := func(key, format string, args ...any) {
		l := lineOf(data, key)
		problems = append(problems, problem{l, fmt.Sprintf("%s:%d: %s: %s", path, l, key, fmt.Sprintf(format, args...))})
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		v := raw[key]
		if key == "deadlines" {
			c.readDeadlines(v, func(sub, format string, args ...any) {
				l := lineOf(data, sub)
				problems = append(problems, problem{l, fmt.Sprintf("%s:%d: deadlines.%q: %s", path, l, sub, fmt.Sprintf(format, args...))})
			}, bad)
			continue
		}
		name := strings.ReplaceAll(key, "_", "-")
		fl := flags.Lookup(name)
		switch {
		case strings.Contains(key, "-") && flags.Lookup(key) != nil:
			bad(key, "write it %s (keys use underscores)", strings.ReplaceAll(key, "-", "_"))
			continue
		case fl == nil || name == "config" || name == "help":
			if s := suggest(key, flags); s != "" {
				bad(key, "unknown key (did you mean %s?)", s)
			} else {
				bad(key, "unknown key (the keys are serve's flags with underscores: see dimplugd serve --help)")
			}
			continue
		}
		s, err := flagValue(fl, v)
		if err != nil {
			bad(key, "%v", err)
			continue
		}
		// Check the value the way the flag will take it, on a copy.
		if err := checkFlagValue(fl, s); err != nil {
			bad(key, "%v", err)
			continue
		}
		c.keys[name] = s
	}
	if len(problems) > 0 {
		sort.SliceStable(problems, func(i, j int) bool { return problems[i].line < problems[j].line })
		lines := make([]string, len(problems))
		for i, p := range problems {
			lines[i] = p.text
		}
		return nil, errdefs.WithClass(errors.New(strings.Join(lines, "\n")), errdefs.ErrInvalid)
	}
	return c, nil
}

// readDeadlines reads the [deadlines] table.
func (c *config) readDeadlines(v any, bad func(sub, format string, args ...any), badKey func(key, format string, args ...any)) {
	m, ok := v.(map[string]any)
	if !ok {
		badKey("deadlines", "want a table of \"<plugin>/<hook>\" = \"<duration>\"")
		return
	}
	for sub, dv := range m {
		plugin, hook, ok := strings.Cut(sub, "/")
		if !ok || !manifest.ValidName(plugin) || !manifest.ValidName(hook) {
			bad(sub, "want \"<plugin>/<hook>\", e.g. \"media-badge/badge\"")
			continue
		}
		s, ok := dv.(string)
		if !ok {
			bad(sub, "want a duration string such as \"150ms\", got %s", tomlType(dv))
			continue
		}
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > manifest.MaxDeadline {
			bad(sub, "want a duration from 1ms to %v, got %q", manifest.MaxDeadline, s)
			continue
		}
		c.deadlines[sub] = d
	}
}

// flagValue renders a TOML value as the flag's Set takes it, checking its
// TOML type against the flag's.
func flagValue(fl *pflag.Flag, v any) (string, error) {
	switch fl.Value.Type() {
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return "", fmt.Errorf("want true or false, got %s", tomlType(v))
		}
		return strconv.FormatBool(b), nil
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		n, ok := v.(int64)
		if !ok {
			return "", fmt.Errorf("want an integer, got %s", tomlType(v))
		}
		return strconv.FormatInt(n, 10), nil
	default: // strings, durations, sizes
		switch x := v.(type) {
		case string:
			return x, nil
		case int64:
			if sizeFlags[fl.Name] {
				return strconv.FormatInt(x, 10), nil // a size in bytes
			}
		}
		return "", fmt.Errorf("want a string, got %s", tomlType(v))
	}
}

// checkFlagValue parses s as fl would, without setting fl.
func checkFlagValue(fl *pflag.Flag, s string) error {
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	switch fl.Value.Type() {
	case "bool":
		fs.Bool("v", false, "")
	case "int":
		fs.Int("v", 0, "")
	case "uint32":
		fs.Uint32("v", 0, "")
	case "duration":
		fs.Duration("v", 0, "")
	default:
		return nil
	}
	if err := fs.Set("v", s); err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) {
			return fmt.Errorf("%q is not a valid %s", s, fl.Value.Type())
		}
		return fmt.Errorf("%q: %v", s, err)
	}
	return nil
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// lineOf finds the line that sets key (a top-level key, a table header or
// a key inside [deadlines]); 0 if none does.
func lineOf(data []byte, key string) int {
	re := regexp.MustCompile(`^\s*(\[\s*)?("` + regexp.QuoteMeta(key) + `"|'` + regexp.QuoteMeta(key) + `'|` + regexp.QuoteMeta(key) + `)\s*(=|\])`)
	for i, line := range strings.Split(string(data), "\n") {
		if re.MatchString(line) {
			return i + 1
		}
	}
	return 0
}

// suggest returns the key closest to a misspelt one, if one is close.
func suggest(key string, flags *pflag.FlagSet) string {
	best, bestD := "", 3
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" || f.Name == "help" {
			return
		}
		k := strings.ReplaceAll(f.Name, "-", "_")
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	})
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// apply sets every flag the file names that the command line did not set.
func (c *config) apply(flags *pflag.FlagSet) error {
	for name, v := range c.keys {
		if flags.Changed(name) {
			continue // the command line wins
		}
		if err := flags.Set(name, v); err != nil {
			return errdefs.WithClass(fmt.Errorf("%s: %s: %w", c.path, strings.ReplaceAll(name, "-", "_"), err), errdefs.ErrInvalid)
		}
	}
	return nil
}

// withConfig makes serve read the config file before it runs: --config
// (or $DIMPLUGD_CONFIG, or DefaultConfigPath when it exists) fills every
// flag the command line leaves unset.
func withConfig(serve *cobra.Command) *cobra.Command {
	var path string
	serve.Flags().StringVar(&path, "config", "", "config file (TOML; keys are these flags with underscores; default "+DefaultConfigPath+" if it exists, or $"+configEnv+")")
	serve.PreRunE = func(cmd *cobra.Command, args []string) error {
		cmd.Flags().Visit(func(f *pflag.Flag) { cmdlineFlags[f.Name] = true })
		p, must := configPath(path)
		configFile = p
		if p == "" {
			return nil
		}
		c, err := loadConfig(p, cmd.Flags())
		if err != nil {
			if !must && errdefs.Class(err) == errdefs.ErrNotFound {
				return nil
			}
			return err
		}
		if err := c.apply(cmd.Flags()); err != nil {
			return err
		}
		loadedConfig = c
		return checkServeFlags(cmd.Flags())
	}
	return serve
}

// sizeFlags are the flags holding a size: "32MiB", or a number of bytes.
var sizeFlags = map[string]bool{"host-message-size": true, "control-message-size": true, "receive-budget": true}

// What serve started with: the config file's path ("" for none: a
// SIGHUP then looks for the default again), the config (nil: none), and
// the flags given on the command line. SIGHUP compares the file with them.
var (
	configFile   string
	loadedConfig *config
	cmdlineFlags = map[string]bool{}
)

// checkServeFlags checks what the flags' own parsers cannot: that sizes
// parse, the runtime exists, the console listens on loopback.
func checkServeFlags(flags *pflag.FlagSet) error {
	var problems []string
	for name := range sizeFlags {
		if v := flags.Lookup(name).Value.String(); v != "" {
			if _, err := manifest.ParseSize(v); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			}
		}
	}
	if rt := flags.Lookup("runtime").Value.String(); rt != "container" && rt != "process" {
		problems = append(problems, fmt.Sprintf("runtime: %q is not a runtime (want container or process)", rt))
	}
	if err := daemon.CheckMetricsListen(flags.Lookup("metrics-listen").Value.String()); err != nil {
		problems = append(problems, fmt.Sprintf("metrics-listen: %v", err))
	}
	if l := flags.Lookup("console-listen").Value.String(); l != "" {
		if err := console.CheckLoopback(l); err != nil {
			problems = append(problems, fmt.Sprintf("console-listen: %v", err))
		}
	}
	if len(problems) > 0 {
		return usageError{errors.New(strings.Join(problems, "\n"))}
	}
	return nil
}

// configCmd is `dimplugd config check|default`.
func configCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check the config file, or print a default one"}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Check a config file without starting the daemon, and print the settings serve would use",
		Long: `check reads the config file (--config, else $DIMPLUGD_CONFIG, else ` + DefaultConfigPath + `),
checks every key and value as serve would, and prints each setting with
where it comes from (file or default). It exits 0 when serve would accept the
file, 5 when it is invalid, 4 when it does not exist.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, _ := configPath(path)
			if p == "" {
				return errdefs.WithClass(fmt.Errorf("no config file: %s does not exist and neither --config nor $%s name one", DefaultConfigPath, configEnv), errdefs.ErrNotFound)
			}
			serve := serveCmd()
			c, err := loadConfig(p, serve.Flags())
			if err != nil {
				return err
			}
			if err := c.apply(serve.Flags()); err != nil {
				return err
			}
			if err := checkServeFlags(serve.Flags()); err != nil {
				return errdefs.WithClass(fmt.Errorf("%s: %w", p, err), errdefs.ErrInvalid)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: OK\n", p)
			serve.Flags().VisitAll(func(f *pflag.Flag) {
				if f.Name == "config" || f.Name == "help" {
					return
				}
				src := "default"
				if _, ok := c.keys[f.Name]; ok {
					src = "file"
				}
				fmt.Fprintf(out, "%-24s = %-40s # %s\n", strings.ReplaceAll(f.Name, "-", "_"), tomlValue(f, f.Value.String()), src)
			})
			for _, k := range sortedKeys(c.deadlines) {
				fmt.Fprintf(out, "deadlines.%q = %q # file\n", k, c.deadlines[k].String())
			}
			return nil
		},
	}
	check.Flags().StringVar(&path, "config", "", "the config file")
	def := &cobra.Command{
		Use:   "default",
		Short: "Print a config file with every key at its default, commented out",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprint(cmd.OutOrStdout(), defaultConfig(serveCmd().Flags()))
		},
	}
	cmd.AddCommand(check, def)
	return cmd
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// tomlValue renders a flag's value as TOML.
func tomlValue(f *pflag.Flag, v string) string {
	switch f.Value.Type() {
	case "bool", "int", "int64", "uint32", "uint64":
		return v
	}
	return strconv.Quote(v)
}

// defaultConfig is a config file listing every key, commented out at its
// default, under its flag's help. Machine-specific defaults (paths derived
// from the user running it) are shown as the root daemon's.
func defaultConfig(flags *pflag.FlagSet) string {
	var b strings.Builder
	b.WriteString(`# dimplugd configuration (TOML), read by "dimplugd serve" from
# ` + DefaultConfigPath + ` (or --config, or $` + configEnv + `).
#
# Every key is one of serve's flags, with underscores; a flag given on the
# command line overrides the file. "dimplugd config check" checks this file
# without starting the daemon. On SIGHUP (systemctl reload dimplugd) the
# daemon reads it again and applies what can change while it runs: the log
# level, connection and message limits, the metrics listener and the
# [deadlines] below; it logs which other changes wait for a restart.
#
# Every key below is commented out at its default, but the two the
# systemd service needs: host_group (the socket unit's SocketGroup) and
# cgroup_parent = "auto" (plugin cgroups under the service's own).
`)
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" || f.Name == "help" {
			return
		}
		key := strings.ReplaceAll(f.Name, "-", "_")
		if v, ok := serviceValues[f.Name]; ok {
			fmt.Fprintf(&b, "\n# %s\n%s = %s\n", f.Usage, key, tomlValue(f, v))
			return
		}
		fmt.Fprintf(&b, "\n# %s\n#%s = %s\n", f.Usage, key, tomlValue(f, rootDefault(f)))
	})
	b.WriteString(`
# Hook deadline overrides, "<plugin>/<hook>" = "<duration>" (1ms to 60s),
# as "dimplugctl deadline" sets them. Removing a line on reload restores
# the manifest's deadline.
[deadlines]
#"parental-controls/guard-media" = "150ms"
`)
	return b.String()
}

// serviceValues are set in the config file installed for the systemd
// service (cmd/dimplugd/systemd/).
var serviceValues = map[string]string{"host-group": "dimplugd", "cgroup-parent": "auto"}

// rootDefault is a flag's default as it is for the root daemon.
func rootDefault(f *pflag.Flag) string {
	switch f.Name {
	case "state-dir":
		return "/var/lib/dimplugd"
	case "socket":
		return "/run/dimplugd/dimplugd.sock"
	case "control-socket":
		return "/run/dimplugd/control.sock"
	}
	return f.DefValue
}
