package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
)

// usageError marks errors that should exit with code 2.
type usageError struct{ error }

type cli struct {
	socket  string
	json    bool
	timeout time.Duration
	in      io.Reader
	out     io.Writer
	errw    io.Writer
}

func run(args []string, in io.Reader, out, errw io.Writer) int {
	c := &cli{in: in, out: out, errw: errw}
	root := c.rootCmd()
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errw)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(errw, "dimplugctl:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return errdefs.ExitCode(err)
}

func (c *cli) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "dimplugctl",
		Short: "Manage the plugins of a dimplugd daemon",
		Long: `dimplugctl talks to a running dimplugd over its control socket to install,
inspect, enable, disable, restart and remove plugins, and to read their logs.
Only root, the daemon's user and members of its --operator-group may.

Exit codes: 0 success, 1 the operation failed, 2 bad usage, 3 not found,
4 already exists, 5 invalid (manifest, archive or argument), 6 conflict
(route clash, disabled plugin, new permissions to approve), 7 daemon or
plugin unavailable, 8 permission denied.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&c.socket, "socket", host.DefaultControlSocket(), "the daemon's control socket ($DIMPLUGD_CONTROL_SOCKET)")
	pf.BoolVar(&c.json, "json", false, "print machine-readable JSON")
	pf.DurationVar(&c.timeout, "timeout", 60*time.Second, "give up on the daemon after this long")

	root.AddCommand(c.installCmd(), c.lsCmd(), c.inspectCmd(),
		c.nameCmd("enable", "Enable a plugin and start it", (*host.Control).Enable),
		c.nameCmd("disable", "Stop a plugin and keep it disabled", (*host.Control).Disable),
		c.nameCmd("restart", "Restart a plugin (also lifts a quarantine)", (*host.Control).Restart),
		c.rmCmd(), c.dataCmd(), c.logsCmd(), c.deadlineCmd(), c.configCmd(), c.statusCmd(), c.versionCmd(), c.consoleCmd())
	root.AddCommand(c.packCmd(), c.keygenCmd(), c.trustCmd())
	root.AddCommand(c.rollbackCmd())
	return root
}

// exactArgs is cobra.ExactArgs with a usage error naming what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return usageError{fmt.Errorf("%s takes %d argument(s): %s (see: dimplugctl %s --help)",
				cmd.Name(), len(names), strings.Join(names, " "), cmd.Name())}
		}
		return nil
	}
}

func (c *cli) dial(ctx context.Context) (*host.Control, error) {
	return host.DialControl(ctx, c.socket, host.WithClientName("dimplugctl"))
}

// withControl runs f with a control connection and the command's timeout.
func (c *cli) withControl(f func(ctx context.Context, ctl *host.Control) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ctl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer ctl.Close()
	return f(ctx, ctl)
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) installCmd() *cobra.Command {
	var replace, noEnable, yes, noWait bool
	var pf packageFlags
	cmd := &cobra.Command{
		Use:   "install <dir|file.dimplug|-|url>",
		Short: "Install a plugin from its directory, a .dimplug package, stdin or an http(s) URL",
		Long: `Install a plugin from a directory holding its plugin.toml and entrypoint,
or from a .dimplug package (dimplugctl pack): a file, "-" for standard
input, or an http(s) URL that dimplugctl fetches. A package is streamed to
the daemon with a progress bar on a terminal (--json: progress events on
stderr); the daemon verifies it (signature, every file's hash) before
anything is unpacked into place. Who signed it is shown next to the
permissions the manifest asks for, which must be granted: answer the
prompt, or pass --yes in scripts. An unsigned package needs a yes too
(--allow-unsigned). Without a terminal and without --yes the install is
refused.`,
		Args: exactArgs("<dir|file.dimplug|-|url>"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if isPackageSource(dir) {
				return c.installPackage(dir, pf, host.InstallOptions{Replace: replace, Enable: !noEnable, Wait: !noWait}, yes)
			}
			m, err := manifest.Load(dir)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return errdefs.WithClass(err, errdefs.ErrNotFound)
				}
				return errdefs.WithClass(err, errdefs.ErrInvalid)
			}
			var current *host.PluginStatus
			if replace {
				current = c.installed(m.Name)
			}
			grant, err := c.approve(m, current, yes)
			if err != nil {
				return err
			}
			archive, err := host.Archive(dir)
			if err != nil {
				return err
			}
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := ctl.Install(ctx, archive, host.InstallOptions{Replace: replace, Enable: !noEnable, Grant: grant, Wait: !noWait})
				if err != nil {
					return fmt.Errorf("install %s: %w", m.Name, err)
				}
				if c.json {
					return c.printJSON(st)
				}
				fmt.Fprintf(c.out, "installed %s %s (%s)\n", st.Name, st.Version, enabledWord(st.Enabled))
				c.printKeptData(st)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&replace, "replace", false, "upgrade an installed plugin of the same name, keeping its data")
	cmd.Flags().BoolVar(&noEnable, "no-enable", false, "install without starting the plugin")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "answer once the files are in place, without waiting for the plugin to run (a failed upgrade still rolls back)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "grant the requested permissions without asking")
	pf.register(cmd.Flags())
	return cmd
}

// installed returns the status of an installed plugin, or nil.
func (c *cli) installed(name string) *host.PluginStatus {
	var st *host.PluginStatus
	_ = c.withControl(func(ctx context.Context, ctl *host.Control) error {
		var err error
		st, err = ctl.Inspect(ctx, name)
		return err
	})
	return st
}

// approve shows what the plugin asks for and returns the operator's grant.
// For an upgrade (current != nil) only what goes beyond the current grant
// needs approval.
func (c *cli) approve(m *manifest.Manifest, current *host.PluginStatus, yes bool) (*manifest.Permissions, error) {
	p := m.Permissions
	if current != nil {
		more := p.Exceeds(current.Grant)
		if len(more) == 0 {
			fmt.Fprintf(c.errw, "%s %s asks for nothing beyond what version %s was granted.\n", m.Name, m.Version, current.Version)
			return &p, nil
		}
		fmt.Fprintf(c.errw, "%s %s asks for more than version %s was granted:\n", m.Name, m.Version, current.Version)
		for _, l := range more {
			fmt.Fprintf(c.errw, "  - %s\n", l)
		}
	} else {
		c.describeAccess(m)
		if p.IsZero() {
			fmt.Fprintf(c.errw, "%s %s requests no special permissions.\n", m.Name, m.Version)
			return &p, nil
		}
		fmt.Fprintf(c.errw, "%s %s asks to:\n", m.Name, m.Version)
		for _, l := range p.Describe() {
			fmt.Fprintf(c.errw, "  - %s\n", l)
		}
	}
	if yes {
		return &p, nil
	}
	if !isTerminal(c.in) {
		return nil, usageError{errors.New("refusing to grant permissions without a terminal to ask on: review them above and pass --yes to grant them")}
	}
	fmt.Fprint(c.errw, "Grant these permissions? [y/N] ")
	line, _ := bufio.NewReader(c.in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return &p, nil
	}
	return nil, errors.New("permissions not granted; nothing was installed")
}

// describeAccess says what traffic the plugin will see or change: hooked
// requests carry users' headers and bodies, and transform stages may
// rewrite media.
func (c *cli) describeAccess(m *manifest.Manifest) {
	if len(m.Hooks) == 0 && len(m.Streams) == 0 {
		return
	}
	fmt.Fprintf(c.errw, "%s %s will see:\n", m.Name, m.Version)
	for _, h := range m.Hooks {
		verb := map[manifest.Phase]string{
			manifest.PhaseRequest:  "see and change requests to",
			manifest.PhaseResponse: "see and change responses of",
			manifest.PhaseRoute:    "answer every request to",
			manifest.PhaseObserve:  "see a copy of requests and responses of",
		}[h.Phase]
		fmt.Fprintf(c.errw, "  - %s %s %s (hook %q)\n", verb, h.Method, h.Route, h.Name)
	}
	for _, st := range m.Streams {
		verb := "see the media frames of"
		if st.Role == manifest.RoleTransform {
			verb = "see and change the media frames of"
		}
		fmt.Fprintf(c.errw, "  - %s %s streams (stage %q)\n", verb, st.Kind, st.Name)
	}
}

// isTerminal reports whether r is a terminal (not merely a character
// device: /dev/null is one too).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func enabledWord(on bool) string {
	if on {
		return "enabled"
	}
	return "disabled"
}

func (c *cli) lsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List installed plugins",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				ps, err := ctl.List(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(ps)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tVERSION\tENABLED\tSTATE\tPID\tRESTARTS\tSANDBOX")
				for _, p := range ps {
					pid := "-"
					if p.PID != 0 {
						pid = fmt.Sprint(p.PID)
					}
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%d\t%s\n", p.Name, p.Version, p.Enabled, p.State, pid, p.Restarts, sandboxWord(p))
				}
				return tw.Flush()
			})
		},
	}
}

func sandboxWord(p host.PluginStatus) string {
	if p.Sandboxed {
		return p.Runtime
	}
	return "NOT SANDBOXED"
}

func (c *cli) inspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "inspect <name>",
		Short:             "Show everything the daemon knows about a plugin",
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := ctl.Inspect(ctx, args[0])
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(st)
				}
				c.printStatus(st)
				return nil
			})
		},
	}
}

func (c *cli) printStatus(st *host.PluginStatus) {
	w := c.out
	fmt.Fprintf(w, "Name:        %s\n", st.Name)
	fmt.Fprintf(w, "Version:     %s\n", st.Version)
	if st.Description != "" {
		fmt.Fprintf(w, "Description: %s\n", st.Description)
	}
	c.printProvenance(st)
	fmt.Fprintf(w, "Enabled:     %v\n", st.Enabled)
	state := st.State
	if st.Detail != "" {
		state += " (" + st.Detail + ")"
	}
	fmt.Fprintf(w, "State:       %s\n", state)
	if st.PID != 0 {
		fmt.Fprintf(w, "PID:         %d\n", st.PID)
	}
	if st.StartedAt != nil {
		fmt.Fprintf(w, "Started:     %s\n", st.StartedAt.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "Restarts:    %d\n", st.Restarts)
	if st.LastExit != "" {
		fmt.Fprintf(w, "Last exit:   %s\n", st.LastExit)
	}
	if st.Sandboxed {
		fmt.Fprintf(w, "Sandbox:     %s\n", st.Runtime)
	} else {
		fmt.Fprintf(w, "Sandbox:     NOT SANDBOXED (runtime %q: the plugin runs with the daemon's privileges)\n", st.Runtime)
	}
	if st.ProtocolVersion != 0 {
		fmt.Fprintf(w, "Protocol:    v%d\n", st.ProtocolVersion)
	}
	fmt.Fprintf(w, "Installed:   %s in %s\n", st.InstalledAt.Format(time.RFC3339), st.Dir)
	if st.PreviousVersion != "" {
		fmt.Fprintf(w, "Previous:    %s (dimplugctl rollback %s returns to it)\n", st.PreviousVersion, st.Name)
	}
	fmt.Fprintln(w, "Hooks:")
	if len(st.Hooks) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, h := range st.Hooks {
		over := ""
		if h.DeadlineOverridden {
			over = " set by the operator"
		}
		fmt.Fprintf(w, "  %-10s %s %s %s (priority %d, deadline %s%s, %s)\n", h.Name, h.Phase, h.Method, h.Route, h.Priority, h.Deadline, over, h.Failure)
		lat := ""
		if h.P50 != "" {
			lat = fmt.Sprintf(", p50 %s, p99 %s", h.P50, h.P99)
		}
		fmt.Fprintf(w, "  %-10s %d calls, %d failed%s, circuit %s\n", "", h.Calls, h.Failures, lat, h.Circuit)
		if len(h.ByPolicy) > 0 {
			causes := make([]string, 0, len(h.ByPolicy))
			for c := range h.ByPolicy {
				causes = append(causes, c)
			}
			sort.Strings(causes)
			var parts []string
			for _, c := range causes {
				parts = append(parts, fmt.Sprintf("%d %s", h.ByPolicy[c], c))
			}
			fmt.Fprintf(w, "  %-10s answered by policy: %s\n", "", strings.Join(parts, ", "))
		}
	}
	if len(st.Streams) > 0 {
		fmt.Fprintln(w, "Streams:")
	}
	for _, x := range st.Streams {
		if x.Role == "observe" { // observers never hold the stream up: no deadline
			fmt.Fprintf(w, "  %-10s %s %s (priority %d)\n", x.Name, x.Role, x.Kind, x.Priority)
			fmt.Fprintf(w, "  %-10s %d streams (%d open), %d frames, %d missed for being too slow, %d failures\n", "",
				x.Streams, x.Open, x.Frames, x.Dropped, x.Failures)
			continue
		}
		fmt.Fprintf(w, "  %-10s %s %s (priority %d, deadline %s per frame, %s)\n", x.Name, x.Role, x.Kind, x.Priority, x.Deadline, x.Failure)
		fmt.Fprintf(w, "  %-10s %d streams (%d open), %d frames, %d dropped, %d missed deadlines, %d failures\n", "",
			x.Streams, x.Open, x.Frames, x.Dropped, x.MissedDeadlines, x.Failures)
	}
	fmt.Fprintln(w, "Granted:")
	for _, l := range st.Grant.Describe() {
		fmt.Fprintf(w, "  - %s\n", l)
	}
}

type nameOp func(*host.Control, context.Context, string) (*host.PluginStatus, error)

func (c *cli) nameCmd(use, short string, op nameOp) *cobra.Command {
	return &cobra.Command{
		Use:               use + " <name>",
		Short:             short,
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := op(ctl, ctx, args[0])
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(st)
				}
				fmt.Fprintf(c.out, "%s: %s, %s\n", st.Name, enabledWord(st.Enabled), st.State)
				return nil
			})
		},
	}
}

func (c *cli) logsCmd() *cobra.Command {
	var follow bool
	var tail int
	cmd := &cobra.Command{
		Use:               "logs <name>",
		Short:             "Print a plugin's log (stdout, stderr, structured log and daemon notes)",
		Args:              exactArgs("<name>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			print := func(l host.LogLine) {
				// A plugin's text is escaped (termesc): no escape sequence,
				// carriage return or line break of its own reaches the
				// terminal, so the time and source columns are always ours.
				if c.json {
					b, _ := json.Marshal(l)
					fmt.Fprintln(c.out, string(termesc.JSON(b)))
					return
				}
				fmt.Fprintf(c.out, "%s %-6s %s\n", l.Time.Format("15:04:05.000"), termesc.String(l.Stream), termesc.String(l.Text))
			}
			if !follow {
				return c.withControl(func(ctx context.Context, ctl *host.Control) error {
					lines, err := ctl.Logs(ctx, args[0], tail, nil)
					for _, l := range lines {
						print(l)
					}
					return err
				})
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			dctx, cancel := context.WithTimeout(ctx, c.timeout)
			ctl, err := c.dial(dctx)
			cancel()
			if err != nil {
				return err
			}
			defer ctl.Close()
			_, err = ctl.Logs(ctx, args[0], tail, print)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVarP(&tail, "tail", "n", 100, "lines of history to print, older ones from the plugin's log files on disk (0: all kept in memory)")
	return cmd
}

func (c *cli) deadlineCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "deadline <name> <hook> <duration|default>",
		Short: "Override a hook's deadline (\"default\" restores the manifest's)",
		Long: `Override the deadline of one hook of a plugin, e.g. "dimplugctl deadline subs fetch 80ms".
A call that misses its deadline fails according to the hook's failure policy.
The override survives restarts and upgrades; "default" removes it.`,
		Args:              exactArgs("<name>", "<hook>", "<duration|default>"),
		ValidArgsFunction: c.completeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			var d time.Duration
			if args[2] != "default" {
				var err error
				if d, err = time.ParseDuration(args[2]); err != nil || d <= 0 {
					return usageError{fmt.Errorf("deadline %q: want a positive duration such as 50ms or 2s, or \"default\"", args[2])}
				}
			}
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := ctl.SetHookDeadline(ctx, args[0], args[1], d)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(st)
				}
				for _, h := range st.Hooks {
					if h.Name == args[1] {
						fmt.Fprintf(c.out, "%s hook %s: deadline %s\n", st.Name, h.Name, h.Deadline)
					}
				}
				return nil
			})
		},
	}
}

func (c *cli) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's readiness, version, uptime, runtime, paths and plugins by state",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				st, err := ctl.Status(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(st)
				}
				sb := st.Runtime
				if !st.Sandboxed {
					sb += " (NOT SANDBOXED)"
				}
				ready := "ready"
				if !st.Ready {
					ready = "NOT READY (starting or stopping)"
				}
				up := (time.Duration(st.UptimeSeconds*1000) * time.Millisecond).Round(time.Second)
				fmt.Fprintf(c.out, "dimplugd %s, %s, up %s (since %s)\nruntime:  %s\nsocket:   %s\nstate:    %s\nplugins:  %d%s\n",
					st.Version, ready, up, st.StartedAt.Format(time.RFC3339), sb, st.Socket, st.StateDir, st.Plugins, byState(st.PluginsByState))
				if st.MetricsListen != "" {
					fmt.Fprintf(c.out, "metrics:  %s (/metrics, /healthz)\n", st.MetricsListen)
				}
				return nil
			})
		},
	}
}

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print dimplugctl's version",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c.json {
				return c.printJSON(map[string]string{"version": version})
			}
			fmt.Fprintf(c.out, "dimplugctl %s\n", version)
			return nil
		},
	}
}

const version = "0.1.0"

// byState is " (2 running, 1 failed)", states in the order of a plugin's
// life, or "" when there are none.
func byState(n map[string]int) string {
	var parts []string
	for _, s := range []string{"running", "starting", "backoff", "quarantined", "failed", "stopped"} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// completeNames completes installed plugin names by asking the daemon.
func (c *cli) completeNames(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ctl, err := c.dial(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer ctl.Close()
	ps, err := ctl.List(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, p := range ps {
		if strings.HasPrefix(p.Name, toComplete) {
			names = append(names, p.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
