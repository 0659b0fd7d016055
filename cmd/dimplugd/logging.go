package main

import (
	"fmt"
	"io"
	"log/slog"
)

// newLogger returns the daemon's own log on w in the --log-format format,
// at the level level holds.
func newLogger(w io.Writer, format string, level *slog.LevelVar) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf(`--log-format %q: want "text" or "json"`, format)
}
