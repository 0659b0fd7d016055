package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dimplugd/dimplugd/daemon"
	"github.com/dimplugd/dimplugd/daemon/console"
	"github.com/dimplugd/dimplugd/daemon/logstore"
	"github.com/dimplugd/dimplugd/sandbox"
	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

type usageError struct{ error }

func run(args []string) int {
	root := rootCmd()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "dimplugd:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return errdefs.ExitCode(err)
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "dimplugd",
		Short:         "The dimplugd plugin daemon for the Dim media server",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(withConfig(serveCmd()), versionCmd(), stateCmd(), configCmd(), conformanceCmd())
	return root
}

// defaultStateDir is /var/lib/dimplugd for root, else
// $XDG_STATE_HOME/dimplugd or ~/.local/state/dimplugd.
func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/dimplugd"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "dimplugd")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "dimplugd")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dimplugd-state-%d", os.Geteuid()))
}

func serveCmd() *cobra.Command {
	var (
		stateDir   string
		socket     string
		ctlSocket  string
		hostGroup  string
		opGroup    string
		socketMode uint32
		limits     daemon.Limits
		sizes      [3]string // host message, control message, receive budget
		runtime    string
		insecure   bool
		debug      bool
		ctState    string
		cgParent   string
		prestart   bool
		conSocket  string
		conListen  string
		// metricsListen is the metrics endpoint's address (--metrics-listen).
		metricsListen string
	)
	var (
		logFormat   string
		pluginLogs  string // --plugin-log-size
		pluginFiles int
		forwardLogs bool
	)
	var (
		unsigned   string // --unsigned
		maxPackage string // --max-package-size
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			level := new(slog.LevelVar) // SIGHUP may change it (Daemon.SetLogLevel)
			if debug {
				level.Set(slog.LevelDebug)
			}
			log, err := newLogger(os.Stderr, logFormat, level)
			if err != nil {
				return usageError{err}
			}
			pluginLogBytes, err := manifest.ParseSize(pluginLogs)
			if err != nil {
				return usageError{fmt.Errorf("--plugin-log-size: %w", err)}
			}
			if pluginLogBytes < logstore.MinMaxBytes || pluginFiles < 2 {
				return usageError{fmt.Errorf("--plugin-log-size must be at least 64KiB and --plugin-log-files at least 2")}
			}
			if insecure {
				if cmd.Flags().Changed("runtime") && runtime != "process" {
					return usageError{errors.New("--insecure-no-sandbox and --runtime=" + runtime + " contradict each other")}
				}
				runtime = "process"
			}
			// The container state and cgroup parent belong to one daemon:
			// unless set by hand they are derived from the state directory.
			derivedState, derivedParent, err := container.DefaultsFor(stateDir)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("container-state") {
				ctState = derivedState
			}
			if !cmd.Flags().Changed("cgroup-parent") {
				cgParent = derivedParent
			}
			if conListen != "" {
				if err := console.CheckLoopback(conListen); err != nil {
					return usageError{fmt.Errorf("--console-listen: %w", err)}
				}
			}
			if err := daemon.CheckMetricsListen(metricsListen); err != nil {
				return usageError{fmt.Errorf("--metrics-listen: %w", err)}
			}
			// Under systemd: sockets passed by socket activation, and
			// plugin cgroups under the service's delegated cgroup.
			act, err := takeActivation()
			if err != nil {
				return err
			}
			for _, s := range []struct {
				name, flag string
				path       *string
			}{{activatedHost, "socket", &socket}, {activatedControl, "control-socket", &ctlSocket}} {
				p := act.path(s.name)
				if p == "" {
					continue
				}
				if cmd.Flags().Changed(s.flag) && filepath.Clean(*s.path) != p {
					return usageError{fmt.Errorf("socket activation: systemd passed the %s socket %s, but --%s is %s", s.name, p, s.flag, *s.path)}
				}
				*s.path = p
			}
			if cgParent == container.AutoCgroupParent && runtime == "container" {
				if cgParent, err = container.DelegatedParent(); err != nil {
					return err
				}
				log.Info("plugin cgroups go under the daemon's delegated cgroup", "cgroup_parent", "/"+cgParent)
			}
			rt, err := pickRuntime(runtime, container.Config{StateRoot: ctState, CgroupParent: cgParent})
			if err != nil {
				return err
			}
			if limits, err = limitsOf(cmd.Flags()); err != nil {
				return usageError{err}
			}
			if !cmd.Flags().Changed("control-socket") && (cmd.Flags().Changed("socket") || act.path(activatedHost) != "") &&
				act.path(activatedControl) == "" && os.Getenv("DIMPLUGD_CONTROL_SOCKET") == "" {
				// The control socket follows a host socket moved by hand.
				ctlSocket = filepath.Join(filepath.Dir(socket), "control.sock")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			cfg := daemon.Config{
				StateDir:      stateDir,
				Socket:        socket,
				ControlSocket: ctlSocket,
				HostGroup:     hostGroup,
				OperatorGroup: opGroup,
				Limits:        limits,
				SocketMode:    os.FileMode(socketMode),
				Runtime:       rt,
				Logger:        log,
				Supervision:   daemon.Supervision{Standby: prestart},
				ConsoleSocket: conSocket,
				ConsoleListen: conListen,
				MetricsListen: metricsListen,
			}
			cfg.LogLevel, cfg.ForwardPluginLogs = level, forwardLogs
			cfg.PluginLogBytes, cfg.PluginLogFiles = int64(pluginLogBytes), pluginFiles
			if err := daemon.CheckUnsignedPolicy(unsigned); err != nil {
				return usageError{fmt.Errorf("--unsigned: %w", err)}
			}
			maxPkg, err := manifest.ParseSize(maxPackage)
			if err != nil || maxPkg <= 0 {
				return usageError{fmt.Errorf("--max-package-size: %q is not a positive size", maxPackage)}
			}
			cfg.UnsignedPolicy, cfg.MaxPackageSize = unsigned, int64(maxPkg)
			if v, ok := os.LookupEnv(daemon.HandoverEnv); ok {
				os.Unsetenv(daemon.HandoverEnv)
				h, err := daemon.ReadHandover(v)
				if err != nil {
					log.Warn("not adopting the plugins of the daemon before the upgrade; they start again", "err", err)
				} else {
					cfg.Handover = h
				}
			}
			upgrade := make(chan os.Signal, 1)
			signal.Notify(upgrade, syscall.SIGUSR2)
			defer signal.Stop(upgrade)
			hup := make(chan os.Signal, 1) // reload the config file
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			notify := newNotifier(log)
			for {
				if cfg.HostListener, cfg.ControlListener, err = act.listeners(); err != nil {
					closeRuntime(rt)
					return err
				}
				d, err := daemon.Start(ctx, cfg)
				cfg.Handover = nil // Start took it
				if err != nil {
					for _, l := range []*net.UnixListener{cfg.HostListener, cfg.ControlListener} {
						if l != nil {
							l.Close()
						}
					}
					closeRuntime(rt)
					return err
				}
				stopWatch := notify.watch(d) // READY=1, STATUS=
				applyDeadlines(daemonReloader{d}, loadedConfig, log)
				var failed error
			wait:
				select {
				case <-hup:
					path := configFile
					if path == "" {
						path, _ = configPath("")
					}
					if path == "" {
						log.Info("SIGHUP: no config file to reload (no --config, and " + DefaultConfigPath + " does not exist)")
						goto wait
					}
					notify.reloading()
					next, rep, err := reload(ctx, daemonReloader{d}, path, loadedConfig, cmd.Flags(), cmdlineFlags)
					logReload(log, path, rep, err)
					configFile, loadedConfig = path, next
					notify.reloaded()
					goto wait
				case <-ctx.Done():
					stopWatch()
					notify.stopping()
					log.Info("shutting down")
				case failed = <-d.Err():
					stopWatch()
					notify.stopping()
					log.Error("shutting down: the daemon stopped serving", "err", failed)
				case <-upgrade:
					stopWatch()
					notify.upgrading()
					h, err := upgradeInPlace(ctx, d, log, act)
					closeRuntime(rt)
					if err != nil {
						return err
					}
					// The new binary could not be executed: this one
					// adopts its own hand-over and serves on.
					if rt, err = pickRuntime(runtime, container.Config{StateRoot: ctState, CgroupParent: cgParent}); err != nil {
						h.Discard()
						return err
					}
					cfg.Runtime, cfg.Handover = rt, h
					continue
				}
				err = errors.Join(failed, d.Close())
				closeRuntime(rt)
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", defaultStateDir(), "directory for installed plugins and their data")
	f.StringVar(&socket, "socket", host.DefaultSocket(), "host socket: Unix socket for hosts such as Dim ($DIMPLUGD_SOCKET)")
	f.StringVar(&ctlSocket, "control-socket", host.DefaultControlSocket(), "control socket: Unix socket for operators and dimplugctl ($DIMPLUGD_CONTROL_SOCKET; default control.sock next to --socket)")
	f.StringVar(&hostGroup, "host-group", "", "group (name or gid) that may use the host socket besides root and the daemon's user; the socket gets mode 0660 and this group (default: none, mode 0600)")
	f.StringVar(&opGroup, "operator-group", "", "group (name or gid) that may use the control socket besides root and the daemon's user (default: none, mode 0600)")
	f.Uint32Var(&socketMode, "socket-mode", 0, "permission bits of the host socket file (default 0660 with --host-group, else 0600)")
	f.IntVar(&limits.MaxConns, "max-conns", 0, "connections open on both sockets together (default 1024)")
	f.IntVar(&limits.HostConnsPerUID, "host-conns-per-uid", 0, "connections one peer uid may hold on the host socket (default 64)")
	f.IntVar(&limits.ControlConnsPerUID, "control-conns-per-uid", 0, "connections one peer uid may hold on the control socket (default 16)")
	f.DurationVar(&limits.FirstMessageTimeout, "first-message-timeout", 0, "time a new connection has to send its first complete message (default 10s)")
	f.DurationVar(&limits.MessageTimeout, "message-timeout", 0, "time a message may take from its first byte to its last (default 30s)")
	f.StringVar(&sizes[0], "host-message-size", "", "largest message on the host socket (default 32MiB)")
	f.StringVar(&sizes[1], "control-message-size", "", "largest message on the control socket, e.g. an install archive (default 64MiB)")
	f.StringVar(&sizes[2], "receive-budget", "", "bytes all half-received messages may hold together (default 128MiB)")
	f.StringVar(&runtime, "runtime", "container", `how plugins run: "container" (libcontainer sandbox) or "process" (no sandbox, development only)`)
	f.BoolVar(&insecure, "insecure-no-sandbox", false, "run plugins as plain processes WITHOUT any sandbox (development only)")
	f.BoolVar(&debug, "debug", false, "log debug messages")
	f.StringVar(&ctState, "container-state", "", "state directory of the container runtime, owned by this daemon alone (keep it on a tmpfs; default "+container.DefaultRunDir+"/<hash of the state dir>)")
	f.BoolVar(&prestart, "prestart", false, "keep a pre-started sandbox per plugin so restarts skip sandbox set-up (about 15 MiB each)")
	f.StringVar(&conSocket, "console-socket", "", "serve the operator console (web page and JSON API) on this Unix socket, made like the control socket (its permissions are the right; default: off)")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) and a health check (/healthz) on this loopback address, e.g. 127.0.0.1:9477, or on unix:/path, a socket made like the control socket (default: off; see docs/metrics.md)")
	f.StringVar(&conListen, "console-listen", "", "serve the operator console on this loopback address, e.g. 127.0.0.1:8377; browsers log in with a one-time URL from `dimplugctl console` (default: off)")
	f.StringVar(&cgParent, "cgroup-parent", "", `cgroup under which each plugin gets its own, owned by this daemon alone (default dimplugd-<hash of the state dir>); "auto": under the daemon's own cgroup, delegated to it by systemd (Delegate=yes; see docs/operate-systemd.md)`)
	f.StringVar(&logFormat, "log-format", "text", `format of the daemon's own log on stderr: "text" (key=value) or "json" (one object per line)`)
	f.StringVar(&pluginLogs, "plugin-log-size", "8MiB", "bytes of log files kept on disk per plugin, all its files together (at least 64KiB; see docs/logs.md)")
	f.IntVar(&pluginFiles, "plugin-log-files", 4, "files a plugin's log size is split over: current.log and N-1 rotated ones (at least 2)")
	f.StringVar(&unsigned, "unsigned", daemon.UnsignedPrompt, `packages without a trusted signature: "refuse", "prompt" (installed only when the operator accepts each; dimplugctl install asks) or "allow"; a package signed by an untrusted key is always refused (see docs/packages.md)`)
	f.StringVar(&maxPackage, "max-package-size", "1GiB", "largest package dimplugctl install may stream to the daemon (it is received into a file in the state directory)")
	f.BoolVar(&forwardLogs, "forward-plugin-logs", false, "also write every plugin's log lines to the daemon's own log (so the journal gets them), each with plugin=<name>, escaped")
	return cmd
}

func pickRuntime(name string, cfg container.Config) (sandbox.Runtime, error) {
	switch name {
	case "process":
		return sandbox.ProcessRuntime{}, nil
	case "container":
		if err := container.Available(); err != nil {
			return nil, fmt.Errorf("the container sandbox cannot run here: %w\n"+
				"  dimplugd sandboxes plugins with Linux namespaces, cgroups and seccomp, which needs root.\n"+
				"  For development only, --insecure-no-sandbox runs plugins as plain processes", err)
		}
		return container.New(cfg)
	}
	return nil, usageError{fmt.Errorf("unknown runtime %q: want \"container\" or \"process\"", name)}
}

// closeRuntime releases what a runtime holds (the container runtime's state
// lock and empty parent cgroups) once every plugin has stopped.
func closeRuntime(rt sandbox.Runtime) {
	if c, ok := rt.(interface{ Close() error }); ok {
		c.Close()
	}
}

func versionCmd() *cobra.Command {
	var handover bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the daemon's version and protocol versions",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			if handover {
				fmt.Println(daemon.HandoverVersion)
				return
			}
			fmt.Printf("dimplugd %s (protocol %s)\n", daemon.Version, schema.FormatVersions(schema.SupportedVersions))
		},
	}
	cmd.Flags().BoolVar(&handover, "handover", false, "print only the version of the upgrade hand-over record this binary reads")
	return cmd
}
