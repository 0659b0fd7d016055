package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
)

func TestMain(m *testing.M) {
	container.Init() // the container runtime re-executes this test binary as each sandbox's init
	os.Exit(m.Run())
}

// TestQuick runs each section in quick mode and checks that it produced a
// number for every row, and that its JSON results hold every row (see
// checkJSON). It asserts nothing about the numbers themselves:
// performance claims live in the printed tables only.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole harness")
	}
	for _, name := range sectionNames() {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var out, js bytes.Buffer
			// The Rust host's row needs a cargo release build (minutes on
			// a cold cache); make rust-test covers the crate.
			res, err := Run(ctx, Options{Quick: true, Only: []string{name}, Out: &out, Progress: testLog{t}, NoRust: true, JSON: &js})
			t.Logf("tables:\n%s", out.String())
			if err != nil {
				t.Fatal(err)
			}
			tables := res[name]
			if len(tables) == 0 {
				t.Fatal("no tables")
			}
			// The JSON results (-json): every row of every table printed,
			// ratios with their baselines, skipped rows with their reason.
			for _, err := range checkJSON(js.Bytes(), []sectionTables{{name, tables}}) {
				t.Errorf("JSON results: %v", err)
			}
			if !bytes.Contains(js.Bytes(), []byte(`"mode":"quick"`)) {
				t.Errorf("JSON results: the run is not marked quick: %.300s", js.String())
			}
			for _, tab := range tables {
				if len(tab.Rows) == 0 {
					t.Errorf("table %q has no rows", tab.Title)
				}
				for _, r := range tab.Rows {
					if r.Skip != "" {
						// Skipping is for machines that cannot run a
						// sandbox; CI must. Optional rows (the Rust
						// host, which needs cargo) may be missing.
						if os.Getenv("CI") == "true" && !r.Optional {
							t.Errorf("%s: row %q skipped in CI: %s", tab.Title, r.Name, r.Skip)
						}
						continue
					}
					if len(r.Vals) != len(tab.Cols) {
						t.Errorf("%s: row %q has %d values for %d columns", tab.Title, r.Name, len(r.Vals), len(tab.Cols))
						continue
					}
					for i, v := range r.Vals {
						if math.IsNaN(v) && tab.Cols[i].Optional {
							continue
						}
						if math.IsNaN(v) || math.IsInf(v, 0) || (!tab.Cols[i].Signed && v <= 0) {
							t.Errorf("%s: row %q, column %q: no measurement (%v)", tab.Title, r.Name, tab.Cols[i].Name, v)
						}
					}
				}
			}
			if !strings.Contains(out.String(), "### ") {
				t.Error("nothing printed")
			}
			if name == "streams" {
				checkStreams(t, tables)
			}
		})
	}
}

// testLog sends the harness's progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkStreams checks that the streams section measured every frame size
// for every transport, and dimplugd's ratios to both baselines.
func checkStreams(t *testing.T, tables []*Table) {
	t.Helper()
	if len(tables) != 3 {
		t.Fatalf("streams: %d tables, want 3 (throughput, CPU, inline threshold)", len(tables))
	}
	rows := map[string]Row{}
	for _, r := range tables[0].Rows {
		rows[r.Name] = r
	}
	for _, size := range streamSizes {
		prefix := sizeName(size) + ": "
		var memcpy, raw, grpc, dimplugd bool
		for name, r := range rows {
			if !strings.HasPrefix(name, prefix) || r.Skip != "" {
				continue
			}
			switch rest := strings.TrimPrefix(name, prefix); {
			case strings.HasPrefix(rest, "memcpy"):
				memcpy = true
			case strings.HasPrefix(rest, "raw"):
				raw = true
			case strings.HasPrefix(rest, "gRPC"):
				grpc = true
			case strings.HasPrefix(rest, "dimplugd"):
				dimplugd = true
				for i := 2; i < 4; i++ {
					if math.IsNaN(r.Vals[i]) || r.Vals[i] <= 0 {
						t.Errorf("streams: row %q has no %s", name, tables[0].Cols[i].Name)
					}
				}
			}
		}
		if !memcpy || !raw || !grpc || !dimplugd {
			t.Errorf("streams, %s: memcpy %v, raw %v, gRPC %v, dimplugd %v: a transport is missing", sizeName(size), memcpy, raw, grpc, dimplugd)
		}
	}
	if n := len(tables[2].Rows); n != len(thresholdSizes) {
		t.Errorf("streams: the threshold table has %d rows, want %d", n, len(thresholdSizes))
	}
}
