package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// `dimplugctl config get|set|edit` read and write a plugin's settings
// (manifest [settings]): the global ones by default, a user's with --user.
// The daemon validates every write against the plugin's schema and shows
// secrets masked.

func (c *cli) configCmd() *cobra.Command {
	var user int64
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Read and write a plugin's settings",
		Long: `Read and write the settings a plugin declares in its manifest ([settings]):
the operator's global settings, or one user's with --user ID. The daemon checks
every write against the plugin's schema and refuses it, naming each bad field,
if it does not validate; a running plugin sees the change at once. Secrets are
shown as ********.`,
	}
	cmd.PersistentFlags().Int64Var(&user, "user", 0, "a user's own settings (scope user) instead of the global ones")
	scopeOf := func() (string, int64) {
		if user != 0 {
			return host.ScopeUser, user
		}
		return host.ScopeGlobal, 0
	}
	cmd.AddCommand(c.configGetCmd(scopeOf), c.configSetCmd(scopeOf), c.configEditCmd(scopeOf))
	return cmd
}

func (c *cli) configGetCmd(scopeOf func() (string, int64)) *cobra.Command {
	return &cobra.Command{
		Use:               "get <name> [key]",
		Short:             "Show a plugin's settings (or one of them), defaults included",
		Args:              rangeArgs(1, 2, "<name> [key]"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			scope, user := scopeOf()
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				ps, err := ctl.Settings(ctx, args[0], scope, user)
				if err != nil {
					return err
				}
				if len(args) == 2 {
					v, ok := ps.Values[args[1]]
					if !ok {
						return fmt.Errorf("plugin %q has no %s setting %q (it has: %s)", args[0], scope, args[1], strings.Join(sortedKeys(ps.Values), ", "))
					}
					if c.json {
						return c.printJSON(v)
					}
					fmt.Fprintln(c.out, formatValue(v))
					return nil
				}
				if c.json {
					return c.printJSON(ps)
				}
				c.printSettings(args[0], ps)
				return nil
			})
		},
	}
}

// printSettings lists the settings, one per line, marking defaults.
func (c *cli) printSettings(name string, ps *host.PluginSettings) {
	who := "global settings"
	if ps.User != 0 {
		who = fmt.Sprintf("settings of user %d", ps.User)
	}
	fmt.Fprintf(c.out, "%s %s:\n", name, who)
	for _, k := range sortedKeys(ps.Values) {
		mark := ""
		if _, set := ps.Stored[k]; !set {
			mark = "  (default)"
		}
		fmt.Fprintf(c.out, "  %s = %s%s\n", k, formatValue(ps.Values[k]), mark)
	}
	if len(ps.Values) == 0 {
		fmt.Fprintln(c.out, "  (none set, and the schema gives no defaults)")
	}
	if ps.Problem != "" {
		fmt.Fprintf(c.out, "Problem: these values no longer validate against the plugin's schema:\n  %s\nFix them with dimplugctl config set or edit.\n",
			strings.ReplaceAll(ps.Problem, "\n", "\n  "))
	}
}

func (c *cli) configSetCmd(scopeOf func() (string, int64)) *cobra.Command {
	var unset []string
	cmd := &cobra.Command{
		Use:   "set <name> key=value...",
		Short: "Change some of a plugin's settings (--unset KEY restores a default)",
		Long: `Change some of a plugin's settings, e.g.
  dimplugctl config set parental-controls max_rating=PG-13 --user 7
A value is read as JSON when it is valid JSON (18, true, ["a","b"], "18"),
else as a string. --unset KEY restores KEY's default.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) == 1 && len(unset) == 0 {
				return usageError{errors.New("want <name> and at least one key=value (or --unset KEY)")}
			}
			return nil
		},
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			values := map[string]any{}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("%q: want key=value", kv)}
				}
				values[k] = parseValue(v)
			}
			for _, k := range unset {
				values[k] = nil
			}
			scope, user := scopeOf()
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				ps, err := ctl.SetSettings(ctx, args[0], scope, user, values, false)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(ps)
				}
				c.printSettings(args[0], ps)
				return nil
			})
		},
	}
	cmd.Flags().StringArrayVar(&unset, "unset", nil, "restore this setting's default (repeatable)")
	return cmd
}

func (c *cli) configEditCmd(scopeOf func() (string, int64)) *cobra.Command {
	return &cobra.Command{
		Use:   "edit <name>",
		Short: "Edit a plugin's settings as JSON in $EDITOR",
		Long: `Open the settings that are set (not the defaults) as JSON in $VISUAL or $EDITOR
(vi if neither is set). Saving writes them back: a key you delete goes back to
its default, and a secret left as ******** keeps its value. If the daemon
refuses the result, the error names each bad field and nothing is changed.`,
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			scope, user := scopeOf()
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				ps, err := ctl.Settings(ctx, args[0], scope, user)
				if err != nil {
					return err
				}
				edited, err := c.editJSON(ps.Stored)
				if err != nil {
					return err
				}
				update := map[string]any{}
				for k, v := range edited {
					update[k] = v
				}
				for k := range ps.Stored {
					if _, kept := edited[k]; !kept {
						update[k] = nil // deleted: back to the default
					}
				}
				if len(update) == 0 {
					fmt.Fprintln(c.out, "no change")
					return nil
				}
				if ps, err = ctl.SetSettings(ctx, args[0], scope, user, update, false); err != nil {
					return err
				}
				if c.json {
					return c.printJSON(ps)
				}
				c.printSettings(args[0], ps)
				return nil
			})
		},
	}
}

// editJSON opens v as JSON in the user's editor and returns what was saved.
func (c *cli) editJSON(v map[string]any) (map[string]any, error) {
	doc, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "dimplugctl-config-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "settings.json")
	if err := os.WriteFile(file, append(doc, '\n'), 0o600); err != nil {
		return nil, err
	}
	editor := os.Getenv("VISUAL")
	if editor == "" {
		editor = os.Getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	// The editor may carry arguments ("code --wait"); the shell splits them.
	cmd := exec.Command("/bin/sh", "-c", editor+` "$1"`, "editor", file)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.out, c.errw
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("editor %q: %w (nothing changed)", editor, err)
	}
	saved, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(saved))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil || out == nil {
		return nil, usageError{fmt.Errorf("the edited settings are not a JSON object (%v): nothing changed", err)}
	}
	return out, nil
}

// parseValue reads a command-line value: JSON if it is valid JSON, else the
// string itself.
func parseValue(s string) any {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err == nil && !dec.More() {
		return v
	}
	return s
}

func formatValue(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// rangeArgs accepts min to max positional arguments, naming them in the
// usage error.
func rangeArgs(min, max int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			return usageError{fmt.Errorf("want %s", names)}
		}
		return nil
	}
}
