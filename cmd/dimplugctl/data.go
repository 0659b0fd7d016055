package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

func (c *cli) rmCmd() *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:     "rm <name>",
		Aliases: []string{"remove"},
		Short:   "Stop a plugin and delete it; its data is kept unless --purge",
		Long: `rm stops a plugin and deletes its files. Its data (key-value store and
settings) is kept: installing the same name again finds it. --purge deletes
the data too; rm --purge of a plugin already removed deletes the data kept
of it. Back data up first with: dimplugctl data export <name>`,
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				kept, err := ctl.Uninstall(ctx, name, purge)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(map[string]any{"name": name, "removed": true, "purged": purge, "kept_data_bytes": kept})
				}
				switch {
				case purge:
					fmt.Fprintf(c.out, "removed %s and deleted its data\n", name)
				case kept > 0:
					fmt.Fprintf(c.out, "removed %s; kept %s of data for %s (installing %s again finds it; dimplugctl rm --purge %s deletes it)\n",
						name, manifest.Size(kept), name, name, name)
				default:
					fmt.Fprintf(c.out, "removed %s (it had no data)\n", name)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "delete the plugin's data (key-value store and settings) too")
	return cmd
}

func (c *cli) dataCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Export or import a plugin's data (key-value store and settings)",
		Long: `data export writes a plugin's data as one JSON document (docs/packages.md,
"Data export"); data import loads one. Exports hold secret settings in
clear: keep them as safe as the daemon's state directory.`,
	}
	var out string
	export := &cobra.Command{
		Use:               "export <name>",
		Short:             "Write a plugin's data to stdout or a file (-o)",
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				// Streamed: an export of any size, never whole in memory.
				if out == "" || out == "-" {
					_, _, err := ctl.ExportDataStream(ctx, args[0], c.out)
					return err
				}
				var size, keys uint64
				err := writeFileAtomic(out, func(w io.Writer) (err error) {
					size, keys, err = ctl.ExportDataStream(ctx, args[0], w)
					return err
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "exported the data of %s to %s (%d keys, %s)\n", args[0], out, keys, manifest.Size(int64(size)))
				return nil
			})
		},
	}
	export.Flags().StringVarP(&out, "output", "o", "", "write to this file (mode 0600) instead of stdout")
	var replace bool
	imp := &cobra.Command{
		Use:   "import <name> <file|->",
		Short: "Load an export into a plugin's data (merged, or --replace)",
		Long: `import loads a data export into an installed plugin: each key and settings
object in it replaces the stored one and the rest stays, or with --replace
it replaces all the plugin's data. Everything is checked first (the format,
the key-value limits, the settings against the plugin's schemas); nothing
is written when anything fails.`,
		Args:              exactArgs("<name>", "<file|->"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = os.Stdin
			if args[1] != "-" {
				f, err := os.Open(args[1])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				n, err := ctl.ImportDataStream(ctx, args[0], in, replace)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(map[string]any{"name": args[0], "keys": n, "replaced": replace})
				}
				how := "merged into"
				if replace {
					how = "replacing"
				}
				fmt.Fprintf(c.out, "imported %d keys and the settings of the export, %s the data of %s\n", n, how, args[0])
				return nil
			})
		},
	}
	imp.Flags().BoolVar(&replace, "replace", false, "replace all the plugin's data instead of merging")
	cmd.AddCommand(export, imp)
	return cmd
}

// writeFileAtomic writes what write writes to path with mode 0600, through
// a temporary file in the same directory: path appears whole or not at all.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
