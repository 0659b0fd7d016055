package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os/exec"
	"strings"
)

// Ratio says that a value is a ratio to a baseline, and where both of its
// terms are: the value of row Of (the cell's own row when empty), column
// OfCol, divided by the value of row Base (the cell's own row when empty),
// column BaseCol, of the same table; or, when BaseName is set, by the
// fixed figure BaseValue so named (a target or a published figure, not a
// row). Table.Print computes every ratio value from these (NaN, printed
// "–", when a term is missing), and the JSON results give both terms, so
// that what was compared with what is never read out of a row's name.
//
// A ratio row (hooks: "ratio dimplugd (direct) / go-plugin") has one for
// each column, with Of and Base set (see Table.ratioRow); a ratio column
// (spawn: "p50 × bwrap") has one in Col.Ratio, or per row in Row.Ratios
// when the baseline depends on the row (streams: the gRPC row of the same
// frame size).
type Ratio struct {
	Of        string
	OfCol     int
	Base      string
	BaseCol   int
	BaseName  string
	BaseValue float64
}

// ratioAt is how value i of r is computed, or nil for a measured value.
func (t *Table) ratioAt(r *Row, i int) *Ratio {
	if i < len(r.Ratios) && r.Ratios[i] != nil {
		return r.Ratios[i]
	}
	if i < len(t.Cols) {
		return t.Cols[i].Ratio
	}
	return nil
}

// row is the first row named name, or nil.
func (t *Table) row(name string) *Row {
	for i := range t.Rows {
		if t.Rows[i].Name == name {
			return &t.Rows[i]
		}
	}
	return nil
}

// cell is value col of row name (r itself when name is empty); NaN when
// that row is missing, skipped or short.
func (t *Table) cell(r *Row, name string, col int) float64 {
	if name != "" {
		r = t.row(name)
	}
	if r == nil || r.Skip != "" || col < 0 || col >= len(r.Vals) {
		return math.NaN()
	}
	return r.Vals[col]
}

// terms are ratio rt's value and baseline, seen from row r.
func (t *Table) terms(r *Row, rt *Ratio) (of, base float64) {
	of = t.cell(r, rt.Of, rt.OfCol)
	if rt.BaseName != "" {
		return of, rt.BaseValue
	}
	return of, t.cell(r, rt.Base, rt.BaseCol)
}

// resolveRatios computes every ratio value of t from its terms.
func (t *Table) resolveRatios() {
	for ri := range t.Rows {
		r := &t.Rows[ri]
		if r.Skip != "" {
			continue
		}
		for i := range t.Cols {
			rt := t.ratioAt(r, i)
			if rt == nil {
				continue
			}
			for len(r.Vals) <= i {
				r.Vals = append(r.Vals, math.NaN())
			}
			r.Vals[i] = ratio(t.terms(r, rt))
		}
	}
}

// ratioRow appends a row dividing each value of row of by the same
// column's value of row base. When either is missing or skipped, the row
// is skipped too (optional when that row is).
func (t *Table) ratioRow(name, of, base string) {
	r := Row{Name: name}
	for i := range t.Cols {
		r.Vals = append(r.Vals, math.NaN())
		r.Formats = append(r.Formats, "%.2f×")
		r.Ratios = append(r.Ratios, &Ratio{Of: of, OfCol: i, Base: base, BaseCol: i})
	}
	for _, n := range []string{of, base} {
		if x := t.row(n); x == nil || x.Skip != "" {
			r.Skip, r.Optional = "no value for "+n, x != nil && x.Optional
			break
		}
	}
	t.Rows = append(t.Rows, r)
}

// --- the JSON results (bench -json FILE, BENCH_JSON=FILE make bench) ---

// runInfo is the "run" object of the JSON results.
type runInfo struct {
	Time       string            `json:"time"` // start, RFC 3339, UTC
	Go         string            `json:"go"`
	GOOS       string            `json:"goos"`
	GOARCH     string            `json:"goarch"`
	GOMAXPROCS int               `json:"gomaxprocs"`
	CPUs       int               `json:"cpus"`
	Load       string            `json:"load"` // /proc/loadavg at start: 1, 5, 15 min
	Mode       string            `json:"mode"` // "quick" or "full"
	Quick      bool              `json:"quick"`
	Race       bool              `json:"race"`
	GitCommit  string            `json:"git_commit,omitempty"`
	GitDirty   *bool             `json:"git_dirty,omitempty"`
	Sections   []string          `json:"sections"`
	Errors     map[string]string `json:"errors,omitempty"` // by section
}

// jsonCell is one value of one row of one table: an element of "rows".
type jsonCell struct {
	Section  string   `json:"section"`
	Table    string   `json:"table"`
	Row      string   `json:"row"`
	Column   string   `json:"column"`
	Unit     string   `json:"unit,omitempty"`
	Value    *float64 `json:"value"`
	Skipped  string   `json:"skipped,omitempty"`
	Optional bool     `json:"optional,omitempty"`
	*jsonRatio
}

// jsonRatio are the fields of a ratio's cell: Ratio = Value/BaselineValue.
type jsonRatio struct {
	ValueRow       string   `json:"value_row"`
	ValueColumn    string   `json:"value_column"`
	Baseline       string   `json:"baseline"`
	BaselineColumn string   `json:"baseline_column,omitempty"`
	BaselineValue  *float64 `json:"baseline_value"`
	Ratio          *float64 `json:"ratio"`
}

// jsonNum is v, or nil (null) when it is not a number.
func jsonNum(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// jsonCells turns t's rows into cells, every column of every row.
func jsonCells(section string, t *Table) []jsonCell {
	t.resolveRatios()
	var out []jsonCell
	for ri := range t.Rows {
		r := &t.Rows[ri]
		for i, c := range t.Cols {
			jc := jsonCell{Section: section, Table: t.Title, Row: r.Name, Column: c.Name, Unit: c.Unit, Skipped: r.Skip, Optional: r.Optional}
			if r.Skip == "" && i < len(r.Vals) {
				jc.Value = jsonNum(r.Vals[i])
			}
			if rt := t.ratioAt(r, i); rt != nil && rt.OfCol < len(t.Cols) {
				of, base := t.terms(r, rt)
				jr := &jsonRatio{ValueRow: r.Name, ValueColumn: t.Cols[rt.OfCol].Name, Baseline: r.Name, BaselineValue: jsonNum(base)}
				if rt.Of != "" {
					jr.ValueRow = rt.Of
				}
				switch {
				case rt.BaseName != "":
					jr.Baseline = rt.BaseName
				case rt.BaseCol < len(t.Cols):
					if rt.Base != "" {
						jr.Baseline = rt.Base
					}
					jr.BaselineColumn = t.Cols[rt.BaseCol].Name
				}
				jc.Unit = t.Cols[rt.OfCol].Unit
				if jc.Unit == "" {
					jc.Unit = "×" // a ratio of ratios
				}
				jc.Value = nil
				if r.Skip == "" {
					jc.Value = jsonNum(of)
					if i < len(r.Vals) {
						jr.Ratio = jsonNum(r.Vals[i])
					}
				}
				jc.jsonRatio = jr
			}
			out = append(out, jc)
		}
	}
	return out
}

// writeJSON writes the results of a run: one object, {"run": {…},
// "rows": […]}, with one element of rows per value (row × column) of
// every table, in the order printed, one per line.
func writeJSON(w io.Writer, info runInfo, tables []sectionTables) error {
	var b bytes.Buffer
	run, err := json.Marshal(info)
	if err != nil {
		return err
	}
	fmt.Fprintf(&b, "{\"run\": %s,\n\"rows\": [", run)
	first := true
	for _, st := range tables {
		for _, t := range st.tables {
			for _, c := range jsonCells(st.section, t) {
				line, err := json.Marshal(c)
				if err != nil {
					return err
				}
				if !first {
					b.WriteString(",")
				}
				first = false
				b.WriteString("\n")
				b.Write(line)
			}
		}
	}
	b.WriteString("\n]}\n")
	_, err = w.Write(b.Bytes())
	return err
}

// sectionTables are one section's tables, in the order printed.
type sectionTables struct {
	section string
	tables  []*Table
}

// gitState is the checkout's commit and whether it has uncommitted
// changes; "" and nil when git or the repository is missing.
func gitState(dir string) (string, *bool) {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", nil
	}
	commit := strings.TrimSpace(string(out))
	st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
	if err != nil {
		return commit, nil
	}
	dirty := len(bytes.TrimSpace(st)) > 0
	return commit, &dirty
}
