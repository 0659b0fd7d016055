package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/daemon/conformance"
	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// conformancePluginName is the kit's own plugin, installed next to
// dimplugd by make build and make install.
const conformancePluginName = "dimplugd-conformance-plugin"

func conformanceCmd() *cobra.Command {
	var (
		run, sandbox string
		asJSON       bool
		verbose      bool
	)
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Check a host or a plugin in any language against dimplugd's contract (docs/conformance.md)",
		Long: `conformance starts a daemon of its own on a temporary state directory, installs
plugins and drives requests through every phase, then prints which cases pass.

  dimplugd conformance host --driver CMD   a host, through a driver program
  dimplugd conformance plugin DIR          a plugin (directory or executable)

Exit status: 0 when every case passes, 1 when one fails, 2 when the kit could
not run.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&run, "run", "", "run only the cases whose name matches this regular expression")
	pf.StringVar(&sandbox, "sandbox", "auto", `run plugins in the container sandbox: "auto" (when it can run here), "yes" or "no"`)
	pf.BoolVar(&asJSON, "json", false, "print the report as JSON")
	pf.BoolVarP(&verbose, "verbose", "v", false, "print every request and answer on stderr")

	runKit := func(cmd *cobra.Command, cfg conformance.Config) error {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.Daemon = self
		if run != "" {
			if cfg.Run, err = regexp.Compile(run); err != nil {
				return usageError{fmt.Errorf("--run: %w", err)}
			}
		}
		switch sandbox {
		case "auto":
			cfg.Sandbox = container.Available() == nil
		case "yes":
			if err := container.Available(); err != nil {
				return fmt.Errorf("--sandbox=yes: the container sandbox cannot run here: %w", err)
			}
			cfg.Sandbox = true
		case "no":
		default:
			return usageError{fmt.Errorf("--sandbox: want auto, yes or no, not %q", sandbox)}
		}
		if verbose {
			cfg.Verbose = os.Stderr
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		rep, err := conformance.Run(ctx, cfg)
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		} else {
			rep.WriteText(os.Stdout)
		}
		if !rep.Passed() {
			return errConformance
		}
		return nil
	}

	var driver, pluginBin string
	hostCmd := &cobra.Command{
		Use:   "host --driver 'PROGRAM ARGS...'",
		Short: "Check a host implementation through its driver (protocol: docs/conformance.md)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			words := strings.Fields(driver)
			if len(words) == 0 {
				return usageError{errors.New("--driver is required: the program that drives the host under test (docs/conformance.md, \"Drivers\")")}
			}
			bin := pluginBin
			if bin == "" {
				self, err := os.Executable()
				if err != nil {
					return err
				}
				bin = filepath.Join(filepath.Dir(self), conformancePluginName)
				if _, err := os.Stat(bin); err != nil {
					return fmt.Errorf("%w: the kit's plugin %s is missing: build it with make build, or name it with --plugin-bin", errdefs.ErrNotFound, bin)
				}
			}
			return runKit(cmd, conformance.Config{PluginBin: bin,
				NewDriver: func(ctx context.Context, socket string) (conformance.Driver, error) {
					return conformance.StartProcessDriver(ctx, words, socket)
				}})
		},
	}
	hostCmd.Flags().StringVar(&driver, "driver", "", "the driver program and its arguments, split at spaces; it gets the daemon's host socket in DIMPLUGD_SOCKET")
	hostCmd.Flags().StringVar(&pluginBin, "plugin-bin", "", "the kit's plugin (default: "+conformancePluginName+" next to this dimplugd)")

	pluginCmd := &cobra.Command{
		Use:   "plugin DIR|EXECUTABLE",
		Short: "Check a plugin implementation with the Go host (behaviours: docs/conformance.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bin, err := pluginExecutable(args[0])
			if err != nil {
				return err
			}
			return runKit(cmd, conformance.Config{PluginBin: bin})
		},
	}

	driverCmd := &cobra.Command{
		Use:    "driver",
		Short:  "Serve the Go host SDK as a conformance driver on stdin and stdout (socket in DIMPLUGD_SOCKET)",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			socket := os.Getenv("DIMPLUGD_SOCKET")
			if socket == "" {
				return usageError{errors.New("DIMPLUGD_SOCKET is not set")}
			}
			d, err := conformance.DialGoDriver(cmd.Context(), socket)
			if err != nil {
				return err
			}
			defer d.Close()
			return conformance.ServeDriver(cmd.Context(), d, os.Stdin, os.Stdout)
		},
	}
	cmd.AddCommand(hostCmd, pluginCmd, driverCmd)
	return cmd
}

// errConformance is a run in which a case failed: exit status 1.
var errConformance = errors.New("conformance: a case failed (see the report)")

// pluginExecutable is the executable of a plugin directory (its manifest's
// entrypoint) or path itself when it is a file.
func pluginExecutable(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errdefs.ErrNotFound, err)
	}
	if !st.IsDir() {
		return path, nil
	}
	m, err := manifest.Load(path)
	if err != nil {
		return "", err
	}
	return filepath.Join(path, m.Entrypoint), nil
}
