package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
)

// checkJSON checks the JSON results data against the tables they were
// written from: the run object is there; every value of every row of
// every table is there, in the order printed, with the printed value;
// skipped rows have a null value and their reason; every ratio (a "ratio
// …" row, a column with × or ÷ in its name) names its baseline and gives
// the baseline's value, and its ratio is the printed one and equals
// value / baseline_value. It returns every mismatch.
func checkJSON(data []byte, tables []sectionTables) []error {
	var doc struct {
		Run  map[string]any   `json:"run"`
		Rows []map[string]any `json:"rows"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return []error{fmt.Errorf("the JSON does not parse: %v", err)}
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, k := range []string{"time", "go", "goos", "goarch", "gomaxprocs", "cpus", "mode", "quick", "sections"} {
		if _, ok := doc.Run[k]; !ok {
			fail("run: no %q", k)
		}
	}
	// num reads key of cell as a number; present is false when the key
	// is missing, ok false when it is null.
	num := func(c map[string]any, key string) (v float64, present, ok bool) {
		x, present := c[key]
		f, ok := x.(float64)
		return f, present, ok
	}
	str := func(c map[string]any, key string) string { s, _ := c[key].(string); return s }
	same := func(a, b float64) bool { return a == b || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

	n := 0
	for _, st := range tables {
		for _, t := range st.tables {
			t.resolveRatios()
			for ri := range t.Rows {
				r := &t.Rows[ri]
				for i, col := range t.Cols {
					where := fmt.Sprintf("%s: %q, row %q, column %q", st.section, t.Title, r.Name, col.Name)
					if n >= len(doc.Rows) {
						fail("%s: missing from the JSON (it has %d rows)", where, len(doc.Rows))
						n++
						continue
					}
					c := doc.Rows[n]
					n++
					if str(c, "section") != st.section || str(c, "table") != t.Title || str(c, "row") != r.Name || str(c, "column") != col.Name {
						fail("%s: the JSON has section %q, table %q, row %q, column %q in its place", where, str(c, "section"), str(c, "table"), str(c, "row"), str(c, "column"))
						continue
					}
					v, present, ok := num(c, "value")
					if !present {
						fail("%s: no value", where)
					}
					if r.Skip != "" {
						if ok {
							fail("%s: skipped, but its value is %v, not null", where, v)
						}
						if str(c, "skipped") != r.Skip {
							fail("%s: skipped %q, want %q", where, str(c, "skipped"), r.Skip)
						}
					} else if _, ok := c["skipped"]; ok {
						fail("%s: measured, but skipped %q", where, c["skipped"])
					}
					if str(c, "unit") == "" && ok {
						fail("%s: no unit", where)
					}
					// A ratio row, or a value in a ratio column (where
					// the baselines' own rows print "–").
					isRatio := strings.HasPrefix(r.Name, "ratio ") ||
						(strings.ContainsAny(col.Name, "×÷") && r.Skip == "" && i < len(r.Vals) && !math.IsNaN(r.Vals[i]))
					rt := t.ratioAt(r, i)
					if isRatio && rt == nil {
						fail("%s: a ratio, but the table does not say of what (Row.Ratios, Col.Ratio)", where)
					}
					if rt == nil {
						if _, ok := c["ratio"]; ok {
							fail("%s: not a ratio, but has one: %v", where, c["ratio"])
						}
						if r.Skip == "" && i < len(r.Vals) {
							if want := r.Vals[i]; math.IsNaN(want) != !ok || (ok && !same(v, want)) {
								fail("%s: value %v, printed %v", where, c["value"], want)
							}
						}
						continue
					}
					// A ratio.
					if str(c, "baseline") == "" || str(c, "value_row") == "" || str(c, "value_column") == "" {
						fail("%s: a ratio without baseline, value_row or value_column: %v", where, c)
					}
					want := rt.Base
					if rt.BaseName != "" {
						want = rt.BaseName
					} else if want == "" {
						want = r.Name
					}
					if str(c, "baseline") != want {
						fail("%s: baseline %q, want %q", where, str(c, "baseline"), want)
					}
					ratio, present, rok := num(c, "ratio")
					base, bpresent, bok := num(c, "baseline_value")
					if !present || !bpresent {
						fail("%s: a ratio without ratio or baseline_value: %v", where, c)
						continue
					}
					if r.Skip != "" {
						continue
					}
					printed := math.NaN()
					if i < len(r.Vals) {
						printed = r.Vals[i]
					}
					if math.IsNaN(printed) {
						if rok {
							fail("%s: ratio %v, printed –", where, ratio)
						}
						continue
					}
					if !rok || !ok || !bok {
						fail("%s: printed %v, but ratio %v, value %v, baseline_value %v", where, printed, c["ratio"], c["value"], c["baseline_value"])
						continue
					}
					if !same(ratio, printed) {
						fail("%s: ratio %v, printed %v", where, ratio, printed)
					}
					if !same(ratio, v/base) {
						fail("%s: ratio %v, but value / baseline_value = %v / %v = %v", where, ratio, v, base, v/base)
					}
				}
			}
		}
	}
	if n < len(doc.Rows) {
		fail("the JSON has %d rows more than the tables, from %v", len(doc.Rows)-n, doc.Rows[n])
	}
	return errs
}

// jsonTestTables are tables with every kind of value: measured, missing
// (NaN), skipped, ratio rows, ratio columns to a row, to a fixed figure
// and to another column of the same row.
func jsonTestTables() []sectionTables {
	nan := math.NaN()
	a := &Table{Title: "a", Label: "what", Cols: []Col{
		{Name: "p50 ms", Format: "%.1f", Unit: "ms"}, {Name: "p90 ms", Format: "%.1f", Unit: "ms"},
		{Name: "p50 × base", Format: "%.2f", Optional: true, Ratio: &Ratio{OfCol: 0, Base: "base", BaseCol: 0}}}}
	a.add("base", 2, 3, nan)
	a.add("x", 5, 7, nan)
	a.add("y", nan, 1, nan)
	a.skip("s", "no tool here")
	a.notMeasured("o", "needs cargo")
	a.ratioRow("ratio x / base", "x", "base")
	a.ratioRow("ratio o / base", "o", "base")
	b := &Table{Title: "b", Label: "size", Cols: []Col{
		{Name: "one", Format: "%.0f", Unit: "MB/s"}, {Name: "two", Format: "%.0f", Unit: "MB/s"},
		{Name: "× target 8", Format: "%.2f", Ratio: &Ratio{OfCol: 0, BaseName: "target 8", BaseValue: 8}},
		{Name: "two ÷ best", Format: "%.2f×"}}}
	b.Rows = append(b.Rows, Row{Name: "4 KiB", Vals: []float64{3, 6, nan, nan}, Ratios: []*Ratio{3: {OfCol: 1, BaseCol: 0}}})
	b.Rows = append(b.Rows, Row{Name: "8 KiB", Vals: []float64{9, 3, nan, nan}, Ratios: []*Ratio{3: {OfCol: 1, Base: "4 KiB", BaseCol: 1}}})
	return []sectionTables{{"one", []*Table{a}}, {"two", []*Table{b}}}
}

// TestJSON checks the JSON writer on tables with every kind of value, and
// that checkJSON (which TestQuick runs on every section's results) finds
// dropped rows, wrong ratios and missing reasons.
func TestJSON(t *testing.T) {
	tables := jsonTestTables()
	var b bytes.Buffer
	if err := writeJSON(&b, runInfo{Time: "2026-01-01T00:00:00Z", Go: "go1.26", GOOS: "linux", GOARCH: "amd64", GOMAXPROCS: 2, CPUs: 2, Mode: "quick", Quick: true, Sections: []string{"one", "two"}}, tables); err != nil {
		t.Fatal(err)
	}
	t.Logf("JSON:\n%s", b.String())
	for _, err := range checkJSON(b.Bytes(), tables) {
		t.Error(err)
	}
	for _, tab := range []*Table{tables[0].tables[0], tables[1].tables[0]} {
		var p bytes.Buffer
		tab.Print(&p)
		t.Logf("printed:\n%s", p.String())
	}

	// What the ratios must be, worked out by hand.
	var doc struct {
		Rows []map[string]any `json:"rows"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	ratios := map[string]float64{}
	for _, c := range doc.Rows {
		if f, ok := c["ratio"].(float64); ok {
			ratios[c["row"].(string)+" | "+c["column"].(string)] = f
		}
	}
	for k, want := range map[string]float64{
		"x | p50 × base": 2.5, "base | p50 × base": 1,
		"ratio x / base | p50 ms": 2.5, "ratio x / base | p90 ms": 7.0 / 3,
		"4 KiB | × target 8": 3.0 / 8, "4 KiB | two ÷ best": 2, "8 KiB | two ÷ best": 0.5,
	} {
		if got, ok := ratios[k]; !ok || math.Abs(got-want) > 1e-12 {
			t.Errorf("%s: ratio %v (present %v), want %v", k, got, ok, want)
		}
	}
	if _, ok := ratios["y | p50 × base"]; ok {
		t.Error("y | p50 × base: a ratio of a missing value")
	}

	// checkJSON must catch a writer that drops or garbles rows.
	mutate := func(name string, f func(rows []any) []any) {
		t.Helper()
		var doc map[string]any
		if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		doc["rows"] = f(doc["rows"].([]any))
		data, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		errs := checkJSON(data, jsonTestTables())
		if len(errs) == 0 {
			t.Errorf("%s: checkJSON found nothing wrong", name)
		} else {
			t.Logf("%s: %v", name, errs[0])
		}
	}
	find := func(rows []any, row, col string) map[string]any {
		for _, r := range rows {
			if c := r.(map[string]any); c["row"] == row && c["column"] == col {
				return c
			}
		}
		t.Fatalf("no cell %q %q", row, col)
		return nil
	}
	mutate("a row dropped", func(rows []any) []any { return append(rows[:4:4], rows[5:]...) })
	mutate("the last row dropped", func(rows []any) []any { return rows[:len(rows)-1] })
	mutate("a ratio row's ratio wrong", func(rows []any) []any {
		find(rows, "ratio x / base", "p90 ms")["ratio"] = 2.0
		return rows
	})
	mutate("a ratio column's ratio wrong", func(rows []any) []any {
		find(rows, "x", "p50 × base")["ratio"] = 2.0
		return rows
	})
	mutate("a baseline value wrong", func(rows []any) []any {
		find(rows, "8 KiB", "two ÷ best")["baseline_value"] = 5.0
		return rows
	})
	mutate("a baseline missing", func(rows []any) []any {
		delete(find(rows, "ratio x / base", "p50 ms"), "baseline")
		return rows
	})
	mutate("a skipped row's reason missing", func(rows []any) []any {
		delete(find(rows, "s", "p90 ms"), "skipped")
		return rows
	})
	mutate("a skipped row with a value", func(rows []any) []any {
		find(rows, "o", "p50 ms")["value"] = 1.0
		return rows
	})
	mutate("a value wrong", func(rows []any) []any {
		find(rows, "y", "p90 ms")["value"] = 2.0
		return rows
	})
	if errs := checkJSON(b.Bytes()[:b.Len()/2], tables); len(errs) == 0 {
		t.Error("half the JSON: checkJSON found nothing wrong")
	}
}
