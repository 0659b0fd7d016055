package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestProgress: on a terminal a bar with bytes, rate and ETA; with --json
// one event per line; on a pipe nothing.
func TestProgress(t *testing.T) {
	var tty, js, pipe bytes.Buffer
	start := time.Now().Add(-2 * time.Second)
	for _, p := range []*progress{
		{c: &cli{errw: &tty}, total: 100 << 20, start: start, tty: true},
		{c: &cli{errw: &js, json: true}, total: 100 << 20, start: start},
		{c: &cli{errw: &pipe}, total: 100 << 20, start: start},
	} {
		p.add(40 << 20)
		p.stage("verifying", 100<<20, 100<<20)
		p.stage("waiting", 0, 0)
		p.finish()
	}
	if s := tty.String(); !strings.Contains(s, "sending 40 MiB / 100 MiB (40%)") || !strings.Contains(s, "MiB/s") || !strings.Contains(s, "ETA 3s") || !strings.Contains(s, "verifying") || !strings.Contains(s, "waiting…") || strings.Contains(s, "waiting 0 B") {
		t.Errorf("terminal: %q", s)
	}
	lines := strings.Split(strings.TrimSpace(js.String()), "\n")
	var ev struct {
		Event, Stage string
		Bytes, Total int64
	}
	if len(lines) != 3 || json.Unmarshal([]byte(lines[0]), &ev) != nil || ev.Event != "progress" || ev.Stage != "sending" || ev.Bytes != 40<<20 || ev.Total != 100<<20 {
		t.Errorf("json: %q", js.String())
	}
	if pipe.Len() != 0 {
		t.Errorf("pipe: %q", pipe.String())
	}
}
