package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestCallgrindQuick runs the callgrind section in quick mode when
// valgrind is installed, and checks that both sides' instruction counts
// per call are positive and that the host + plugin row is their sum.
func TestCallgrindQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon and runs it and a host under valgrind")
	}
	if _, err := exec.LookPath("valgrind"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("valgrind must be installed in CI (the Makefile's APT_PKGS): %v", err)
		}
		t.Skip("valgrind is not installed")
	}
	if raceEnabled {
		if os.Getenv("CI") == "true" {
			t.Fatal("make test runs the bench's tests without -race: the race detector's runtime does not run under valgrind")
		}
		t.Skip("the race detector's runtime does not run under valgrind")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Options{Quick: true, Only: []string{"callgrind"}, Out: &out, Progress: testLog{t}, NoRust: true})
	t.Logf("tables:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	tables := res["callgrind"]
	if len(tables) != 1 || len(tables[0].Rows) != 3 {
		t.Fatalf("want one table of 3 rows (host, plugin, sum), got %d tables", len(tables))
	}
	rows := tables[0].Rows
	for _, r := range rows {
		if r.Skip != "" {
			t.Fatalf("row %q not measured: %s", r.Name, r.Skip)
		}
		for i, v := range r.Vals[:3] { // mean, min, max
			if !(v > 0) {
				t.Errorf("row %q column %q: %v instructions per call, want > 0", r.Name, tables[0].Cols[i].Name, v)
			}
		}
	}
	for i := range 3 { // mean, min and max of one repetition (quick) all add up
		host, plugin, sum := rows[0].Vals[i], rows[1].Vals[i], rows[2].Vals[i]
		if math.Abs(host+plugin-sum) > 1e-6*sum {
			t.Errorf("column %q: host %v + plugin %v = %v, but the sum row says %v", tables[0].Cols[i].Name, host, plugin, host+plugin, sum)
		}
	}
}
