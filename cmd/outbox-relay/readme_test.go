package main

import (
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// configDoc is the page that holds the configuration table, relative to
// this package. Operators read that table, while `outbox-relay help` prints
// from env's tags, so the table is the copy that can drift from the code.
const configDoc = "../../docs/configuration.md"

// runtimeVars are the variables outside env that the table may list: the Go
// runtime reads them, not envconfig, and the relay's memory depends on them.
var runtimeVars = map[string]bool{"GOGC": true, "GOMEMLIMIT": true}

// docRow is one row of a Markdown table whose first cell is a variable.
type docRow struct {
	line int    // 1-based line in the file, for the error messages
	def  string // the cell under the table's "default" heading
}

// TestReadmeConfigurationTable checks the configuration table against env:
// every RELAY_ variable has exactly one row, whose default cell shows the
// default its tag gives, and no row names a variable the relay does not
// read. A variable added, renamed or re-defaulted in config.go without the
// table following it fails here, naming the variable.
func TestReadmeConfigurationTable(t *testing.T) {
	t.Parallel()
	text, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	rows, problems := variableRows(string(text))
	for _, p := range problems {
		t.Errorf("%s: %s", configDoc, p)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no table rows naming a variable in backticks; the configuration table is expected there", configDoc)
	}

	fields := map[string]bool{}
	typ := reflect.TypeFor[env]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name := varName(f)
		fields[name] = true
		found := rows[name]
		if len(found) != 1 {
			t.Errorf("%s: want exactly one table row whose first cell is `%s` (field %s of env), found %d%s",
				configDoc, name, f.Name, len(found), lineList(found))
			continue
		}
		row := found[0]
		// A field without a default tag is one the relay cannot start
		// without, so its row says so instead of showing an empty value.
		def, hasDefault := f.Tag.Lookup("default")
		if !hasDefault {
			if !strings.Contains(row.def, "required") {
				t.Errorf("%s:%d: %s has no default tag, so its default cell should say required; it says %q",
					configDoc, row.line, name, row.def)
			}
			continue
		}
		// In backticks, so that a default of 10 is not found inside 100ms.
		want := "`" + def + "`"
		if def == "" {
			want = "`\"\"`"
		}
		if !strings.Contains(row.def, want) {
			t.Errorf("%s:%d: %s defaults to %q (its default tag), so its default cell should show %s; it says %q",
				configDoc, row.line, name, def, want, row.def)
		}
	}

	for _, name := range slices.Sorted(maps.Keys(rows)) {
		found := rows[name]
		switch {
		case fields[name]:
		case strings.HasPrefix(name, "RELAY_"):
			t.Errorf("%s:%d: a row names %s, which is no field of env in config.go: the relay does not read it",
				configDoc, found[0].line, name)
		case runtimeVars[name]:
			if len(found) > 1 {
				t.Errorf("%s: %s has %d rows%s, want at most one", configDoc, name, len(found), lineList(found))
			}
		default:
			t.Errorf("%s:%d: a row names %s; the table lists only env's RELAY_ variables, GOGC and GOMEMLIMIT",
				configDoc, found[0].line, name)
		}
	}
}

var (
	// varCell is a first cell that is exactly one variable in backticks.
	varCell = regexp.MustCompile("^`([A-Z][A-Z0-9_]*)`$")
	// relayName finds RELAY_ variables anywhere in a first cell.
	relayName = regexp.MustCompile(`RELAY_[A-Z0-9_]+`)
)

// variableRows returns, by variable name, the rows of every Markdown table
// in text whose first cell is a variable in backticks, and the rows it could
// not read: a first cell that mentions a RELAY_ variable in another form
// (two variables in one row, say) would otherwise pass unseen.
func variableRows(text string) (map[string][]docRow, []string) {
	rows := map[string][]docRow{}
	var problems []string
	lines := strings.Split(text, "\n")
	fenced := false
	defaultCol := -1 // column of the current table's "default" heading
	inTable := false
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := splitRow(line)
		if !inTable {
			// A table starts with its heading row and a separator row.
			inTable = true
			defaultCol = -1
			for c, h := range cells {
				if strings.EqualFold(h, "default") {
					defaultCol = c
				}
			}
			i++ // the separator
			continue
		}
		if len(cells) == 0 {
			continue
		}
		first := cells[0]
		m := varCell.FindStringSubmatch(first)
		if m == nil {
			if names := relayName.FindAllString(first, -1); len(names) > 0 {
				problems = append(problems, fmt.Sprintf("line %d: first cell %q should be exactly one variable in backticks (%s)",
					i+1, first, strings.Join(names, ", ")))
			}
			continue
		}
		if defaultCol < 0 || defaultCol >= len(cells) {
			problems = append(problems, fmt.Sprintf("line %d: the row of %s has no cell under a \"default\" heading", i+1, m[1]))
			continue
		}
		rows[m[1]] = append(rows[m[1]], docRow{line: i + 1, def: cells[defaultCol]})
	}
	return rows, problems
}

// splitRow returns the trimmed cells of a table row such as "| a | b |".
// A pipe escaped as `\|` belongs to its cell, as in GitHub's Markdown.
func splitRow(line string) []string {
	line = strings.TrimPrefix(line, "|")
	var cells []string
	var cell strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			cell.WriteString(`\|`)
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(cell.String()))
			cell.Reset()
		default:
			cell.WriteByte(line[i])
		}
	}
	if rest := strings.TrimSpace(cell.String()); rest != "" {
		cells = append(cells, rest) // a row without its closing pipe
	}
	return cells
}

// lineList formats the lines of rows for an error message.
func lineList(rows []docRow) string {
	if len(rows) == 0 {
		return ""
	}
	var s []string
	for _, r := range rows {
		s = append(s, fmt.Sprint(r.line))
	}
	return " (lines " + strings.Join(s, ", ") + ")"
}
