package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// `dimplugd state check|restore|compact` work on the state directory of a
// stopped daemon (registry.CheckState, RestoreState and CompactState); each
// refuses at once while a daemon holds the directory. Failures, damage
// found by check included, exit 1 like every other failure of dimplugd.

func stateCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Check, restore or compact the state directory of a stopped daemon",
		Long: `The state subcommands work on the state directory of a stopped dimplugd:
check reports what is damaged without changing anything, restore puts back
the last good copy of the registry database, compact reclaims its free space.
Stop dimplugd first: each refuses while a daemon holds the directory.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for \"dimplugd state\": want check, restore or compact", args[0])}
			}
			return cmd.Help()
		},
	}
	cmd.PersistentFlags().StringVar(&stateDir, "state-dir", defaultStateDir(), "the daemon's state directory, as given to serve")
	cmd.AddCommand(stateCheckCmd(&stateDir), stateRestoreCmd(&stateDir), stateCompactCmd(&stateDir))
	return cmd
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}

func stateCheckCmd(stateDir *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the registry database, its backups and the plugin files without changing anything; fails if something is damaged",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := registry.CheckState(*stateDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(checkToJSON(r)); err != nil {
					return err
				}
			} else {
				printCheck(out, r)
			}
			if r.Damaged() {
				return errdefs.WithClass(fmt.Errorf("state directory %s is damaged: %s", r.StateDir, strings.Join(damageList(r), "; ")), registry.ErrDamaged)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func stateRestoreCmd(stateDir *string) *cobra.Command {
	var opt registry.RestoreOptions
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Replace a damaged registry database with the newest good backup (or --from FILE, or --accept-older)",
		Long: `restore replaces registry.db with a good copy: the newest backup in backup/
that passes its checks, the file given with --from, or with --accept-older a
rebuild from the commit before the damaged one. The previous registry.db is
kept next to it, never deleted. A registry.db that passes its checks is
replaced only with --force, since every change made after the copy is lost.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opt.From != "" && opt.AcceptOlder {
				return usageError{errors.New("--from and --accept-older contradict each other: restore either a file or the older commit")}
			}
			res, err := registry.RestoreState(*stateDir, opt)
			if err != nil {
				return err
			}
			printRestored(cmd.OutOrStdout(), *stateDir, opt, res)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opt.From, "from", "", "restore this copy of registry.db (one you kept) instead of the newest good backup")
	f.BoolVar(&opt.AcceptOlder, "accept-older", false, "rebuild registry.db from the commit before its damaged newest one (the newest acknowledged change may be lost)")
	f.BoolVar(&opt.Force, "force", false, "restore even though registry.db passes its checks, losing every change made since the copy")
	return cmd
}

func stateCompactCmd(stateDir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "compact",
		Short: "Rewrite the registry database without its free pages, reclaiming their space",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := registry.CompactState(*stateDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Compacted %s: before %s, after %s", res.Path, sizeOf(res.Before), sizeOf(res.After))
			if saved := res.Before - res.After; saved > 0 {
				fmt.Fprintf(out, ", %s reclaimed.\n", manifest.Size(saved))
			} else {
				fmt.Fprintln(out, ": it had no free space to reclaim.")
			}
			fmt.Fprintln(out, "Next: start dimplugd as usual.")
			return nil
		},
	}
}

// sizeOf is a size for the operator, with its exact bytes.
func sizeOf(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%s (%d bytes)", manifest.Size(n), n)
}

func stamp(t time.Time) string { return t.UTC().Format(time.DateTime + " MST") }

// problem is what is wrong with a file, without the file's name when the
// error is damage.
func problem(err error) string {
	var d *registry.DamageError
	if errors.As(err, &d) {
		return d.Problem
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}

// damageList names every piece of damage in r, for the error check exits
// with.
func damageList(r *registry.CheckReport) []string {
	var list []string
	if r.DB.Err != nil {
		list = append(list, "registry.db: "+problem(r.DB.Err))
	}
	for _, b := range r.Backups {
		if b.Err != nil {
			list = append(list, "backup "+filepath.Base(b.Path)+": "+problem(b.Err))
		}
	}
	for _, m := range r.Missing {
		list = append(list, "files of plugin "+m+" are missing")
	}
	return list
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func describeFile(fc registry.FileCheck) string {
	return fmt.Sprintf("%s, commit %d, %s, %d of %d pages free",
		plural(fc.Plugins, "plugin", "plugins"), fc.Txid, manifest.Size(fc.Size), fc.FreePages, fc.Pages)
}

func printCheck(w io.Writer, r *registry.CheckReport) {
	fmt.Fprintf(w, "State directory %s\n\n", r.StateDir)
	switch {
	case r.DB.Size < 0 && r.DB.Err == nil:
		fmt.Fprintln(w, "registry.db: does not exist yet (a new state directory: dimplugd creates it when it starts)")
	case r.DB.Size < 0:
		fmt.Fprintf(w, "registry.db: MISSING: %s\n", problem(r.DB.Err))
	case errors.Is(r.DB.Err, registry.ErrDamaged):
		fmt.Fprintf(w, "registry.db: DAMAGED: %s\n", problem(r.DB.Err))
	case r.DB.Err != nil:
		fmt.Fprintf(w, "registry.db: CANNOT BE CHECKED: %s\n", problem(r.DB.Err))
	default:
		fmt.Fprintf(w, "registry.db: good: %s\n", describeFile(r.DB))
	}

	if len(r.Backups) == 0 {
		fmt.Fprintln(w, "backup/: no backups")
	}
	for _, b := range r.Backups {
		name := "backup/" + filepath.Base(b.Path)
		if b.Err != nil {
			fmt.Fprintf(w, "%s: DAMAGED, cannot be restored: %s\n", name, problem(b.Err))
			continue
		}
		fmt.Fprintf(w, "%s: good: %s, written %s\n", name, describeFile(b), stamp(b.ModTime))
	}

	if r.DB.Err == nil && r.DB.Size >= 0 {
		parts := []string{plural(len(r.InUse), "directory", "directories") + " the registry refers to"}
		if len(r.Slated) > 0 {
			parts = append(parts, fmt.Sprintf("%d slated for deletion", len(r.Slated)))
		}
		if len(r.Unreferenced) > 0 {
			parts = append(parts, fmt.Sprintf("%d no record refers to", len(r.Unreferenced)))
		}
		fmt.Fprintf(w, "plugins/: %s\n", strings.Join(parts, ", "))
	} else if len(r.Unreferenced) > 0 {
		fmt.Fprintf(w, "plugins/: %s (not compared with the registry, which cannot be read)\n",
			plural(len(r.Unreferenced), "directory", "directories"))
	}
	for _, s := range r.Slated {
		fmt.Fprintf(w, "  %s: slated for deletion (%s, plugin %s)", s.Dir, s.Why, s.Plugin)
		if len(s.KeptFor) > 0 {
			fmt.Fprintf(w, ", kept while backup %s may need it", strings.Join(s.KeptFor, ", "))
		}
		fmt.Fprintln(w)
	}
	if r.DB.Err == nil {
		for _, u := range r.Unreferenced {
			fmt.Fprintf(w, "  %s: no record refers to it; the next start moves it to lost+found/\n", u)
		}
	}
	for _, m := range r.Missing {
		fmt.Fprintf(w, "  MISSING: the files of plugin %s\n", m)
	}
	for _, k := range r.Kept {
		fmt.Fprintf(w, "kept data of removed plugin %s (version %s, removed %s): %d keys, %d settings objects, %d bytes; installing %s again takes it over, dimplugctl rm --purge %s deletes it\n",
			k.Plugin, k.Version, stamp(k.RemovedAt), k.Usage.Keys, k.Usage.Settings, k.Usage.Bytes, k.Plugin, k.Plugin)
	}
	if len(r.LostFound) > 0 {
		fmt.Fprintf(w, "lost+found/: %s (%s): directories no record referred to; delete them once you are sure they are not needed\n",
			plural(len(r.LostFound), "entry", "entries"), strings.Join(r.LostFound, ", "))
	}
	if len(r.Staging) > 0 {
		fmt.Fprintf(w, "staging/: %s of interrupted installs, deleted at the next start\n",
			plural(len(r.Staging), "leftover", "leftovers"))
	}

	fmt.Fprintln(w)
	if !r.Damaged() {
		fmt.Fprintln(w, "No damage found: dimplugd can start on this directory.")
		if r.DB.FreePages > 0 && r.DB.FreePages*4 >= r.DB.Pages {
			fmt.Fprintf(w, "%d of its %d pages are free: `dimplugd state compact --state-dir %s` reclaims them.\n",
				r.DB.FreePages, r.DB.Pages, r.StateDir)
		}
		return
	}
	fmt.Fprintln(w, "Damage found.")
	if r.DB.Err != nil {
		if r.Restore != "" {
			fmt.Fprintf(w, "dimplugd will not start on this registry.db. With dimplugd stopped, run\n  %s\n", r.Restore)
		} else {
			fmt.Fprintf(w, "registry.db could not be checked: fix the cause (%s) and check again.\n", problem(r.DB.Err))
		}
	}
	if len(r.Missing) > 0 {
		fmt.Fprintln(w, "Plugins whose files are missing cannot start: reinstall each (`dimplugctl install --replace DIR`) or remove it (`dimplugctl rm NAME`) once dimplugd runs, or restore the backup that matches their files.")
	}
	for _, b := range r.Backups {
		if b.Err != nil {
			fmt.Fprintf(w, "Backup %s cannot be restored; it is deleted when newer backups rotate it out, or move it away now.\n", b.Path)
		}
	}
}

// The JSON form of a CheckReport.
type checkJSON struct {
	StateDir     string          `json:"state_dir"`
	Damaged      bool            `json:"damaged"`
	DB           fileCheckJSON   `json:"registry_db"`
	Backups      []fileCheckJSON `json:"backups"`
	InUse        []string        `json:"in_use"`
	Slated       []slatedJSON    `json:"slated"`
	Unreferenced []string        `json:"unreferenced"`
	LostFound    []string        `json:"lost_found"`
	Missing      []string        `json:"missing"`
	Staging      []string        `json:"staging"`
	Restore      string          `json:"restore,omitempty"`
}

type fileCheckJSON struct {
	Path        string    `json:"path"`
	Exists      bool      `json:"exists"`
	Size        int64     `json:"size"`
	ModTime     time.Time `json:"mod_time,omitzero"`
	OK          bool      `json:"ok"`
	Damaged     bool      `json:"damaged"`
	Problem     string    `json:"problem,omitempty"`
	OlderIntact bool      `json:"older_intact,omitempty"`
	Pages       int       `json:"pages"`
	FreePages   int       `json:"free_pages"`
	Txid        uint64    `json:"txid"`
	Plugins     int       `json:"plugins"`
}

type slatedJSON struct {
	Dir     string   `json:"dir"`
	Why     string   `json:"why"`
	Plugin  string   `json:"plugin"`
	KeptFor []string `json:"kept_for"`
}

func checkToJSON(r *registry.CheckReport) checkJSON {
	file := func(fc registry.FileCheck) fileCheckJSON {
		j := fileCheckJSON{
			Path: fc.Path, Exists: fc.Size >= 0, Size: max(fc.Size, 0), ModTime: fc.ModTime,
			OK: fc.Err == nil, Damaged: errors.Is(fc.Err, registry.ErrDamaged),
			Pages: fc.Pages, FreePages: fc.FreePages, Txid: fc.Txid, Plugins: fc.Plugins,
		}
		if fc.Err != nil {
			j.Problem = problem(fc.Err)
			var d *registry.DamageError
			j.OlderIntact = errors.As(fc.Err, &d) && d.OlderIntact
		}
		return j
	}
	nonNil := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	j := checkJSON{
		StateDir: r.StateDir, Damaged: r.Damaged(), DB: file(r.DB), Backups: []fileCheckJSON{}, InUse: nonNil(r.InUse),
		Slated: []slatedJSON{}, Unreferenced: nonNil(r.Unreferenced), LostFound: nonNil(r.LostFound),
		Missing: nonNil(r.Missing), Staging: nonNil(r.Staging), Restore: r.Restore,
	}
	for _, b := range r.Backups {
		j.Backups = append(j.Backups, file(b))
	}
	for _, s := range r.Slated {
		j.Slated = append(j.Slated, slatedJSON{Dir: s.Dir, Why: s.Why, Plugin: s.Plugin, KeptFor: nonNil(s.KeptFor)})
	}
	return j
}

func printRestored(w io.Writer, stateDir string, opt registry.RestoreOptions, res registry.Restored) {
	if opt.AcceptOlder {
		fmt.Fprintf(w, "Rebuilt registry.db from the %s: the newest acknowledged change may be lost.\n", res.From)
	} else {
		fmt.Fprintf(w, "Restored registry.db from %s.\n", res.From)
	}
	switch {
	case res.KeptAs == "":
		fmt.Fprintln(w, "There was no registry.db before.")
	case res.Problem != "":
		fmt.Fprintf(w, "The damaged registry.db (%s) is kept as %s; delete it once dimplugd runs well.\n", res.Problem, res.KeptAs)
	default:
		fmt.Fprintf(w, "The previous registry.db, which was healthy, is kept as %s.\n", res.KeptAs)
	}
	if !opt.AcceptOlder {
		fmt.Fprintln(w, "Changes made after that copy was written are lost: install again the plugins installed or upgraded since,\n"+
			"  and redo the grants, enables and disables made since (the next start moves plugin files the restored\n"+
			"  registry does not know to lost+found/).")
	}
	fmt.Fprintf(w, "Next: `dimplugd state check --state-dir %s` to confirm, then start dimplugd.\n", stateDir)
}
