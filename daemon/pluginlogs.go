package daemon

import (
	"context"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/dimplugd/dimplugd/daemon/logbuf"
	"github.com/dimplugd/dimplugd/daemon/logstore"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
)

// Plugin logs on disk: each plugin's log (logbuf.Buffer, in memory) is also
// written to <StateDir>/logs/<plugin>/ by a logstore.Writer. A unit's
// buffer starts with the tail of those files, so `dimplugctl logs` shows
// the lines from before a restart; `logs --tail N` reads older lines from
// the files when memory holds fewer than N. The files go with the plugin
// (Remove). See docs/logs.md.

// logsDirName is the directory of the plugins' log files in the state
// directory.
const logsDirName = "logs"

// A `logs` answer reads at most this much from the files, on top of what
// memory holds, so it stays well under the largest control message.
const (
	fileHistoryBytes = 16 << 20
	fileHistoryLines = 100_000
)

// SetLogLevel changes the level of the daemon's own log, when the daemon
// was started with Config.LogLevel (the level its Logger's handler reads);
// otherwise it does nothing.
func (d *Daemon) SetLogLevel(l slog.Level) {
	if d.cfg.LogLevel != nil {
		d.cfg.LogLevel.Set(l)
	}
}

func (d *Daemon) pluginLogDir(name string) string {
	return filepath.Join(d.cfg.StateDir, logsDirName, name)
}

// openLogs restores the unit's buffer from its files and has the buffer
// write every new line to them. Without its files (they cannot be opened)
// the plugin's log is kept in memory only, and the daemon says why.
func (u *unit) openLogs() {
	d := u.d
	w, err := logstore.Open(d.pluginLogDir(u.name), logstore.Options{
		MaxBytes: d.cfg.PluginLogBytes,
		Files:    d.cfg.PluginLogFiles,
		Forward:  d.forwarder(u.name),
		OnError: func(err error) {
			d.log.Warn("cannot write the plugin's log files; its lines are kept in memory only until this works again", "plugin", u.name, "err", err)
		},
	})
	if err != nil {
		d.log.Warn("cannot open the plugin's log files; its log is kept in memory only", "plugin", u.name, "err", err)
		return
	}
	lim := u.logs.Limits()
	lines, err := w.Tail(lim.Lines, math.MaxUint64, lim.Bytes)
	if err != nil {
		d.log.Warn("cannot read the plugin's earlier log", "plugin", u.name, "err", err)
	}
	u.logs.Restore(lines)
	u.logs.SetSink(w.Add)
	u.logFiles = w
}

// closeLogs writes what is queued for the unit's files and closes them;
// lines added afterwards stay in memory only.
func (u *unit) closeLogs() {
	if u.logFiles == nil {
		return
	}
	u.logs.SetSink(nil)
	if err := u.logFiles.Close(); err != nil {
		u.d.log.Warn("close the plugin's log files", "plugin", u.name, "err", err)
	}
}

// removeLogs deletes the unit's log files, with the plugin.
func (u *unit) removeLogs() {
	u.closeLogs()
	if err := os.RemoveAll(u.d.pluginLogDir(u.name)); err != nil {
		u.d.log.Warn("remove the plugin's log files", "plugin", u.name, "err", err)
	}
}

// olderLogs returns up to n lines of the unit's log older than the line
// numbered before, from its files, for a `logs --tail n` that memory
// cannot answer whole.
func (u *unit) olderLogs(n int, before uint64) []logbuf.Line {
	if u.logFiles == nil || before == 0 || n <= 0 {
		return nil
	}
	lines, err := u.logFiles.Tail(min(n, fileHistoryLines), before, fileHistoryBytes)
	if err != nil {
		u.d.log.Warn("read the plugin's log files", "plugin", u.name, "err", err)
	}
	return lines
}

// forwarder returns what copies a plugin's log lines to the daemon's own
// log (Config.ForwardPluginLogs), or nil. The plugin's text is escaped:
// it cannot pass for another line of the daemon's log, nor reach a
// terminal that shows the journal with its escape sequences.
func (d *Daemon) forwarder(name string) func(logbuf.Line) {
	if !d.cfg.ForwardPluginLogs {
		return nil
	}
	log := d.log.With("plugin", name)
	return func(l logbuf.Line) {
		level, text := slog.LevelInfo, l.Text
		if l.Stream == logbuf.Log {
			level, text = splitLevel(text)
		}
		log.Log(context.Background(), level, termesc.String(text), "stream", l.Stream)
	}
}

// splitLevel takes the level off a line of a plugin's Logger, which the
// daemon wrote in front of it (see logServer.Log).
func splitLevel(text string) (slog.Level, string) {
	word, rest, _ := strings.Cut(text, " ")
	switch word {
	case "DEBUG":
		return slog.LevelDebug, rest
	case "INFO":
		return slog.LevelInfo, rest
	case "WARN":
		return slog.LevelWarn, rest
	case "ERROR":
		return slog.LevelError, rest
	}
	return slog.LevelInfo, text
}

// pruneLogs deletes the log directories of plugins that are not installed
// (removed while the daemon was stopped, before it removed their logs, or
// gone with a restore of the registry): a log goes with its plugin.
func (d *Daemon) pruneLogs(recs []registry.Record) {
	installed := map[string]bool{}
	for _, r := range recs {
		installed[r.Name] = true
	}
	entries, _ := os.ReadDir(filepath.Join(d.cfg.StateDir, logsDirName))
	for _, e := range entries {
		if !installed[e.Name()] {
			if err := os.RemoveAll(d.pluginLogDir(e.Name())); err != nil {
				d.log.Warn("remove the log files of a plugin no longer installed", "plugin", e.Name(), "err", err)
			}
		}
	}
}
